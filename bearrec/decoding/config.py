"""How a run decodes: the ``decoding`` section of an experiment config."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from bearrec.checks import INT64_MAX, check
from bearrec.decoding.latent import SIMILARITIES, VARIANTS
from bearrec.decoding.scoring import SCORINGS

DECODERS = ("beam", "exact", "latent")

# What each decoding field must be, for a run's section and for one command's overrides alike: field -> (test of a
# value that is set, the words of the rule).
RULES = {
    "decoder": (lambda v: v in DECODERS, " | ".join(DECODERS)),
    "scoring": (lambda v: v in SCORINGS, " or ".join(SCORINGS)),
    "length_penalty": (math.isfinite, "a finite number"),
    "node_budget": (lambda v: 1 <= v <= INT64_MAX, f"in [1, {INT64_MAX}]"),
    "latent_variant": (lambda v: v in VARIANTS, " | ".join(VARIANTS)),
    "latent_similarity": (lambda v: v in SIMILARITIES, " | ".join(SIMILARITIES)),
    "latent_neighbors": (lambda v: 1 <= v <= INT64_MAX, f"in [1, {INT64_MAX}]"),
}
# The fields of a run's section that may be null, and what null means there.
NULLABLE = {"scoring": "the objective's", "node_budget": "no limit"}


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
        """Check every field against :data:`RULES` (null allowed where :data:`NULLABLE` says what it means)."""
        for name, (ok, text) in RULES.items():
            value = getattr(self, name)
            nullable = name in NULLABLE
            check((value is None and nullable) or (value is not None and ok(value)), section, name,
                  f"{text}, or null ({NULLABLE[name]})" if nullable else text, value)

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
        """Check every field that is set against :data:`RULES`; ``flags`` names a field's command-line flag in the
        message."""
        flags = flags or {}
        for name, (ok, text) in RULES.items():
            value = getattr(self, name)
            text += ", or unset for the run's"
            check(value is None or ok(value), section, name, f"{text} ({flags[name]})" if name in flags else text, value)

    def apply(self, run: DecodingConfig) -> DecodingConfig:
        """The run's decoding section with the fields these overrides set."""
        changed = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        return dataclasses.replace(run, **changed)
