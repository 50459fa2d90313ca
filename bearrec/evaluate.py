"""Evaluation: the recommendations of a decoder (constrained beam search, exact top-K or L2D latent-space
matching), and for beam search the positives' exact ranks for PR@K and for what pruning costs."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bearrec.catalog import ItemTrie
from bearrec.data.dataset import RecDataset
from bearrec.data.prompts import PromptEncoder, left_pad
from bearrec.decoding import (attribute_pruning, constrained_beam_search, exact_target_ranks, exact_top_k, item_memory,
                              latent_decode)
from bearrec.decoding.latent import check_latent
from bearrec.decoding.scoring import check_scoring
from bearrec.distributed import map_users
from bearrec.metrics import exact_ranking_metrics, ranking_metrics, retrieved_rank

DECODERS = ("beam", "exact", "latent")
from bearrec.train import encode_split


def evaluate(
    model,
    tokenizer,
    dataset: RecDataset,
    encoder: PromptEncoder,
    trie: ItemTrie,
    split: str = "test",
    beam_width: int = 10,
    ks: tuple[int, ...] = (5, 10),
    max_users: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    pruning_rate: bool = True,
    length_penalty: float = 0.0,
    pruning_users: int | None = None,
    pruning_node_budget: int | None = None,
    console=None,
    scoring: str = "full",
    decoder: str = "beam",
    node_budget: int | None = None,
    latent_variant: str = "global",
    latent_similarity: str = "l2",
    latent_neighbors: int = 5,
    latent_memory: str | Path | None = None,
) -> dict:
    """Metrics of ``model`` on ``split``: NDCG@K and HR@K of the ``decoder``'s top ``beam_width`` items; with
    beam search, also PR@K from exact ranks and the NDCG/HR@K of the exact ranking.

    ``decoder`` (recorded in the result, with its time as ``decode_seconds``):

    * ``"beam"`` (default): trie-constrained beam search of width ``beam_width``;
    * ``"exact"``: :func:`~bearrec.decoding.exact_top_k`, the ``beam_width`` most probable items under
      ``scoring`` (by log P(title + EOS), so ``length_penalty`` does not apply); ``node_budget`` caps the
      trie nodes expanded per user, and ``certified_users`` counts those proven exact;
    * ``"latent"``: L2D (:mod:`bearrec.decoding.latent`) with ``latent_variant`` (global/local),
      ``latent_similarity`` (l2/cosine) and ``latent_neighbors`` (M of the local variant); its item memory is
      loaded from ``latent_memory`` (a file path) when it matches the model and train split, else built from
      the train split (and saved there); ``memory_seconds`` is that time, apart from ``decode_seconds``.

    The exact ranks, PR@K and the pruning attribution judge beam search and are computed for ``"beam"`` only.

    ``scoring`` is the step scoring of the beam search (``"full"``: full-vocabulary log-softmax;
    ``"masked"``: renormalised over the trie children, see ``decoding/scoring.py``) and
    ``length_penalty`` Hugging Face's (0.0: none; 1.0: ``generate``'s default). The exact ranks behind
    PR@K use the same ``scoring``: "top K by probability" means the probability the search ranks by
    (before length normalisation, as the paper defines PR@K). Both are written into the result.

    With ``pruning_rate`` (the default) the result also holds the pruning attribution (``"pruning"``:
    paper Figure 4 shares and the histogram of pruning steps) and, under ``"per_user"``, one
    :class:`~bearrec.decoding.PruningReport` row per user. ``pruning_users`` limits the exact ranks (and so
    PR@K and the attribution) to the first that many users of the (already random) evaluation sample:
    for a large model on a CPU they cost up to a minute per user whose positive ranks near the top.
    ``pruning_node_budget`` caps the trie nodes expanded per user. A user is left undecided when the
    budget runs out while trie prefixes more probable than the positive are still unexpanded and fewer
    than max(K) items were found above it: its rank is unknown, in the top K or not. Such
    users are left out of PR@K and counted in ``pruning["unranked_users"]`` (:func:`pruning_scope`
    says it in words).

    What pruning costs: ``metrics`` also holds ``exact_NDCG@K`` and ``exact_HR@K``, the metrics of the exact
    ranking (every item ranked by log P(title + EOS) under ``scoring``, nothing pruned), computed from the
    same exact ranks as PR@K and so over the same users: the first ``pruning_users`` evaluated users that a
    node budget did not leave undecided. ``exact_ranking`` repeats them with beam search's NDCG/HR@K on
    exactly those users (``decoded_*``) and their count, so the gap is read on one set of users even when
    PR@K runs on a subset (the top-level NDCG/HR@K cover every evaluated user).
    """
    check_scoring(scoring)
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    if node_budget is not None and node_budget < 1:
        raise ValueError(f"node_budget must be at least 1, not {node_budget}")
    check_latent(latent_variant, latent_similarity, latent_neighbors)
    if pruning_node_budget is not None and pruning_node_budget < 1:
        raise ValueError(f"pruning_node_budget must be at least 1, not {pruning_node_budget}")
    if pruning_users is not None and pruning_users < 0:
        raise ValueError(f"pruning_users must be at least 0, not {pruning_users}")
    if split not in dataset.splits:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(dataset.splits)}")
    if max(ks) > beam_width:
        raise ValueError(f"K={max(ks)} exceeds the beam width {beam_width}: beam search returns only B items")
    prompts, target_list = encode_split(dataset, split, encoder, max_users, seed)
    if not prompts:
        raise ValueError(f"the {split} split is empty")
    targets = torch.tensor(target_list)
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id)
    model.eval()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    if decoder != "beam":
        with Progress(*columns, console=console) as progress:
            return _evaluate_other(model, dataset, encoder, trie, input_ids, attention_mask, targets, split, beam_width,
                                   ks, scoring, decoder, node_budget, latent_variant, latent_similarity,
                                   latent_neighbors, latent_memory, batch_size, progress)
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"beam search B={beam_width}, {scoring} scoring ({split})", total=len(prompts))
        start = time.perf_counter()
        beams = map_users(  # with several processes, each decodes its share of the users (distributed.py)
            constrained_beam_search, model, input_ids, attention_mask, trie, beam_width=beam_width,
            batch_size=batch_size, length_penalty=length_penalty, targets=targets,
            progress=lambda k: progress.advance(task, k), scoring=scoring,
        )
        beam_seconds = time.perf_counter() - start
        exact_rank = None
        if pruning_rate:
            ranked = len(prompts) if pruning_users is None else min(pruning_users, len(prompts))
            task = progress.add_task(f"exact ranks of the positives among {trie.num_items} items", total=ranked)
            start = time.perf_counter()
            known = (beams.item_ids[:ranked], beams.scores[:ranked]) if length_penalty == 0 else (None, None)
            exact_rank = torch.full((len(prompts),), -1, dtype=torch.long)  # -1: not ranked
            exact_rank[:ranked] = map_users(
                exact_target_ranks, model, input_ids[:ranked], attention_mask[:ranked], trie, targets[:ranked],
                max_rank=max(ks), known_items=known[0], known_scores=known[1], max_nodes=pruning_node_budget,
                scoring=scoring, progress=lambda k: progress.advance(task, k))
            score_seconds = time.perf_counter() - start
    result = {"metrics": ranking_metrics(beams.item_ids, targets, exact_rank, ks), "split": split,
              "users": len(prompts), "of_users": len(dataset.splits[split]), "beam_width": beam_width,
              "scoring": scoring, "length_penalty": length_penalty, "decoder": "beam", "beam_search_seconds": beam_seconds,
              "decode_seconds": beam_seconds, "retrieved_rank": retrieved_rank(beams.item_ids, targets).tolist()}
    if pruning_rate:
        # What pruning costs: the exact ranking's NDCG/HR@K beside beam search's, on the users with an exact rank.
        ceiling = exact_ranking_metrics(exact_rank, retrieved_rank(beams.item_ids, targets), ks)
        result["metrics"].update({key: value for key, value in ceiling.items() if key.startswith("exact_")})
        result["exact_ranking"] = ceiling
        report = attribute_pruning(beams, exact_rank, targets, ks)
        # Users whose ranking was attempted but not finished within the node budget (exact rank -1).
        report.summary.update(pruning_users=ranked, unranked_users=ranked - report.summary["ranked_users"],
                              node_budget=pruning_node_budget)
        result.update(exact_rank_seconds=score_seconds, pruning=report.summary, per_user=report.per_user)
    return result


def _evaluate_other(model, dataset, encoder, trie, input_ids, attention_mask, targets, split, beam_width, ks, scoring,
                    decoder, node_budget, latent_variant, latent_similarity, latent_neighbors, latent_memory,
                    batch_size, progress) -> dict:
    """The ``exact`` and ``latent`` decoders of :func:`evaluate`: their lists, metrics and costs."""
    users = input_ids.shape[0]
    result = {"split": split, "users": users, "of_users": len(dataset.splits[split]), "beam_width": beam_width,
              "decoder": decoder}
    if decoder == "exact":
        task = progress.add_task(f"exact top-{beam_width}, {scoring} scoring ({split})", total=users)
        start = time.perf_counter()
        found = map_users(exact_top_k, model, input_ids, attention_mask, trie, k=beam_width, scoring=scoring,
                          node_budget=node_budget, batch_size=min(batch_size, 16),
                          progress=lambda k: progress.advance(task, k))
        result.update(scoring=scoring, node_budget=node_budget, certified_users=int(found.certified.sum()),
                      nodes_expanded_per_user=float(found.nodes_expanded.float().mean()))
    else:
        task = None

        def opened(total: int) -> None:
            nonlocal task
            task = progress.add_task(f"L2D item memory from {total} training prompts", total=total)

        start = time.perf_counter()
        memory, built = item_memory(model, encoder, dataset, latent_memory, batch_size, on_build=opened,
                                    progress=lambda k: progress.advance(task, k))
        result.update(latent_variant=latent_variant, latent_similarity=latent_similarity,
                      latent_neighbors=latent_neighbors, memory_built=built, memory_seconds=time.perf_counter() - start,
                      memory_examples=int(memory.targets.numel()),
                      items_without_memory=int((memory.counts == 0).sum()))
        task = progress.add_task(f"L2D {latent_variant} decoding ({split})", total=users)
        start = time.perf_counter()
        found = latent_decode(model, input_ids, attention_mask, memory, k=beam_width, variant=latent_variant,
                              similarity=latent_similarity, neighbors=latent_neighbors, batch_size=batch_size,
                              progress=lambda k: progress.advance(task, k))
    result["decode_seconds"] = time.perf_counter() - start
    result["metrics"] = ranking_metrics(found.item_ids, targets, None, ks)
    result["retrieved_rank"] = retrieved_rank(found.item_ids, targets).tolist()
    return result


def pruning_scope(summary: dict, users: int, ks: tuple[int, ...] = (5, 10)) -> str:
    """One sentence on which users PR@K counts: how many were ranked exactly, and how many a node budget
    left undecided (and what that means), from an :func:`evaluate` result's ``"pruning"`` summary."""
    attempted = summary.get("pruning_users", users)
    text = f"PR@K and the exact ranking's NDCG/HR@K from the exact ranks of {summary['ranked_users']} of {users} users"
    if attempted < users:
        text += f" (the first {attempted} evaluated)"
    undecided, budget = summary.get("unranked_users", 0), summary.get("node_budget")
    if budget is not None:
        text += (f"; {undecided} left undecided by the node budget ({budget} expanded trie nodes per user): the "
                 f"budget ran out while trie prefixes more probable than their positive were still unexpanded and "
                 f"fewer than {max(ks)} items had been found above it, so their rank is unknown (in the top "
                 f"{max(ks)} or not) and PR@K leaves them out")
    return text + "."
