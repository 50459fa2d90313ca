"""Beam-sim: the paper's "straightforward solution" (section 3.1, objective 3.1), made differentiable.

Objective 3.1 asks every positive prefix ``y_{<=t}`` to rank within the top B candidates of beam
search step t: ``P(y_{<=t} | x) >= P(b^B_t | x)``, where ``b^B_t`` is the candidate ranked exactly B-th
among all candidates of that step. The threshold ``thr_t = log P(b^B_t | x)`` needs the whole search
simulated for each training instance (no gradient: :func:`simulate_thresholds`), which the paper
measures at over 4.45x the runtime of SFT with B = 10 (Figure 5); it is the accuracy reference for the
cheap BEAR surrogate (Table 5). The indicator is relaxed exactly as BEAR's (eq. 3.3-3.4), with the
prefix margin in place of the token margin.

The threshold is the paper's, the B-th of *all* candidates of the step. Under Hugging Face beam search
it is a sufficient bar, not always the exact one: finished (EOS) candidates ranked in the top B leave
the beam, so a non-EOS prefix survives against the B-th *non-EOS* candidate, which can be lower; and an
item that finished can still be pushed out of the results later by B better ones. On the small random
models of the tests about 10% of the items returned with B = 10 sit below some step's threshold.

Pipeline in a training step: ``simulate_thresholds`` (search on the prompts alone, ``[N, max_len]``),
``align_thresholds`` (onto the right-aligned ``labels [N, T]``), then ``beam_sim_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bearrec.decoding.beam_search import constrained_beam_search
from bearrec.items.trie import ItemTrie
from bearrec.objectives.bear import SURROGATES, check_bear_fields
from bearrec.objectives.sft import IGNORE_INDEX, reduce_tokens, scored_log_probs, sft_loss

NEG_INF = float("-inf")


def beam_sim_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    thresholds: torch.Tensor,
    temperature: float = 1.0,
    weight: float = 1.0,
    surrogate: str = "paper",
    reduction: str = "mean",
) -> torch.Tensor:
    """SFT cross-entropy plus ``weight`` times the relaxed objective 3.1, per scored token.

    ``logits [N, T, V]`` and ``labels [N, T]`` (-100 = unscored) as in :func:`sft_loss`;
    ``thresholds [N, T]`` is aligned with ``labels``: ``thresholds[:, t]`` is the B-th candidate score of
    the search step that produces ``labels[:, t]`` (see :func:`align_thresholds`), computed without
    gradient. Per scored token t of a row:

    * ``cum_t = sum_{s <= t} log p(y_s | y_{<s}, x)``: the positive prefix's log-probability, summed
      over the row's scored tokens up to t (full-vocabulary log-softmax, with gradient);
    * ``delta_t = thr_t - cum_t``: the prefix pruning margin (> 0: beam search drops the prefix here);
    * ``reg_t = log sigmoid(delta_t / temperature)`` (``"paper"``) or ``softplus(delta_t / temperature)``
      (``"softplus"``), as in :func:`bear_loss`; ``reg_t = 0`` where ``thr_t = -inf`` (the step had fewer
      than B candidates and cannot prune);
    * loss ``ce_t + weight * reg_t`` with ``ce_t = -log p(y_t | y_{<t}, x)``, reduced like ``bear_loss``.

    Unlike BEAR's token margin, ``delta_t`` depends on every earlier token of the answer, so the
    regulariser of step t also pushes up the earlier tokens' probabilities.
    """
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, not {surrogate!r}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if thresholds.shape != labels.shape:
        raise ValueError(f"thresholds {tuple(thresholds.shape)} must have the shape of labels {tuple(labels.shape)}")
    _, target, mask = scored_log_probs(logits, labels)
    per_position = target.new_zeros(mask.shape)
    per_position = per_position.masked_scatter(mask, target)  # differentiable scatter into [N, T]
    cum = per_position.cumsum(dim=1)[mask]
    thr = thresholds.to(device=target.device, dtype=target.dtype)[mask]
    can_prune = torch.isfinite(thr)
    delta = torch.where(can_prune, thr - cum, torch.zeros_like(cum))
    z = delta / temperature
    reg = F.logsigmoid(z) if surrogate == "paper" else F.softplus(z)
    reg = torch.where(can_prune, reg, torch.zeros_like(reg))
    return reduce_tokens(-target + weight * reg, mask, reduction)


@torch.no_grad()
def simulate_thresholds(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    trie: ItemTrie,
    beam_width: int = 10,
    batch_size: int = 64,
) -> torch.Tensor:
    """``[N, trie.max_length]`` B-th candidate score of every step of constrained beam search.

    Runs :func:`constrained_beam_search` (length_penalty 0, the scores of objective 3.1) on the
    left-padded prompts, with the model in eval mode (no dropout: the search the model would run at
    inference), then puts every module back in the train/eval mode it was in. Column s is the step that
    picks the (s+1)-th token; see :class:`BeamResult` for -inf and early-stopped users. Returned on the
    device of ``prompt_ids``.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        result = constrained_beam_search(model, prompt_ids, prompt_mask, trie, beam_width=beam_width,
                                         batch_size=batch_size, return_thresholds=True)
    finally:
        for module, training in modes:
            module.training = training
    return result.thresholds.to(prompt_ids.device)


def align_thresholds(thresholds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Map search-step thresholds ``[N, max_len]`` onto right-aligned ``labels [N, T]``.

    The trainer's labels hold each answer (title + EOS) in the last ``len_i`` positions of row i, -100
    before it; search step s then produces ``labels[i, T - len_i + s]``. Positions outside the answer,
    and answer tokens past ``max_len`` steps, get -inf (no regularisation). Raises ``ValueError`` if some
    row's scored positions are not a suffix of the row.
    """
    if thresholds.dim() != 2 or labels.dim() != 2 or thresholds.shape[0] != labels.shape[0]:
        raise ValueError(f"thresholds {tuple(thresholds.shape)} and labels {tuple(labels.shape)} do not match")
    T = labels.shape[1]
    max_len = thresholds.shape[1]
    mask = labels != IGNORE_INDEX
    length = mask.sum(dim=1, keepdim=True)
    position = torch.arange(T, device=labels.device)[None, :]
    if not torch.equal(mask, position >= T - length):
        raise ValueError("labels must be right-aligned: each row's answer in its last positions, -100 before")
    step = position - (T - length)  # [n, T], negative before the answer
    inside = mask & (step < max_len)
    thresholds = thresholds.to(labels.device)
    gathered = thresholds.gather(1, step.clamp(0, max_len - 1))
    return torch.where(inside, gathered, torch.full_like(gathered, NEG_INF))


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
    needs_candidates = False
    negatives = 0

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        thresholds = (extra or {}).get("thresholds")
        if thresholds is None:
            raise ValueError("beam-sim needs the simulated thresholds of the batch")
        loss = beam_sim_loss(logits, labels, thresholds, self.temperature, self.weight, self.surrogate)
        return loss, loss - sft_loss(logits, labels).detach()

    def validate(self, section: str) -> None:
        check_bear_fields(self, section)
