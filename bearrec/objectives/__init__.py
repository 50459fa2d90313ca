"""Training objectives: pure functions of aligned ``logits [N, T, V]`` and ``labels [N, T]`` (-100 = unscored),
each with its config dataclass in the same file; :mod:`bearrec.objectives.registry` lists them."""

from bearrec.objectives.apao import adaptive_weights, apao_pairwise_loss, apao_pointwise_loss, distinct_prefixes
from bearrec.objectives.beam_sim import align_thresholds, beam_sim_loss, simulate_thresholds
from bearrec.objectives.bear import bear_loss, bear_regulariser, pruning_margin
from bearrec.objectives.msl import ats_temperature, masked_log_softmax, msl_loss
from bearrec.objectives.sdpo import sdpo_bear_loss, sdpo_loss, sequence_log_probs
from bearrec.objectives.sft import IGNORE_INDEX, sft_loss

__all__ = [
    "IGNORE_INDEX",
    "adaptive_weights",
    "apao_pairwise_loss",
    "apao_pointwise_loss",
    "align_thresholds",
    "ats_temperature",
    "beam_sim_loss",
    "bear_loss",
    "bear_regulariser",
    "distinct_prefixes",
    "masked_log_softmax",
    "msl_loss",
    "pruning_margin",
    "sdpo_bear_loss",
    "sdpo_loss",
    "sequence_log_probs",
    "sft_loss",
    "simulate_thresholds",
]
