"""Evaluation: the recommendations of a decoder (constrained beam search, exact top-K or L2D latent-space
matching), and for beam search the positives' exact ranks for PR@K and for the gap between beam search and the
exact ranking.

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
those same users. It is no ceiling and no pure cost: ``gap = lost - gained - reordered``
(``lost_NDCG@K``: positives beam search pruned; ``gained_NDCG@K``: positives it kept, lifted above the
higher-scored negatives it pruned; ``reordered_NDCG@K``: its list ordered by ``log P / length **
length_penalty`` where the exact ranking orders by ``log P``; :func:`~bearrec.evaluation.metrics.gap_parts`),
and ``per_user`` holds the parts of each user. ``exact_ranking`` repeats them with beam search's NDCG/HR@K on
exactly those users (``decoded_*``) and their count, so the gap is read on one set of users even when
PR@K runs on a subset (the top-level NDCG/HR@K cover every evaluated user).

Every decoder's metrics also hold MRR@K and, from the train split's item counts (:func:`train_item_counts`),
ItemCoverage@K, GiniIndex@K and TailPercentage@K (RecBole's definitions, ``metrics.py``).
"""

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
from bearrec.distributed import map_users
from bearrec.evaluation.history import search_width, without_history
from bearrec.evaluation.metrics import (
    exact_ranking_metrics,
    gap_parts,
    log_prob_rank,
    ranking_metrics,
    report_ks,
    retrieved_rank,
)
from bearrec.evaluation.pruning import attribute_pruning
from bearrec.items.space import ItemSpace
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import Prompts


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


def evaluate(model, space: ItemSpace, dataset: RecDataset, settings: EvalSettings, decoding: DecodingConfig,
             batch_size: int = 32, latent_memory: str | Path | None = None, console=None) -> dict:
    """Metrics of ``model`` on ``settings.split``: NDCG@K and HR@K of the decoder's top ``beam_width`` items;
    with beam search, also PR@K from exact ranks and the NDCG/HR@K of the exact ranking.

    Both settings objects arrive checked (their ``validate`` runs where they are built): ``settings``
    (:class:`EvalSettings`) says which users and what to compute, ``decoding``
    (:class:`~bearrec.decoding.config.DecodingConfig`, its ``scoring`` filled in from the run's objective) how
    to decode; the fields named below are theirs. ``space`` is the run's item space (trie and prompts).

    ``decoder`` (``decoding/decode.py``; recorded in the result, with its time as ``decode_seconds``):

    * ``"beam"`` (default): trie-constrained beam search of width ``beam_width``;
    * ``"exact"``: :func:`~bearrec.decoding.exact_top_k`, the ``beam_width`` most probable items under
      ``scoring`` (by log P(title + EOS), so ``length_penalty`` does not apply); ``node_budget`` caps the
      trie nodes expanded per user, and ``certified_users`` counts those proven exact;
    * ``"latent"``: L2D (:mod:`bearrec.decoding.latent`) with ``latent_variant`` (global/local),
      ``latent_similarity`` (l2/cosine) and ``latent_neighbors`` (M of the local variant); its item memory is
      loaded from ``latent_memory`` (a file path) when it matches the model and train split, else built from
      the train split (and saved there); ``memory_seconds`` is that time, apart from ``decode_seconds``.

    ``exclude_history`` leaves each user's history items out of its list, as ``recommend`` and ``serve`` do:
    the decoder retrieves ``beam_width`` plus the user's distinct history items (beam search runs with that
    wider beam), they are dropped, and the list is cut back to ``beam_width``. PR@K and the exact ranking rank
    the whole catalog, so they are not computed then.

    ``scoring`` is the step scoring of the beam search (``"full"``: full-vocabulary log-softmax;
    ``"masked"``: renormalised over the trie children, see ``decoding/scoring.py``) and
    ``length_penalty`` Hugging Face's (0.0: none; 1.0: ``generate``'s default; it orders the finished list).
    The exact ranks use the same ``scoring`` and no length penalty: "top K by probability" is by log P(title +
    EOS), before length normalisation, as the paper defines PR@K. Both are written into the result.

    With ``pruning_rate`` (the default) and the ``"beam"`` decoder, whose pruning they judge, the result also holds
    PR@K, the pruning attribution and the exact ranking's metrics: see the module docstring.
    """
    if settings.split not in dataset.splits:
        raise ValueError(f"unknown split {settings.split!r}; choose one of {', '.join(dataset.splits)}")
    decoding = decoding.with_scoring("full")  # null where no objective names one
    ks = report_ks(settings.beam_width)
    if max(ks) > settings.beam_width:
        raise ValueError(f"K={max(ks)} exceeds the beam width {settings.beam_width}: the decoder returns only B items")
    histories, target_list = dataset.examples(settings.split, settings.max_users, settings.seed)
    if not histories:
        raise ValueError(f"the {settings.split} split is empty")
    prompts, targets = space.prompts(histories), torch.tensor(target_list)  # [N, L], [N]
    seen = [set(h) for h in histories] if settings.exclude_history else None
    ranks_wanted = settings.pruning_rate and decoding.decoder == "beam" and not settings.exclude_history
    model.eval()
    result = {"split": settings.split, "users": len(histories), "of_users": len(dataset.splits[settings.split]),
              "beam_width": settings.beam_width, "decoder": decoding.decoder,
              "exclude_history": settings.exclude_history}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        memory = None
        if decoding.decoder == "latent":
            memory = timed_item_memory(model, space.encoder, dataset, latent_memory, batch_size, progress, result)
        result.update(_decoder_fields(decoding))
        task = progress.add_task(f"{_decoder_name(settings, decoding)} ({settings.split})", total=len(histories))
        run = _Decoding(model, space.trie, decoding, memory, batch_size, lambda k: progress.advance(task, k))
        start = time.perf_counter()
        item_ids, found = _decode_users(run, prompts, targets if ranks_wanted else None, seen, settings.beam_width,
                                        result)
        result["decode_seconds"] = time.perf_counter() - start
        if decoding.decoder == "beam":
            result["beam_search_seconds"] = result["decode_seconds"]
        exact_rank = None
        if ranks_wanted:
            ranked = len(histories) if settings.pruning_users is None else min(settings.pruning_users, len(histories))
            task = progress.add_task(f"exact ranks of the positives among {space.num_items} items", total=ranked)
            start = time.perf_counter()
            exact_rank = _exact_ranks(run, prompts.rows(slice(0, ranked)), targets[:ranked], found, ranked, ks,
                                      settings.pruning_node_budget, lambda k: progress.advance(task, k))
            exact_rank = torch.cat([exact_rank, exact_rank.new_full((len(histories) - ranked,), -1)])  # -1: not ranked
            result["exact_rank_seconds"] = time.perf_counter() - start
    result["metrics"] = ranking_metrics(item_ids, targets, exact_rank, ks, train_item_counts(dataset))
    result["retrieved_rank"] = retrieved_rank(item_ids, targets).tolist()
    if ranks_wanted:  # the list's items' log-probabilities [N, B] attribute the gap
        _add_pruning(result, found, exact_rank, targets, ks, ranked, settings.pruning_node_budget,
                     found.summed_scores(space.trie, decoding.length_penalty))
    return result


def train_item_counts(dataset: RecDataset) -> torch.Tensor:
    """``[num_items]`` each catalog item's number of train examples it is the target of: the popularity RecBole's
    TailPercentage reads for a sequential model (``item_counter`` of the train split after its data augmentation,
    one row per target; a user's first item is never a target and is not counted)."""
    targets = [dataset.item_index(t) for t in dataset.splits["train"]["target"]]
    return torch.bincount(torch.tensor(targets, dtype=torch.long), minlength=len(dataset.items))


@dataclass
class _Decoding:
    """One evaluation's decoder call, all but the users: what :func:`decode` and the exact ranks take."""

    model: object
    trie: ItemTrie
    decoding: DecodingConfig
    memory: object
    batch_size: int
    progress: object


def _decoder_fields(decoding: DecodingConfig) -> dict:
    """The decoding settings an evaluation result records (those its decoder reads)."""
    if decoding.decoder == "latent":
        return {"latent_variant": decoding.latent_variant, "latent_similarity": decoding.latent_similarity,
                "latent_neighbors": decoding.latent_neighbors}
    fields = {"scoring": decoding.scoring}
    if decoding.decoder == "beam":
        fields["length_penalty"] = decoding.length_penalty
    else:
        fields["node_budget"] = decoding.node_budget
    return fields


def _decoder_name(settings: EvalSettings, decoding: DecodingConfig) -> str:
    """The progress bar's words for the decoder: ``beam search B=10, full scoring, history excluded``."""
    name = {"beam": f"beam search B={settings.beam_width}", "exact": f"exact top-{settings.beam_width}",
            "latent": f"L2D {decoding.latent_variant} decoding"}[decoding.decoder]
    name += f", {decoding.scoring} scoring" if decoding.decoder != "latent" else ""
    return name + (", history excluded" if settings.exclude_history else "")


def _decode_users(run: _Decoding, prompts: Prompts, targets: torch.Tensor | None, seen: list[set[int]] | None,
                  k: int, result: dict):
    """``(item_ids [N, k], found)``: every user's list, and the decoder's result for the pruning attribution.

    Users whose search has the same width share decoder calls: ``k`` plus their distinct history items when
    those are excluded (as `recommend` and `serve` decode a user), else ``k``. With several processes, each
    decodes its share of the users (distributed.py)."""
    n = len(prompts.input_ids)
    widths = [search_width(k, s, run.trie.num_items) for s in seen] if seen else [k] * n
    item_ids = torch.full((n, k), -1, dtype=torch.long)
    certified, nodes = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.long)
    for width in sorted(set(widths)):
        rows = torch.tensor([i for i, w in enumerate(widths) if w == width])
        found = map_users(decode, run.model, prompts.rows(rows), run.trie, width, run.decoding, run.memory,
                          run.batch_size, targets[rows] if targets is not None else None, progress=run.progress)
        if seen:
            item_ids[rows] = without_history(found.item_ids, found.scores, [seen[i] for i in rows], k)[0]
        else:
            item_ids[rows] = found.item_ids
        if run.decoding.decoder == "exact":
            certified[rows], nodes[rows] = found.certified, found.nodes_expanded
    if run.decoding.decoder == "exact":
        result.update(certified_users=int(certified.sum()), nodes_expanded_per_user=float(nodes.float().mean()))
    return item_ids, found


def _exact_ranks(run: _Decoding, prompts: Prompts, targets: torch.Tensor, found, ranked: int, ks: tuple[int, ...],
                 node_budget: int | None, progress) -> torch.Tensor:
    """``[ranked]`` the exact rank of each of the first ``ranked`` users' positive among all items (-1: left
    undecided by the node budget), knowing the beam's items and their exact scores."""
    known = found.summed_scores(run.trie, run.decoding.length_penalty)[:ranked]  # [ranked, B] exact scores
    return map_users(exact_target_ranks, run.model, prompts.input_ids, prompts.attention_mask, run.trie, targets,
                     max_rank=max(ks), known_items=found.item_ids[:ranked], known_scores=known, max_nodes=node_budget,
                     scoring=run.decoding.scoring, progress=progress)


def _add_pruning(result: dict, found, exact_rank: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...],
                 ranked: int, node_budget: int | None, summed: torch.Tensor) -> None:
    """The exact ranking beside beam search, into ``result``: its NDCG/HR@K and beam search's on the users with an
    exact rank, the gap and its parts (``summed [N, B]``: the list's items' log-probabilities), and the pruning
    attribution (its summary and one row per user, the gap's parts among its columns)."""
    got = retrieved_rank(found.item_ids, targets)
    by_log_prob = log_prob_rank(found.item_ids, summed, targets)  # [N]
    parts = {k: gap_parts(exact_rank, got, by_log_prob, k) for k in ks}
    exact = exact_ranking_metrics(exact_rank, got, ks, parts)
    result["metrics"].update({key: value for key, value in exact.items() if key.startswith("exact_")})
    for k in ks:
        result["metrics"][f"gap_NDCG@{k}"] = exact[f"exact_NDCG@{k}"] - exact[f"decoded_NDCG@{k}"]
        result["metrics"].update({f"{name}_NDCG@{k}": exact[f"{name}_NDCG@{k}"] for name in parts[k]})
    result["exact_ranking"] = exact
    report = attribute_pruning(found, exact_rank, targets, ks, summed)
    # Users whose ranking was attempted but not finished within the node budget (exact rank -1).
    report.summary.update(pruning_users=ranked, unranked_users=ranked - report.summary["ranked_users"],
                          node_budget=node_budget)
    result.update(pruning=report.summary, per_user=report.per_user)


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
