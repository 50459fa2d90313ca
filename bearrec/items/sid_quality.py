"""How well codes tell items apart: the SID quality report of ``bearrec prepare`` and ``bearrec sids report``.

For codes ``[N, L]`` (before disambiguation) it counts:

* **items sharing all codes**: items whose whole code tuple is also another item's; these are the items the
  disambiguation level has to tell apart. ``shared_share`` = that count / N.
* **the largest group**: the most items on one whole code tuple.
* per level ``l`` with codebook size ``K`` and ``n_c`` items on code ``c`` (``p_c = n_c / N``):
  * utilisation = ``|{c : n_c > 0}| / K``, the share of the codebook in use;
  * entropy ``H_l = -sum_c p_c log2 p_c`` in bits, at most ``log2 K`` (every code used equally); the
    normalised entropy ``H_l / log2 K`` is 1 for a uniform level and 0 for one code;
  * the most items on one code, ``max_c n_c`` (balanced codes: at most ``ceil(N / K)``).
"""

from __future__ import annotations

import numpy as np


def sid_quality(codes: np.ndarray, codebook_size: int | None = None) -> dict:
    """The report of ``codes [N, L]`` as a JSON-ready dict. ``codebook_size``: ``K`` of every level; unknown
    (a codes file), each level's is taken as its largest code + 1."""
    codes = np.asarray(codes, dtype=np.int64)
    n, levels = codes.shape
    _, inverse, group_sizes = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    per_item = group_sizes[inverse.reshape(-1)]  # [N] items on each item's code tuple
    shared = int((per_item > 1).sum())
    return {
        "items": int(n),
        "levels": int(levels),
        "items_sharing_codes": shared,
        "shared_share": shared / n if n else 0.0,
        "distinct_codes": int(len(group_sizes)),
        "largest_group": int(group_sizes.max()) if n else 0,
        "per_level": [level_quality(codes[:, level], codebook_size) for level in range(levels)],
    }


def level_quality(column: np.ndarray, codebook_size: int | None = None) -> dict:
    """Utilisation, entropy (bits, and over ``log2 K``) and the most items on one code of one level ``[N]``."""
    k = codebook_size or (int(column.max()) + 1 if len(column) else 1)
    counts = np.bincount(column, minlength=k)  # [K]
    p = counts[counts > 0] / len(column)  # [used]
    entropy = float(-(p * np.log2(p)).sum())
    return {
        "codebook_size": int(k),
        "codes_used": int((counts > 0).sum()),
        "utilisation": float((counts > 0).sum() / k),
        "entropy_bits": entropy,
        "normalised_entropy": entropy / float(np.log2(k)) if k > 1 else 1.0,
        "max_items_per_code": int(counts.max()),
    }
