"""Evaluation: constrained beam search for the recommendations, the positives' exact ranks for PR@K."""

from __future__ import annotations

import time

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bearrec.catalog import ItemTrie
from bearrec.data.dataset import RecDataset
from bearrec.data.prompts import PromptEncoder, left_pad
from bearrec.decoding import attribute_pruning, constrained_beam_search, exact_target_ranks
from bearrec.metrics import ranking_metrics, retrieved_rank
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
) -> dict:
    """Metrics of ``model`` on ``split``: NDCG@K and HR@K from beam search, PR@K from exact ranks.

    With ``pruning_rate`` (the default) the result also holds the pruning attribution (``"pruning"``:
    paper Figure 4 shares and the histogram of pruning steps) and, under ``"per_user"``, one
    :class:`~bearrec.decoding.PruningReport` row per user. ``pruning_users`` limits the exact ranks (and so
    PR@K and the attribution) to the first that many users of the (already random) evaluation sample:
    for a large model on a CPU they cost up to a minute per user whose positive ranks near the top.
    ``pruning_node_budget`` caps the trie nodes expanded per user; users left undecided are not ranked
    (counted as ``"unranked_users"``).
    """
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
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"beam search B={beam_width} ({split})", total=len(prompts))
        start = time.perf_counter()
        beams = constrained_beam_search(
            model, input_ids, attention_mask, trie, beam_width=beam_width, batch_size=batch_size,
            length_penalty=length_penalty, targets=targets, progress=lambda k: progress.advance(task, k),
        )
        beam_seconds = time.perf_counter() - start
        exact_rank = None
        if pruning_rate:
            ranked = len(prompts) if pruning_users is None else min(pruning_users, len(prompts))
            task = progress.add_task(f"exact ranks of the positives among {trie.num_items} items", total=ranked)
            start = time.perf_counter()
            known = (beams.item_ids[:ranked], beams.scores[:ranked]) if length_penalty == 0 else (None, None)
            exact_rank = torch.full((len(prompts),), -1, dtype=torch.long)  # -1: not ranked
            exact_rank[:ranked] = exact_target_ranks(
                model, input_ids[:ranked], attention_mask[:ranked], trie, targets[:ranked], max_rank=max(ks),
                known_items=known[0], known_scores=known[1], max_nodes=pruning_node_budget,
                progress=lambda k: progress.advance(task, k))
            score_seconds = time.perf_counter() - start
    result = {"metrics": ranking_metrics(beams.item_ids, targets, exact_rank, ks), "split": split,
              "users": len(prompts), "of_users": len(dataset.splits[split]), "beam_width": beam_width,
              "beam_search_seconds": beam_seconds, "retrieved_rank": retrieved_rank(beams.item_ids, targets).tolist()}
    if pruning_rate:
        report = attribute_pruning(beams, exact_rank, targets, ks)
        report.summary["unranked_users"] = ranked - report.summary["ranked_users"]  # over the node budget
        result.update(exact_rank_seconds=score_seconds, pruning=report.summary, per_user=report.per_user)
    return result

