"""One entry point for the three decoders, so that validation, evaluation, compare and serving that name a
decoder all get the same top-K lists.

* ``beam``: trie-constrained beam search (:func:`~bearrec.decoding.constrained_beam_search`);
* ``exact``: the exact top K by probability (:func:`~bearrec.decoding.exact_top_k`), nothing pruned;
* ``latent``: L2D latent-space matching (:mod:`bearrec.decoding.latent`) against an item memory built from
  the train split.
"""

from __future__ import annotations

import torch

from bearrec.decoding.beam_search import BeamResult, constrained_beam_search
from bearrec.decoding.exact import ExactTopK, exact_top_k
from bearrec.decoding.latent import ItemMemory, LatentTopK, check_latent, latent_decode
from bearrec.items.trie import ItemTrie

DECODERS = ("beam", "exact", "latent")


def check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")


def decode(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    k: int = 10,
    decoder: str = "beam",
    scoring: str = "full",
    length_penalty: float = 0.0,
    node_budget: int | None = None,
    memory: ItemMemory | None = None,
    latent_variant: str = "global",
    latent_similarity: str = "l2",
    latent_neighbors: int = 5,
    batch_size: int = 32,
    targets: torch.Tensor | None = None,
    progress=None,
) -> BeamResult | ExactTopK | LatentTopK:
    """The top ``k`` catalog items of each left-padded prompt ``[N, L]`` by ``decoder``; every result has
    ``item_ids [N, k]`` (catalog indices, best first, -1 where fewer) and ``scores [N, k]``.

    ``scoring`` (full / masked) applies to beam and exact, ``length_penalty`` and ``targets`` (for the
    pruning attribution) to beam only, ``node_budget`` to exact; ``memory`` (required) and the ``latent_*``
    settings to latent. ``progress(n)`` is called with the number of users finished.
    """
    check_decoder(decoder)
    if decoder == "beam":
        return constrained_beam_search(model, input_ids, attention_mask, trie, beam_width=k, batch_size=batch_size,
                                       length_penalty=length_penalty, targets=targets, progress=progress,
                                       scoring=scoring)
    if decoder == "exact":
        return exact_top_k(model, input_ids, attention_mask, trie, k=k, scoring=scoring, node_budget=node_budget,
                           batch_size=min(batch_size, 16), progress=progress)
    check_latent(latent_variant, latent_similarity, latent_neighbors)
    if memory is None:
        raise ValueError("the latent decoder needs an item memory (decoding.latent.item_memory)")
    return latent_decode(model, input_ids, attention_mask, memory, k=k, variant=latent_variant,
                         similarity=latent_similarity, neighbors=latent_neighbors, batch_size=batch_size,
                         progress=progress)
