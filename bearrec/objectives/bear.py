"""BEAR: beam-search-aware regularisation (paper section 3.2, equations 3.2-3.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bearrec.objectives.sft import reduce_tokens, scored_log_probs

SURROGATES = ("paper", "softplus")


def pruning_margin(
    logits: torch.Tensor, labels: torch.Tensor, beam_width: int = 10, allowed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per scored token: ``(ce, delta, can_prune, mask)``.

    ``delta = log beta_t - log p(y_t)`` is the pruning margin: ``beta_t`` is the ``beam_width``-th
    largest full-vocabulary probability among the step's candidates (all tokens, or those where
    ``allowed [N, T, V]`` is True). ``delta > 0`` means the positive token falls outside the top B and
    beam search drops it at this step (the necessary condition 3.2 is violated). ``can_prune`` is False
    where fewer than B candidates exist: such a step keeps every candidate.
    """
    if beam_width < 1:
        raise ValueError("beam_width must be at least 1")
    log_probs, target, mask = scored_log_probs(logits, labels)
    if allowed is not None:
        if allowed.shape != logits.shape:
            raise ValueError(f"allowed {tuple(allowed.shape)} must have the shape of logits {tuple(logits.shape)}")
        allowed = allowed[mask]
        candidates = log_probs.masked_fill(~allowed, float("-inf"))
        can_prune = allowed.sum(dim=-1) >= beam_width
    else:
        candidates = log_probs
        can_prune = torch.full_like(target, log_probs.shape[-1] >= beam_width, dtype=torch.bool)
    k = min(beam_width, log_probs.shape[-1])
    log_beta = candidates.topk(k, dim=-1).values[:, -1]
    delta = torch.where(can_prune, log_beta - target, torch.zeros_like(target))
    return -target, delta, can_prune, mask


def bear_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    beam_width: int = 10,
    temperature: float = 1.0,
    weight: float = 1.0,
    surrogate: str = "paper",
    allowed: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """SFT cross-entropy plus ``weight`` times the BEAR regulariser, per scored token.

    ``reg_t = log sigmoid(delta_t / temperature)`` for ``surrogate="paper"`` (equation 3.4 as printed)
    and ``reg_t = -log sigmoid(-delta_t / temperature) = softplus(delta_t / temperature)`` for
    ``"softplus"``; ``reg_t = 0`` at steps with fewer than ``beam_width`` candidates. ``delta_t`` is the
    pruning margin of :func:`pruning_margin`. The loss per token is ``ce_t + weight * reg_t``.

    How the two surrogates spend their gradient (d reg / d delta):

    * ``"paper"``: ``(1 - sigmoid(delta/T)) / T``. Largest for *safe* tokens (delta << 0, gradient
      1/T) and vanishing for badly *violated* tokens (delta >> 0): it widens the margin of tokens that
      already survive, near and below the threshold, and gives up on hopeless ones. Its value is <= 0.
    * ``"softplus"``: ``sigmoid(delta/T) / T``. Largest for *violated* tokens (gradient 1/T) and
      vanishing for safe ones: a hinge-like penalty that only pushes tokens that beam search would
      prune. Its value is >= 0.

    Paper defaults: B = 10, weight (lambda) in [0.1, 5], temperature (xi) in [0.25, 3].
    """
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, not {surrogate!r}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    ce, delta, can_prune, mask = pruning_margin(logits, labels, beam_width, allowed)
    z = delta / temperature
    reg = F.logsigmoid(z) if surrogate == "paper" else F.softplus(z)
    reg = torch.where(can_prune, reg, torch.zeros_like(reg))
    return reduce_tokens(ce + weight * reg, mask, reduction)
