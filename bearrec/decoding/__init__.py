"""Decoding: trie-constrained beam search, exact top-K, latent-space (L2D) decoding and exact catalog scoring."""

from bearrec.decoding.beam_search import BeamResult, constrained_beam_search
from bearrec.decoding.config import DECODERS, DecodingConfig
from bearrec.decoding.decode import decode
from bearrec.decoding.exact import ExactTopK, exact_top_k
from bearrec.decoding.exhaustive import exact_target_ranks, score_catalog
from bearrec.decoding.latent import ItemMemory, LatentTopK, item_memory, latent_decode, latent_top_k
from bearrec.decoding.scoring import SCORINGS

__all__ = [
    "BeamResult",
    "DECODERS",
    "DecodingConfig",
    "ExactTopK",
    "ItemMemory",
    "LatentTopK",
    "SCORINGS",
    "constrained_beam_search",
    "decode",
    "exact_top_k",
    "item_memory",
    "latent_decode",
    "latent_top_k",
    "exact_target_ranks",
    "score_catalog",
]
