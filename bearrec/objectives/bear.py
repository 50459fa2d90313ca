"""BEAR: beam-search-aware regularisation (paper section 3.2, equations 3.2-3.5), in two formulations.

* ``"official"`` (default): the loss of the authors' released ``train_bear.py``
  (``Tiny-Snow/BEAR-WWW-2026``): the masked softmax cross-entropy of MSL reweighted by detached
  per-token weights that grow with the token's margin inside the top B (see :func:`bear_loss`).
* ``"paper"``: equation 3.4 as printed, on the full-vocabulary softmax, with gradient through the
  threshold ``log beta_t`` (this library's behaviour before the authors' code was public).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bearrec.checks import check, is_number
from bearrec.objectives.msl import masked_log_softmax, msl_loss
from bearrec.objectives.sft import reduce_tokens, scored_log_probs, sft_loss

SURROGATES = ("paper", "softplus")
FORMULATIONS = ("official", "paper")


def pruning_margin(
    logits: torch.Tensor, labels: torch.Tensor, beam_width: int = 10, allowed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per scored token: ``(ce, delta, can_prune, mask)``.

    ``delta = log beta_t - log p(y_t)`` is the pruning margin: ``beta_t`` is the ``beam_width``-th
    largest full-vocabulary probability among the step's candidates (all tokens, or those where
    ``allowed`` holds: a dense bool ``[N, T, V]`` or trie candidate ids ``[N, T, C]``, -1 padded, as
    from :meth:`ItemTrie.label_candidates`). ``delta > 0`` means the positive token falls outside the top B and
    beam search drops it at this step (the necessary condition 3.2 is violated). ``can_prune`` is False
    where fewer than B candidates exist: such a step keeps every candidate.
    """
    if beam_width < 1:
        raise ValueError("beam_width must be at least 1")
    log_probs, target, mask = scored_log_probs(logits, labels)
    if allowed is not None and allowed.dtype != torch.bool:  # sparse candidate ids [N, T, C]
        if allowed.dim() != 3 or allowed.shape[:2] != labels.shape:
            raise ValueError(f"allowed ids {tuple(allowed.shape)} must be [N, T, C] for labels {tuple(labels.shape)}")
        ids = allowed.to(log_probs.device)[mask]  # [M, C]
        candidates = log_probs.gather(1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf"))  # [M, C]
        can_prune = (ids >= 0).sum(dim=-1) >= beam_width
    elif allowed is not None:
        if allowed.shape != logits.shape:
            raise ValueError(f"allowed {tuple(allowed.shape)} must have the shape of logits {tuple(logits.shape)}")
        allowed = allowed[mask]
        candidates = log_probs.masked_fill(~allowed, float("-inf"))
        can_prune = allowed.sum(dim=-1) >= beam_width
    else:
        candidates = log_probs
        can_prune = torch.full_like(target, log_probs.shape[-1] >= beam_width, dtype=torch.bool)
    k = min(beam_width, candidates.shape[-1])
    log_beta = candidates.topk(k, dim=-1).values[:, -1]
    delta = torch.where(can_prune, log_beta - target, torch.zeros_like(target))
    return -target, delta, can_prune, mask


def official_weights(
    log_q: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, beam_width: int, temperature: float, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached ``(w [M], log_beta [M])`` of the official formulation, before normalisation.

    ``log_beta_t`` = the ``beam_width``-th largest ``log q_t`` over ``A_t`` (the smallest where
    ``|A_t| < beam_width``); ``w_t = 1 + weight * sigmoid((log q_t(y_t) - log_beta_t) / temperature)``,
    and ``w_t = 0`` where ``|A_t| = 1`` (such a token has ``ce_t = 0`` and takes no share).
    """
    size = valid.sum(dim=1)  # [M]
    k = min(beam_width, log_q.shape[1])
    kth = log_q.topk(k, dim=1).values[:, -1]  # [M]
    smallest = log_q.masked_fill(~valid, float("inf")).min(dim=1).values  # [M]
    log_beta = torch.where(size >= beam_width, kth, smallest).detach()
    w = 1 + weight * torch.sigmoid((target.detach() - log_beta) / temperature)
    return torch.where(size > 1, w, torch.zeros_like(w)), log_beta


def bear_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    beam_width: int = 10,
    temperature: float = 2.75,
    weight: float = 0.25,
    formulation: str = "official",
    allowed: torch.Tensor | None = None,
    tau: float = 1.0,
    surrogate: str = "paper",
    reduction: str = "mean",
) -> torch.Tensor:
    """The BEAR loss of ``logits [N, T, V]`` for ``labels [N, T]`` (-100 = unscored).

    ``formulation="official"`` (the authors' released code; ``allowed`` is required, dense
    ``[N, T, V]`` bool or sparse ``[N, T, C]`` trie ids, -1 padded). Per scored token t, over the
    trie-valid set ``A_t``:

    * ``q_t = softmax(z_t / tau)`` over ``A_t`` only; ``ce_t = -log q_t(y_t)`` (0 where ``|A_t| = 1``);
    * ``beta_t`` = the ``beam_width``-th largest ``q_t`` over ``A_t`` (the smallest where
      ``|A_t| < beam_width``), **detached**;
    * ``w_t = 1 + weight * sigmoid((log q_t(y_t) - log beta_t) / temperature)``, **detached**, and
      normalised over the batch's tokens with ``|A_t| > 1``: ``w~_t = w_t / W``, ``W = sum w_t``;
    * ``"mean"``: ``sum_t w~_t ce_t``; ``"none"``: ``[N, T]`` of ``w~_t ce_t`` (it sums to the mean);
      ``"sum"``: ``sum_t w_t ce_t`` (unnormalised).

    Why this is BEAR. Write ``xi = temperature``, ``lambda = weight``, ``m_t = log q_t(y_t) - log beta_t``
    and eq. 3.4 on the masked softmax ``reg_t = log sigmoid(-m_t / xi)`` (``delta_t = -m_t``). With
    ``beta_t`` detached, ``d reg_t = -(1/xi) sigmoid(m_t / xi) d log q_t(y_t) = (1/xi) sigmoid(m_t/xi) d ce_t``,
    hence ``d (ce_t + lambda xi reg_t) = (1 + lambda sigmoid(m_t / xi)) d ce_t = w_t d ce_t``, and::

        grad sum_t w~_t ce_t  =  (1 / W) grad sum_t [ce_t + lambda * xi * reg_t]

    i.e. the gradient of SFT (on the masked softmax) + ``lambda * xi`` times eq. 3.4, up to the
    constant ``1 / W`` of the weight normalisation (tested with autograd on both sides). Unlike
    ``"paper"``, no gradient flows through ``beta_t``, and the push saturates at ``1 + lambda`` for safe
    tokens instead of growing the margin without bound. Author defaults (Toy): ``tau = 1``,
    ``xi = 2.75``, ``lambda = 0.25``, B = 10; the paper searches ``lambda`` in [0.1, 5], ``xi`` in [0.25, 3].

    ``formulation="paper"``: SFT cross-entropy plus ``weight`` times the regulariser, per scored token.
    ``reg_t = log sigmoid(delta_t / temperature)`` for ``surrogate="paper"`` (equation 3.4 as printed)
    and ``reg_t = -log sigmoid(-delta_t / temperature) = softplus(delta_t / temperature)`` for
    ``"softplus"``; ``reg_t = 0`` at steps with fewer than ``beam_width`` candidates. ``delta_t`` is the
    pruning margin of :func:`pruning_margin` (full-vocabulary probabilities; the candidates are the
    whole vocabulary, or ``allowed`` when given). The loss per token is ``ce_t + weight * reg_t``;
    ``tau`` must stay 1.

    How the two surrogates spend their gradient (d reg / d delta):

    * ``"paper"``: ``(1 - sigmoid(delta/T)) / T``. Largest for *safe* tokens (delta << 0, gradient
      1/T) and vanishing for badly *violated* tokens (delta >> 0): it widens the margin of tokens that
      already survive, near and below the threshold, and gives up on hopeless ones. Its value is <= 0.
    * ``"softplus"``: ``sigmoid(delta/T) / T``. Largest for *violated* tokens (gradient 1/T) and
      vanishing for safe ones: a hinge-like penalty that only pushes tokens that beam search would
      prune. Its value is >= 0.
    """
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, not {formulation!r}")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, not {surrogate!r}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if formulation == "paper":
        return _paper_loss(logits, labels, beam_width, temperature, weight, allowed, tau, surrogate, reduction)
    return _official_loss(logits, labels, beam_width, temperature, weight, allowed, tau, surrogate, reduction)


def _paper_loss(logits, labels, beam_width, temperature, weight, allowed, tau, surrogate, reduction) -> torch.Tensor:
    """``bear_loss(formulation="paper")``: ``ce_t + weight * reg_t`` per scored token, reduced."""
    if tau != 1.0:
        raise ValueError(f"tau applies to formulation 'official' only: got tau={tau} with 'paper'")
    ce, delta, can_prune, mask = pruning_margin(logits, labels, beam_width, allowed)  # [M] each, mask [N, T]
    z = delta / temperature
    reg = F.logsigmoid(z) if surrogate == "paper" else F.softplus(z)
    reg = torch.where(can_prune, reg, torch.zeros_like(reg))
    return reduce_tokens(ce + weight * reg, mask, reduction)


def _official_loss(logits, labels, beam_width, temperature, weight, allowed, tau, surrogate, reduction) -> torch.Tensor:
    """``bear_loss(formulation="official")``: the masked cross-entropy reweighted by the detached, normalised
    :func:`official_weights`."""
    if allowed is None:
        raise ValueError("formulation 'official' needs allowed (the trie-valid tokens of each position)")
    if surrogate != "paper":
        raise ValueError("surrogate applies to formulation 'paper' only")
    if beam_width < 1:
        raise ValueError("beam_width must be at least 1")
    log_q, target, valid, mask = masked_log_softmax(logits, labels, allowed, tau)  # [M, C], [M], [M, C], [N, T]
    w, _ = official_weights(log_q, target, valid, beam_width, temperature, weight)  # [M]
    if reduction == "sum":
        return (w * -target).sum()
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    per_token = w / w.sum().clamp(min=1) * -target  # [M]; W >= 1 whenever a token counts
    return per_token.sum() if reduction == "mean" else reduce_tokens(per_token, mask, "none")


def bear_regulariser(
    logits: torch.Tensor,
    labels: torch.Tensor,
    beam_width: int = 10,
    temperature: float = 2.75,
    formulation: str = "official",
    allowed: torch.Tensor | None = None,
    tau: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3.4 alone, per scored token: ``(reg [M], mask [N, T])``, ``reg_t = log sigmoid(delta_t / temperature)``.

    ``"official"``: ``delta_t = log beta_t - log q_t(y_t)`` on the masked softmax with ``beta_t``
    detached (0 where ``|A_t| = 1``); ``"paper"``: the full-vocabulary margin of :func:`pruning_margin`
    (candidates: the vocabulary or ``allowed``), gradient through ``beta_t``. Used by ``sdpo-bear``.
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if formulation == "paper":
        _, delta, can_prune, mask = pruning_margin(logits, labels, beam_width, allowed)
        reg = F.logsigmoid(delta / temperature)
        return torch.where(can_prune, reg, torch.zeros_like(reg)), mask
    if formulation != "official":
        raise ValueError(f"formulation must be one of {FORMULATIONS}, not {formulation!r}")
    if allowed is None:
        raise ValueError("formulation 'official' needs allowed (the trie-valid tokens of each position)")
    log_q, target, valid, mask = masked_log_softmax(logits, labels, allowed, tau)
    _, log_beta = official_weights(log_q, target, valid, beam_width, temperature, 0.0)
    reg = F.logsigmoid((log_beta - target) / temperature)
    return torch.where(valid.sum(dim=1) > 1, reg, torch.zeros_like(reg)), mask


CANDIDATES = ("vocab", "trie")


def check_bear_fields(cfg, section: str) -> None:
    """The fields BEAR-like sections share: beam_width, weight, temperature, and the optional ones."""
    check(isinstance(cfg.beam_width, int) and not isinstance(cfg.beam_width, bool) and cfg.beam_width >= 1,
           section, "beam_width", "an integer >= 1", cfg.beam_width)
    check(is_number(cfg.weight) and cfg.weight >= 0, section, "weight", ">= 0", cfg.weight)
    check(is_number(cfg.temperature) and cfg.temperature > 0, section, "temperature", "> 0", cfg.temperature)
    if hasattr(cfg, "surrogate"):
        check(cfg.surrogate in SURROGATES, section, "surrogate", " or ".join(SURROGATES), cfg.surrogate)
    if hasattr(cfg, "formulation"):
        check(cfg.formulation in FORMULATIONS, section, "formulation", " or ".join(FORMULATIONS), cfg.formulation)
        check(is_number(cfg.tau) and cfg.tau > 0, section, "tau", "> 0", cfg.tau)
        check(cfg.formulation == "official" or cfg.tau == 1, section, "tau", "1 with formulation paper", cfg.tau)
        check(cfg.candidates in CANDIDATES, section, "candidates", " or ".join(CANDIDATES), cfg.candidates)


@dataclass
class BEARConfig:
    """BEAR; see ``bear_loss``. Defaults are the authors' released script (Toy): tau 1, xi 2.75, lambda 0.25, B 10.

    ``official``: masked-softmax cross-entropy over the trie-valid tokens, reweighted by detached
    ``1 + lambda * sigmoid((log q(y) - log beta_B) / xi)`` (= SFT + lambda*xi*eq. 3.4 with beta detached,
    in gradient). ``paper``: eq. 3.4 as printed, full-vocabulary softmax, gradient through beta; its
    top-B candidates are the whole vocabulary or the trie-valid tokens (``candidates``).
    """

    beam_width: int = 10  # B: match the decoding beam width (paper: 10)
    weight: float = 0.25  # lambda (authors: 0.25; paper searches 0.1 - 5)
    temperature: float = 2.75  # xi, sigmoid temperature (authors: 2.75; paper searches 0.25 - 3)
    formulation: str = "official"  # official (released code) | paper (eq. 3.4 as printed)
    candidates: str = "vocab"  # paper formulation: top-B among the vocabulary | the trie-valid tokens
    tau: float = 1.0  # official formulation: softmax temperature of the masked softmax (authors: 1)
    surrogate: str = "paper"  # paper formulation: "paper" = eq. 3.4; "softplus" = only violated tokens pay
    needs_search = False

    @property
    def needs_candidates(self) -> bool:
        return self.formulation == "official" or self.candidates == "trie"

    negatives = 0

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        allowed = (extra or {}).get("candidates") if self.needs_candidates else None
        if self.needs_candidates and allowed is None:
            raise ValueError(f"bear ({self.formulation}) needs the batch's trie candidates")
        loss = bear_loss(logits, labels, self.beam_width, self.temperature, self.weight, self.formulation,
                         allowed=allowed, tau=self.tau, surrogate=self.surrogate)
        if self.formulation == "official":  # the part the weights add over plain MSL
            return loss, loss.detach() - msl_loss(logits.detach(), labels, allowed, self.tau)
        return loss, loss.detach() - sft_loss(logits.detach(), labels)

    def validate(self, section: str) -> None:
        check_bear_fields(self, section)
