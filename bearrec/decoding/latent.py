"""L2D, latent-space decoding: recommend by matching hidden states instead of generating titles.

L2D ("Light Latent-space Decoding", ``shared/papers/l2d-summary.md``) skips autoregressive decoding:

* a **user** is the last layer's hidden state at the end of its prompt (the state from which the model
  would generate the first title token), ``[d]``;
* a catalog **item** is represented by the hidden states of the *training* prompts whose target it is
  (the item memory, built once per model from the train split):

  - ``global``: their mean, one vector per item;
  - ``local``: per user, the mean of the ``neighbors`` (M) training states of that item most similar to
    the user (all of them when the item has fewer than M; ties in similarity: earlier training rows first);

* items are ranked by the similarity of user and item vectors: ``"l2"`` (the paper's inverse L2 distance;
  we return the *negative* L2 distance, which ranks identically and stays finite at distance 0) or
  ``"cosine"``.

**Fallback**: an item that is never a training target has no representation. It is ranked *last*, with
score ``-inf``, after every represented item, unrepresented items among themselves in catalog order.
L2D can therefore never recommend such an item (a cold item), which is the honest reading of the method.

The memory (``states [T, d]`` and ``targets [T]``) is saved as safetensors with a fingerprint of the
model's weights and of the tokenised training prompts (``latent_memory.safetensors`` in a run folder),
and reused only when both match. Where it cannot be saved (a read-only run folder, a full disk) the memory
just built is used all the same, with a warning: it is built again next time.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bearrec.io import atomic_file
from bearrec.lm.forward import left_pad, position_ids_from_mask, require_decoder_only

VARIANTS = ("global", "local")
SIMILARITIES = ("l2", "cosine")
MEMORY_FILE = "latent_memory.safetensors"
_FORMAT = "bearrec-latent-memory-1"
_FLOAT_BUDGET = 16 * 2**20  # floats per chunk of the local variant's aggregation (64 MB in fp32)


@dataclass
class ItemMemory:
    """Hidden states of the training prompts ``states [T, d]`` (float32) and their target items ``targets [T]``
    (catalog indices) for a catalog of ``num_items`` items."""

    states: torch.Tensor
    targets: torch.Tensor
    num_items: int

    @property
    def counts(self) -> torch.Tensor:
        """``[num_items]`` training prompts per item (0: the item has no representation)."""
        return torch.bincount(self.targets, minlength=self.num_items)

    def means(self) -> torch.Tensor:
        """``[num_items, d]`` the mean training state of each item (zeros where it has none)."""
        total = torch.zeros(self.num_items, self.states.shape[1]).index_add_(0, self.targets, self.states)
        return total / self.counts.clamp(min=1)[:, None].float()

    def save(self, path: str | os.PathLike, fingerprint: str) -> None:
        """Write atomically as safetensors, with ``fingerprint`` in the metadata; an ``OSError`` naming ``path``
        if it cannot be written (nothing is left behind)."""
        with atomic_file(path) as tmp:  # safetensors' "(os error 28)" becomes an OSError there
            save_file({"states": self.states.contiguous(), "targets": self.targets.contiguous()}, str(tmp),
                      metadata={"format": _FORMAT, "fingerprint": fingerprint, "num_items": str(self.num_items)})

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: str) -> "ItemMemory | None":
        """The memory saved at ``path`` if it exists and was built with ``fingerprint``, else None (a file that
        is unreadable, of another format or of another model/dataset is not trusted, and will be rebuilt)."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("format") != _FORMAT or meta.get("fingerprint") != fingerprint:
                    return None
                return cls(handle.get_tensor("states").float(), handle.get_tensor("targets").long(),
                           int(meta["num_items"]))
        except Exception:  # missing, truncated or foreign file: safetensors errors share no base class
            return None


@dataclass
class LatentTopK:
    """``item_ids [N, k]`` catalog indices best first (-1 where the catalog has fewer than k items) and
    ``scores [N, k]`` (similarities; -inf for items without representation and for -1)."""

    item_ids: torch.Tensor
    scores: torch.Tensor


def check_latent(variant: str, similarity: str, neighbors: int) -> None:
    """One-line ``ValueError`` naming the bad argument."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, not {similarity!r}")
    if neighbors < 1:
        raise ValueError(f"neighbors must be at least 1, not {neighbors}")


@torch.no_grad()
def prompt_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 32,
                  progress=None) -> torch.Tensor:
    """``[N, d]`` the last layer's hidden state at the last token of each left-padded prompt (float32, CPU)."""
    require_decoder_only(model, "latent decoding")
    device = next(model.parameters()).device
    out = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        mask = attention_mask[start : start + batch_size].to(device)
        hidden = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                       output_hidden_states=True, logits_to_keep=1).hidden_states[-1]  # [n, L, d]
        out.append(hidden[:, -1].float().cpu())
        if progress is not None:
            progress(ids.shape[0])
    return torch.cat(out)


def training_prompts(encoder, dataset) -> tuple[list[list[int]], list[int]]:
    """(prompt ids, target catalog indices) of every row of the train split: what the memory is built from."""
    histories, targets = dataset.examples("train")
    return encoder.prompts(histories), targets


def memory_fingerprint(model, prompts: list[list[int]], targets: list[int], num_items: int) -> str:
    """sha256 of the model's parameters and of the tokenised training prompts and targets."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(repr((num_items, targets)).encode())
    for prompt in prompts:
        digest.update(torch.tensor(prompt, dtype=torch.int64).numpy().tobytes() + b"|")
    return digest.hexdigest()


def build_item_memory(model, prompts: list[list[int]], targets: list[int], num_items: int, pad_id: int,
                      batch_size: int = 32, progress=None) -> ItemMemory:
    """The item memory from training ``prompts`` and their ``targets``: one forward per prompt, ``batch_size``
    at a time (prompts are padded per batch, in order). ``progress`` receives the prompts done per batch."""
    states = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[start : start + batch_size], pad_id)
        states.append(prompt_states(model, ids, mask, batch_size))
        if progress is not None:
            progress(ids.shape[0])
    return ItemMemory(torch.cat(states), torch.tensor(targets, dtype=torch.long), num_items)


def item_memory(model, encoder, dataset, path: str | os.PathLike | None = None, batch_size: int = 32,
                progress=None, on_build=None) -> tuple[ItemMemory, bool]:
    """(memory, built): the memory saved at ``path`` if it matches this model and train split, else built from
    the train split (and saved at ``path`` if given; if that fails, a warning says why and the memory is used
    unsaved). ``on_build(total)`` is called before a build starts (to open a progress bar), ``progress`` during it."""
    prompts, targets = training_prompts(encoder, dataset)
    fingerprint = memory_fingerprint(model, prompts, targets, len(dataset.titles))
    if path is not None and Path(path).is_file():
        memory = ItemMemory.load(path, fingerprint)
        if memory is not None:
            return memory, False
    if on_build is not None:
        on_build(len(prompts))
    memory = build_item_memory(model, prompts, targets, len(dataset.titles), encoder.tokenizer.pad_token_id,
                               batch_size, progress)
    if path is not None:
        try:
            memory.save(path, fingerprint)
        except OSError as err:  # read-only folder, permission denied, disk full: serve it unsaved
            reason = os.strerror(err.errno) if err.errno else str(err)  # the bare cause: a named error may add advice
            warnings.warn(f"cannot write the latent item memory cache {path} ({reason.lower()}): using the memory "
                          "built now; it is rebuilt at the next start")
    return memory, True


def similarity_matrix(users: torch.Tensor, vectors: torch.Tensor, similarity: str) -> torch.Tensor:
    """``[N, M]`` similarity of users ``[N, d]`` to vectors ``[M, d]``: negative L2 distance or cosine."""
    if similarity == "l2":
        return -torch.cdist(users, vectors)
    return torch.nn.functional.normalize(users, dim=-1) @ torch.nn.functional.normalize(vectors, dim=-1).T


def item_scores(users: torch.Tensor, memory: ItemMemory, variant: str = "global", similarity: str = "l2",
                neighbors: int = 5) -> torch.Tensor:
    """``[N, num_items]`` latent scores of every item for users ``[N, d]``; -inf for items never a target."""
    check_latent(variant, similarity, neighbors)
    users = users.float()
    counts = memory.counts
    if variant == "global":
        scores = similarity_matrix(users, memory.means(), similarity)  # [N, items]
    else:
        scores = torch.cat([_local_scores(chunk, memory, similarity, neighbors, counts)
                            for chunk in users.split(_local_chunk(memory, neighbors))])
    return scores.masked_fill(counts[None, :] == 0, float("-inf"))


def _local_chunk(memory: ItemMemory, neighbors: int) -> int:
    per_user = memory.states.shape[0] * 3 + memory.num_items * (memory.states.shape[1] + 1) \
        + memory.num_items * neighbors * memory.states.shape[1]
    return max(1, _FLOAT_BUDGET // per_user)


def _local_scores(users: torch.Tensor, memory: ItemMemory, similarity: str, neighbors: int,
                  counts: torch.Tensor) -> torch.Tensor:
    """``[b, items]``: per user and item, the similarity to the mean of the item's M training states most
    similar to the user. Sort each user's states by similarity, then (stably) by target: each item's states
    form one run, most similar first, starting at the same offset for every user."""
    b, d = users.shape
    sims = similarity_matrix(users, memory.states, similarity)  # [b, T]
    order = sims.argsort(dim=1, descending=True, stable=True)  # [b, T]
    order = order.gather(1, memory.targets[order].argsort(dim=1, stable=True))  # [b, T] grouped by item
    item = memory.targets[order]  # [b, T] nondecreasing in each row
    offset = torch.cumsum(counts, 0) - counts  # [items] first position of each item's run
    rank = torch.arange(order.shape[1])[None, :] - offset[item]  # [b, T] rank within the item's run
    user, pos = torch.nonzero(rank < neighbors, as_tuple=True)  # [S] the M nearest states of each item
    slot = user * memory.num_items + item[user, pos]  # [S]
    total = torch.zeros(b * memory.num_items, d).index_add_(0, slot, memory.states[order[user, pos]])  # [b * items, d]
    aggregate = total.view(b, memory.num_items, d) / counts.clamp(min=1, max=neighbors)[None, :, None].float()
    if similarity == "l2":
        return -(aggregate - users[:, None, :]).norm(dim=-1)  # [b, items]
    return torch.nn.functional.cosine_similarity(aggregate, users[:, None, :], dim=-1)


def latent_top_k(users: torch.Tensor, memory: ItemMemory, k: int = 10, variant: str = "global",
                 similarity: str = "l2", neighbors: int = 5) -> LatentTopK:
    """The ``k`` best items per user ``[N, d]`` by :func:`item_scores`; ties (and the -inf fallback items)
    in catalog order."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    scores = item_scores(users, memory, variant, similarity, neighbors)  # [N, items]
    top, order = scores.sort(dim=1, descending=True, stable=True)
    top, order = top[:, :k], order[:, :k]
    if k > memory.num_items:
        pad = k - memory.num_items
        order = torch.cat([order, order.new_full((order.shape[0], pad), -1)], 1)
        top = torch.cat([top, top.new_full((top.shape[0], pad), float("-inf"))], 1)
    return LatentTopK(order, top)


def latent_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, memory: ItemMemory, k: int = 10,
                  variant: str = "global", similarity: str = "l2", neighbors: int = 5, batch_size: int = 32,
                  progress=None) -> LatentTopK:
    """Top-``k`` items of each left-padded prompt ``[N, L]`` by latent-space matching: one forward per prompt."""
    check_latent(variant, similarity, neighbors)
    users = prompt_states(model, input_ids, attention_mask, batch_size, progress)  # [N, d]
    return latent_top_k(users, memory, k, variant, similarity, neighbors)
