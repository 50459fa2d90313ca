"""Ranking metrics, all in one place, with one positive item per user (the paper's protocol).

``rank`` is the positive's 1-based position in the decoder's list (0: absent). Accuracy (RecBole's
``recbole/evaluator/metrics.py`` definitions with ``|R(u)| = 1``, so Recall@K = HR@K and the ideal DCG is 1):

* ``NDCG@K = 1 / log2(rank + 1)`` if the positive is at ``rank <= K`` of the list, else 0 (RecBole ``NDCG``).
* ``HR@K = 1`` if the positive is in the top K of the list, else 0 (RecBole ``Hit``; its ``Recall`` is the same
  number with one positive).
* ``MRR@K = 1 / rank`` if the positive is in the top K, else 0 (RecBole ``MRR``).
* ``PR@K`` (pruning rate, paper Figure 6): among users whose positive ranks in the top K of *all*
  catalog items by full-sequence probability, the share whose positive is missing from the B items
  that beam search returned. Ranks count items with a strictly higher score (ties favour the
  positive), so a positive tied with the K-th item counts as top K.

Each is averaged over users. Beyond accuracy (RecBole's ``ItemCoverage``, ``GiniIndex`` and ``TailPercentage``),
over the top-K lists ``R_K(u)`` of all users U and the catalog I:

* ``ItemCoverage@K = |union_u R_K(u)| / |I|``. RecBole divides by its ``data.num_items``, which counts its padding
  id too (|I| + 1); here |I| is the catalog.
* ``GiniIndex@K = sum_{i=1}^{|I|} (2i - |I| - 1) P_(i) / (|I| sum_i P_(i))``, with ``P_(i)`` the number of lists
  that hold item i, sorted non-decreasing (items never recommended count 0): 0 when every item is recommended
  equally often, (|I| - K) / |I| when the same K items fill every list (its largest value). Lower is more even.
  RecBole's |I| is again its ``num_items``, padding included; here the catalog.
* ``TailPercentage@K = mean_u |R_K(u) & T| / K``, with T the long tail: RecBole's default ``tail_ratio`` 0.1, i.e.
  the ``max(floor(0.1 n), 1)`` least popular of the n items that occur in the *train split* (ties by catalog
  index). Popularity is an item's number of train examples it is the target of (RecBole's ``data.count_items``,
  the train dataset's ``item_counter`` after a sequential dataset's augmentation: one row per target): items that
  are never a train target are not in RecBole's counter, so not in T.

A list padded with -1 (fewer than K items found) counts only its items in coverage and Gini, and its padding as
no tail item (the division is by K, as RecBole's lists are always full).
"""

from __future__ import annotations

import math

import torch


def report_ks(beam_width: int) -> tuple[int, ...]:
    """The K of reported metrics for lists of ``beam_width`` items: 5 and 10, and 20 where the list holds 20
    (APAO decodes with B = 20). Every model of one evaluation is reported at the same K."""
    return (5, 10, 20) if beam_width >= 20 else (5, 10)


def retrieved_rank(retrieved: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based position of each target in its retrieved list ``[N, B]`` (0 if absent)."""
    hit = retrieved == targets[:, None]
    position = hit.float().argmax(dim=1) + 1
    return torch.where(hit.any(dim=1), position, torch.zeros_like(position))


def full_rank(item_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target among all items by score ``[N, num_items]``."""
    target_score = item_scores.gather(1, targets[:, None])
    return (item_scores > target_score).sum(dim=1) + 1


def ndcg_gain(rank: torch.Tensor, k: int) -> torch.Tensor:
    """``[N]`` each user's NDCG@K: ``1 / log2(rank + 1)`` where ``1 <= rank <= k``, else 0."""
    return torch.where((rank >= 1) & (rank <= k), 1.0 / torch.log2(rank.float() + 1), torch.zeros(rank.shape))


def ndcg_at_k(rank: torch.Tensor, k: int) -> float:
    return float(ndcg_gain(rank, k).mean()) if rank.numel() else math.nan


def hr_at_k(rank: torch.Tensor, k: int) -> float:
    return float(((rank >= 1) & (rank <= k)).float().mean()) if rank.numel() else math.nan


def mrr_at_k(rank: torch.Tensor, k: int) -> float:
    """``mean_u 1 / rank_u`` over users whose positive is in the top K (0 for the others)."""
    reciprocal = torch.where((rank >= 1) & (rank <= k), 1.0 / rank.clamp(min=1).float(), torch.zeros(rank.shape))
    return float(reciprocal.mean()) if rank.numel() else math.nan


def item_coverage_at_k(retrieved: torch.Tensor, num_items: int, k: int) -> float:
    """Share of the catalog in at least one user's top K (``retrieved [N, B]``, -1 = no item)."""
    top = retrieved[:, :k]  # [N, k]
    return int(top[top >= 0].unique().numel()) / num_items


def gini_index_at_k(retrieved: torch.Tensor, num_items: int, k: int) -> float:
    """Gini index of how often each catalog item appears in the top-K lists (module docstring)."""
    top = retrieved[:, :k]  # [N, k]
    counts = torch.bincount(top[top >= 0], minlength=num_items).sort().values.double()  # [num_items], ascending
    if counts.sum() == 0:
        return math.nan
    i = torch.arange(1, num_items + 1, dtype=torch.float64)  # [num_items]
    return float(((2 * i - num_items - 1) * counts).sum() / (num_items * counts.sum()))


TAIL_RATIO = 0.1  # RecBole's default tail_ratio


def tail_items(item_counts: torch.Tensor, ratio: float = TAIL_RATIO) -> torch.Tensor:
    """``[num_items]`` bool, the long tail T: the ``max(floor(ratio * n), 1)`` least popular of the n items with a
    train count (``item_counts [num_items]``, train interactions per item), ties by catalog index (RecBole)."""
    seen = torch.nonzero(item_counts > 0).flatten()  # [n] catalog indices, ascending
    order = torch.sort(item_counts[seen], stable=True).indices  # by count, then catalog index
    tail = torch.zeros(item_counts.numel(), dtype=torch.bool)
    tail[seen[order[:max(int(seen.numel() * ratio), 1)]]] = True
    return tail


def tail_percentage_at_k(retrieved: torch.Tensor, tail: torch.Tensor, k: int) -> float:
    """Mean over users of the share of their top K that is in the tail ``tail [num_items]`` (bool)."""
    top = retrieved[:, :k]  # [N, k]
    in_tail = (top >= 0) & tail[top.clamp(min=0)]  # [N, k]
    return float(in_tail.float().sum(dim=1).div(k).mean()) if top.shape[0] else math.nan


def pruning_rate_at_k(full: torch.Tensor, retrieved_rank_: torch.Tensor, k: int) -> float:
    """Share of top-K-by-probability positives that beam search did not return (NaN if there are none).
    Users whose exact rank was not computed (``full`` < 1) are left out."""
    eligible = (full >= 1) & (full <= k)
    if not bool(eligible.any()):
        return math.nan
    return float((retrieved_rank_[eligible] == 0).float().mean())


def ranking_metrics(
    retrieved: torch.Tensor, targets: torch.Tensor, exact_rank: torch.Tensor | None = None, ks=(5, 10),
    item_counts: torch.Tensor | None = None,
) -> dict[str, float]:
    """NDCG@K, HR@K and MRR@K of the lists ``retrieved [N, B]``; with ``item_counts [num_items]`` (train
    interactions per catalog item) also ItemCoverage@K, GiniIndex@K and TailPercentage@K; PR@K too when the
    targets' ``exact_rank`` (by full-sequence probability, from :func:`full_rank` or
    :func:`~bearrec.decoding.exact_target_ranks`) is given."""
    rank = retrieved_rank(retrieved, targets)
    metrics = {}
    for name, metric in (("NDCG", ndcg_at_k), ("HR", hr_at_k), ("MRR", mrr_at_k)):
        metrics.update({f"{name}@{k}": metric(rank, k) for k in ks})
    if item_counts is not None:
        num_items, tail = item_counts.numel(), tail_items(item_counts)
        metrics.update({f"ItemCoverage@{k}": item_coverage_at_k(retrieved, num_items, k) for k in ks})
        metrics.update({f"GiniIndex@{k}": gini_index_at_k(retrieved, num_items, k) for k in ks})
        metrics.update({f"TailPercentage@{k}": tail_percentage_at_k(retrieved, tail, k) for k in ks})
    if exact_rank is not None:
        for k in ks:
            metrics[f"PR@{k}"] = pruning_rate_at_k(exact_rank, rank, k)
    return metrics


def exact_ranking_metrics(exact_rank: torch.Tensor, retrieved_rank_: torch.Tensor, ks=(5, 10),
                          parts: dict[int, dict[str, torch.Tensor]] | None = None) -> dict:
    """What pruning costs: NDCG@K and HR@K of the *exact* ranking (every item ranked by its full-sequence
    probability, nothing pruned) next to those of the retrieved lists, over the same users: those whose exact
    rank is known (``exact_rank`` >= 1; -1 = not computed, or undecided within a node budget).

    ``exact_rank`` may be capped at max(K) + 1 (as :func:`~bearrec.decoding.exact_target_ranks` returns it);
    ties favour the positive, as in PR@K. ``retrieved_rank_`` is the 1-based position in the retrieved list
    (0: absent). The exact ranking is no ceiling: pruning loses positives but also lifts them above pruned
    negatives. ``parts`` (:func:`gap_parts` per K) adds the mean of each part of the gap over the same users
    (``lost_NDCG@K``, ``gained_NDCG@K``, ``reordered_NDCG@K``).
    """
    ranked = exact_rank >= 1
    out: dict = {"users": int(ranked.sum())}
    for k in ks:
        out[f"exact_NDCG@{k}"] = ndcg_at_k(exact_rank[ranked], k)
        out[f"exact_HR@{k}"] = hr_at_k(exact_rank[ranked], k)
        out[f"decoded_NDCG@{k}"] = ndcg_at_k(retrieved_rank_[ranked], k)
        out[f"decoded_HR@{k}"] = hr_at_k(retrieved_rank_[ranked], k)
        for name, values in (parts or {}).get(k, {}).items():
            out[f"{name}_NDCG@{k}"] = float(values[ranked].mean()) if bool(ranked.any()) else math.nan
    return out


def gap_parts(exact_rank: torch.Tensor, retrieved_rank_: torch.Tensor, log_prob_rank: torch.Tensor, k: int) -> dict:
    """Per user ``[N]``, the exact ranking's NDCG@K minus beam search's, in parts that sum to it exactly:
    ``gap = lost - gained - reordered``.

    * ``lost``: the positive is not in the beam list: the exact ranking's NDCG@K of it (>= 0), lost to pruning.
    * ``gained``: the positive is in the list: ``NDCG@K(b') - NDCG@K(e)`` (>= 0), with e its exact rank and b' its
      rank among the list's items by the same score (summed log-probability), i.e. e minus the items above it
      that beam search pruned. What pruning those higher-scored negatives gives back.
    * ``reordered``: the positive is in the list: ``NDCG@K(b) - NDCG@K(b')``, with b its position in the list,
      which is ordered by ``log P / length ** length_penalty``: what the list's own order changes (0 at
      length_penalty 0, up to exact ties).

    ``log_prob_rank`` is b' (1 + list items with a strictly higher summed log-probability; clamped to <= e,
    which it is up to float noise since the list's items are catalog items); users without an exact rank
    (``exact_rank`` < 1) get 0 in every part.
    """
    ranked, found = exact_rank >= 1, retrieved_rank_ >= 1  # [N], [N]
    exact, beam = ndcg_gain(exact_rank, k), ndcg_gain(retrieved_rank_, k)  # [N], [N]
    by_log_prob = ndcg_gain(torch.minimum(log_prob_rank, exact_rank), k)  # [N]
    zero = torch.zeros(exact.shape)
    return {"lost": torch.where(ranked & ~found, exact, zero),
            "gained": torch.where(ranked & found, by_log_prob - exact, zero),
            "reordered": torch.where(ranked & found, beam - by_log_prob, zero)}


def log_prob_rank(retrieved: torch.Tensor, summed_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[N]`` the positive's rank among its beam list's items by summed log-probability (``summed_scores [N, B]``,
    ties favour the positive); 0 where the positive is not in the list."""
    hit = retrieved == targets[:, None]  # [N, B]
    valid = retrieved >= 0  # [N, B]
    own = torch.where(hit, summed_scores, torch.full_like(summed_scores, -math.inf)).max(dim=1).values  # [N]
    above = (valid & ~hit & (summed_scores > own[:, None])).sum(dim=1) + 1  # [N]
    return torch.where(hit.any(dim=1), above, torch.zeros_like(above))


def pruning_summary(
    exact_rank: torch.Tensor, retrieved_rank_: torch.Tensor, drop_step: torch.Tensor, violated: torch.Tensor, ks=(5, 10)
) -> dict:
    """Figure 4 of the paper: for positives in the top K by exact probability, how many beam search pruned,
    and which share of those prunings violated the token-level necessary condition (eq. 3.2).

    Also a histogram of the decoding step at which pruned positives (any rank) left the beam.
    """
    summary: dict = {"ranked_users": int((exact_rank >= 1).sum())}  # users whose exact rank was computed
    for k in ks:
        eligible = (exact_rank >= 1) & (exact_rank <= k)
        pruned = eligible & (retrieved_rank_ == 0)
        n_pruned = int(pruned.sum())
        summary[f"PR@{k}"] = pruning_rate_at_k(exact_rank, retrieved_rank_, k)
        summary[f"top{k}_positives"] = int(eligible.sum())
        summary[f"pruned@{k}"] = n_pruned
        summary[f"violation_share@{k}"] = float(violated[pruned].float().mean()) if n_pruned else math.nan
    steps = drop_step[drop_step > 0]
    summary["pruning_step_histogram"] = {int(s): int((steps == s).sum()) for s in steps.unique().tolist()}
    summary["pruned_all_ranks"] = int(steps.numel())
    summary["violation_share_all_ranks"] = float(violated[drop_step > 0].float().mean()) if steps.numel() else math.nan
    return summary
