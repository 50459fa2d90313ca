"""Decoding: trie-constrained beam search and exact catalog scoring."""

from bearrec.decoding.beam_search import BeamResult, constrained_beam_search, position_ids_from_mask
from bearrec.decoding.exhaustive import score_catalog

__all__ = ["BeamResult", "constrained_beam_search", "position_ids_from_mask", "score_catalog"]
