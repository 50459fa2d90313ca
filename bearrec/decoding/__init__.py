"""Decoding: trie-constrained beam search, exact catalog scoring and pruning attribution."""

from bearrec.decoding.beam_search import BeamResult, constrained_beam_search, position_ids_from_mask
from bearrec.decoding.exhaustive import exact_target_ranks, score_catalog
from bearrec.decoding.pruning import PruningReport, attribute_pruning, pruning_report

__all__ = [
    "BeamResult",
    "PruningReport",
    "attribute_pruning",
    "constrained_beam_search",
    "exact_target_ranks",
    "position_ids_from_mask",
    "pruning_report",
    "score_catalog",
]
