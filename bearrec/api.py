"""The public Python API: what a researcher with a training loop of their own imports.

Everything here is also importable as ``bearrec.<name>`` (loaded on first use, so that ``import bearrec``
stays light). ``docs/api.md`` shows BEAR inside a plain Hugging Face ``Trainer`` and trie-constrained
``generate`` through the trie; ``tests/test_api.py`` runs those examples.

* objectives: pure functions of aligned ``logits [N, T, V]`` and ``labels [N, T]`` (-100 = unscored);
* the trie of a catalog (:class:`ItemTrie`, :func:`build_trie`) and its trie-valid sets for training
  (:meth:`ItemTrie.label_candidates`) and for ``generate`` (:meth:`ItemTrie.prefix_allowed_tokens_fn`);
* decoders over left-padded prompts: constrained beam search, exact top-K, exact catalog scores and ranks;
* metrics over 1-based ranks (0 = not retrieved): NDCG@K, HR@K, PR@K.
"""

from bearrec.data.dataset import RecDataset
from bearrec.decoding import (
                              BeamResult,
                              ExactTopK,
                              constrained_beam_search,
                              exact_target_ranks,
                              exact_top_k,
                              score_catalog,
)
from bearrec.evaluation.metrics import full_rank, hr_at_k, ndcg_at_k, pruning_rate_at_k, ranking_metrics, retrieved_rank
from bearrec.items.trie import ItemTrie, build_trie, tokenize_titles
from bearrec.lm.forward import left_pad
from bearrec.objectives import (
                              IGNORE_INDEX,
                              apao_pairwise_loss,
                              apao_pointwise_loss,
                              beam_sim_loss,
                              bear_loss,
                              msl_loss,
                              pruning_margin,
                              sdpo_loss,
                              sft_loss,
)

__all__ = [
    "BeamResult",
    "ExactTopK",
    "IGNORE_INDEX",
    "ItemTrie",
    "RecDataset",
    "apao_pairwise_loss",
    "apao_pointwise_loss",
    "beam_sim_loss",
    "bear_loss",
    "build_trie",
    "constrained_beam_search",
    "exact_target_ranks",
    "exact_top_k",
    "full_rank",
    "hr_at_k",
    "left_pad",
    "msl_loss",
    "ndcg_at_k",
    "pruning_margin",
    "pruning_rate_at_k",
    "ranking_metrics",
    "retrieved_rank",
    "score_catalog",
    "sdpo_loss",
    "sft_loss",
    "tokenize_titles",
]
