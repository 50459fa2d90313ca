"""How a run decodes: the ``decoding`` section of an experiment config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bearrec.checks import INT64_MAX, check
from bearrec.decoding.latent import SIMILARITIES, VARIANTS
from bearrec.decoding.scoring import SCORINGS

DECODERS = ("beam", "exact", "latent")


@dataclass
class DecodingConfig:
    """How a run is decoded: in training validation, ``evaluate``, ``compare``, ``sweep``, ``recommend`` and
    ``serve``: by which ``decoder`` (``decoding/decode.py``), with which step ``scoring`` and length penalty.

    The defaults match the BEAR authors' inference (``inference.py``): ``scoring`` follows the objective
    (masked step scores, renormalised over the trie children, for ``msl`` and the official ``bear``; the
    full-vocabulary log-softmax for ``sft`` and the rest), and ``length_penalty`` is Hugging Face
    ``generate``'s default, 1.0 (sequence score divided by its length); 0 ranks by log P(title | prompt).

    It is checked once, where it is built (:meth:`validate`: the config loader, the command line), and then
    travels whole: :func:`~bearrec.decoding.decode` and ``evaluate`` read it without checking it again.
    """

    scoring: str | None = None  # full | masked; null: the objective's
    length_penalty: float = 1.0
    decoder: str = "beam"  # beam | exact (the exact top K, nothing pruned) | latent (L2D, decoding/latent.py)
    node_budget: int | None = None  # exact: trie nodes expanded per user (null: no limit, always certified)
    latent_variant: str = "global"  # latent: global (mean state per item) | local (M nearest training states)
    latent_similarity: str = "l2"  # latent: l2 (the paper's) | cosine
    latent_neighbors: int = 5  # latent local: M

    def validate(self, section: str = "decoding") -> None:
        check(self.scoring is None or self.scoring in SCORINGS, section, "scoring", "full, masked or null (the objective's)",
              self.scoring)
        check(self.decoder in DECODERS, section, "decoder", " | ".join(DECODERS), self.decoder)
        check(self.node_budget is None or 1 <= self.node_budget <= INT64_MAX, section, "node_budget",
              f"in [1, {INT64_MAX}], or null", self.node_budget)
        check(self.latent_variant in VARIANTS, section, "latent_variant", " | ".join(VARIANTS), self.latent_variant)
        check(self.latent_similarity in SIMILARITIES, section, "latent_similarity", " | ".join(SIMILARITIES),
              self.latent_similarity)
        check(1 <= self.latent_neighbors <= INT64_MAX, section, "latent_neighbors", f"in [1, {INT64_MAX}]",
              self.latent_neighbors)

    def with_scoring(self, scoring: str) -> "DecodingConfig":
        """This section with ``scoring`` filled in where it is null (the objective's, from the run's config)."""
        return self if self.scoring else dataclasses.replace(self, scoring=scoring)


@dataclass
class DecodingOverrides:
    """What one ``evaluate``, ``recommend`` or ``serve`` changes in a run's ``decoding`` section: each field set
    replaces the run's, each ``None`` keeps it. Checked once where it is built (:meth:`validate`, before the run
    is loaded), then applied to the run's section (:meth:`apply`)."""

    decoder: str | None = None
    scoring: str | None = None  # full | masked (beam, exact)
    length_penalty: float | None = None  # beam
    node_budget: int | None = None  # exact: trie nodes expanded per user
    latent_variant: str | None = None
    latent_similarity: str | None = None
    latent_neighbors: int | None = None

    def validate(self, section: str, flags: dict[str, str] | None = None) -> None:
        """Check every field that is set; ``flags`` names a field's command-line flag in the message."""
        flags = flags or {}
        for name, ok, text in [
            ("decoder", self.decoder in DECODERS, " | ".join(DECODERS)),
            ("scoring", self.scoring in SCORINGS, " or ".join(SCORINGS)),
            ("length_penalty", self.length_penalty is not None and abs(self.length_penalty) < float("inf"),
             "a finite number"),
            ("node_budget", self.node_budget is not None and 1 <= self.node_budget <= INT64_MAX, f"in [1, {INT64_MAX}]"),
            ("latent_variant", self.latent_variant in VARIANTS, " or ".join(VARIANTS)),
            ("latent_similarity", self.latent_similarity in SIMILARITIES, " or ".join(SIMILARITIES)),
            ("latent_neighbors", self.latent_neighbors is not None and 1 <= self.latent_neighbors <= INT64_MAX,
             f"in [1, {INT64_MAX}]"),
        ]:
            value = getattr(self, name)
            text += ", or unset for the run's"
            check(value is None or ok, section, name, f"{text} ({flags[name]})" if name in flags else text, value)

    def apply(self, run: DecodingConfig) -> DecodingConfig:
        """The run's decoding section with the fields these overrides set."""
        changed = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        return dataclasses.replace(run, **changed)
