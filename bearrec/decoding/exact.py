"""Exact top-K decoding: the K most probable catalog items per prompt, with nothing pruned.

Every step score is a log-probability (<= 0, in both scorings of ``scoring.py``), so an item's score
is at most the score of each of its prefixes. A best-first search over the trie is therefore exact:
keep, per user, the scored but unexpanded trie nodes (the frontier) and the items found so far (leaves
whose parent was expanded, scored exactly), expand the most probable frontier nodes a window at a time,
and stop once the K-th best found item beats every frontier node: any item not found lies below some
frontier node and scores at most that node's score, so it cannot enter the top K.

Many users are searched at once. Each forward feeds every active user its own window of trie nodes
plus their ancestors after the user's prompt, with the tree attention of :func:`score_catalog`
(``exhaustive.EncodedPrompts``): the prompt is encoded once per user and its KV cache is cropped back
after each forward, so nothing but the window is recomputed per step (an encoder-decoder's decoder
reads each window node's prefix after the encoder's states). Users that finish leave the batch (their
cache rows are dropped).

Ties: items are ordered by score, then by catalog index (lower first). A frontier node that *equals*
the K-th item's score is still expanded (with masked scoring a node's only child scores exactly its
parent's score), so tied items are found and ordered by index, whatever the batch or window size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bearrec.decoding.exhaustive import _LOGIT_BUDGET, EncodedPrompts, _children, _tree_chunk
from bearrec.decoding.scoring import check_scoring, edge_log_probs
from bearrec.items.trie import ItemTrie


@dataclass
class ExactTopK:
    """``item_ids [N, k]`` catalog indices best first (-1 where the catalog has fewer than k items, or an
    uncertified search found fewer), ``scores [N, k]`` (summed log-probabilities, -inf for -1),
    ``certified [N]`` (True: provably the k most probable items; False: the node budget ran out first and
    the lists are the best items found so far) and ``nodes_expanded [N]`` (trie nodes fed to the model as
    parents, the root included)."""

    item_ids: torch.Tensor
    scores: torch.Tensor
    certified: torch.Tensor
    nodes_expanded: torch.Tensor


def _check(k: int, node_budget: int | None, batch_size: int, nodes_per_forward: int) -> None:
    for name, value in (("k", k), ("batch_size", batch_size), ("nodes_per_forward", nodes_per_forward)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    if node_budget is not None and node_budget < 1:
        raise ValueError(f"node_budget must be at least 1, not {node_budget}")


@torch.no_grad()
def exact_top_k(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    k: int = 10,
    scoring: str = "full",
    node_budget: int | None = None,
    batch_size: int = 16,
    nodes_per_forward: int = 32,
    progress=None,
) -> ExactTopK:
    """The ``k`` most probable items of each left-padded prompt ``[N, L]``, exactly (see the module doc).

    ``scoring`` is ``"full"`` or ``"masked"`` (as in :func:`score_catalog`); ``node_budget`` caps the trie
    nodes expanded per user (users not finished within it are ``certified=False``); ``batch_size`` users
    are searched together, each expanding up to ``nodes_per_forward`` frontier nodes per forward.
    ``progress`` receives the number of users finished after each batch.
    """
    check_scoring(scoring)
    _check(k, node_budget, batch_size, nodes_per_forward)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    vocab = model.get_output_embeddings().weight.shape[0]
    batch_size = max(1, min(batch_size, _LOGIT_BUDGET // (nodes_per_forward * vocab)))
    parts = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        mask = attention_mask[start : start + batch_size].to(device)
        parts.append(_search(model, ids, mask, trie, k, scoring, node_budget, nodes_per_forward, dtype))
        if progress is not None:
            progress(ids.shape[0])
    return ExactTopK(*(torch.cat(column) for column in zip(*parts)))


def _search(model, input_ids, attention_mask, trie: ItemTrie, k: int, scoring: str, node_budget, width: int, dtype):
    """Best-first search for one batch of users; returns (item_ids, scores, certified, nodes_expanded)."""
    n = input_ids.shape[0]
    is_leaf = trie.node_item >= 0  # [nodes]
    internal = trie.child_count > 0  # [nodes]
    prefix = torch.full((n, trie.num_nodes), float("-inf"))  # [n, nodes] log P(prefix | prompt), on the CPU
    reached = torch.zeros(n, trie.num_nodes, dtype=torch.bool)  # [n, nodes] scored (its parent was expanded)
    expanded = torch.zeros(n, trie.num_nodes, dtype=torch.bool)  # [n, nodes]
    prefix[:, 0], reached[:, 0] = 0.0, True
    certified = torch.zeros(n, dtype=torch.bool)
    kk = min(k, trie.num_items)

    prompts = EncodedPrompts(model, input_ids, attention_mask, trie)
    _expand(prefix, reached, expanded, torch.arange(n), torch.zeros(n, 1, dtype=torch.long), prompts.root_logits,
            trie, scoring)
    active = torch.arange(n)  # batch rows still searching; prompt row i belongs to user active[i]
    while active.numel():
        # The K-th best item found so far; -inf while fewer than K are found.
        leaf_scores = torch.where(reached[active] & is_leaf, prefix[active], float("-inf"))  # [a, nodes]
        kth = leaf_scores.topk(kk, dim=1).values[:, -1]  # [a]
        open_ = reached[active] & internal & ~expanded[active] & (prefix[active] >= kth[:, None])  # [a, nodes]
        done = ~open_.any(dim=1)
        certified[active[done]] = True
        stop = done | (expanded[active].sum(1) >= node_budget if node_budget is not None else done)
        if bool(stop.any()):
            keep = torch.nonzero(~stop).flatten()
            active, open_ = active[keep], open_[keep]
            if not active.numel():
                break
            prompts.select(keep)
        room = width if node_budget is None else (node_budget - expanded[active].sum(1)).clamp(max=width)  # [a]
        # Open nodes rank above every other node, even at a -inf (underflowed) score: a window is never empty.
        candidates = torch.where(open_, prefix[active].clamp(min=torch.finfo(torch.float32).min), float("-inf"))
        best = candidates.topk(min(width, trie.num_nodes), dim=1)  # [a, W]
        take = open_.gather(1, best.indices)
        take &= torch.arange(best.indices.shape[1])[None, :] < torch.as_tensor(room)[..., None]
        windows = [best.indices[i][take[i]] for i in range(active.numel())]
        windows = [window[torch.argsort(trie.node_depth[window], stable=True)] for window in windows]  # parents first
        logits = _window_logits(prompts, trie, windows, dtype)  # [a, W, V]
        _expand(prefix, reached, expanded, active, _right_aligned(windows, logits.shape[1]), logits, trie, scoring)

    item_leaf = trie.paths.gather(1, (trie.lengths - 1)[:, None])[:, 0]  # [items] the EOS node ending each item
    found = reached[:, item_leaf]  # [n, items]
    scores = torch.where(found, prefix[:, item_leaf], float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :kk]  # ties: lower catalog index first
    top_scores = scores.gather(1, order)
    top_items = torch.where(found.gather(1, order), order, -1)
    if kk < k:
        top_items = torch.cat([top_items, top_items.new_full((n, k - kk), -1)], 1)
        top_scores = torch.cat([top_scores, top_scores.new_full((n, k - kk), float("-inf"))], 1)
    return top_items, torch.where(top_items >= 0, top_scores, float("-inf")), certified, expanded.sum(1)


def _right_aligned(windows: list[torch.Tensor], width: int) -> torch.Tensor:
    """``[a, width]`` the window nodes of each user in its last columns, -1 before them."""
    rows = torch.full((len(windows), width), -1, dtype=torch.long)
    for i, window in enumerate(windows):
        if window.numel():
            rows[i, width - window.numel():] = window
    return rows


def _window_logits(prompts: EncodedPrompts, trie: ItemTrie, windows: list[torch.Tensor], dtype) -> torch.Tensor:
    """Next-token logits after each user's window nodes ``[a, W, V]`` (W = the largest window; each user's
    window sits in the last columns, in its order): every user feeds the ancestors outside its window, then
    the window (sorted by depth, so that ancestors come first), left-padded."""
    chunks = [_tree_chunk(trie, window) if window.numel() else None for window in windows]
    c = max(chunk.nodes.numel() for chunk in chunks if chunk is not None)
    a = len(windows)
    nodes = torch.full((a, c), -1, dtype=torch.long)  # [a, c]
    depth = torch.ones(a, c, dtype=torch.long)  # [a, c]
    ancestors = torch.eye(c, dtype=torch.bool).repeat(a, 1, 1)  # [a, c, c]; padding attends to itself only
    for i, chunk in enumerate(chunks):
        if chunk is None:
            continue
        size = chunk.nodes.numel()
        nodes[i, c - size:], depth[i, c - size:] = chunk.nodes, chunk.depth
        ancestors[i, c - size:, c - size:] = chunk.ancestors
    keep = max(window.numel() for window in windows)
    return prompts.tree_logits(nodes, depth, ancestors, keep, dtype)


def _expand(prefix, reached, expanded, users: torch.Tensor, parents: torch.Tensor, logits: torch.Tensor,
            trie: ItemTrie, scoring: str) -> None:
    """Score the children of ``parents [a, W]`` (-1: none) of batch rows ``users [a]`` from their next-token
    ``logits [a, W, V]``: child score = parent score + step score."""
    a, w = parents.shape
    valid = parents >= 0  # [a, W]
    flat = torch.nonzero(valid.flatten()).flatten()  # positions in the [a * W] rows
    row, child = _children(trie, parents.flatten()[flat])  # [C] parent position in ``flat``, child node
    dev = logits.device
    edge = edge_log_probs(logits.reshape(a * w, -1), flat[row].to(dev), trie.node_token[child].to(dev), scoring).cpu()
    user = users[flat[row] // w]  # [C]
    parent = parents.flatten()[flat[row]]
    prefix[user, child] = prefix[user, parent] + edge
    reached[user, child] = True
    expanded[users[flat // w], parents.flatten()[flat]] = True
