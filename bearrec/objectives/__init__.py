"""Training objectives: pure functions of aligned ``logits [N, T, V]`` and ``labels [N, T]`` (-100 = unscored)."""

from bearrec.objectives.beam_sim import align_thresholds, beam_sim_loss, simulate_thresholds
from bearrec.objectives.bear import bear_loss, pruning_margin
from bearrec.objectives.sft import IGNORE_INDEX, sft_loss

OBJECTIVES = ("sft", "bear", "beam-sim")

__all__ = [
    "IGNORE_INDEX",
    "OBJECTIVES",
    "align_thresholds",
    "beam_sim_loss",
    "bear_loss",
    "pruning_margin",
    "sft_loss",
    "simulate_thresholds",
]
