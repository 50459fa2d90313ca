"""Exact scores of every catalog item: log P(title + EOS | prompt), the ground truth that PR@K needs."""

from __future__ import annotations

import copy

import torch

from bearrec.catalog import ItemTrie
from bearrec.decoding.beam_search import position_ids_from_mask

_LOGIT_BUDGET = 32 * 2**20  # floats of logits per forward (128 MB in fp32): bounds memory on big catalogs


@torch.no_grad()
def score_catalog(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    batch_size: int = 16,
    progress=None,
) -> torch.Tensor:
    """``[N, num_items]`` summed full-vocabulary log-probabilities of each item's tokens, EOS included.

    Each prompt is encoded once; its KV cache is then shared by every item, teacher-forced in chunks
    sized to keep the logits of one forward under a fixed budget.
    """
    device = next(model.parameters()).device
    sequences = trie.sequences.to(device)
    out_rows = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        mask = attention_mask[start : start + batch_size].to(device)
        out_rows.append(_score_batch(model, ids, mask, sequences, trie.eos_token_id).cpu())
        if progress is not None:
            progress(ids.shape[0])
    return torch.cat(out_rows)


def _score_batch(model, input_ids, attention_mask, sequences, eos_token_id):
    n = input_ids.shape[0]
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=True,
        logits_to_keep=1,
    )
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [n, V]
    scores = first[:, sequences[:, 0]].clone()  # [n, items]: first token of every item
    num_items, width = sequences.shape
    if width == 1:
        return scores
    prompt_len = attention_mask.long().sum(-1)
    vocab = first.shape[-1]
    chunk = max(1, _LOGIT_BUDGET // (n * (width - 1) * vocab))
    for lo in range(0, num_items, chunk):
        seq = sequences[lo : lo + chunk]
        c = seq.shape[0]
        length = int((seq >= 0).sum(1).max())
        if length == 1:
            continue
        body = seq[:, : length - 1]  # teacher-forced inputs; padding past an item's end is never scored
        inputs = body.masked_fill(body < 0, eos_token_id).repeat(n, 1)
        targets = seq[:, 1:length].repeat(n, 1)  # [n*c, length-1], -1 = past the end
        cache = copy.deepcopy(out.past_key_values)
        cache.reorder_cache(torch.arange(n, device=input_ids.device).repeat_interleave(c))
        attention = torch.cat(
            [attention_mask.repeat_interleave(c, dim=0), attention_mask.new_ones(n * c, length - 1)], dim=1
        )
        positions = prompt_len.repeat_interleave(c)[:, None] + torch.arange(length - 1, device=input_ids.device)
        logits = model(
            input_ids=inputs, attention_mask=attention, position_ids=positions, past_key_values=cache, use_cache=True
        ).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        picked = log_probs.gather(2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        picked = picked.masked_fill(targets < 0, 0.0).sum(1).view(n, c)
        scores[:, lo : lo + c] += picked
    return scores
