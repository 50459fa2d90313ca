"""The one list of training objectives. Everything that names objectives is derived from it: the config sections
(``bear:``, ``msl:`` ...), ``train --objective``, ``compare --objectives``, ``sweep --grid`` short keys, the
quickstart and the decoding scoring a run defaults to.

An objective is a config dataclass (its fields are the settings, with the paper's or authors' defaults) whose
``loss(logits, labels, extra)`` returns ``(loss, regulariser_part)`` and ``validate(section)`` checks the
fields; ``needs_search``, ``needs_candidates`` and ``negatives`` say what the trainer must put in ``extra``
(:mod:`bearrec.objectives.sft` is the smallest example). Adding one is one file plus one :func:`register` call,
here for the built-in ones or anywhere before the command runs for a plug-in.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass


def _full(settings) -> str:
    return "full"


@dataclass(frozen=True)
class Objective:
    """One registered objective.

    ``config``: its config class, or where it lives as ``"module:Class"``, imported on first use (the
    built-in ones: so that naming the objectives, as ``bearrec --help`` does, does not import torch).
    ``section``: the experiment config's section holding its settings (None: it has none); several objectives
    may share one (``sdpo`` and ``sdpo-bear``), and a config class with ``for_objective(name)`` then tells
    them apart. ``scoring(settings)``: how a run trained with it decodes unless told otherwise, ``full``
    (the vocabulary's log-softmax) or ``masked`` (renormalised over the trie's children).
    """

    name: str
    config: type | str
    section: str | None
    help: str
    scoring: Callable[[object], str] = _full

    @property
    def config_class(self) -> type:
        """The config class (``config`` imported where it is a ``"module:Class"`` path)."""
        return _imported(self.config) if isinstance(self.config, str) else self.config

    def settings(self, section_settings=None):
        """Its config object, from the experiment config's section (None: the defaults)."""
        if self.section is None:
            return self.config_class()
        settings = section_settings if section_settings is not None else self.config_class()
        return settings.for_objective(self.name) if hasattr(settings, "for_objective") else settings

    def fields(self) -> tuple[str, ...]:
        """The settings a flag, ``--objectives name:field=...`` or ``sweep --grid field=...`` may name."""
        return tuple(f.name for f in dataclasses.fields(self.config_class)) if self.section else ()


@functools.cache
def _imported(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _where(config: type | str) -> str:
    """``"module:Class"`` of a config class or path, without importing it."""
    return config if isinstance(config, str) else f"{config.__module__}:{config.__qualname__}"


REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Add ``objective``; its section must not be claimed by another config class."""
    if not objective.name or not objective.name.replace("-", "").isalnum():
        raise ValueError(f"objective name {objective.name!r}: letters, digits and dashes only")
    for other in REGISTRY.values():
        if (other.section is not None and other.section == objective.section
                and _where(other.config) != _where(objective.config)):
            raise ValueError(f"objective {objective.name!r}: section {objective.section!r} already holds "
                             f"{_where(other.config).partition(':')[2]} ({other.name})")
    REGISTRY[objective.name] = objective
    return objective


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Objective:
    """The objective called ``name``, or a one-line ``ValueError`` listing the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def sections() -> dict[str, type]:
    """Config section name -> its config class, in registration order."""
    found: dict[str, type] = {}
    for objective in REGISTRY.values():
        if objective.section is not None:
            found.setdefault(objective.section, objective.config_class)
    return found


def default_sections() -> dict[str, object]:
    """Every section's default settings: the objective part of a new experiment config."""
    return {name: config() for name, config in sections().items()}


def _official_masked(settings) -> str:
    return "masked" if getattr(settings, "formulation", "paper") == "official" else "full"


register(Objective("sft", "bearrec.objectives.sft:SFTConfig", None, "cross-entropy (eq. 2.1)"))
register(Objective("bear", "bearrec.objectives.bear:BEARConfig", "bear", "beam-search-aware (the authors' released "
                   "loss, or eq. 3.5 with --formulation paper)", _official_masked))
register(Objective("beam-sim", "bearrec.objectives.beam_sim:BeamSimConfig", "beam_sim",
                   "beam search simulated in training (eq. 3.1)"))
register(Objective("msl", "bearrec.objectives.msl:MSLConfig", "msl", "masked softmax over trie-valid tokens",
                   lambda settings: "masked"))
register(Objective("sdpo", "bearrec.objectives.sdpo:SDPOConfig", "sdpo", "softmax DPO against --reference"))
register(Objective("sdpo-bear", "bearrec.objectives.sdpo:SDPOConfig", "sdpo", "S-DPO + BEAR (Figure 7)"))
register(Objective("apao-pointwise", "bearrec.objectives.apao:APAOConfig", "apao",
                   "APAO's pointwise prefix loss (--set apao.beta=0.1 ...)"))
register(Objective("apao-pairwise", "bearrec.objectives.apao:APAOConfig", "apao",
                   "APAO's pairwise prefix loss against sampled negatives"))
