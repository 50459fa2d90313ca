"""How a run decodes: the ``decoding`` section of an experiment config."""

from __future__ import annotations

from dataclasses import dataclass

from bearrec.checks import INT64_MAX, check
from bearrec.decoding.decode import DECODERS
from bearrec.decoding.latent import SIMILARITIES, VARIANTS


@dataclass
class DecodingConfig:
    """How a run is decoded: in training validation, ``evaluate``, ``compare``, ``sweep``, ``recommend`` and
    ``serve``: by which ``decoder`` (``decoding/decode.py``), with which step ``scoring`` and length penalty.

    The defaults match the BEAR authors' inference (``inference.py``): ``scoring`` follows the objective
    (masked step scores, renormalised over the trie children, for ``msl`` and the official ``bear``; the
    full-vocabulary log-softmax for ``sft`` and the rest), and ``length_penalty`` is Hugging Face
    ``generate``'s default, 1.0 (sequence score divided by its length); 0 ranks by log P(title | prompt).
    """

    scoring: str | None = None  # full | masked; null: the objective's
    length_penalty: float = 1.0
    decoder: str = "beam"  # beam | exact (the exact top K, nothing pruned) | latent (L2D, decoding/latent.py)
    node_budget: int | None = None  # exact: trie nodes expanded per user (null: no limit, always certified)
    latent_variant: str = "global"  # latent: global (mean state per item) | local (M nearest training states)
    latent_similarity: str = "l2"  # latent: l2 (the paper's) | cosine
    latent_neighbors: int = 5  # latent local: M

    def validate(self, section: str = "decoding") -> None:
        check(self.scoring in (None, "full", "masked"), section, "scoring", "full, masked or null (the objective's)",
              self.scoring)
        check(self.decoder in DECODERS, section, "decoder", " | ".join(DECODERS), self.decoder)
        check(self.node_budget is None or 1 <= self.node_budget <= INT64_MAX, section, "node_budget",
              f"in [1, {INT64_MAX}], or null", self.node_budget)
        check(self.latent_variant in VARIANTS, section, "latent_variant", " | ".join(VARIANTS), self.latent_variant)
        check(self.latent_similarity in SIMILARITIES, section, "latent_similarity", " | ".join(SIMILARITIES),
              self.latent_similarity)
        check(1 <= self.latent_neighbors <= INT64_MAX, section, "latent_neighbors", f"in [1, {INT64_MAX}]",
              self.latent_neighbors)
