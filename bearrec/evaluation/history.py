"""Leaving a user's history items out of its recommendations: the one rule that ``evaluate --exclude-history``,
``recommend``, ``serve`` and the baselines share.

A decoder that returns a ranked list (beam search, exact top-K, L2D) is asked for ``k`` plus the number of the
user's distinct history items (:func:`search_width`); those are dropped and the list is cut back to ``k``
(:func:`without_history`). A model that scores the whole catalog has its history items' scores set to -inf
before its top ``k`` is taken (:func:`mask_history`). Both give the ``k`` best items the user has not seen.
"""

from __future__ import annotations

import torch


def search_width(k: int, history: set[int], num_items: int) -> int:
    """How many items to retrieve so that ``k`` remain once ``history`` is dropped (at most the catalog)."""
    return min(k + len(history), num_items)


def without_history(item_ids: torch.Tensor, scores: torch.Tensor, histories: list[set[int]], k: int,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(item_ids [N, k], scores [N, k])``: each row of ``item_ids [N, W]`` (best first, -1 padding) without its
    user's ``histories`` items, in the same order, cut to ``k`` and padded with -1 (score -inf)."""
    ids, values = [], []
    for row, row_scores, seen in zip(item_ids.tolist(), scores.tolist(), histories):
        kept = [(i, s) for i, s in zip(row, row_scores) if i >= 0 and i not in seen][:k]
        kept += [(-1, float("-inf"))] * (k - len(kept))
        ids.append([i for i, _ in kept])
        values.append([s for _, s in kept])
    return torch.tensor(ids, dtype=torch.long), torch.tensor(values, dtype=scores.dtype)


def mask_history(scores: torch.Tensor, histories: list[list[int]]) -> torch.Tensor:
    """``scores [N, num_items]`` with each user's history items set to -inf (in place, and returned)."""
    users = [u for u, history in enumerate(histories) for _ in history]
    items = [item for history in histories for item in history]
    scores[users, items] = -torch.inf
    return scores
