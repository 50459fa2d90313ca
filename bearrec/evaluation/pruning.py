"""Why positives go missing: where beam search pruned each user's positive item, and whether that step
violated the token-level necessary condition (paper Figure 4) or lost a prefix whose token was fine; and per
user, the gap between the exact ranking's NDCG@K and beam search's in its parts (``metrics.gap_parts``): lost
with a pruned positive, gained from pruned higher-scored negatives, and changed by the list's own order."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from bearrec.decoding.beam_search import BeamResult, constrained_beam_search
from bearrec.decoding.exhaustive import exact_target_ranks
from bearrec.evaluation.metrics import gap_parts, log_prob_rank, pruning_summary, retrieved_rank
from bearrec.items.trie import ItemTrie


@dataclass
class PruningReport:
    """``per_user``: one row per user (target, retrieved_rank (0 = not returned), exact_rank, drop_step
    (-1 = returned), cause, log_prob_rank (the positive's rank among the list's items by summed log-probability,
    0 = not returned) and for each K the gap's parts ``gap_lost@K``, ``gap_gained@K``, ``gap_reordered@K``
    (``exact NDCG@K - beam NDCG@K = lost - gained - reordered``, 0 for users without an exact rank));
    ``summary``: PR@K, violation shares and the pruning-step histogram."""

    per_user: pd.DataFrame
    summary: dict


def attribute_pruning(beams: BeamResult, exact_rank: torch.Tensor, targets: torch.Tensor, ks=(5, 10),
                      summed_scores: torch.Tensor | None = None) -> PruningReport:
    """Build the report from a beam search run with ``targets`` and the targets' exact ranks (capped at
    ``max(ks) + 1`` or not). ``summed_scores [N, B]``: the list's items' log-probabilities
    (``BeamResult.summed_scores``); None takes ``beams.scores``, which they are at length_penalty 0."""
    if beams.drop_step is None:
        raise ValueError("run constrained_beam_search with targets= to attribute pruning")
    got = retrieved_rank(beams.item_ids, targets)
    by_log_prob = log_prob_rank(beams.item_ids, beams.scores if summed_scores is None else summed_scores, targets)
    cause = ["retrieved" if d < 0 else "necessary-condition violation" if v else "prefix-level loss"
             for d, v in zip(beams.drop_step.tolist(), beams.violated.tolist())]
    per_user = pd.DataFrame({"target": targets.tolist(), "retrieved_rank": got.tolist(), "exact_rank": exact_rank.tolist(),
                             "drop_step": beams.drop_step.tolist(), "cause": cause,
                             "log_prob_rank": by_log_prob.tolist()})
    for k in ks:
        for name, values in gap_parts(exact_rank, got, by_log_prob, k).items():
            per_user[f"gap_{name}@{k}"] = values.tolist()
    return PruningReport(per_user, pruning_summary(exact_rank, got, beams.drop_step, beams.violated, ks))


def pruning_report(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    targets: torch.Tensor,
    beam_width: int = 10,
    ks=(5, 10),
    batch_size: int = 32,
    scoring: str = "full",
) -> PruningReport:
    """Beam search with the positives followed, the positives' exact ranks, and the attribution, all with
    the same step ``scoring`` (``"full"`` or ``"masked"``, see ``scoring.py``)."""
    beams = constrained_beam_search(model, input_ids, attention_mask, trie, beam_width, batch_size, targets=targets,
                                    scoring=scoring)
    exact_rank = exact_target_ranks(model, input_ids, attention_mask, trie, targets, max_rank=max(ks),
                                    known_items=beams.item_ids, known_scores=beams.scores, scoring=scoring)
    return attribute_pruning(beams, exact_rank, targets, ks)
