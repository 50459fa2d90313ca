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
from bearrec.decoding.config import DecodingConfig
from bearrec.decoding.exact import ExactTopK, exact_top_k
from bearrec.decoding.latent import ItemMemory, LatentTopK, latent_decode
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import Prompts


def decode(
    model,
    prompts: Prompts,
    trie: ItemTrie,
    k: int,
    decoding: DecodingConfig,
    memory: ItemMemory | None = None,
    batch_size: int = 32,
    targets: torch.Tensor | None = None,
    progress=None,
) -> BeamResult | ExactTopK | LatentTopK:
    """The top ``k`` catalog items of each left-padded prompt ``[N, L]`` by ``decoding.decoder``; every result
    has ``item_ids [N, k]`` (catalog indices, best first, -1 where fewer) and ``scores [N, k]``.

    ``decoding`` is a checked :class:`~bearrec.decoding.config.DecodingConfig`: its ``scoring`` (full / masked;
    null, where no objective names one: full) applies to beam and exact, ``length_penalty`` to beam,
    ``node_budget`` to exact and the ``latent_*`` fields to latent, which also needs the item ``memory``.
    ``targets [N]`` (beam only) are followed through the search for the pruning attribution. ``progress(n)``
    is called with the number of users finished.
    """
    scoring = decoding.with_scoring("full").scoring
    if decoding.decoder == "beam":
        return constrained_beam_search(model, prompts.input_ids, prompts.attention_mask, trie, beam_width=k,
                                       batch_size=batch_size, length_penalty=decoding.length_penalty, targets=targets,
                                       progress=progress, scoring=scoring)
    if decoding.decoder == "exact":
        return exact_top_k(model, prompts.input_ids, prompts.attention_mask, trie, k=k, scoring=scoring,
                           node_budget=decoding.node_budget, batch_size=min(batch_size, 16), progress=progress)
    if memory is None:
        raise ValueError("the latent decoder needs an item memory (decoding.latent.item_memory)")
    return latent_decode(model, prompts.input_ids, prompts.attention_mask, memory, k=k, variant=decoding.latent_variant,
                         similarity=decoding.latent_similarity, neighbors=decoding.latent_neighbors,
                         batch_size=batch_size, progress=progress)
