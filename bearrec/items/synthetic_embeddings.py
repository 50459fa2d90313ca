"""Clustered unit embeddings shaped like sentence-encoder embeddings of product titles, at any catalog size: the
workload of the semantic-ID tests and benchmarks beyond the real catalogs we have (2,420 and 6,344 titles).

Each item is the sum of four unit directions with squared weights that add up to 1, then normalised:

    x = sqrt(w_g) g + sqrt(w_t) t_topic + sqrt(w_f) f_family + sqrt(w_n) n_item

* ``g``: one direction shared by every item (sentence encoders' common offset; mean pairwise cosine ~ ``w_g``);
* ``t``: the item's topic (``n / per_topic`` topics, Zipf-sized with exponent 0.8);
* ``f``: the item's family, a product line of near-identical titles (sizes 1 + geometric, mean ``family_mean``);
* ``n``: the item's own direction, with weight ``w_n ~ U(0.02, noise_high)`` per family (tight to loose lines).
  Variants of a title differ along shared attributes (colour, size, pack), so ``n`` lies mostly in a subspace
  of ``attributes`` random directions, plus an ``isotropic`` share of a random direction of the whole space.

With the defaults the nearest-neighbour cosines of 2,420 items (5/25/50/75/95 % quantiles 0.59, 0.79, 0.86,
0.92, 0.97) and the mean pairwise cosine (0.21) are close to all-MiniLM-L6-v2 on the Office titles (0.56, 0.75,
0.85, 0.93, 0.98; 0.22), and plain RQ-KMeans (3 x 256) leaves 19 % of 2,420 and 35 % of 10^4 items sharing all
codes: between the real catalogs (Office 2,420 titles: 37 %, Books 6,344: 4 %; the issue's 11,758 toys: 17 %).
Isotropic item noise (``EmbeddingShape(isotropic=1)``) is far harder: 94 % at 10^4, since no codebook resolves random directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EmbeddingShape:
    """The knobs of the model above; the defaults match all-MiniLM-L6-v2 on the Office titles."""

    shared: float = 0.2  # w_g
    topic: float = 0.3  # w_t
    per_topic: int = 40  # items per topic
    family_mean: float = 4.0  # mean items per family
    noise_high: float = 0.3  # w_n ~ U(0.02, noise_high)
    attributes: int = 48  # directions the item noise mostly lies in
    isotropic: float = 0.2  # share of the item noise in a random direction of the whole space


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered_embeddings(n: int, dim: int = 384, seed: int = 0, shape: EmbeddingShape = EmbeddingShape()) -> np.ndarray:
    """``[n, dim]`` float32 unit rows in a random order (see the module docstring for the model)."""
    shared, topic, per_topic, family_mean = shape.shared, shape.topic, shape.per_topic, shape.family_mean
    noise_high, attributes, isotropic = shape.noise_high, shape.attributes, shape.isotropic
    rng = np.random.default_rng(seed)
    g = _unit(rng.normal(size=dim))  # [dim]
    n_topics = max(1, n // per_topic)
    topic_p = 1 / np.arange(1, n_topics + 1) ** 0.8  # [T] Zipf
    topics = _unit(rng.normal(size=(n_topics, dim)))  # [T, dim]
    sizes = rng.geometric(1 / family_mean, size=n)  # [n] more families than needed, each >= 1 item
    n_families = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    family = np.repeat(np.arange(n_families), sizes[:n_families])[:n]  # [n] family of each item
    family_topic = rng.choice(n_topics, size=n_families, p=topic_p / topic_p.sum())  # [F]
    family_dir = _unit(rng.normal(size=(n_families, dim)))  # [F, dim]
    w_noise = rng.uniform(0.02, noise_high, size=n_families)[family][:, None]  # [n, 1]
    w_family = np.clip(1 - shared - topic - w_noise, 0, 1)  # [n, 1]
    axes = _unit(rng.normal(size=(attributes, dim)))  # [A, dim]
    noise = _unit(np.sqrt(1 - isotropic) * _unit(rng.normal(size=(n, attributes)) @ axes)
                  + np.sqrt(isotropic) * _unit(rng.normal(size=(n, dim))))  # [n, dim]
    x = (np.sqrt(shared) * g + np.sqrt(topic) * topics[family_topic[family]] + np.sqrt(w_family) * family_dir[family]
         + np.sqrt(w_noise) * noise)  # [n, dim]
    return _unit(x).astype(np.float32)[rng.permutation(n)]
