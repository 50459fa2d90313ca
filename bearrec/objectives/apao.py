"""APAO (Adaptive Prefix-Aware Optimization, Yu et al. 2026, ``yuyq18/APAO``): prefix-level losses for beam search.

Beam search drops an item as soon as one of its prefixes leaves the beam, so APAO trains the prefixes
themselves. With ``s_t(y) = sum_{i<=t} log p(y_i | y_<i, x)`` the teacher-forced log-probability of the
first t tokens of item y (full-vocabulary softmax), for every prefix length ``t = 1 .. T-1`` of the
positive's T scored tokens (an item's codes; the EOS that ends every item is not a prefix of interest):

* **pointwise** (:func:`apao_pointwise_loss`): ``L_t = mean over examples of -s_t(y+) / t``, divided by a
  temperature;
* **pairwise** (:func:`apao_pairwise_loss`): K negative items per example (uniform over the catalog,
  resampled every epoch). At each t, a negative whose t-prefix repeats the positive's or an earlier
  negative's is masked, as is a negative with no t-prefix (a shorter item); with ``c_t`` rescaling the
  remaining n_t sampled prefixes to the ``P_t - 1`` other distinct t-prefixes of the catalog,
  ``c_t = (P_t - 1) / n_t``,
  ``L_t = mean over examples of -log( e^{s+/tau} / (e^{s+/tau} + c_t * sum_j e^{s-_j/tau}) ) / t``.
  (The authors' code divides by n_t + 1, counting the positive among the unmasked columns; we divide by
  the number of sampled negative prefixes, the rescaling the paper describes. With 100 negatives the two
  differ by about 1 %.)

**Adaptive worst-prefix weighting** (:func:`adaptive_weights`): the prefix terms are combined with the
detached weights ``w_t ∝ L_t * exp(eta * L_t)``, normalised to sum to 1, so the weakest prefix length
gets the most weight (the authors' code applies it always; eta = 0 leaves ``w_t ∝ L_t``). With
``adaptive=False`` the weights are uniform. The training loss is
``CE + beta * sum_t w_t L_t``, CE the token cross-entropy of the positive (``sft_loss``).

Defaults (authors' scripts): beta 0.1, tau 1, eta 0, 100 negatives, rescaling on.

Cost in forward passes. Pointwise: none beyond SFT; the prefix sums reuse the positive's logits.
Pairwise: the negatives' teacher-forced prefix scores need their logits, ``(1 + K) * T`` answer positions
per example instead of T; bearrec feeds them in the same forward as the prompt, each answer a block that
attends to the prompt and to itself only (:func:`grouped_answer_logits`), so the prompt is encoded once,
never copied per negative, and only the tokens whose predictions the losses read are fed (a negative's
first T - 2). With K = 100 and 4 codes + EOS after a ~32-token history that is ~340 tokens per example
against SFT's ~36 (measured: docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bearrec.checks import check, is_number
from bearrec.lm.forward import position_ids_from_mask
from bearrec.objectives.sft import IGNORE_INDEX, sft_loss


def _prefix_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s [..., T-1], valid [..., T-1])``: s[..., t-1] = sum of log p over the first t scored tokens of a row.

    ``logits [..., T, V]`` aligned with ``labels [..., T]`` (-100 = unscored; a row's scored positions, read in
    order, are its item's tokens, wherever the padding sits). ``valid`` holds where the row has more than t
    scored tokens (a prefix of length t that is not the whole item). Full-vocabulary log-softmax in fp32.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} are not aligned")
    mask = labels != IGNORE_INDEX  # [..., T]
    log_p = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    log_p = log_p.masked_fill(~mask, 0.0)  # [..., T]
    cumulative = log_p.gather(-1, _front_order(labels)).cumsum(-1)[..., :-1]  # [..., T-1]
    length = mask.sum(-1, keepdim=True)  # [..., 1]
    t = torch.arange(1, labels.shape[-1], device=labels.device)  # [T-1]
    return cumulative, t < length


def apao_pointwise_loss(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                        reduction: str = "mean") -> torch.Tensor:
    """APAO's pointwise prefix term: ``-s_t(y) / t / temperature`` for every prefix length t = 1..T-1.

    ``logits [N, T, V]`` aligned with ``labels [N, T]`` (-100 = unscored). ``reduction="none"``: ``[N, T-1]``,
    column t-1 the prefix of length t, zeros where a row has no such prefix; ``"mean"``: the mean over every
    (example, prefix) that exists; ``"per_prefix"``: ``[T-1]`` the mean over examples of each length (the
    ``L_t`` the adaptive weights combine; 0 where no row has that prefix).
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    s, valid = _prefix_scores(logits, labels)  # [N, T-1]
    t = torch.arange(1, labels.shape[-1], device=s.device, dtype=s.dtype)
    per = (-s / t / temperature).masked_fill(~valid, 0.0)  # [N, T-1]
    return _reduce(per, valid, reduction)


def apao_pairwise_loss(logits: torch.Tensor, labels: torch.Tensor, prefix_counts: torch.Tensor | None = None,
                       temperature: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """APAO's pairwise prefix term over K sampled negatives.

    ``logits [N, 1 + K, T, V]`` and ``labels [N, 1 + K, T]``: per example the positive item (index 0) and K
    negative items, each teacher-forced after the example's prompt (-100 = unscored). ``prefix_counts [T-1]``:
    ``P_t``, the number of distinct t-prefixes in the catalog (:func:`distinct_prefixes`); None turns the
    ``c_t`` rescaling off (``c_t = 1``). Reductions as :func:`apao_pointwise_loss`, over the positive's prefixes.
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if logits.dim() != 4:
        raise ValueError(f"logits must be [N, 1 + K, T, V], got {tuple(logits.shape)}")
    s, valid = _prefix_scores(logits, labels)  # [N, G, T-1]
    n, group, width = s.shape
    keep = valid.clone()  # [N, G, T-1]: a negative counts at t if it has a t-prefix not seen before in its row
    tokens = labels.gather(-1, _front_order(labels))  # [N, G, T], each row's item tokens first
    for t in range(1, width + 1):
        prefix = tokens[..., :t]  # [N, G, t]
        same = (prefix[:, :, None] == prefix[:, None, :]).all(-1)  # [N, G, G]: j's prefix equals i's
        earlier = torch.ones(group, group, dtype=torch.bool, device=s.device).tril(-1)  # [G, G] i > j
        repeated = (same & earlier & valid[:, None, :, t - 1]).any(-1)  # [N, G]: equals a valid earlier one
        keep[..., t - 1] &= ~repeated
    positive, negatives = s[:, 0] / temperature, s[:, 1:] / temperature  # [N, T-1], [N, K, T-1]
    neg_keep = keep[:, 1:]  # [N, K, T-1]
    count = neg_keep.sum(1)  # [N, T-1]
    if prefix_counts is None:
        log_c = torch.zeros_like(positive)
    else:
        other = prefix_counts.to(s.device, s.dtype)[:width] - 1  # [T-1]
        log_c = torch.log(other.clamp(min=1)) - torch.log(count.clamp(min=1).to(s.dtype))  # [N, T-1]
    scaled = (negatives + log_c[:, None]).masked_fill(~neg_keep, float("-inf"))  # [N, K, T-1]
    denominator = torch.logsumexp(torch.cat([positive[:, None], scaled], dim=1), dim=1)  # [N, T-1]
    t = torch.arange(1, width + 1, device=s.device, dtype=s.dtype)
    per = ((denominator - positive) / t).masked_fill(~valid[:, 0], 0.0)  # [N, T-1]
    return _reduce(per, valid[:, 0], reduction)


def adaptive_weights(prefix_losses: torch.Tensor, eta: float = 0.0) -> torch.Tensor:
    """Worst-prefix weights ``w_t ∝ L_t * exp(eta * L_t)`` of ``prefix_losses [T-1]``, detached, summing to 1
    (uniform when every L_t is 0)."""
    base = torch.nan_to_num(prefix_losses.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    weights = base * torch.exp(eta * base)
    total = weights.sum()
    return weights / total if float(total) > 0 else torch.full_like(base, 1.0 / base.numel())


def distinct_prefixes(trie) -> torch.Tensor:
    """``[max_length - 1]``: P_t, the number of distinct t-token prefixes of catalog items (EOS excluded), t >= 1."""
    depth = trie.node_depth[(trie.node_depth > 0) & (trie.node_token != trie.eos_token_id)]
    return torch.bincount(depth, minlength=trie.max_length)[1:].clone()


def grouped_answer_logits(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          group_labels: torch.Tensor) -> torch.Tensor:
    """``[N, G, A, V]`` logits predicting the tokens of G answers per prompt (answer 0 the positive), in one forward.

    ``prompt_ids``/``prompt_mask [N, P]`` left-padded prompts; ``group_labels [N, G, A]`` answers, left-aligned,
    -100 padded. The input is the prompt followed by one block per answer; a block attends to the prompt and
    causally to itself (a 4D mask) and its positions continue the prompt's, so it sees exactly what the model
    sees with that answer alone after the prompt (tested against separate forwards). Only what the losses
    read is fed: the positive's first A - 1 tokens (its A logits give the cross-entropy), each negative's first
    A - 2 (the prefix scores use tokens 1 .. A - 1); a negative's last logits row is therefore zeros.
    """
    n, width = prompt_ids.shape
    _, group, answer = group_labels.shape
    dev = prompt_ids.device
    dtype = next(model.parameters()).dtype
    feed = torch.full((group,), max(answer - 2, 0), device=dev)  # [G] tokens fed per block
    feed[0] = answer - 1
    block_of = torch.repeat_interleave(torch.arange(group, device=dev), feed)  # [F]
    pos_in = torch.arange(block_of.numel(), device=dev) - (feed.cumsum(0) - feed)[block_of]  # [F] 0-based in block
    fed = group_labels.clamp(min=0)[:, block_of, pos_in]  # [N, F]
    tokens = torch.cat([prompt_ids, fed], dim=1)  # [N, P + F]
    size = tokens.shape[1]
    allowed = torch.zeros(n, size, size, dtype=torch.bool, device=dev)
    allowed[:, :width, :width] = torch.ones(width, width, dtype=torch.bool, device=dev).tril() & prompt_mask.bool()[:, None, :]
    allowed[:, width:, :width] = prompt_mask.bool()[:, None, :]
    allowed[:, width:, width:] = (block_of[:, None] == block_of[None, :]) & (pos_in[:, None] >= pos_in[None, :])
    allowed |= torch.eye(size, dtype=torch.bool, device=dev)  # left padding attends to itself, so no row is empty
    mask4d = torch.zeros(n, 1, size, size, dtype=dtype, device=dev).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    start = prompt_mask.long().sum(-1, keepdim=True)  # [N, 1]
    positions = torch.cat([position_ids_from_mask(prompt_mask), start + pos_in[None, :]], dim=1)  # [N, P + F]
    kept = model(input_ids=tokens, attention_mask=mask4d, position_ids=positions,
                 logits_to_keep=block_of.numel() + 1).logits  # [N, 1 + F, V]; 0 = the prompt's last position
    out = kept.new_zeros(n, group, answer, kept.shape[-1])
    out[:, :, 0] = kept[:, :1]  # the prompt's last position predicts every block's first token
    out[:, block_of, pos_in + 1] = kept[:, 1:]  # fed token a of a block predicts its token a + 1
    return out


def _front_order(labels: torch.Tensor) -> torch.Tensor:
    """``[..., T]`` indices that move each row's scored tokens to the front, in order (a stable sort on
    "unscored" keeps their order), the -100 positions after them."""
    return torch.sort((labels == IGNORE_INDEX).to(torch.int8), dim=-1, stable=True).indices


def _reduce(per: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per
    if reduction == "mean":
        return per.sum() / valid.sum().clamp(min=1)
    if reduction == "per_prefix":
        return per.sum(0) / valid.sum(0).clamp(min=1)
    raise ValueError(f"reduction must be 'mean', 'none' or 'per_prefix', not {reduction!r}")


@dataclass
class APAOConfig:
    """APAO (``bearrec/objectives/apao.py``): ``CE + beta * sum_t w_t L_t`` over the prefix lengths t of the positive.

    ``apao-pointwise``: ``L_t`` = mean of ``-s_t(y+) / t / temperature``; ``apao-pairwise``: the softmax of the
    positive's t-prefix against ``num_negatives`` uniformly sampled items' (resampled every batch, so every epoch),
    duplicates masked, rescaled by ``c_t`` (``rescale``). ``adaptive``: the detached worst-prefix weights
    ``w_t ∝ L_t exp(eta L_t)`` (the authors' code; uniform weights otherwise). Defaults: the authors' scripts
    (``train_apao_pointwise.sh`` / ``train_apao_pairwise.sh``): beta 0.1, prefix temperature 1, eta 0,
    100 negatives, rescaling on.
    """

    beta: float = 0.1  # weight of the prefix term (the paper searches 0.1 - 0.4)
    temperature: float = 1.0  # prefix_tau
    adaptive: bool = True  # worst-prefix weights (False: uniform over prefix lengths)
    eta: float = 0.0  # eta_adapt (the paper searches 0 - 5e-4)
    num_negatives: int = 100  # apao-pairwise: K uniform negatives per example (neg_k)
    rescale: bool = True  # apao-pairwise: c_t = (P_t - 1) / n_t (is_neg_scale)
    pairwise: bool = False  # set for the apao-pairwise objective (see ``for_objective``)
    needs_search = False
    needs_candidates = False
    negatives = 0  # no reference model (S-DPO's rows); the pairwise negatives travel as ``group_labels``

    def for_objective(self, name: str) -> "APAOConfig":
        """This section as the config of ``apao-pointwise`` or ``apao-pairwise``."""
        config = APAOConfig(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        config.pairwise = name == "apao-pairwise"
        return config

    @property
    def prefix_negatives(self) -> int:
        """Negatives whose prefix scores the batch must carry (``group_labels``), 0 for pointwise."""
        return self.num_negatives if self.pairwise else 0

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pointwise: ``logits [N, T, V]``, ``labels [N, T]``. Pairwise: rows grouped ``1 + K`` per example, the
        positive first (``[N(1+K), A, V]``), and ``extra["prefix_counts"]`` for the rescaling."""
        if self.pairwise:
            group = 1 + self.num_negatives
            grouped_logits = logits.view(-1, group, *logits.shape[1:])  # [N, 1+K, A, V]
            grouped_labels = labels.view(-1, group, labels.shape[-1])  # [N, 1+K, A]
            counts = (extra or {}).get("prefix_counts") if self.rescale else None
            if self.rescale and counts is None:
                raise ValueError("apao-pairwise with rescale needs the catalog's prefix counts")
            per_prefix = apao_pairwise_loss(grouped_logits, grouped_labels, counts, self.temperature, "per_prefix")
            ce = sft_loss(grouped_logits[:, 0], grouped_labels[:, 0])
        else:
            per_prefix = apao_pointwise_loss(logits, labels, self.temperature, "per_prefix")
            ce = sft_loss(logits, labels)
        weights = (adaptive_weights(per_prefix, self.eta) if self.adaptive
                   else torch.full_like(per_prefix, 1.0 / max(per_prefix.numel(), 1)))
        prefix = self.beta * (weights * per_prefix).sum()
        return ce + prefix, prefix.detach()

    def validate(self, section: str) -> None:
        check(is_number(self.beta) and self.beta >= 0, section, "beta", ">= 0", self.beta)
        check(is_number(self.temperature) and self.temperature > 0, section, "temperature", "> 0", self.temperature)
        check(isinstance(self.adaptive, bool), section, "adaptive", "true or false", self.adaptive)
        check(is_number(self.eta) and self.eta >= 0, section, "eta", ">= 0", self.eta)
        check(isinstance(self.num_negatives, int) and not isinstance(self.num_negatives, bool)
               and self.num_negatives >= 1, section, "num_negatives", "an integer >= 1", self.num_negatives)
        check(isinstance(self.rescale, bool), section, "rescale", "true or false", self.rescale)
