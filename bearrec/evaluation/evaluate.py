"""Evaluation: the recommendations of a decoder (constrained beam search, exact top-K or L2D latent-space
matching), and for beam search the positives' exact ranks for PR@K and for what pruning costs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bearrec.checks import MAX_SEED, check
from bearrec.data.dataset import RecDataset
from bearrec.decoding import decode, exact_target_ranks, item_memory
from bearrec.decoding.config import DecodingConfig
from bearrec.decoding.scoring import check_scoring
from bearrec.distributed import map_users
from bearrec.evaluation.metrics import exact_ranking_metrics, ranking_metrics, report_ks, retrieved_rank
from bearrec.evaluation.pruning import attribute_pruning
from bearrec.items.prompts import PromptEncoder, encode_split
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import left_pad


@dataclass
class EvalSettings:
    """How runs are evaluated: ``evaluate`` checks its options with it, and an experiment evaluates every run
    with one (the same users for all of them)."""

    split: str = "test"
    beam_width: int = 10
    max_users: int | None = None  # seeded subsample of the split (None: all)
    pruning_rate: bool = True  # PR@K and the pruning attribution (costs a search per user)
    pruning_users: int | None = None  # PR@K on the first that many evaluated users only (None: all)
    pruning_node_budget: int | None = None  # trie nodes expanded per user for its exact rank (None: no limit)
    seed: int = 0  # seed of the user subsample, fixed across training seeds
    exclude_history: bool = False  # leave the user's history items out of the recommended lists

    def validate(self, section: str = "eval", flags: dict[str, str] | None = None) -> None:
        """Check every field; ``flags`` names the command-line flag of a field in the message (``max_users``
        is ``--max-eval-users`` in compare, ``--max-users`` in evaluate)."""
        flags = {"max_users": "--max-eval-users", "beam_width": "--beam-width", "pruning_users": "--pruning-users",
                 "pruning_node_budget": "--pruning-node-budget", "split": "--split", "seed": "--seed", **(flags or {})}

        def rule(name: str, text: str) -> str:
            return f"{text} ({flags[name]})"

        check(self.split in ("valid", "test"), section, "split", rule("split", "valid or test"), self.split)
        check(self.beam_width >= 1, section, "beam_width", rule("beam_width", "at least 1"), self.beam_width)
        check(self.max_users is None or self.max_users >= 1, section, "max_users",
              rule("max_users", "at least 1, or unset for all"), self.max_users)
        check(self.pruning_users is None or self.pruning_users >= 1, section, "pruning_users",
              rule("pruning_users", "at least 1, or unset for all"), self.pruning_users)
        check(self.pruning_node_budget is None or self.pruning_node_budget >= 1, section, "pruning_node_budget",
              rule("pruning_node_budget", "at least 1, or unset for no limit"), self.pruning_node_budget)
        check(0 <= self.seed <= MAX_SEED, section, "seed", rule("seed", f"in [0, {MAX_SEED}]"), self.seed)


def evaluate(
    model,
    tokenizer,
    dataset: RecDataset,
    encoder: PromptEncoder,
    trie: ItemTrie,
    split: str = "test",
    beam_width: int = 10,
    ks: tuple[int, ...] | None = None,
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
    exclude_history: bool = False,
) -> dict:
    """Metrics of ``model`` on ``split``: NDCG@K and HR@K of the ``decoder``'s top ``beam_width`` items; with
    beam search, also PR@K from exact ranks and the NDCG/HR@K of the exact ranking.

    ``decoder`` (``decoding/decode.py``; recorded in the result, with its time as ``decode_seconds``):

    * ``"beam"`` (default): trie-constrained beam search of width ``beam_width``;
    * ``"exact"``: :func:`~bearrec.decoding.exact_top_k`, the ``beam_width`` most probable items under
      ``scoring`` (by log P(title + EOS), so ``length_penalty`` does not apply); ``node_budget`` caps the
      trie nodes expanded per user, and ``certified_users`` counts those proven exact;
    * ``"latent"``: L2D (:mod:`bearrec.decoding.latent`) with ``latent_variant`` (global/local),
      ``latent_similarity`` (l2/cosine) and ``latent_neighbors`` (M of the local variant); its item memory is
      loaded from ``latent_memory`` (a file path) when it matches the model and train split, else built from
      the train split (and saved there); ``memory_seconds`` is that time, apart from ``decode_seconds``.

    The exact ranks, PR@K and the pruning attribution judge beam search and are computed for ``"beam"`` only.

    ``exclude_history`` leaves each user's history items out of its list, as ``recommend`` and ``serve`` do:
    the decoder retrieves ``beam_width`` plus the user's distinct history items (beam search runs with that
    wider beam), they are dropped, and the list is cut back to ``beam_width``. PR@K and the exact ranking rank
    the whole catalog, so they are not computed then.

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
    node budget did not leave undecided; ``gap_NDCG@K`` is the exact ranking's NDCG@K minus beam search's on
    those same users (what pruning costs). ``exact_ranking`` repeats them with beam search's NDCG/HR@K on
    exactly those users (``decoded_*``) and their count, so the gap is read on one set of users even when
    PR@K runs on a subset (the top-level NDCG/HR@K cover every evaluated user).
    """
    EvalSettings(split, beam_width, max_users, pruning_rate, pruning_users, pruning_node_budget, seed,
                 exclude_history).validate("evaluate", {"max_users": "--max-users"})
    check_scoring(scoring)
    DecodingConfig(scoring, length_penalty, decoder, node_budget, latent_variant, latent_similarity,
                   latent_neighbors).validate("evaluate")
    if split not in dataset.splits:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(dataset.splits)}")
    ks = ks or report_ks(beam_width)
    if max(ks) > beam_width:
        raise ValueError(f"K={max(ks)} exceeds the beam width {beam_width}: the decoder returns only B items")
    prompts, target_list = encode_split(dataset, split, encoder, max_users, seed)
    if not prompts:
        raise ValueError(f"the {split} split is empty")
    targets = torch.tensor(target_list)
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id)
    model.eval()
    seen = [set(h) for h in dataset.examples(split, max_users, seed)[0]] if exclude_history else None
    pruning_rate = pruning_rate and decoder == "beam" and not exclude_history
    result = {"split": split, "users": len(prompts), "of_users": len(dataset.splits[split]), "beam_width": beam_width,
              "decoder": decoder, "exclude_history": exclude_history}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        memory = None
        if decoder == "latent":
            memory = timed_item_memory(model, encoder, dataset, latent_memory, batch_size, progress, result)
            result.update(latent_variant=latent_variant, latent_similarity=latent_similarity,
                          latent_neighbors=latent_neighbors)
        if decoder != "latent":
            result.update(scoring=scoring)
        name = {"beam": f"beam search B={beam_width}", "exact": f"exact top-{beam_width}",
                "latent": f"L2D {latent_variant} decoding"}[decoder]
        name += f", {scoring} scoring" if decoder != "latent" else ""
        name += ", history excluded" if seen else ""
        task = progress.add_task(f"{name} ({split})", total=len(prompts))
        start = time.perf_counter()
        # Users whose search has the same width share decoder calls: B plus their distinct history items when
        # those are excluded (as `recommend` and `serve` decode a user), else B. With several processes, each
        # decodes its share of the users (distributed.py).
        widths = [min(beam_width + len(s), trie.num_items) for s in seen] if seen else [beam_width] * len(prompts)
        item_ids = torch.full((len(prompts), beam_width), -1, dtype=torch.long)
        certified, nodes = torch.ones(len(prompts), dtype=torch.bool), torch.zeros(len(prompts), dtype=torch.long)
        for width in sorted(set(widths)):
            rows = torch.tensor([i for i, w in enumerate(widths) if w == width])
            found = map_users(decode, model, input_ids[rows], attention_mask[rows], trie, k=width, decoder=decoder,
                              scoring=scoring, length_penalty=length_penalty, node_budget=node_budget, memory=memory,
                              latent_variant=latent_variant, latent_similarity=latent_similarity,
                              latent_neighbors=latent_neighbors, batch_size=batch_size,
                              targets=targets[rows] if pruning_rate else None,
                              progress=lambda k: progress.advance(task, k))
            item_ids[rows] = _without(found.item_ids, [seen[i] for i in rows], beam_width) if seen else found.item_ids
            if decoder == "exact":
                certified[rows], nodes[rows] = found.certified, found.nodes_expanded
        result["decode_seconds"] = time.perf_counter() - start
        if decoder == "beam":
            result.update(length_penalty=length_penalty, beam_search_seconds=result["decode_seconds"])
        elif decoder == "exact":
            result.update(node_budget=node_budget, certified_users=int(certified.sum()),
                          nodes_expanded_per_user=float(nodes.float().mean()))
        exact_rank = None
        if pruning_rate:
            ranked = len(prompts) if pruning_users is None else min(pruning_users, len(prompts))
            task = progress.add_task(f"exact ranks of the positives among {trie.num_items} items", total=ranked)
            start = time.perf_counter()
            known = found.summed_scores(trie, length_penalty)[:ranked]  # [ranked, B] the beam's items' exact scores
            exact_rank = torch.full((len(prompts),), -1, dtype=torch.long)  # -1: not ranked
            exact_rank[:ranked] = map_users(
                exact_target_ranks, model, input_ids[:ranked], attention_mask[:ranked], trie, targets[:ranked],
                max_rank=max(ks), known_items=found.item_ids[:ranked], known_scores=known, max_nodes=pruning_node_budget,
                scoring=scoring, progress=lambda k: progress.advance(task, k))
            result["exact_rank_seconds"] = time.perf_counter() - start
    result["metrics"] = ranking_metrics(item_ids, targets, exact_rank, ks)
    result["retrieved_rank"] = retrieved_rank(item_ids, targets).tolist()
    if pruning_rate:
        # What pruning costs: the exact ranking's NDCG/HR@K beside beam search's, on the users with an exact rank.
        ceiling = exact_ranking_metrics(exact_rank, retrieved_rank(found.item_ids, targets), ks)
        result["metrics"].update({key: value for key, value in ceiling.items() if key.startswith("exact_")})
        result["metrics"].update({f"gap_NDCG@{k}": ceiling[f"exact_NDCG@{k}"] - ceiling[f"decoded_NDCG@{k}"] for k in ks})
        result["exact_ranking"] = ceiling
        report = attribute_pruning(found, exact_rank, targets, ks)
        # Users whose ranking was attempted but not finished within the node budget (exact rank -1).
        report.summary.update(pruning_users=ranked, unranked_users=ranked - report.summary["ranked_users"],
                              node_budget=pruning_node_budget)
        result.update(pruning=report.summary, per_user=report.per_user)
    return result


def timed_item_memory(model, encoder, dataset, path, batch_size, progress, result: dict):
    """The L2D item memory (loaded from ``path`` when it matches, else built and saved); its cost into ``result``."""
    task = None

    def opened(total: int) -> None:
        nonlocal task
        task = progress.add_task(f"L2D item memory from {total} training prompts", total=total)

    start = time.perf_counter()
    memory, built = item_memory(model, encoder, dataset, path, batch_size, on_build=opened,
                                progress=lambda k: progress.advance(task, k))
    result.update(memory_built=built, memory_seconds=time.perf_counter() - start,
                  memory_examples=int(memory.targets.numel()), items_without_memory=int((memory.counts == 0).sum()))
    return memory


def _without(item_ids: torch.Tensor, seen: list[set[int]], k: int) -> torch.Tensor:
    """``[N, k]``: each row of ``item_ids [N, W]`` without its ``seen`` items (and -1 padding), cut to ``k``."""
    rows = [[i for i in row if i >= 0 and i not in s][:k] for row, s in zip(item_ids.tolist(), seen)]
    return torch.tensor([row + [-1] * (k - len(row)) for row in rows], dtype=torch.long)


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
