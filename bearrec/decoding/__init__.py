"""Decoding: trie-constrained beam search, exact top-K, latent-space (L2D) decoding, exact catalog scoring and
pruning attribution."""

from bearrec.decoding.beam_search import BeamResult, constrained_beam_search
from bearrec.decoding.decode import DECODERS, decode
from bearrec.decoding.exact import ExactTopK, exact_top_k
from bearrec.decoding.exhaustive import exact_target_ranks, score_catalog
from bearrec.decoding.latent import ItemMemory, LatentTopK, item_memory, latent_decode, latent_top_k
from bearrec.decoding.scoring import SCORINGS
from bearrec.evaluation.pruning import PruningReport, attribute_pruning, pruning_report
from bearrec.lm.forward import position_ids_from_mask

__all__ = [
    "BeamResult",
    "DECODERS",
    "ExactTopK",
    "ItemMemory",
    "LatentTopK",
    "PruningReport",
    "SCORINGS",
    "attribute_pruning",
    "constrained_beam_search",
    "decode",
    "exact_top_k",
    "item_memory",
    "latent_decode",
    "latent_top_k",
    "exact_target_ranks",
    "position_ids_from_mask",
    "pruning_report",
    "score_catalog",
]
