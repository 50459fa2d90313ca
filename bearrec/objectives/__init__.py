"""Training objectives: pure functions of aligned ``logits [N, T, V]`` and ``labels [N, T]`` (-100 = unscored)."""

from bearrec.objectives.bear import bear_loss, pruning_margin
from bearrec.objectives.sft import IGNORE_INDEX, sft_loss

OBJECTIVES = ("sft", "bear")

__all__ = ["IGNORE_INDEX", "OBJECTIVES", "bear_loss", "pruning_margin", "sft_loss"]
