"""S-DPO (softmax DPO, Chen et al., NeurIPS 2024, ``chenyuxin1999/S-DPO``) and BEAR on top of it (paper Figure 7).

Each training example comes with K sampled negative items. With ``r(y) = log pi(y|x) - log pi_ref(y|x)``
(sequence log-probabilities of the title + EOS under the trained policy and the frozen reference, the
SFT model the policy starts from), S-DPO is::

    L = -log sigmoid( -log sum_{j=1..K} exp( beta * (r(neg_j) - r(pos)) ) )

K = 1 is DPO. Defaults follow the S-DPO repo's ``softmax_dpo.sh``: ``beta = 1``, K = 3 negatives,
sequence log-probabilities summed over tokens (full-vocabulary log-softmax). The BEAR paper trains
DPO methods with batch 64 (``train.batch_size``).

``sdpo-bear`` (BEAR Figure 7) adds ``weight * L_reg`` of eq. 3.4 on the positive's tokens and
``-weight * L_reg`` on the negatives' tokens: positives are pushed into the top B of every step,
negatives out of it (:func:`bearrec.objectives.bear.bear_regulariser`, mean over tokens).

Row layout shared with the trainer: rows are grouped per example, ``1 + K`` consecutive rows each,
the positive first, so ``[R, ...]`` tensors reshape to ``[N, 1 + K, ...]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bearrec.objectives.bear import bear_regulariser
from bearrec.objectives.sft import scored_log_probs


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[N]`` sum over each row's scored tokens of ``log p(y_t)`` (full-vocabulary log-softmax)."""
    _, target, mask = scored_log_probs(logits, labels)  # [M], [N, T]
    per_position = target.new_zeros(mask.shape).masked_scatter(mask, target)  # [N, T]
    return per_position.sum(dim=1)


def sdpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """S-DPO of sequence log-probabilities ``policy [N, 1 + K]`` and ``reference [N, 1 + K]`` (column 0: positive).

    ``reduction``: ``"mean"`` over examples or ``"none"`` (``[N]``).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0: got {beta}")
    if policy.shape != reference.shape or policy.dim() != 2 or policy.shape[1] < 2:
        raise ValueError(f"policy {tuple(policy.shape)} and reference {tuple(reference.shape)} must both be [N, 1 + K], K >= 1")
    reward = policy - reference.detach()  # [N, 1 + K]
    margin = beta * (reward[:, 1:] - reward[:, :1])  # [N, K]: negative minus positive
    loss = -F.logsigmoid(-margin.logsumexp(dim=1))  # [N]
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")


def sdpo_bear_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reference: torch.Tensor,
    beta: float = 1.0,
    weight: float = 0.25,
    beam_width: int = 10,
    temperature: float = 2.75,
    formulation: str = "official",
    allowed: torch.Tensor | None = None,
    tau: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, regulariser part)`` of S-DPO (+ BEAR when ``weight > 0``) for grouped rows.

    ``logits [R, T, V]`` and ``labels [R, T]`` with ``R = N (1 + K)`` rows grouped per example (positive
    first); ``reference [N, 1 + K]`` the frozen model's sequence log-probabilities. The regulariser is
    ``weight * (mean reg over positive tokens - mean reg over negative tokens)`` with
    ``reg_t = log sigmoid(delta_t / temperature)`` (eq. 3.4, ``formulation`` as in ``bear_loss``).
    """
    n, group = reference.shape
    if logits.shape[0] != n * group:
        raise ValueError(f"logits have {logits.shape[0]} rows; reference {tuple(reference.shape)} needs {n * group}")
    policy = sequence_log_probs(logits, labels).view(n, group)  # [N, 1 + K]
    loss = sdpo_loss(policy, reference, beta)
    if weight == 0:
        return loss, torch.zeros_like(loss)
    reg, mask = bear_regulariser(logits, labels, beam_width, temperature, formulation, allowed, tau)  # [M], [R, T]
    positive_row = (torch.arange(logits.shape[0], device=mask.device) % group == 0)[:, None].expand_as(mask)[mask]  # [M]
    pos = reg[positive_row].sum() / positive_row.sum().clamp(min=1)
    neg = reg[~positive_row].sum() / (~positive_row).sum().clamp(min=1)
    part = weight * (pos - neg)
    return loss + part, part.detach()
