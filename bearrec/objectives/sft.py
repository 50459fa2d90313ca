"""Supervised fine-tuning: token cross-entropy of the positive title (paper equation 2.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bearrec.lm.forward import IGNORE_INDEX


def scored_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full-vocabulary log-softmax at the scored positions only.

    Returns ``(log_probs [M, V], target_log_prob [M], mask [N, T])`` for the ``M`` positions whose label
    is not ``-100``. Restricting the softmax to those rows keeps the cost proportional to the answer
    length, not the prompt length. Computed in fp32 for stable log-probabilities under bf16 training.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} are not aligned")
    mask = labels != IGNORE_INDEX
    log_probs = torch.log_softmax(logits[mask].float(), dim=-1)
    target = log_probs.gather(1, labels[mask].unsqueeze(1)).squeeze(1)
    return log_probs, target, mask


def reduce_tokens(per_token: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` to per-token values ``[M]`` living at the True positions of ``mask [N, T]``."""
    if reduction == "none":
        out = per_token.new_zeros(mask.shape)
        out[mask] = per_token
        return out
    if reduction == "sum":
        return per_token.sum()
    if reduction == "mean":
        return per_token.sum() / mask.sum().clamp(min=1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``-log p(y_t)`` per scored token.

    ``logits [N, T, V]`` are aligned with ``labels [N, T]`` (position t predicts ``labels[:, t]``);
    ``-100`` marks unscored positions. ``"mean"`` divides the sum by the number of scored tokens,
    ``"none"`` returns ``[N, T]`` with zeros at unscored positions.
    """
    _, target, mask = scored_log_probs(logits, labels)
    return reduce_tokens(-target, mask, reduction)


@dataclass
class SFTConfig:
    """Plain supervised fine-tuning (eq. 2.1): no hyperparameters."""

    needs_search = False
    needs_candidates = False
    negatives = 0

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        loss = sft_loss(logits, labels)
        return loss, torch.zeros_like(loss)

    def validate(self, section: str) -> None:
        pass
