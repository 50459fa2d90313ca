"""Items as token sequences, and the prefix trie that constrains decoding to real catalog titles.

Every title is tokenised on its own and followed by EOS, the same sequence the model is trained to
produce. :class:`ItemTrie` stores all sequences as a level-ordered tree in CSR form: the children of
node ``p`` are the nodes ``child_start[p] .. child_start[p] + child_count[p] - 1``, sorted by token,
and ``node_token[c]`` is the token on the edge into ``c``. A decoder looks up the children of a whole
batch of beams with a few tensor gathers, no Python per beam. The node reached by EOS is a leaf that
names its item (``node_item``); a title may be a prefix of another title.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class ItemTrie:
    """Prefix tree over item token sequences (EOS included); items are indexed by position."""

    _TABLES = ("child_start", "child_count", "node_token", "node_parent", "node_item", "node_depth", "sequences", "paths")

    def __init__(self, child_start, child_count, node_token, node_parent, node_item, node_depth, sequences, paths,
                 eos_token_id):
        self.child_start: torch.Tensor = child_start  # [num_nodes] first child id
        self.child_count: torch.Tensor = child_count  # [num_nodes]
        self.node_token: torch.Tensor = node_token  # [num_nodes] token into the node (-1 for the root)
        self.node_parent: torch.Tensor = node_parent  # [num_nodes] (-1 for the root)
        self.node_item: torch.Tensor = node_item  # [num_nodes] item index of a leaf, else -1
        self.node_depth: torch.Tensor = node_depth  # [num_nodes] root = 0
        self.sequences: torch.Tensor = sequences  # [num_items, max_len] token ids, padded with -1
        self.paths: torch.Tensor = paths  # [num_items, max_len] node after each token, padded with -1
        self.eos_token_id = int(eos_token_id)

    @property
    def num_items(self) -> int:
        return self.sequences.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.node_token.shape[0]

    @property
    def max_length(self) -> int:
        """Longest item sequence, EOS included: the most decoding steps a search can need."""
        return self.sequences.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        return (self.sequences >= 0).sum(dim=1)

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]] | np.ndarray, eos_token_id: int) -> "ItemTrie":
        """Build the trie. Each sequence must end with ``eos_token_id`` and contain it nowhere else.

        ``sequences`` is a list of token-id lists, or an integer array ``[items, width]`` padded with -1.
        """
        if len(sequences) == 0:
            raise ValueError("cannot build a trie of an empty catalog")
        if isinstance(sequences, np.ndarray):  # already padded with -1: big catalogs skip the Python loop
            padded = sequences.astype(np.int64, copy=False)
            lengths = (padded >= 0).sum(axis=1)
        else:
            lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
            padded = np.full((len(sequences), int(lengths.max())), -1, dtype=np.int64)
            for i, seq in enumerate(sequences):
                padded[i, : len(seq)] = seq
        width = padded.shape[1]
        ends = padded[np.arange(len(sequences)), lengths - 1]
        if (lengths < 1).any() or (ends != eos_token_id).any():
            bad = int(np.flatnonzero((lengths < 1) | (ends != eos_token_id))[0])
            raise ValueError(f"item {bad}: sequence must end with the EOS token {eos_token_id}")
        if ((padded == eos_token_id).sum(axis=1) != 1).any():
            bad = int(np.flatnonzero((padded == eos_token_id).sum(axis=1) != 1)[0])
            raise ValueError(f"item {bad}: EOS token may appear only at the end of a sequence")

        # Sort lexicographically; consecutive rows then share their longest common prefix (lcp), and a
        # row opens a new node at every depth >= lcp. Numbering nodes level by level in row order makes
        # the children of each node contiguous and sorted by token: a CSR tree for free.
        order = np.lexsort(padded.T[::-1])
        rows = padded[order]
        row_len = lengths[order]
        lcp = np.zeros(len(rows), dtype=np.int64)
        if len(rows) > 1:
            lcp[1:] = np.cumprod(rows[1:] == rows[:-1], axis=1).sum(axis=1)
        dup = np.flatnonzero(lcp >= row_len)
        if dup.size:
            a, b = sorted((int(order[dup[0]]), int(order[dup[0] - 1])))
            raise ValueError(f"items {a} and {b} have the same token sequence")

        parent_of_row = np.zeros(len(rows), dtype=np.int64)  # node of each row at the previous depth
        paths = np.full(padded.shape, -1, dtype=np.int64)
        tokens, parents, items, depths = [np.array([-1])], [np.array([-1])], [np.array([-1])], [np.array([0])]
        next_id = 1
        for d in range(width):
            alive = row_len > d
            new = alive & (lcp <= d)
            new_ids = next_id + np.cumsum(new) - 1  # forward-filled: rows sharing the prefix share the node
            count = int(new.sum())
            tokens.append(rows[new, d])
            parents.append(parent_of_row[new])
            leaf = new & (row_len == d + 1)
            item = np.full(count, -1, dtype=np.int64)
            item[leaf[new]] = order[leaf]
            items.append(item)
            depths.append(np.full(count, d + 1))
            parent_of_row = np.where(alive, new_ids, parent_of_row)
            paths[order[alive], d] = new_ids[alive]
            next_id += count
        node_token = np.concatenate(tokens)
        parent = np.concatenate(parents)
        child_count = np.bincount(parent[1:], minlength=next_id)
        # Parents are non-decreasing along node ids, so a node's first child follows the previous node's.
        child_start = np.ones(next_id, dtype=np.int64)
        child_start[1:] += np.cumsum(child_count)[:-1]
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
        return cls(
            child_start=as_tensor(child_start),
            child_count=as_tensor(child_count),
            node_token=as_tensor(node_token),
            node_parent=as_tensor(parent),
            node_item=as_tensor(np.concatenate(items)),
            node_depth=as_tensor(np.concatenate(depths)),
            sequences=as_tensor(padded),
            paths=as_tensor(paths),
            eos_token_id=eos_token_id,
        )

    def to(self, device: torch.device | str) -> "ItemTrie":
        """A copy whose lookup tables live on ``device`` (the decoder gathers from them every step)."""
        return ItemTrie(*(getattr(self, f).to(device) for f in self._TABLES), eos_token_id=self.eos_token_id)

    def preorder(self) -> torch.Tensor:
        """Node ids in depth-first preorder (root first): every subtree is a contiguous run."""
        walk = self.paths.cpu()[_lexicographic(self.sequences)].flatten()
        walk = walk[walk >= 0]
        nodes, first = np.unique(walk.cpu().numpy(), return_index=True)
        return torch.cat([torch.zeros(1, dtype=torch.long), torch.from_numpy(nodes[np.argsort(first)])])

    # ------------------------------------------------------------------ training: trie-valid sets without [N, T, V]
    def label_nodes(self, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """``[N, T]`` trie node *before* each scored token of ``labels`` (-1 at unscored positions).

        Each row's scored positions, read in order, must spell an item's token sequence from its first
        token (the trainer's right-aligned answers do); the walk is one vectorised child lookup per
        column. Raises ``ValueError`` naming the row whose tokens leave the trie.
        """
        n, width = labels.shape
        dev = self.child_start.device
        labels = labels.to(dev)
        scored = labels != ignore_index  # [N, T]
        node = torch.zeros(n, dtype=torch.long, device=dev)  # [N] every answer starts at the root
        nodes = torch.full((n, width), -1, dtype=torch.long, device=dev)  # [N, T]
        for t in range(width):
            active = scored[:, t]
            if not bool(active.any()):
                continue
            nodes[:, t] = torch.where(active, node, nodes[:, t])
            start, count = self.child_start[node], self.child_count[node]  # [N]
            slot = torch.arange(int(count[active].max()), device=dev)  # [C]
            child = (start[:, None] + slot).clamp(max=self.num_nodes - 1)  # [N, C]
            hit = (self.node_token[child] == labels[:, t, None]) & (slot < count[:, None])  # [N, C]
            lost = active & ~hit.any(dim=1)
            if bool(lost.any()):
                raise ValueError(f"labels row {int(lost.nonzero()[0])}: token {int(labels[lost][0, t])} at position {t} "
                                 "does not continue a catalog title")
            node = torch.where(active, start + hit.long().argmax(dim=1), node)
        return nodes

    def label_candidates(self, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """``[N, T, C]`` trie-valid next tokens A_t of every scored position, padded with -1.

        ``A_t`` = the children of the node the gold prefix reached (EOS where a title may end); C is the
        largest ``|A_t|`` of the batch, in practice the root's fan-out. This is what the masked-softmax
        objectives need instead of a dense ``[N, T, V]`` mask: gather these logits, logsumexp over them.
        Unscored positions hold -1 only.
        """
        nodes = self.label_nodes(labels, ignore_index)  # [N, T]
        at = nodes.clamp(min=0)
        count = torch.where(nodes >= 0, self.child_count[at], torch.zeros_like(at))  # [N, T]
        slot = torch.arange(int(count.max()) if count.numel() else 0, device=nodes.device)  # [C]
        child = (self.child_start[at][..., None] + slot).clamp(max=self.num_nodes - 1)  # [N, T, C]
        return torch.where(slot < count[..., None], self.node_token[child], torch.full_like(child, -1))

    # ------------------------------------------------------------------ per-prefix lookups (tools, tests)
    def children(self, node: int) -> tuple[list[int], list[int]]:
        """(tokens, child node ids) of one node."""
        start, count = int(self.child_start[node]), int(self.child_count[node])
        return self.node_token[start : start + count].tolist(), list(range(start, start + count))

    def node_of(self, prefix: Sequence[int]) -> int:
        """Node reached by a token prefix from the root, or -1 if no item starts with it."""
        node = 0
        for token in prefix:
            start, count = int(self.child_start[node]), int(self.child_count[node])
            segment = self.node_token[start : start + count]
            pos = int(torch.searchsorted(segment, torch.tensor(int(token))))
            if pos >= count or int(segment[pos]) != int(token):
                return -1
            node = start + pos
        return node

    def allowed_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that extend ``prefix`` towards some item ([] if the prefix leads nowhere)."""
        node = self.node_of(prefix)
        return [] if node < 0 else self.children(node)[0]

    def prefix_allowed_tokens_fn(self, prompt_length: int):
        """Hugging Face ``generate(prefix_allowed_tokens_fn=...)`` restricted to this catalog: the tokens after
        the first ``prompt_length`` (the padded prompt width; 1 for an encoder-decoder, after its start token)
        must continue an item. A finished or lost beam is offered EOS alone."""
        def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
            return self.allowed_tokens(input_ids[prompt_length:].tolist()) or [self.eos_token_id]

        return allowed


def tokenize_titles(tokenizer, titles: Sequence[str]) -> list[list[int]]:
    """Token ids of each title followed by EOS, exactly as the model is trained to produce them."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token first")
    encoded = tokenizer(list(titles), add_special_tokens=False)["input_ids"]
    return [list(ids) + [tokenizer.eos_token_id] for ids in encoded]


def catalog_trie(answers: Sequence[Sequence[int]], eos_token_id: int) -> ItemTrie:
    """Trie of a catalog's tokenised answers (item tokens + EOS); a ``ValueError`` naming the tokenizer when two
    items tokenise alike (the trie could not tell them apart)."""
    try:
        return ItemTrie.from_sequences(answers, eos_token_id)
    except ValueError as err:
        raise ValueError(f"catalog cannot be decoded with this tokenizer: {err}") from None


def build_trie(tokenizer, titles: Sequence[str]) -> ItemTrie:
    """Trie of a catalog's titles under ``tokenizer``."""
    return catalog_trie(tokenize_titles(tokenizer, titles), tokenizer.eos_token_id)


def _lexicographic(sequences: torch.Tensor) -> torch.Tensor:
    """Row order that sorts padded token sequences lexicographically."""
    return torch.from_numpy(np.lexsort(sequences.cpu().numpy().T[::-1]).copy())
