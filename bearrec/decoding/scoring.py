"""How a decoder scores one step: the log-probability of a trie child given its parent's prefix.

Two modes, shared by beam search, exact catalog scoring and exact ranks:

* ``"full"``: the full-vocabulary log-softmax, restricted to the trie's children afterwards (Hugging
  Face ``generate(prefix_allowed_tokens_fn=...)``; how BIGRec, D3 and SFT decode). The children of a
  node need not sum to probability 1: mass on tokens that lead to no item is lost.
* ``"masked"``: the log-softmax over the node's trie children only (logits of every other token set to
  -inf first), so the children of each node sum to 1 (``generate(..., renormalize_logits=True)``;
  the authors' "customCBS", which MSL and BEAR decode with). A node with one child scores it 0.

Both are log-probabilities (<= 0), so an item's score never exceeds the score of any of its prefixes.
"""

from __future__ import annotations

import torch

SCORINGS = ("full", "masked")


def check_scoring(scoring: str) -> str:
    """``scoring`` itself, or a one-line ``ValueError`` naming the argument."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")
    return scoring


def edge_log_probs(logits: torch.Tensor, row: torch.Tensor, token: torch.Tensor, scoring: str) -> torch.Tensor:
    """``[..., C]`` step scores of C trie children from the logits of their parents ``[..., R, V]``.

    Child c has its parent's logits in row ``row[c]`` and the token ``token[c]``; ``row``/``token`` ``[C]``
    must list *every* child of each row that appears (the masked normaliser runs over them). Leading
    dimensions (users) are kept.
    """
    if scoring == "full":
        return torch.log_softmax(logits.float(), -1)[..., row, token]
    picked = logits[..., row, token].float()  # [..., C]
    return picked - segment_logsumexp(picked, row, logits.shape[-2])[..., row]


def segment_logsumexp(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """``[..., S]`` logsumexp of ``values [..., C]`` over the entries of each segment (``segment [C]`` in
    ``0 .. S-1``); -inf for an empty segment."""
    lead = values.shape[:-1]
    flat = values.reshape(-1, values.shape[-1])  # [b, C]
    index = segment.to(values.device).expand_as(flat)
    top = flat.new_full((flat.shape[0], num_segments), float("-inf")).scatter_reduce(1, index, flat, "amax")  # [b, S]
    safe_top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = flat.new_zeros(top.shape).scatter_add(1, index, (flat - safe_top.gather(1, index)).exp())  # [b, S]
    return (total.log() + safe_top).reshape(*lead, num_segments)
