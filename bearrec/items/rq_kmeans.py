"""Residual k-means (RQ-KMeans): codes ``[items, levels]`` from embeddings ``[items, d]``.

Level 1 clusters the embeddings; each later level clusters the residuals left by the centroids chosen so
far, ``r_{l+1} = r_l - c_l(r_l)``. Plain RQ-KMeans leaves many items sharing all codes (MiniLM over the
Office titles, 3 levels of 256: 32 %); two changes keep them apart (measured in docs/design.md, "Items as
semantic IDs"):

* **Unit residuals** (``normalize_residuals``): each level clusters ``r_l / |r_l|``. With raw residuals the
  items of a tight cluster (near-identical titles) keep residuals close to zero; the next codebook, shared by
  every cluster, spends its centroids on the long residuals of loose clusters, and the short ones fall on the
  one centroid near the origin, level after level (Office: 956 of 2,420 items on one third-level code). On the
  unit sphere a level encodes the direction in which an item differs from its centroid, however close it is.
  It evens out the codebook use on most catalogs, not on all (with few items per cluster the unit residuals
  are nearly isotropic, and a centroid near the origin collects them again), and it cannot tell apart
  near-duplicates whose difference no shared codebook resolves. Hence:
* **A unique last level** (``unique_last_level``): items that share every earlier code (a prefix group of
  ``g <= k`` items) whose nearest last-level centroids collide get distinct last codes by an optimal
  assignment of the group to the codebook, minimising the summed squared distances (LC-Rec's uniform
  semantic mapping, solved exactly with the Hungarian algorithm instead of Sinkhorn). Each code keeps its
  meaning: it is a near centroid of the shared codebook (Office: the 3rd nearest in the median), not a counter.

``balanced`` makes every level a balanced k-means (:mod:`bearrec.items.balanced`): at most ``ceil(N / k)``
items per code. Capacity leaves almost no slack (``k * ceil(N / k) - N`` free places), so there the unique last
level is part of the capacity-constrained assignment itself rather than a repair after it.
"""

from __future__ import annotations

import numpy as np

from bearrec.checks import MAX_SEED
from bearrec.items.balanced import balanced_kmeans
from bearrec.items.kmeans import BLOCK, fit_centroids, nearest, resolve_backend, squared_distances
from bearrec.items.sid_config import SemanticIdConfig


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x / |x|`` row by row, in place (``x`` is returned); a zero row (an item that is its own centroid) stays
    zero."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # [N, 1], without an [N, d] temporary
    return np.divide(x, norms, out=x, where=norms > 1e-12)


def distinct_rows(x: np.ndarray) -> int:
    """How many different rows ``x [N, d]`` holds, counted by their projections on one fixed random direction:
    equal rows project equally, and different rows almost surely differently (a coincidence only lowers a cap)."""
    direction = np.random.default_rng(0).normal(size=x.shape[1])  # [d] float64
    projections = np.concatenate([x[start:start + BLOCK].astype(np.float64) @ direction
                                  for start in range(0, len(x), BLOCK)])  # [N], a float64 block at a time
    return len(np.unique(projections))


def rq_kmeans(embeddings: np.ndarray, config: SemanticIdConfig, progress=None) -> np.ndarray:
    """Codes ``[N, config.levels]`` of ``embeddings [N, d]``; ``config`` validated by the caller.

    A level's codebook is capped at the number of distinct residuals, so a tiny catalog still gets codes.
    """
    backend = resolve_backend(config.backend)
    residual = np.array(embeddings, dtype=np.float32)  # [N, d], our own copy: updated in place below
    codes = np.zeros((len(residual), config.levels), dtype=np.int64)  # [N, L]
    task = progress.add_task(f"RQ-KMeans ({backend}), {config.levels} levels of {config.codebook_size}",
                             total=config.levels) if progress else None
    for level in range(config.levels):
        if config.normalize_residuals:
            residual = unit_rows(residual)
        k = min(config.codebook_size, distinct_rows(residual))
        centroids = fit_centroids(residual, k, (config.seed + level) % (MAX_SEED + 1), backend)  # [k, d]
        unique = level == config.levels - 1 and config.unique_last_level
        if config.balanced:  # the unique last level inside the capacity-constrained assignment: no slack after it
            labels, centroids = balanced_kmeans(residual, centroids, prefix_groups(codes[:, :level]) if unique else None)
        else:
            labels = nearest(residual, centroids)  # [N]
            if unique:
                labels = spread_last_level(residual, centroids, codes[:, :level], labels)
        codes[:, level] = labels
        for start in range(0, len(residual), BLOCK):  # in place, a block at a time: no second [N, d] array
            residual[start:start + BLOCK] -= centroids[labels[start:start + BLOCK]]
        if task is not None:
            progress.advance(task)
    return codes


def prefix_groups(prefix: np.ndarray) -> np.ndarray:
    """``[N]`` group of each item: items with the same codes ``prefix [N, l]`` (all in one group when ``l = 0``)."""
    if not prefix.shape[1]:
        return np.zeros(len(prefix), dtype=np.int64)
    return np.unique(prefix, axis=0, return_inverse=True)[1].reshape(-1)


def spread_last_level(residual: np.ndarray, centroids: np.ndarray, prefix: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Last-level ``labels [N]`` with items of one prefix group (same codes ``prefix [N, l]``) on distinct codes.

    Only groups where two nearest labels coincide are reassigned, each by ``linear_sum_assignment`` on its
    ``[g, k]`` squared distances to the ``k`` codes (a code may hold items of any number of groups). A group
    larger than the codebook is left as it is: it must collide somewhere, and the disambiguation level tells its
    items apart.
    """
    from scipy.optimize import linear_sum_assignment  # +0.2 s: kept out of every command that reads codes

    k = len(centroids)
    group = prefix_groups(prefix)  # [N]
    key = group * k + labels  # [N] (group, code)
    _, first, counts = np.unique(key, return_inverse=True, return_counts=True)
    clashing = np.unique(group[counts[first.reshape(-1)] > 1])  # groups where two items share a code
    out = labels.copy()
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], clashing)
    ends = np.searchsorted(group[order], clashing, side="right")
    for start, end in zip(starts, ends):
        members = order[start:end]  # [g]
        if len(members) <= k:
            rows, cols = linear_sum_assignment(squared_distances(residual[members], centroids))  # [g, k]
            out[members[rows]] = cols
    return out
