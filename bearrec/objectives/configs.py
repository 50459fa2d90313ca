"""One config dataclass per objective, with the paper's defaults and ranges; ``loss`` applies it.

The trainer only knows the interface: ``loss(logits, labels, thresholds)`` returns
``(loss, regulariser_part)``; ``needs_search`` says whether the objective wants the beam-search
thresholds of eq. 3.1 simulated for the batch first (beam-sim does, SFT and BEAR do not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bearrec.objectives.bear import bear_loss
from bearrec.objectives.sft import sft_loss


@dataclass
class SFTConfig:
    """Plain supervised fine-tuning (eq. 2.1): no hyperparameters."""

    needs_search = False

    def loss(self, logits, labels, thresholds=None) -> tuple[torch.Tensor, torch.Tensor]:
        loss = sft_loss(logits, labels)
        return loss, torch.zeros_like(loss)


@dataclass
class BEARConfig:
    """BEAR (eq. 3.5): SFT + weight * sum_t surrogate(log beta_t - log p(y_t)); see ``bear_loss``."""

    beam_width: int = 10  # B: match the decoding beam width (paper: 10)
    weight: float = 1.0  # lambda, regulariser strength (paper searches 0.1 - 5)
    temperature: float = 1.0  # xi, sigmoid temperature (paper searches 0.25 - 3)
    surrogate: str = "paper"  # "paper" = eq. 3.4 as printed; "softplus" = only violated tokens pay
    needs_search = False

    def loss(self, logits, labels, thresholds=None) -> tuple[torch.Tensor, torch.Tensor]:
        loss = bear_loss(logits, labels, self.beam_width, self.temperature, self.weight, self.surrogate)
        return loss, loss - sft_loss(logits, labels).detach()


@dataclass
class BeamSimConfig:
    """The straightforward objective (eq. 3.1): beam search simulated per instance (no gradient) gives
    the B-th prefix score of each step; the positive prefix is pushed above it with BEAR's surrogate.
    The paper measures it at 4.45x the cost of SFT; it is the accuracy reference for BEAR."""

    beam_width: int = 10
    weight: float = 1.0
    temperature: float = 1.0
    surrogate: str = "paper"
    needs_search = True

    def loss(self, logits, labels, thresholds=None) -> tuple[torch.Tensor, torch.Tensor]:
        from bearrec.objectives.beam_sim import beam_sim_loss

        if thresholds is None:
            raise ValueError("beam-sim needs the simulated thresholds of the batch")
        loss = beam_sim_loss(logits, labels, thresholds, self.temperature, self.weight, self.surrogate)
        return loss, loss - sft_loss(logits, labels).detach()


OBJECTIVE_CONFIGS = {"sft": SFTConfig, "bear": BEARConfig, "beam-sim": BeamSimConfig}
