"""Decoding attention that keeps one copy of each prompt's keys and values for all of its beams.

With a standard KV cache every beam row carries its own copy of the prompt's keys and values, and beam
search copies all of them at every step (``reorder_cache``, then ``torch.cat`` when the cache grows).
For a small model and long prompts that copying, not the model, is the decoding time. Here the
prompt's cache stays as the prefill left it (one row per user) and only the generated tokens live in
a per-beam cache; a registered attention function attends to both and normalises over them jointly,
which is the same softmax as over their concatenation.

Used for single-token decoding steps of architectures whose attention goes through transformers'
attention interface (checked in the tests against Hugging Face ``generate``); other models keep the
standard cache.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface

NAME = "bearrec_shared_prompt"
SUPPORTED_MODEL_TYPES = {"llama", "qwen2", "qwen3", "gpt2"}


@dataclass
class PromptCache:
    keys: list[torch.Tensor]  # per layer [n, kv_heads, P, d]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [n, P] True where the prompt has a real token

    @classmethod
    def from_cache(cls, cache, attention_mask: torch.Tensor) -> "PromptCache":
        return cls([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers],
                   attention_mask.bool())


_active: PromptCache | None = None


def supports(model) -> bool:
    return getattr(model.config, "model_type", None) in SUPPORTED_MODEL_TYPES


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """``query [R, Hq, 1, d]`` of R = n * B beam rows; ``key``/``value`` the rows' generated tokens."""
    prompt = _active
    pk, pv = prompt.keys[module.layer_idx], prompt.values[module.layer_idx]
    rows, q_heads, length, dim = query.shape
    n, kv_heads = pk.shape[0], pk.shape[1]
    beams, group = rows // n, q_heads // kv_heads
    if length != 1:
        raise ValueError("shared-prompt attention decodes one token per step")
    scale = scaling if scaling is not None else dim**-0.5
    q = query.reshape(n, beams, kv_heads, group, dim).float() * scale
    on_prompt = torch.einsum("nbkgd,nkpd->nbkgp", q, pk.float())
    on_prompt = on_prompt.masked_fill(~prompt.mask[:, None, None, None, :], float("-inf"))
    gk = key.reshape(n, beams, kv_heads, -1, dim).float()
    gv = value.reshape(n, beams, kv_heads, -1, dim).float()
    on_generated = torch.einsum("nbkgd,nbktd->nbkgt", q, gk)
    weights = torch.cat([on_prompt, on_generated], dim=-1).softmax(dim=-1)
    width = pk.shape[2]
    out = torch.einsum("nbkgp,nkpd->nbkgd", weights[..., :width], pv.float())
    out = out + torch.einsum("nbkgt,nbktd->nbkgd", weights[..., width:], gv)
    return out.reshape(rows, q_heads, 1, dim).transpose(1, 2).to(query.dtype), None


AttentionInterface.register(NAME, _attention)


@contextmanager
def shared_prompt(model, prompt: PromptCache):
    """Within the block, ``model`` attends with :func:`_attention` to ``prompt`` plus its (generated) cache."""
    global _active
    config = model.config
    previous = config._attn_implementation
    _active, config._attn_implementation = prompt, NAME
    try:
        yield
    finally:
        _active, config._attn_implementation = None, previous
