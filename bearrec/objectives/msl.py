"""MSL: the masked softmax loss (Wang et al., SIGIR 2025, ``WANGBohaO-jpg/MSL``), and its adaptive temperature.

Constrained beam search only ever compares the trie-valid next tokens ``A_t`` of a step, so MSL
normalises the softmax over ``A_t`` alone: ``q_t = softmax(z_t / tau)`` restricted to ``A_t`` and the
loss is ``ce_t = -log q_t(y_t)``, averaged over the scored tokens (a step with ``|A_t| = 1`` costs 0).
BEAR's released loss (``formulation="official"``) reweights exactly these ``ce_t``.

``allowed`` gives ``A_t`` in either of two forms, and every function here accepts both:

* dense: a bool ``[N, T, V]`` mask (tests, small vocabularies);
* sparse: the token ids ``[N, T, C]`` padded with -1, from :meth:`ItemTrie.label_candidates`. Only the
  ``C`` candidate logits are gathered, so no ``[N, T, V]`` tensor is built besides the model's logits.

ATS (adaptive temperature, the MSL repo's ``train_trie_token_adatau.py``): from the first answer
token of each row (the root's children, the same ``A`` for every row) take the mean positive logit
``mu_pos``, the mean and variance ``mu_A, var_A`` of all valid logits, and ``C = log(|A_root| * eta)``;
the estimate ``tau_hat = (d + sqrt(max(d^2 - 2 C var_A, 0))) / (2 C)`` with ``d = mu_pos - mu_A`` is
clipped to ``[1.5, 5]`` and smoothed, ``tau <- (1 - alpha) tau + alpha tau_hat``; the loss is then
``tau * mean_t ce_t(tau)`` over the tokens with ``|A_t| > 1``. Defaults there: start at tau = 1.5,
eta = 0.25, alpha = 0.05, no warm-up. The repo gathers the statistics over all GPUs; we use the
local batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bearrec.checks import check, is_number
from bearrec.objectives.sft import IGNORE_INDEX, reduce_tokens

NEG_INF = float("-inf")


def masked_log_softmax(
    logits: torch.Tensor, labels: torch.Tensor, allowed: torch.Tensor, tau: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``log q_t`` over ``A_t`` at the scored positions: ``(log_q [M, C], target [M], valid [M, C], mask [N, T])``.

    ``log_q`` is -inf outside ``A_t`` (``C = V`` for a dense ``allowed``); ``target = log q_t(y_t)``.
    Computed in fp32. Raises ``ValueError`` if a scored label is not in its own ``A_t``.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0: got {tau}")
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} are not aligned")
    mask = labels != IGNORE_INDEX  # [N, T]
    y = labels[mask]  # [M]
    if allowed.dtype == torch.bool:
        if allowed.shape != logits.shape:
            raise ValueError(f"allowed {tuple(allowed.shape)} must have the shape of logits {tuple(logits.shape)}")
        valid = allowed[mask]  # [M, V]
        z = logits[mask].float() / tau  # [M, V]
        hit = torch.zeros_like(valid).scatter_(1, y[:, None], True) & valid  # [M, V]
    else:
        if allowed.dim() != 3 or allowed.shape[:2] != labels.shape:
            raise ValueError(f"allowed ids {tuple(allowed.shape)} must be [N, T, C] for labels {tuple(labels.shape)}")
        ids = allowed.to(logits.device)
        z = logits.gather(2, ids.clamp(min=0))[mask].float() / tau  # [M, C]: no [N, T, V] copy
        ids = ids[mask]  # [M, C]
        valid = ids >= 0
        hit = (ids == y[:, None]) & valid  # [M, C]
    if not bool(hit.any(dim=1).all()):
        raise ValueError("labels: a scored token is not among its allowed (trie-valid) tokens")
    z = z.masked_fill(~valid, NEG_INF)
    log_q = z - z.logsumexp(dim=1, keepdim=True)  # [M, C]
    target = torch.where(hit, log_q, torch.zeros_like(log_q)).sum(dim=1)  # [M]
    return log_q, target, valid, mask


def msl_loss(
    logits: torch.Tensor, labels: torch.Tensor, allowed: torch.Tensor, tau: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """``-log q_t(y_t)`` of the masked softmax of ``logits / tau`` over ``A_t``, per scored token.

    ``logits [N, T, V]``, ``labels [N, T]`` (-100 = unscored), ``allowed`` dense ``[N, T, V]`` bool or
    sparse ``[N, T, C]`` ids (-1 padded). ``"mean"`` divides by all scored tokens (as the MSL repo
    does; tokens with ``|A_t| = 1`` add 0), ``"none"`` gives ``[N, T]``.
    """
    _, target, _, mask = masked_log_softmax(logits, labels, allowed, tau)
    return reduce_tokens(-target, mask, reduction)


@torch.no_grad()
def ats_temperature(
    logits: torch.Tensor, labels: torch.Tensor, allowed: torch.Tensor, eta: float = 0.25,
    bounds: tuple[float, float] = (1.5, 5.0),
) -> float:
    """The ATS estimate ``tau_hat`` of one batch (before smoothing), from each row's first answer token.

    Raw (untempered) logits: ``d = mean_i z_i(y_i) - mean of every valid logit``,
    ``var`` = unbiased variance of every valid logit, ``C = log(|A| * eta)`` with ``|A|`` the valid
    tokens of a first step; ``tau_hat = (d + sqrt(max(d^2 - 2 C var, 0))) / (2 C)`` clipped to ``bounds``.
    """
    if eta <= 0:
        raise ValueError(f"eta must be > 0: got {eta}")
    mask = labels != IGNORE_INDEX  # [N, T]
    first = mask & (mask.long().cumsum(dim=1) == 1)  # [N, T] each row's first scored position
    y = labels[first]  # [n]
    if allowed.dtype == torch.bool:
        z = logits[first].float()  # [n, V]
        valid = allowed[first]  # [n, V]
        column = y[:, None]
    else:
        ids = allowed.to(logits.device)
        z = logits.gather(2, ids.clamp(min=0))[first].float()  # [n, C]
        ids = ids[first]  # [n, C]
        valid = ids >= 0
        column = (ids == y[:, None]).long().argmax(dim=1, keepdim=True)  # slot of y in A
    pos = z.gather(1, column)  # [n, 1]
    d = pos.mean() - z[valid].mean()
    values = z[valid]  # every valid logit of the first steps
    size = float(valid.sum(dim=1).float().mean())
    c = math.log(size * eta)
    if c <= 0:
        return float(bounds[0])
    tau = (d + torch.sqrt(torch.clamp(d * d - 2 * c * values.var(), min=0))) / (2 * c)
    return float(tau.clamp(*bounds))


def ats_loss(logits: torch.Tensor, labels: torch.Tensor, allowed: torch.Tensor, tau: float) -> torch.Tensor:
    """MSL with ATS's scaling: ``tau * mean ce_t(tau)`` over the scored tokens with ``|A_t| > 1``."""
    _, target, valid, _ = masked_log_softmax(logits, labels, allowed, tau)
    counts = valid.sum(dim=1) > 1  # [M]
    return tau * (-target[counts]).sum() / counts.sum().clamp(min=1)


@dataclass
class MSLConfig:
    """MSL (masked softmax loss, SIGIR 2025): cross-entropy over the trie-valid tokens of ``logits / tau``.

    ``tau``: 1 in the BEAR authors' MSL runs (``cmd/run.py``), 4.5 in the MSL README. ``ats``: the
    adaptive temperature of ``train_trie_token_adatau.py`` (see ``bearrec/objectives/msl.py``); ``tau``
    is then its starting value (MSL repo: 1.5), ``ats_eta`` 0.25, ``ats_alpha`` 0.05, clipped to
    [``ats_min``, ``ats_max``] = [1.5, 5], no warm-up. The running temperature lives in this object
    (a resumed run restarts it from ``tau``).
    """

    tau: float = 1.0
    ats: bool = False
    ats_eta: float = 0.25  # eta of C = log(|A_root| * eta)
    ats_alpha: float = 0.05  # smoothing of the running temperature
    ats_warmup: int = 0  # optimizer steps trained at the fixed ``tau`` before ATS starts
    ats_min: float = 1.5
    ats_max: float = 5.0
    needs_search = False
    needs_candidates = True
    negatives = 0

    def __post_init__(self):
        self.current_tau = self.tau

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        extra = extra or {}
        allowed = extra.get("candidates")
        if allowed is None:
            raise ValueError("msl needs the batch's trie candidates")
        if not self.ats:
            loss = msl_loss(logits, labels, allowed, self.tau)
            return loss, torch.zeros_like(loss)
        if extra.get("step", 0) < self.ats_warmup:
            self.current_tau = self.tau
        elif logits.requires_grad:  # training steps move the running temperature, evaluation does not
            estimate = ats_temperature(logits.detach(), labels, allowed, self.ats_eta, (self.ats_min, self.ats_max))
            self.current_tau = (1 - self.ats_alpha) * self.current_tau + self.ats_alpha * estimate
        loss = ats_loss(logits, labels, allowed, self.current_tau)
        return loss, torch.zeros_like(loss)

    def validate(self, section: str) -> None:
        check(is_number(self.tau) and self.tau > 0, section, "tau", "> 0", self.tau)
        check(isinstance(self.ats, bool), section, "ats", "true or false", self.ats)
        check(is_number(self.ats_eta) and self.ats_eta > 0, section, "ats_eta", "> 0", self.ats_eta)
        check(is_number(self.ats_alpha) and 0 < self.ats_alpha <= 1, section, "ats_alpha", "in (0, 1]", self.ats_alpha)
        check(isinstance(self.ats_warmup, int) and self.ats_warmup >= 0, section, "ats_warmup", "an integer >= 0", self.ats_warmup)
        check(is_number(self.ats_min) and self.ats_min > 0, section, "ats_min", "> 0", self.ats_min)
        check(is_number(self.ats_max) and self.ats_max >= self.ats_min, section, "ats_max", ">= ats_min", self.ats_max)
