"""Training objectives: pure functions of aligned ``logits [N, T, V]`` and ``labels [N, T]`` (-100 = unscored),
each with its config dataclass in the same file; :mod:`bearrec.objectives.registry` lists them.

The loss functions below are imported on first use (PEP 562), so that ``bearrec.objectives.registry``, which
names the objectives for the command line's help, does not import torch.
"""

import importlib

_WHERE = {
    "apao": ("adaptive_weights", "apao_pairwise_loss", "apao_pointwise_loss", "distinct_prefixes"),
    "beam_sim": ("align_thresholds", "beam_sim_loss", "simulate_thresholds"),
    "bear": ("bear_loss", "bear_regulariser", "pruning_margin"),
    "msl": ("ats_temperature", "masked_log_softmax", "msl_loss"),
    "sdpo": ("sdpo_bear_loss", "sdpo_loss", "sequence_log_probs"),
    "sft": ("IGNORE_INDEX", "sft_loss"),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE)


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE))
