"""Exact scores of every catalog item: log P(title + EOS | prompt), the ground truth that PR@K needs.

Items share title prefixes, so the catalog is scored as its trie: every internal trie node is fed to
the model once per prompt, attending to the prompt's KV cache and to its own ancestors only (a
custom 4D "tree attention" mask). A node's logits give the log-probabilities of all its children at
once, and an item's score is the sum of the edge log-probabilities along its path. The prompt is
encoded once and never copied: the cache is cropped back to the prompt after each chunk of nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bearrec.catalog import ItemTrie
from bearrec.decoding.beam_search import position_ids_from_mask

_LOGIT_BUDGET = 32 * 2**20  # floats of logits per forward (128 MB in fp32): bounds memory on big catalogs


@dataclass
class _Chunk:
    nodes: torch.Tensor  # [C] trie nodes fed to the model (the window plus its outside ancestors), preorder
    depth: torch.Tensor  # [C]
    ancestors: torch.Tensor  # [C, C] bool: row j may attend to column k (k is j or an ancestor of j)
    window: torch.Tensor  # [W] positions (in ``nodes``) whose children this chunk scores


def _chunks(trie: ItemTrie, size: int) -> list[_Chunk]:
    """Cut the internal non-root nodes, in preorder, into windows of ``size``.

    In preorder an ancestor outside a window is an ancestor of the window's first node, so each chunk
    is the window plus that one path: closed under ancestors, as tree attention needs.
    """
    order = trie.preorder()[1:]
    internal = order[trie.child_count[order] > 0]
    parent = trie.node_parent
    chunks = []
    for lo in range(0, internal.numel(), size):
        window = internal[lo : lo + size]
        path, node = [], int(parent[window[0]])
        while node > 0:
            path.append(node)
            node = int(parent[node])
        nodes = torch.cat([torch.tensor(path[::-1], dtype=torch.long), window])
        local = torch.full((trie.num_nodes,), -1, dtype=torch.long)
        local[nodes] = torch.arange(nodes.numel())
        ancestors = torch.eye(nodes.numel(), dtype=torch.bool)
        rows = torch.arange(nodes.numel())
        up = local[parent[nodes]]  # position of each node's parent in the chunk (-1: the root)
        while bool((up >= 0).any()):
            ancestors[rows[up >= 0], up[up >= 0]] = True
            up = torch.where(up >= 0, local[parent[nodes[up.clamp(min=0)]]], up)
        chunks.append(_Chunk(nodes, trie.node_depth[nodes], ancestors, torch.arange(len(path), nodes.numel())))
    return chunks


@torch.no_grad()
def score_catalog(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    batch_size: int = 16,
    chunk_nodes: int | None = None,
    progress=None,
) -> torch.Tensor:
    """``[N, num_items]`` summed full-vocabulary log-probabilities of each item's tokens, EOS included.

    ``chunk_nodes`` trie nodes are fed per forward (default: as many as fit a fixed logits budget).
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    vocab = model.get_output_embeddings().weight.shape[0]
    batch_size = max(1, min(batch_size, _LOGIT_BUDGET // (64 * vocab)))  # at least 64 nodes per forward
    size = chunk_nodes or max(16, min(4096, _LOGIT_BUDGET // (batch_size * vocab)))
    chunks = _chunks(trie, size)
    paths = trie.paths.to(device)
    out_rows = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        mask = attention_mask[start : start + batch_size].to(device)
        edge = _edge_log_probs(model, ids, mask, trie, chunks, dtype)  # [n, num_nodes]
        scores = edge.gather(1, paths.clamp(min=0).flatten().expand(ids.shape[0], -1)).view(ids.shape[0], *paths.shape)
        out_rows.append(scores.masked_fill(paths < 0, 0.0).sum(-1).cpu())
        if progress is not None:
            progress(ids.shape[0])
    return torch.cat(out_rows)


def _edge_log_probs(model, input_ids, attention_mask, trie: ItemTrie, chunks: list[_Chunk], dtype) -> torch.Tensor:
    """log p(token into node | parent's prefix, prompt) for every trie node (0 for the root)."""
    n, prompt_width = input_ids.shape
    dev = input_ids.device
    edge = torch.zeros(n, trie.num_nodes, device=dev)
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    _scatter_children(edge, torch.log_softmax(out.logits[:, -1:].float(), -1), torch.zeros(1, dtype=torch.long), trie)
    prompt_len = attention_mask.long().sum(-1)
    blocked = torch.finfo(dtype).min
    for chunk in chunks:
        c = chunk.nodes.numel()
        allowed = torch.cat([attention_mask.bool()[:, None, :].expand(n, c, prompt_width),
                             chunk.ancestors.to(dev)[None].expand(n, c, c)], dim=2)
        mask4d = torch.zeros(n, 1, c, prompt_width + c, dtype=dtype, device=dev).masked_fill(~allowed[:, None], blocked)
        logits = model(
            input_ids=trie.node_token[chunk.nodes].to(dev).expand(n, c),
            attention_mask=mask4d,
            position_ids=prompt_len[:, None] + chunk.depth.to(dev)[None] - 1,
            past_key_values=cache,
            use_cache=True,
        ).logits
        cache.crop(-c)  # back to the prompt: the next chunk reuses it
        window = chunk.window.to(dev)
        _scatter_children(edge, torch.log_softmax(logits[:, window].float(), -1), chunk.nodes[chunk.window], trie)
    return edge


def _scatter_children(edge: torch.Tensor, log_probs: torch.Tensor, parents: torch.Tensor, trie: ItemTrie) -> None:
    """Write into ``edge [n, nodes]`` the log-probability of each child of ``parents`` (rows of ``log_probs``)."""
    dev = edge.device
    count = trie.child_count[parents]
    row = torch.repeat_interleave(torch.arange(parents.numel()), count)
    first = torch.cumsum(count, 0) - count
    child = trie.child_start[parents][row] + torch.arange(row.numel()) - first[row]
    edge[:, child.to(dev)] = log_probs[:, row.to(dev), trie.node_token[child].to(dev)]
