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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bearrec.checks import check, is_number
from bearrec.objectives.bear import bear_regulariser, check_bear_fields
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


@dataclass
class SDPOConfig:
    """S-DPO against a frozen reference (an SFT run); ``sdpo-bear`` adds BEAR (paper Figure 7).

    Defaults of the S-DPO repo: beta 1, 3 negatives (uniform over the catalog, never the target). The
    policy starts from the reference run's weights and tokenizer, as S-DPO fine-tunes its SFT model.
    ``weight`` .. ``tau``: the BEAR regulariser of ``sdpo-bear`` (ignored by ``sdpo``).
    """

    reference: str | None = None  # run folder of the reference SFT run (`bearrec train --objective sft`)
    negatives: int = 3  # K sampled negative items per example
    beta: float = 1.0
    weight: float = 0.25  # sdpo-bear: lambda
    temperature: float = 2.75  # sdpo-bear: xi
    beam_width: int = 10  # sdpo-bear: B
    formulation: str = "official"  # sdpo-bear: official (masked softmax, beta detached) | paper
    candidates: str = "vocab"  # sdpo-bear, paper formulation: vocab | trie
    tau: float = 1.0  # sdpo-bear, official formulation
    needs_search = False
    with_bear = False  # set for the sdpo-bear objective (see ``for_objective``)

    @property
    def needs_candidates(self) -> bool:
        return self.with_bear and (self.formulation == "official" or self.candidates == "trie")

    def for_objective(self, name: str) -> "SDPOConfig":
        """This section as the config of ``sdpo`` or ``sdpo-bear``."""
        config = SDPOConfig(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        config.with_bear = name == "sdpo-bear"
        return config

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        extra = extra or {}
        if extra.get("reference") is None:
            raise ValueError("sdpo needs the reference model's sequence log-probabilities")
        return sdpo_bear_loss(logits, labels, extra["reference"], self.beta, self.weight if self.with_bear else 0.0,
                              self.beam_width, self.temperature, self.formulation,
                              extra.get("candidates") if self.needs_candidates else None, self.tau)

    def validate(self, section: str) -> None:
        check(self.reference is None or isinstance(self.reference, str), section, "reference", "a run folder", self.reference)
        check(isinstance(self.negatives, int) and not isinstance(self.negatives, bool) and self.negatives >= 1,
               section, "negatives", "an integer >= 1", self.negatives)
        check(is_number(self.beta) and self.beta > 0, section, "beta", "> 0", self.beta)
        check_bear_fields(self, section)
