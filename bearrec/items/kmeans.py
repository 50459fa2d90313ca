"""One k-means, two backends: faiss (``pip install faiss-cpu``) when installed, scikit-learn otherwise.

Both follow the same contract: :func:`fit_centroids` trains ``k`` centroids on at most
``MAX_POINTS_PER_CENTROID * k`` points drawn with the seed (faiss' own default subsample; beyond it the
centroids barely move while the time grows linearly), with the best of ``RESTARTS`` k-means++ initialisations and Lloyd iterations,
and :func:`nearest` assigns every point to its nearest centroid in blocks, so a million points never
hold a ``[N, k]`` distance matrix at once. Results differ between backends (their random streams
differ), never in kind.
"""

from __future__ import annotations

import numpy as np

MAX_POINTS_PER_CENTROID = 256
ITERATIONS = 25  # Lloyd iterations (faiss' default; scikit-learn stops earlier when it has converged)
RESTARTS = 3  # k-means++ initialisations, the best (least squared error) kept: one often splits a true cluster
BLOCK = 16384  # rows of the distance matrix computed at once in `nearest`: [BLOCK, k] float32


def faiss_available() -> bool:
    """Whether faiss imports (installed and loadable); only `--semantic-ids build` asks."""
    try:
        import faiss  # noqa: F401  (optional: pip install faiss-cpu)
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``faiss`` when it is installed, else ``sklearn``; ``faiss`` without faiss is one clear line."""
    if backend == "auto":
        return "faiss" if faiss_available() else "sklearn"
    if backend == "faiss" and not faiss_available():
        raise ValueError("k-means backend faiss is not installed: pip install faiss-cpu (or choose sklearn)")
    return backend


def training_sample(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """At most ``MAX_POINTS_PER_CENTROID * k`` rows of ``x [N, d]``, drawn without replacement."""
    cap = MAX_POINTS_PER_CENTROID * k
    if len(x) <= cap:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), cap, replace=False))
    return x[rows]


def fit_centroids(x: np.ndarray, k: int, seed: int, backend: str) -> np.ndarray:
    """``[k, d]`` float32 centroids of ``x [N, d]`` (``k <= N``) by the resolved ``backend``."""
    sample = np.ascontiguousarray(training_sample(x, k, seed), dtype=np.float32)  # [n <= 256 k, d]
    if backend == "faiss":
        return _faiss_centroids(sample, k, seed)
    return _sklearn_centroids(sample, k, seed)


def _faiss_centroids(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    import faiss  # optional (pip install faiss-cpu): only `--semantic-ids build` clusters

    km = faiss.Kmeans(sample.shape[1], k, niter=ITERATIONS, nredo=RESTARTS, seed=seed % 2**31,
                      max_points_per_centroid=MAX_POINTS_PER_CENTROID, min_points_per_centroid=1,
                      init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)
    km.train(sample)
    return np.asarray(km.centroids, dtype=np.float32)  # [k, d]


def _sklearn_centroids(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans  # optional extra semantic-ids (+0.8 s): only `--semantic-ids build` clusters

    km = KMeans(n_clusters=k, n_init=RESTARTS, max_iter=ITERATIONS, random_state=seed).fit(sample)
    return km.cluster_centers_.astype(np.float32)  # [k, d]


def squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``[n, k]`` squared L2 distances ``|x_i|^2 - 2 x_i . c_j + |c_j|^2`` (clipped at 0 against rounding)."""
    d2 = (x * x).sum(1)[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
    return np.maximum(d2, 0, out=d2)


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``[N]`` index of each row's nearest centroid (ties: the lowest index), ``BLOCK`` rows at a time."""
    labels = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), BLOCK):
        labels[start:start + BLOCK] = squared_distances(x[start:start + BLOCK], centroids).argmin(1)
    return labels
