"""Evaluation: constrained beam search for the recommendations, the positives' exact ranks for PR@K."""

from __future__ import annotations

import time

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bearrec.catalog import ItemTrie
from bearrec.data.dataset import RecDataset
from bearrec.data.prompts import PromptEncoder, left_pad
from bearrec.decoding import attribute_pruning, constrained_beam_search, exact_target_ranks
from bearrec.decoding.scoring import check_scoring
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
    scoring: str = "full",
) -> dict:
    """Metrics of ``model`` on ``split``: NDCG@K and HR@K from beam search, PR@K from exact ranks.

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
    """
    check_scoring(scoring)
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
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"beam search B={beam_width}, {scoring} scoring ({split})", total=len(prompts))
        start = time.perf_counter()
        beams = constrained_beam_search(
            model, input_ids, attention_mask, trie, beam_width=beam_width, batch_size=batch_size,
            length_penalty=length_penalty, targets=targets, progress=lambda k: progress.advance(task, k),
            scoring=scoring,
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
                known_items=known[0], known_scores=known[1], max_nodes=pruning_node_budget, scoring=scoring,
                progress=lambda k: progress.advance(task, k))
            score_seconds = time.perf_counter() - start
    result = {"metrics": ranking_metrics(beams.item_ids, targets, exact_rank, ks), "split": split,
              "users": len(prompts), "of_users": len(dataset.splits[split]), "beam_width": beam_width,
              "scoring": scoring, "length_penalty": length_penalty, "beam_search_seconds": beam_seconds, "retrieved_rank": retrieved_rank(beams.item_ids, targets).tolist()}
    if pruning_rate:
        report = attribute_pruning(beams, exact_rank, targets, ks)
        # Users whose ranking was attempted but not finished within the node budget (exact rank -1).
        report.summary.update(pruning_users=ranked, unranked_users=ranked - report.summary["ranked_users"],
                              node_budget=pruning_node_budget)
        result.update(exact_rank_seconds=score_seconds, pruning=report.summary, per_user=report.per_user)
    return result


def pruning_scope(summary: dict, users: int, ks: tuple[int, ...] = (5, 10)) -> str:
    """One sentence on which users PR@K counts: how many were ranked exactly, and how many a node budget
    left undecided (and what that means), from an :func:`evaluate` result's ``"pruning"`` summary."""
    attempted = summary.get("pruning_users", users)
    text = f"PR@K from the exact ranks of {summary['ranked_users']} of {users} users"
    if attempted < users:
        text += f" (the first {attempted} evaluated)"
    undecided, budget = summary.get("unranked_users", 0), summary.get("node_budget")
    if budget is not None:
        text += (f"; {undecided} left undecided by the node budget ({budget} expanded trie nodes per user): the "
                 f"budget ran out while trie prefixes more probable than their positive were still unexpanded and "
                 f"fewer than {max(ks)} items had been found above it, so their rank is unknown (in the top "
                 f"{max(ks)} or not) and PR@K leaves them out")
    return text + "."
