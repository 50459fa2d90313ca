"""Ranking metrics, all in one place, with one positive item per user (the paper's protocol).

* ``NDCG@K = 1 / log2(rank + 1)`` if the positive is at ``rank <= K`` of the beam-search list, else 0.
* ``HR@K = 1`` if the positive is in the top K of the beam-search list, else 0.
* ``PR@K`` (pruning rate, paper Figure 6): among users whose positive ranks in the top K of *all*
  catalog items by full-sequence probability, the share whose positive is missing from the B items
  that beam search returned. Ranks count items with a strictly higher score (ties favour the
  positive), so a positive tied with the K-th item counts as top K.
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


def ndcg_at_k(rank: torch.Tensor, k: int) -> float:
    gains = torch.where((rank >= 1) & (rank <= k), 1.0 / torch.log2(rank.float() + 1), torch.zeros(rank.shape))
    return float(gains.mean()) if rank.numel() else math.nan


def hr_at_k(rank: torch.Tensor, k: int) -> float:
    return float(((rank >= 1) & (rank <= k)).float().mean()) if rank.numel() else math.nan


def pruning_rate_at_k(full: torch.Tensor, retrieved_rank_: torch.Tensor, k: int) -> float:
    """Share of top-K-by-probability positives that beam search did not return (NaN if there are none).
    Users whose exact rank was not computed (``full`` < 1) are left out."""
    eligible = (full >= 1) & (full <= k)
    if not bool(eligible.any()):
        return math.nan
    return float((retrieved_rank_[eligible] == 0).float().mean())


def ranking_metrics(
    retrieved: torch.Tensor, targets: torch.Tensor, exact_rank: torch.Tensor | None = None, ks=(5, 10)
) -> dict[str, float]:
    """NDCG@K and HR@K from the beam-search lists; PR@K too when the targets' ``exact_rank`` (by full-sequence
    probability, from :func:`full_rank` or :func:`~bearrec.decoding.exact_target_ranks`) is given."""
    rank = retrieved_rank(retrieved, targets)
    metrics = {}
    for k in ks:
        metrics[f"NDCG@{k}"] = ndcg_at_k(rank, k)
    for k in ks:
        metrics[f"HR@{k}"] = hr_at_k(rank, k)
    if exact_rank is not None:
        for k in ks:
            metrics[f"PR@{k}"] = pruning_rate_at_k(exact_rank, rank, k)
    return metrics


def exact_ranking_metrics(exact_rank: torch.Tensor, retrieved_rank_: torch.Tensor, ks=(5, 10)) -> dict:
    """What pruning costs: NDCG@K and HR@K of the *exact* ranking (every item ranked by its full-sequence
    probability, nothing pruned) next to those of the retrieved lists, over the same users: those whose exact
    rank is known (``exact_rank`` >= 1; -1 = not computed, or undecided within a node budget).

    ``exact_rank`` may be capped at max(K) + 1 (as :func:`~bearrec.decoding.exact_target_ranks` returns it);
    ties favour the positive, as in PR@K. ``retrieved_rank_`` is the 1-based position in the retrieved list
    (0: absent). The gap between the two is what the decoder loses to pruning, and the ceiling for BEAR.
    """
    ranked = exact_rank >= 1
    out: dict = {"users": int(ranked.sum())}
    for k in ks:
        out[f"exact_NDCG@{k}"] = ndcg_at_k(exact_rank[ranked], k)
        out[f"exact_HR@{k}"] = hr_at_k(exact_rank[ranked], k)
        out[f"decoded_NDCG@{k}"] = ndcg_at_k(retrieved_rank_[ranked], k)
        out[f"decoded_HR@{k}"] = hr_at_k(retrieved_rank_[ranked], k)
    return out


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
