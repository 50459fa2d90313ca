"""Exact scores of every catalog item: log P(title + EOS | prompt), the ground truth that PR@K needs.

Items share title prefixes, so the catalog is scored as its trie: every internal trie node is fed to
the model once per prompt, and a node's logits give the log-probabilities of all its children at
once; an item's score is the sum of the edge log-probabilities along its path (full-vocabulary or
renormalised over each node's children, see ``scoring.py``). The prompt is read once
(:class:`EncodedPrompts`). A causal LM feeds trie nodes after the prompt's KV cache, each attending to
the prompt and to its own ancestors only (a custom 4D "tree attention" mask), and the cache is cropped
back to the prompt after each chunk of nodes. An encoder-decoder (T5, TIGER) keeps the encoder's
states, and its decoder reads each node's prefix from the start token (items are a few codes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutput

from bearrec.decoding.scoring import check_scoring, edge_log_probs
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import cache_of, is_encoder_decoder, position_ids_from_mask, with_cache

_LOGIT_BUDGET = 32 * 2**20  # floats of logits per forward (128 MB in fp32): bounds memory on big catalogs


@dataclass
class _Chunk:
    nodes: torch.Tensor  # [C] trie nodes fed to the model (the window plus its outside ancestors), preorder
    depth: torch.Tensor  # [C]
    ancestors: torch.Tensor  # [C, C] bool: row j may attend to column k (k is j or an ancestor of j)
    window: torch.Tensor  # [W] positions (in ``nodes``) whose children this chunk scores


def _tree_chunk(trie: ItemTrie, window: torch.Tensor) -> _Chunk:
    """The chunk that scores the children of the nodes ``window``: the window plus all its ancestors.

    Closed under ancestors, as tree attention needs; row j may attend to itself and its ancestors.
    """
    parent = trie.node_parent
    extra, up = [], parent[window]
    in_set = torch.zeros(trie.num_nodes, dtype=torch.bool)
    in_set[window] = True
    while bool((up > 0).any()):
        up = up[(up > 0) & ~in_set[up.clamp(min=0)]].unique()
        in_set[up] = True
        extra.append(up)
        up = parent[up]
    outside = torch.cat(extra) if extra else window.new_empty(0)
    nodes = torch.cat([outside, window])
    local = torch.full((trie.num_nodes,), -1, dtype=torch.long)
    local[nodes] = torch.arange(nodes.numel())
    ancestors = torch.eye(nodes.numel(), dtype=torch.bool)
    rows = torch.arange(nodes.numel())
    up = local[parent[nodes]]  # position of each node's parent in the chunk (-1: the root)
    while bool((up >= 0).any()):
        ancestors[rows[up >= 0], up[up >= 0]] = True
        up = torch.where(up >= 0, local[parent[nodes[up.clamp(min=0)]]], up)
    return _Chunk(nodes, trie.node_depth[nodes], ancestors, torch.arange(outside.numel(), nodes.numel()))


def _chunks(trie: ItemTrie, size: int) -> list[_Chunk]:
    """Cut the internal non-root nodes, in preorder, into windows of ``size`` (in preorder, the ancestors
    outside a window are those of its first node: a chunk adds at most one path)."""
    order = trie.preorder()[1:]
    internal = order[trie.child_count[order] > 0]
    return [_tree_chunk(trie, internal[lo : lo + size]) for lo in range(0, internal.numel(), size)]


@torch.no_grad()
def score_catalog(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    batch_size: int = 16,
    chunk_nodes: int | None = None,
    progress=None,
    scoring: str = "full",
) -> torch.Tensor:
    """``[N, num_items]`` summed log-probabilities of each item's tokens, EOS included.

    ``scoring`` ``"full"``: full-vocabulary log-softmax per token; ``"masked"``: log-softmax over the
    trie children of each prefix (the scores of ``constrained_beam_search`` with the same ``scoring``).
    ``chunk_nodes`` trie nodes are fed per forward (default: as many as fit a fixed logits budget).
    """
    check_scoring(scoring)
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
        edge = _edge_log_probs(model, ids, mask, trie, chunks, dtype, scoring)  # [n, num_nodes]
        scores = edge.gather(1, paths.clamp(min=0).flatten().expand(ids.shape[0], -1)).view(ids.shape[0], *paths.shape)
        out_rows.append(scores.masked_fill(paths < 0, 0.0).sum(-1).cpu())
        if progress is not None:
            progress(ids.shape[0])
    return torch.cat(out_rows)


def _edge_log_probs(model, input_ids, attention_mask, trie: ItemTrie, chunks: list[_Chunk], dtype,
                    scoring: str) -> torch.Tensor:
    """log p(token into node | parent's prefix, prompt) for every trie node ``[n, num_nodes]`` (0 for the root)."""
    edge = torch.zeros(input_ids.shape[0], trie.num_nodes, device=input_ids.device)
    prompts = EncodedPrompts(model, input_ids, attention_mask, trie)
    _scatter_children(edge, prompts.root_logits, torch.zeros(1, dtype=torch.long), trie, scoring)
    for chunk in chunks:
        _scatter_children(edge, prompts.chunk_logits(chunk, dtype), chunk.nodes[chunk.window], trie, scoring)
    return edge


class EncodedPrompts:
    """A batch of left-padded prompts ``[n, L]`` read once, and the next-token logits after any trie nodes.

    A causal LM keeps the prompts' KV cache and feeds nodes after it with tree attention (:meth:`tree_logits`).
    An encoder-decoder (T5, TIGER) keeps the encoder's states, and its decoder reads each node's prefix from the
    start token: items are a few codes, so recomputing a prefix is cheaper than a decoder cache per node.
    ``root_logits [n, 1, vocab]``: the logits of each item's first token.
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, trie: ItemTrie):
        self.model, self.mask, self.trie = model, attention_mask, trie
        self.seq2seq = is_encoder_decoder(model)
        if self.seq2seq:
            self.cache = None
            self.encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            self.root_logits = self._decoder_logits(torch.zeros(input_ids.shape[0], 1, dtype=torch.long))
        else:
            out = model(input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=position_ids_from_mask(attention_mask), use_cache=True, logits_to_keep=1)
            self.cache, self.root_logits = cache_of(out), out.logits[:, -1:]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the prompts ``rows`` (positions in the current batch), in that order."""
        rows = rows.to(self.mask.device)
        self.mask = self.mask[rows]
        if self.seq2seq:
            self.encoded = self.encoded[rows]
        else:
            self.cache.batch_select_indices(rows)

    def chunk_logits(self, chunk: _Chunk, dtype) -> torch.Tensor:
        """Next-token logits after each window node of ``chunk`` ``[n, W, vocab]``, the same chunk for all n prompts."""
        n, c = self.mask.shape[0], chunk.nodes.numel()
        return self.tree_logits(chunk.nodes.expand(n, c), chunk.depth.expand(n, c), chunk.ancestors.expand(n, c, c),
                                chunk.window.numel(), dtype)

    def tree_logits(self, nodes: torch.Tensor, depth: torch.Tensor, ancestors: torch.Tensor, keep: int,
                    dtype) -> torch.Tensor:
        """Next-token logits after the last ``keep`` of each prompt's own trie nodes ``[n, keep, vocab]``.

        Row i feeds ``nodes[i] [c]`` (at ``depth[i]``; -1 = padding, attended by nothing) after its prompt,
        attending to the prompt cache and to the nodes that ``ancestors[i] [c, c]`` allows (itself and its
        ancestors: tree attention). The cache is cropped back to the prompt afterwards. An encoder-decoder
        needs only the last ``keep`` nodes (each brings its own prefix).
        """
        if self.seq2seq:
            return self._decoder_logits(nodes[:, nodes.shape[1] - keep:])
        n, prompt_width = self.mask.shape
        dev = self.mask.device
        c = nodes.shape[1]
        allowed = torch.cat([self.mask.bool()[:, None, :].expand(n, c, prompt_width), ancestors.to(dev)], dim=2)
        mask4d = torch.zeros(n, 1, c, prompt_width + c, dtype=dtype, device=dev).masked_fill(~allowed[:, None],
                                                                                            torch.finfo(dtype).min)
        tokens = self.trie.node_token[nodes.clamp(min=0)].clamp(min=0)  # [n, c]; padding feeds the root's -1 as 0
        logits = self.model(
            input_ids=tokens.to(dev),
            attention_mask=mask4d,
            position_ids=self.mask.long().sum(-1)[:, None] + depth.to(dev) - 1,  # [n, c]
            use_cache=True,
            logits_to_keep=keep,
            **with_cache(self.cache),
        ).logits
        self.cache.crop(-c)  # back to the prompt: the next chunk reuses it
        return logits

    def _decoder_logits(self, nodes: torch.Tensor) -> torch.Tensor:
        """Encoder-decoder: the decoder's next-token logits after each node's prefix ``[n, w, vocab]``, for
        ``nodes [n, w]`` of prompt i in row i (-1: padding, read as the root)."""
        n, w = nodes.shape
        dev = self.mask.device
        flat = nodes.flatten().clamp(min=0)  # [n*w]
        depth = self.trie.node_depth[flat]  # [n*w] tokens in each node's prefix (root: 0)
        width = int(depth.max()) if flat.numel() else 0
        prefix = torch.zeros(flat.numel(), width + 1, dtype=torch.long)  # [n*w, 1 + depth]: start, then the tokens
        prefix[:, 0] = self.model.config.decoder_start_token_id
        node = flat.clone()
        for back in range(width):  # fill each prefix from its last token up, walking to the root
            at = depth - back  # column of ``node``'s token (column 0 is the start token)
            live = at > 0
            prefix[live, at[live]] = self.trie.node_token[node[live]]
            node = torch.where(live, self.trie.node_parent[node].clamp(min=0), node)
        user = torch.arange(n, device=dev).repeat_interleave(w)  # [n*w] the prompt of each row
        depth, prefix = depth.to(dev), prefix.to(dev)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        step = max(1, _LOGIT_BUDGET // ((width + 1) * vocab))  # rows per forward: every position's logits are made
        out = []
        for lo in range(0, n * w, step):
            rows = slice(lo, lo + step)
            encoded = BaseModelOutput(last_hidden_state=self.encoded[user[rows]])  # [r, L, d]
            logits = self.model(encoder_outputs=encoded, attention_mask=self.mask[user[rows]],
                                decoder_input_ids=prefix[rows]).logits  # [r, 1 + width, vocab]
            # causal: the zeros after a shorter prefix do not reach its last position
            out.append(logits[torch.arange(logits.shape[0], device=dev), depth[rows]])
        return torch.cat(out).view(n, w, -1)


def _children(trie: ItemTrie, parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every child of ``parents``: ``(row, child)``, the child's parent as a position in ``parents`` and its node."""
    count = trie.child_count[parents]
    row = torch.repeat_interleave(torch.arange(parents.numel()), count)
    first = torch.cumsum(count, 0) - count
    return row, trie.child_start[parents][row] + torch.arange(row.numel()) - first[row]


def _scatter_children(edge: torch.Tensor, logits: torch.Tensor, parents: torch.Tensor, trie: ItemTrie,
                      scoring: str) -> None:
    """Write into ``edge [n, nodes]`` the log-probability of each child of ``parents`` (rows of ``logits [n, W, V]``)."""
    dev = edge.device
    row, child = _children(trie, parents)
    edge[:, child.to(dev)] = edge_log_probs(logits, row.to(dev), trie.node_token[child].to(dev), scoring)


@torch.no_grad()
def exact_target_ranks(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    targets: torch.Tensor,
    max_rank: int = 10,
    nodes_per_forward: int = 128,
    known_items: torch.Tensor | None = None,
    known_scores: torch.Tensor | None = None,
    max_nodes: int | None = None,
    progress=None,
    scoring: str = "full",
) -> torch.Tensor:
    """Rank of each target among all items by exact probability (as :func:`score_catalog` +
    :func:`~bearrec.evaluation.metrics.full_rank` would give), capped: ``max_rank + 1`` means "below ``max_rank``".

    ``scoring`` (``"full"`` or ``"masked"``, as in :func:`score_catalog`) defines the probability; give
    the one of the beam search being judged. PR@K needs only whether the positive is in the top K, so
    this never scores the whole catalog. An item's score is at most the log-probability of any of its
    prefixes (step log-probabilities are <= 0 in both scorings),
    so only trie nodes whose prefix is more probable than the target item can lead to an item ranked
    above it. Starting from the target's own path (which gives its score), the most probable such
    nodes are expanded ``nodes_per_forward`` at a time by tree attention, until every one of them is
    expanded (the rank is exact) or ``max_rank`` items beat the target. With a peaked (trained,
    pretrained) model this is a few forwards per user instead of one per trie node.

    ``known_items`` / ``known_scores`` ``[N, B]`` (a beam search's items and their unnormalised scores,
    -1 for none) are items whose exact score is already known: when ``max_rank`` of them beat the target,
    as they do for most users of a weak model, the search stops after the target's own path.

    ``max_nodes`` bounds the nodes expanded per user (a large model on a CPU can need thousands when
    its positive ranks near the top). A user is undecided when the budget is spent while trie prefixes
    more probable than the positive are still unexpanded and fewer than ``max_rank`` items were found
    above it: its rank is unknown (in the top ``max_rank`` or not) and it gets -1 ("not ranked").
    """
    check_scoring(scoring)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    tolerance = 1e-3 if dtype == torch.float32 else 5e-2
    ranks = []
    for user in range(input_ids.shape[0]):
        prompts = EncodedPrompts(model, input_ids[user : user + 1].to(device),
                                 attention_mask[user : user + 1].to(device), trie)
        search = _PrefixSearch(prompts, trie, scoring, dtype, nodes_per_forward)
        target = int(targets[user])
        target_score = search.follow(target)
        if known_items is not None:
            items, scores = known_items[user].cpu(), known_scores[user].cpu().float()
            search.add_known(items, scores, target, target_score + tolerance)
        beaten = search.count_above(target_score, max_rank, max_nodes)
        ranks.append(min(beaten, max_rank) + 1)
        if progress is not None:
            progress(1)
    return torch.tensor(ranks)


class _PrefixSearch:
    """One prompt's best-first walk of the trie for :func:`exact_target_ranks`.

    ``prefix [num_nodes]`` holds log P(prefix | prompt) of every node scored so far (-inf: not yet scored), and
    ``expanded`` the nodes whose children are scored; the root is expanded on creation. Nodes are expanded
    ``nodes_per_forward`` at a time by tree attention.
    """

    def __init__(self, prompts: EncodedPrompts, trie: ItemTrie, scoring: str, dtype, nodes_per_forward: int):
        self.prompts, self.trie, self.scoring, self.dtype = prompts, trie, scoring, dtype
        self.nodes_per_forward = nodes_per_forward
        self.prefix = torch.full((trie.num_nodes,), float("-inf"))  # log P(prefix | prompt) of scored nodes
        self.prefix[0] = 0.0
        self.expanded = torch.zeros(trie.num_nodes, dtype=torch.bool)
        self.is_leaf = trie.node_item >= 0
        self.internal = trie.child_count > 0
        self._score_children(torch.zeros(1, dtype=torch.long), prompts.root_logits)

    def _score_children(self, nodes: torch.Tensor, logits: torch.Tensor) -> None:
        """Score the children of ``nodes [W]`` from their next-token logits ``[1, W, vocab]``."""
        trie, device = self.trie, logits.device
        row, child = _children(trie, nodes)  # [C] each
        token = trie.node_token[child].to(device)
        edge = edge_log_probs(logits[0], row.to(device), token, self.scoring).cpu()  # [C]
        parent_depth = trie.node_depth[nodes[row]]
        for depth in parent_depth.unique().tolist():  # a parent's score before its children's
            at = parent_depth == depth
            self.prefix[child[at]] = self.prefix[nodes[row[at]]] + edge[at]
        self.expanded[nodes] = True

    def expand(self, window: torch.Tensor) -> None:
        """Score the children of the nodes ``window [W]`` in one forward (the window after its ancestors)."""
        self._score_children(window, self.prompts.chunk_logits(_tree_chunk(self.trie, window), self.dtype))

    def follow(self, item: int) -> float:
        """Expand the internal nodes of ``item``'s path, in order of depth (each one's prefix score comes from its
        parent), and return the item's score."""
        path = self.trie.paths[item]
        path = path[path >= 0]
        for lo in range(0, path.numel() - 1, self.nodes_per_forward):
            self.expand(path[:-1][lo : lo + self.nodes_per_forward])
        return float(self.prefix[path[-1]])

    def add_known(self, items: torch.Tensor, scores: torch.Tensor, target: int, above: float) -> None:
        """Take the scores ``[B]`` of the items ``[B]`` (-1: none) that beat ``above``, the target's score plus a
        tolerance: another forward (cached decoding) computed them, so trust only clear wins and search the
        near-ties."""
        item_leaf = self.trie.paths.gather(1, (self.trie.lengths - 1)[:, None])[:, 0]  # the EOS node of each item
        keep = (items >= 0) & (items != target) & (scores > above)
        self.prefix[item_leaf[items[keep]]] = scores[keep]

    def count_above(self, target_score: float, max_rank: int, max_nodes: int | None) -> int:
        """Items scoring above ``target_score``, found by expanding the most probable unexpanded nodes more probable
        than it until none is left or ``max_rank`` items beat it; -2 when ``max_nodes`` nodes were expanded first
        (undecided)."""
        trie, prefix = self.trie, self.prefix
        while True:
            above = prefix > target_score  # ties favour the positive, as in full_rank
            beaten = int((above & self.is_leaf).sum())
            frontier = torch.nonzero(above & self.internal & ~self.expanded).flatten()
            if beaten >= max_rank or frontier.numel() == 0:
                return beaten
            if max_nodes is not None and int(self.expanded.sum()) >= max_nodes:
                return -2  # undecided within the budget: reported as rank -1
            window = frontier[prefix[frontier].topk(min(self.nodes_per_forward, frontier.numel())).indices]
            self.expand(window[torch.argsort(trie.node_depth[window])])
