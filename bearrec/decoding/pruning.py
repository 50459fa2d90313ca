"""Why positives go missing: where beam search pruned each user's positive item, and whether that step
violated the token-level necessary condition (paper Figure 4) or lost a prefix whose token was fine."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from bearrec.catalog import ItemTrie
from bearrec.decoding.beam_search import BeamResult, constrained_beam_search
from bearrec.decoding.exhaustive import score_catalog
from bearrec.metrics import full_rank, pruning_summary, retrieved_rank


@dataclass
class PruningReport:
    """``per_user``: one row per user (target, retrieved_rank (0 = not returned), exact_rank, drop_step
    (-1 = returned), cause); ``summary``: PR@K, violation shares and the pruning-step histogram."""

    per_user: pd.DataFrame
    summary: dict


def attribute_pruning(beams: BeamResult, item_scores: torch.Tensor, targets: torch.Tensor, ks=(5, 10)) -> PruningReport:
    """Build the report from a beam search run with ``targets`` and the exact item scores."""
    if beams.drop_step is None:
        raise ValueError("run constrained_beam_search with targets= to attribute pruning")
    got = retrieved_rank(beams.item_ids, targets)
    exact = full_rank(item_scores, targets)
    cause = ["retrieved" if d < 0 else "necessary-condition violation" if v else "prefix-level loss"
             for d, v in zip(beams.drop_step.tolist(), beams.violated.tolist())]
    per_user = pd.DataFrame({"target": targets.tolist(), "retrieved_rank": got.tolist(), "exact_rank": exact.tolist(),
                             "drop_step": beams.drop_step.tolist(), "cause": cause})
    return PruningReport(per_user, pruning_summary(exact, got, beams.drop_step, beams.violated, ks))


def pruning_report(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    targets: torch.Tensor,
    beam_width: int = 10,
    ks=(5, 10),
    batch_size: int = 32,
) -> PruningReport:
    """Beam search with the positives followed, exact scores of every item, and the attribution."""
    beams = constrained_beam_search(model, input_ids, attention_mask, trie, beam_width, batch_size, targets=targets)
    scores = score_catalog(model, input_ids, attention_mask, trie, batch_size=max(1, batch_size // 2))
    return attribute_pruning(beams, scores, targets, ks)
