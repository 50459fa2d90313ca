"""`bearrec evaluate` (a split, with PR@K and the pruning attribution) and `bearrec recommend` (one history)."""

from __future__ import annotations

import warnings
from typing import Annotated, Optional

import typer
from rich.markup import escape as rich_escape

from bearrec.cli.app import (
    DECODER_FLAGS,
    AllowOtherData,
    DecoderNodeBudget,
    LatentNeighbors,
    LatentSimilarity,
    LatentVariant,
    RunData,
    RunFolder,
    _cli_errors,
    _progress,
    app,
    console,
    out,
)


@app.command()
@_cli_errors
def evaluate(
    run: RunFolder,
    data: RunData = None,
    split: Annotated[str, typer.Option(help="valid or test")] = "test",
    beam_width: Annotated[int, typer.Option(help="beam width B of constrained beam search (paper: 10)")] = 10,
    max_users: Annotated[Optional[int], typer.Option(help="evaluate a seeded random subsample of the split")] = None,
    pruning_rate: Annotated[bool, typer.Option("--pruning-rate/--no-pruning-rate", help="also compute the positives' exact ranks for PR@K and the pruning attribution")] = True,
    pruning_users: Annotated[Optional[int], typer.Option(help="PR@K on the first N evaluated users only")] = None,
    pruning_node_budget: Annotated[Optional[int], typer.Option(help="trie nodes expanded per user for its exact rank; users still undecided are left out of PR@K and counted")] = None,
    scoring: Annotated[Optional[str], typer.Option(help="step scores of beam search and exact ranks, full or masked: full (vocabulary log-softmax, as SFT) or masked (renormalised over the trie children, as MSL and official BEAR) [default: the run's objective's]")] = None,
    length_penalty: Annotated[Optional[float], typer.Option(help="Hugging Face length_penalty of beam search (0: rank by log P(title); 1.0: generate's default, the BEAR authors') [default: the run's decoding.length_penalty]")] = None,
    decoder: Annotated[Optional[str], typer.Option(help="beam (constrained beam search, width --beam-width), exact (the --beam-width most probable items, best-first over the trie: nothing pruned) or latent (L2D: match the prompt's last hidden state with training prompts' states; no generation) [default: the run's decoding.decoder, beam]")] = None,
    node_budget: DecoderNodeBudget = None,
    latent_variant: LatentVariant = None,
    latent_similarity: LatentSimilarity = None,
    latent_neighbors: LatentNeighbors = None,
    exclude_history: Annotated[bool, typer.Option("--exclude-history/--include-history", help="leave each user's history items out of its list (the decoder retrieves B + that user's distinct history items, then cuts back to B, as recommend and serve do; PR@K is not computed then)")] = False,
    report: Annotated[bool, typer.Option("--report", help="write eval_<split>_pruning.png: Figure 4-style attribution and the pruning-step histogram")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    allow_other_data: AllowOtherData = False,
):
    """NDCG@K and HR@K (K = 5, 10) of a decoder (default: constrained beam search); with beam search, also PR@K,
    the exact ranking's NDCG/HR@K (and the gap's parts: lost, gained, reordered) and why positives were pruned,
    from exact scores.

    Other decoders write eval_<split>_<decoder>.json; the latent decoder keeps its item memory in the run folder.
    """
    from bearrec.decoding.config import DecodingOverrides
    from bearrec.evaluation.evaluate import EvalSettings, pruning_scope
    from bearrec.evaluation.report import pruning_figure, pruning_table, rich_table
    from bearrec.runs import ResultNotSaved, evaluate_run

    if report and (not pruning_rate or exclude_history):
        raise ValueError("--report needs the exact scores: drop --no-pruning-rate and --exclude-history")
    if report and decoder not in (None, "beam"):
        raise ValueError("--report draws beam search's pruning: it needs --decoder beam")
    settings = EvalSettings(split, beam_width, max_users, pruning_rate, pruning_users, pruning_node_budget, seed,
                            exclude_history)
    settings.validate("evaluate", {"max_users": "--max-users"})
    overrides = DecodingOverrides(decoder, scoring, length_penalty, node_budget, latent_variant, latent_similarity,
                                  latent_neighbors)
    overrides.validate("evaluate", {"decoder": "--decoder", "scoring": "--scoring", "length_penalty": "--length-penalty",
                                    **DECODER_FLAGS})
    try:
        result, unsaved = evaluate_run(run, settings, overrides, data, console, allow_other_data), None
    except ResultNotSaved as err:  # shown all the same, then the error names what could not be written
        result, unsaved = err.result, err
    decoder = result["decoder"]
    if report and decoder != "beam":
        raise ValueError("--report draws beam search's pruning: it needs --decoder beam")
    if decoder == "beam":
        how = f"B={beam_width}, {result['scoring']} scoring, length_penalty {result['length_penalty']:g}"
    elif decoder == "exact":
        how = (f"exact top-{beam_width}, {result['scoring']} scoring, {result['certified_users']} of {result['users']} "
               f"users certified, {result['nodes_expanded_per_user']:.0f} trie nodes expanded per user")
    else:
        how = (f"L2D {result['latent_variant']}, {result['latent_similarity']}, item memory {'built' if result['memory_built'] else 'loaded'} "
               f"in {result['memory_seconds']:.1f} s, {result['items_without_memory']} items never a training target (ranked last)")
    how += ", history items excluded" if exclude_history else ""
    title = f"{run.name}, {split}: {result['users']} users, {how}; decoding {result['decode_seconds']:.1f} s"
    out.print(rich_table({run.name: result}, title))
    if "exact_ranking" in result:
        exact = result["exact_ranking"]
        out.print(f"beam search against the exact ranking, on the {exact['users']} users with an exact rank: " + ", ".join(
            f"NDCG@{k} {exact[f'decoded_NDCG@{k}']:.4f} (beam) vs {exact[f'exact_NDCG@{k}']:.4f} (exact), "
            f"HR@{k} {exact[f'decoded_HR@{k}']:.4f} vs {exact[f'exact_HR@{k}']:.4f}" for k in (5, 10)), soft_wrap=True)
    if "pruning" in result:
        out.print(pruning_scope(result["pruning"], result["users"]), soft_wrap=True)
        out.print(pruning_table(result["pruning"]))
        hist = result["pruning"]["pruning_step_histogram"]
        out.print("pruning step histogram (all users): " + ", ".join(f"step {k}: {v}" for k, v in hist.items()))
    if unsaved is not None:
        raise unsaved
    if report:
        path = run / f"eval_{split}_pruning.png"
        pruning_figure(result["pruning"], path, title)
        out.print(f"wrote {path}")


@app.command()
@_cli_errors
def recommend(
    run: RunFolder,
    history: Annotated[list[str], typer.Argument(help="items the user interacted with, oldest first: item ids or exact titles")],
    data: RunData = None,
    top_k: Annotated[int, typer.Option(help="how many items to print")] = 10,
    beam_width: Annotated[int, typer.Option(help="beam width B (at least top-k)")] = 10,
    exclude_history: Annotated[bool, typer.Option("--exclude-history/--include-history", help="leave out items already in the history (the search then keeps B + len(history) beams, or finds top-k + len(history) items, so that k items remain)")] = False,
    decoder: Annotated[Optional[str], typer.Option(help="beam (constrained beam search, width --beam-width), exact (the top-k most probable items, best-first over the trie: nothing pruned) or latent (L2D: match the prompt's last hidden state with training prompts' states; its item memory is kept in the run folder) [default: the run's decoding.decoder, beam]")] = None,
    node_budget: DecoderNodeBudget = None,
    latent_variant: LatentVariant = None,
    latent_similarity: LatentSimilarity = None,
    latent_neighbors: LatentNeighbors = None,
    allow_other_data: AllowOtherData = False,
):
    """Print the top-K recommended titles for one history.

    Titles are matched after the same normalisation as `prepare` (HTML entities, Unicode NFC, whitespace).
    A history longer than the longest one in the training data keeps its most recent items (with a warning).
    """
    from bearrec.decoding.config import DecodingOverrides
    from bearrec.serving.recommender import Query, Recommender, RecommenderSettings

    if beam_width < 1:
        raise ValueError(f"--beam-width must be at least 1, got {beam_width}")
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    if top_k > beam_width:
        raise ValueError(f"--top-k {top_k} exceeds --beam-width {beam_width}")
    overrides = DecodingOverrides(node_budget=node_budget, latent_variant=latent_variant,
                                  latent_similarity=latent_similarity, latent_neighbors=latent_neighbors)
    settings = RecommenderSettings(beam_width, (decoder,) if decoder else None, overrides)
    settings.validate("recommend", {"decoders": "--decoder", **DECODER_FLAGS})
    with _progress() as progress:
        recommender = Recommender.from_run(run, data, settings, progress, allow_other_data)
    decoder = recommender.default_decoder
    answer = recommender.recommend([Query(recommender.resolve(history), top_k, decoder, exclude_history)])[0]
    for note in answer.warnings:
        warnings.warn(note)
    label = recommender.describe_scores(decoder)
    for rank, (item, score) in enumerate(zip(answer.items, answer.scores), 1):
        out.print(f"{rank:>2}. {rich_escape(recommender.titles[item])}  [dim](item {rich_escape(recommender.item_ids[item])}, {label} = {score:.3f})[/dim]")
    if answer.certified is False:
        console.print(f"[yellow]warning:[/yellow] the node budget ({recommender.decoding.node_budget}) ran out before the list was proven "
                      "exact: these are the most probable items found so far", soft_wrap=True)
