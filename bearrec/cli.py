"""The `bearrec` command line. Each command is a thin layer over the library; errors are one line, exit code 2."""

from __future__ import annotations

import functools
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Fine-tune language models as sequential recommenders with beam-search-aware objectives "
    "(BEAR, arXiv 2601.22925). Start with `bearrec quickstart`.",
)
console = Console(stderr=True)
out = Console()


class Format(str, Enum):
    processed = "processed"
    amazon = "amazon"
    interactions = "interactions"
    synthetic = "synthetic"


class Objective(str, Enum):
    sft = "sft"
    bear = "bear"
    beam_sim = "beam-sim"


class Surrogate(str, Enum):
    paper = "paper"
    softplus = "softplus"


def _cli_errors(func):
    """Turn expected failures (bad data, missing files, bad options) into one line on stderr and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from bearrec.data.dataset import DataError

        try:
            return func(*args, **kwargs)
        except (DataError, FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

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
    seed: Annotated[int, typer.Option(help="seed of the synthetic generator")] = 0,
    users: Annotated[int, typer.Option(help="synthetic users")] = 800,
):
    """Turn raw or processed data into a bearrec dataset folder (catalog + train/valid/test)."""
    from bearrec.data.readers import read_source
    from bearrec.data.synthetic import SyntheticConfig, generate_synthetic

    if fmt is Format.synthetic:
        dataset = generate_synthetic(SyntheticConfig(seed=seed, num_users=users))
    else:
        dataset = read_source(fmt.value, inputs or [], domain=domain, strict=strict, min_interactions=min_interactions)
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
    objective: Annotated[Optional[Objective], typer.Option(help="sft: cross-entropy (eq. 2.1); bear: SFT + beam-search-aware regulariser (eq. 3.5); beam-sim: beam search simulated in training (eq. 3.1) [default: sft]")] = None,
    model: Annotated[Optional[str], typer.Option(help="'tiny' (built from a config, tokenizer trained on the data) or a Hugging Face model folder / hub name [default: tiny]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="training epochs (the paper: 10) [default: 3]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate [default: 1e-3 for tiny, 1e-4 with LoRA as in the paper]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="examples per device and step [default: 32]")] = None,
    beam_width: Annotated[Optional[int], typer.Option(help="B of the objective; match the decoding beam width (paper: 10)")] = None,
    weight: Annotated[Optional[float], typer.Option(help="lambda, regulariser strength (paper range 0.1-5) [default: 1]")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="xi, sigmoid temperature (paper range 0.25-3) [default: 1]")] = None,
    surrogate: Annotated[Optional[Surrogate], typer.Option(help="paper: log sigmoid (eq. 3.4); softplus: only violated tokens pay")] = None,
    lora: Annotated[Optional[bool], typer.Option("--lora/--full", help="LoRA adapters or full fine-tuning [default: full for tiny, LoRA otherwise]")] = None,
    lora_rank: Annotated[Optional[int], typer.Option(help="LoRA rank (paper: 8)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="[default: 0]")] = None,
    max_train_examples: Annotated[Optional[int], typer.Option(help="train on a seeded random subsample")] = None,
    max_prompt_tokens: Annotated[Optional[int], typer.Option(help="longer prompts drop their oldest history items [default: 1024]")] = None,
):
    """Fine-tune a model with SFT, BEAR or beam-sim through the Hugging Face Trainer; keeps the best validation NDCG@10.

    Several GPUs: `accelerate launch -m bearrec.cli train ...` or `torchrun --nproc-per-node N -m bearrec.cli train ...`.
    """
    from bearrec.config import load_config
    from bearrec.runs import train_run

    if resume:
        cfg = None
    else:
        section = "beam_sim" if objective is Objective.beam_sim else "bear"
        flags = {
            "data": str(data) if data else None, "model": model, "lora": lora, "lora_settings.rank": lora_rank,
            "train.objective": objective.value if objective else None, "train.epochs": epochs, "train.lr": lr,
            "train.batch_size": batch_size, "train.seed": seed, "train.max_train_examples": max_train_examples,
            "train.max_prompt_tokens": max_prompt_tokens, f"{section}.beam_width": beam_width,
            f"{section}.weight": weight, f"{section}.temperature": temperature,
            f"{section}.surrogate": surrogate.value if surrogate else None,
        }
        cfg = load_config(config, _flag_sets(flags) + list(overrides or []))
    log = train_run(cfg, out_dir, resume=resume, console=console)
    if log["truncated_prompts"]:
        console.print(f"[yellow]warning:[/yellow] {log['truncated_prompts']} prompts exceeded the token limit and lost their oldest items")
    best = log.get("best_valid_ndcg10")
    out.print(f"wrote {out_dir} ({log['seconds_per_epoch']:.1f} s/epoch" + (f", best valid NDCG@10 {best:.4f}" if best is not None else "") + ")")


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
    report: Annotated[bool, typer.Option("--report", help="write eval_<split>_pruning.png: Figure 4-style attribution and the pruning-step histogram")] = False,
    seed: Annotated[int, typer.Option()] = 0,
):
    """NDCG@K and HR@K (K = 5, 10) from constrained beam search; PR@K and why positives were pruned, from exact scores."""
    from bearrec.report import pruning_figure, pruning_table, rich_table
    from bearrec.runs import evaluate_run

    if report and not pruning_rate:
        raise ValueError("--report needs the exact scores: drop --no-pruning-rate")
    result = evaluate_run(run, data, split, beam_width, max_users, pruning_rate, seed, console=console,
                          pruning_users=pruning_users)
    title = f"{run.name}, {split}: {result['users']} users, B={beam_width}"
    out.print(rich_table({run.name: result}, title))
    if pruning_rate:
        out.print(pruning_table(result["pruning"]))
        hist = result["pruning"]["pruning_step_histogram"]
        out.print("pruning step histogram (all users): " + ", ".join(f"step {k}: {v}" for k, v in hist.items()))
    if report:
        path = run / f"eval_{split}_pruning.png"
        pruning_figure(result["pruning"], path, title)
        out.print(f"wrote {path}")


@app.command()
@_cli_errors
def recommend(
    run: Annotated[Path, typer.Argument(help="run folder from `bearrec train`")],
    history: Annotated[list[str], typer.Argument(help="items the user interacted with, oldest first: item ids or exact titles")],
    data: Annotated[Optional[Path], typer.Option(help="dataset folder [default: the one the run was trained on]")] = None,
    top_k: Annotated[int, typer.Option(help="how many items to print")] = 10,
    beam_width: Annotated[int, typer.Option(help="beam width B (at least top-k)")] = 10,
):
    """Print the top-K recommended titles for one history."""
    from bearrec.catalog import build_trie
    from bearrec.data.prompts import left_pad
    from bearrec.decoding import constrained_beam_search
    from bearrec.runs import load_run, prompt_encoder

    if top_k > beam_width:
        raise ValueError(f"--top-k {top_k} exceeds --beam-width {beam_width}")
    model, tokenizer, dataset, config = load_run(run, data)
    by_title = {t: i for i, t in enumerate(dataset.titles)}
    indices = []
    for pos, entry in enumerate(history, 1):
        if entry in by_title:
            indices.append(by_title[entry])
        else:
            try:
                indices.append(dataset.item_index(entry))
            except KeyError:
                raise ValueError(f"history item {pos} ({entry!r}): neither an item id nor a title of the catalog") from None
    encoder = prompt_encoder(tokenizer, dataset, config)
    ids, mask = left_pad(encoder.prompts([indices]), tokenizer.pad_token_id)
    result = constrained_beam_search(model, ids, mask, build_trie(tokenizer, dataset.titles), beam_width=beam_width)
    for rank, (item, score) in enumerate(zip(result.item_ids[0].tolist()[:top_k], result.scores[0].tolist()), 1):
        if item >= 0:
            out.print(f"{rank:>2}. {dataset.titles[item]}  [dim](item {dataset.items['item_id'][item]}, log p = {score:.3f})[/dim]")


@app.command()
@_cli_errors
def quickstart(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("bearrec-quickstart"),
    model: Annotated[str, typer.Option(help="'tiny' or a Hugging Face model folder / hub name")] = "tiny",
    seed: Annotated[int, typer.Option()] = 0,
    users: Annotated[int, typer.Option(help="synthetic users")] = 800,
    epochs: Annotated[int, typer.Option()] = 3,
    eval_users: Annotated[Optional[int], typer.Option(help="evaluate a subsample of test users [default: all]")] = None,
    weight: Annotated[float, typer.Option(help="BEAR lambda")] = 1.0,
    temperature: Annotated[float, typer.Option(help="BEAR xi")] = 1.0,
):
    """Synthetic catalog -> tiny LM trained with SFT and with BEAR -> constrained beam search -> results table."""
    from bearrec.quickstart import QuickstartConfig, run_quickstart

    cfg = QuickstartConfig(seed=seed, model=model, users=users, epochs=epochs, eval_users=eval_users, weight=weight,
                           temperature=temperature)
    from bearrec.report import rich_table

    results = run_quickstart(out_dir, cfg, console=console)
    out.print(rich_table(results["runs"], results["title"]))
    out.print(f"results in {out_dir.resolve()}/ (results.json, results.md, results.png)")


def _experiment_config(config: Optional[Path], data: Optional[Path], model: Optional[str], overrides: list[str],
                       default_model: str):
    """Base config of compare/sweep: YAML, then --set, then --data/--model; ``default_model`` if none names one."""
    import yaml

    from bearrec.config import load_config

    named = any(o.startswith("model=") for o in overrides)
    if config is not None and config.is_file():
        named = named or "model" in (yaml.safe_load(config.read_text()) or {})
    base = load_config(config, overrides)
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


def _run_experiment(kind: str, base, specs, out_dir: Path, settings, overwrite: bool, grid=None) -> None:
    import shlex
    import shutil

    from bearrec.experiments import run_experiment, verdict, write_report
    from bearrec.report import rich_table, summary_runs

    if overwrite and out_dir.exists():
        shutil.rmtree(out_dir)
    try:
        results = run_experiment(base, specs, out_dir, settings, kind, console)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted:[/yellow] finished runs are kept in {out_dir}; "
                      "run the same command again to resume", soft_wrap=True)
        raise typer.Exit(130) from None
    rows = write_report(out_dir, results, base, settings, kind, shlex.join(["bearrec", *sys.argv[1:]]), grid)
    out.print(rich_table(summary_runs(rows), f"{kind}: {len(results)} runs (mean over seeds)"))
    for label, row in rows.items():
        if "vs_sft" in row:
            out.print(verdict(label, row))
    out.print(f"results in {out_dir}/ (results.json, results.md, figures)")


@app.command()
@_cli_errors
def compare(
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML (see configs/); flags and --set override it")] = None,
    data: Annotated[Optional[Path], typer.Option(help="dataset folder from `bearrec prepare` [default: 'data' of the config]")] = None,
    objectives: Annotated[str, typer.Option(help="comma-separated objectives; SFT is always included as the baseline")] = "sft,bear,beam-sim",
    model: Annotated[Optional[str], typer.Option(help="'smollm2-135m', 'tiny' or a Hugging Face model folder / hub name [default: the config's, else smollm2-135m]")] = None,
    seeds: Annotated[int, typer.Option(help="training seeds per objective (mean, std and a seed-noise test)")] = 1,
    baselines: Annotated[str, typer.Option(help="conventional baselines trained on the whole train split and ranked on the same users: comma-separated from sasrec, bert4rec; 'none' for the LMs only")] = "sasrec,bert4rec",
    max_train_examples: Annotated[Optional[int], typer.Option(help="train every run on the same seeded subsample")] = None,
    max_eval_users: Annotated[Optional[int], typer.Option(help="evaluate every run on the same seeded subsample of users")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="training epochs [default: the config's]")] = None,
    beam_width: Annotated[int, typer.Option(help="B of decoding (and of the objectives)")] = 10,
    pruning_rate: Annotated[bool, typer.Option("--pruning-rate/--no-pruning-rate", help="PR@K and the pruning attribution")] = True,
    pruning_users: Annotated[Optional[int], typer.Option(help="PR@K on the first N evaluated users only (exact ranks cost up to a minute per user for a 135M model on a CPU)")] = None,
    pruning_node_budget: Annotated[Optional[int], typer.Option(help="trie nodes expanded per user for its exact rank; users still undecided are left out of PR@K")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="override any config field: section.field=value")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="experiment folder")] = Path("runs/compare"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="delete the experiment folder first")] = False,
):
    """Train and evaluate several objectives (and SASRec, BERT4Rec) on the same data, model, seed and budget; one report.

    Interrupted (Ctrl-C)? Run the same command again: finished runs are kept, the current one resumes.
    """
    from bearrec.config import TrainConfig
    from bearrec.experiments import EvalSettings, compare_plan, parse_baselines
    from bearrec.models import SMOLLM2
    from bearrec.objectives.configs import OBJECTIVE_CONFIGS

    sets = _flag_sets({"train.epochs": epochs, "train.max_train_examples": max_train_examples,
                       "bear.beam_width": beam_width, "beam_sim.beam_width": beam_width,
                       "train.valid_beam_width": beam_width}) + list(overrides or [])
    base = _experiment_config(config, data, model, sets, SMOLLM2)
    defaults = TrainConfig()
    untouched = all(getattr(base.train, f) == getattr(defaults, f)
                    for f in ("epochs", "max_train_examples", "valid_users", "batch_size", "lr"))
    if base.model == SMOLLM2 and not torch_cuda() and max_eval_users is None and untouched:
        max_eval_users = _cpu_budget(base)
        pruning_users = pruning_users or 30
        pruning_node_budget = pruning_node_budget or 512
    names = [o.strip() for o in objectives.split(",") if o.strip()]
    unknown = [n for n in names if n not in OBJECTIVE_CONFIGS]
    if unknown:
        raise ValueError(f"unknown objective(s) {', '.join(unknown)}; choose from {', '.join(OBJECTIVE_CONFIGS)}")
    settings = EvalSettings(beam_width=beam_width, max_users=max_eval_users, pruning_rate=pruning_rate,
                            pruning_users=pruning_users, pruning_node_budget=pruning_node_budget)
    plan = compare_plan(names, seeds, base.train.seed, parse_baselines(baselines))
    _run_experiment("compare", base, plan, out_dir, settings, overwrite)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_cli_errors
def sweep(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML (see configs/)")] = None,
    grid: Annotated[Optional[list[str]], typer.Option(help="name=v1,v2,... ; several names after one --grid or one --grid each; 'weight' is the objective's field, or section.field")] = None,
    objective: Annotated[Objective, typer.Option(help="the objective whose hyperparameters are swept")] = Objective.bear,
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
):
    """Grid over an objective's hyperparameters (paper Figure 8), e.g. --grid weight=0.1,0.5,1,2,5 temperature=0.25,0.5,1,2,3.

    Restarted with the same arguments, it skips the runs that finished.
    """
    from bearrec.experiments import EvalSettings, parse_grid, sweep_plan
    from bearrec.models import TINY

    extra = [a for a in ctx.args if "=" in a and not a.startswith("-")]
    if len(extra) != len(ctx.args):
        raise ValueError(f"unexpected argument(s): {' '.join(a for a in ctx.args if a not in extra)}")
    if config is not None and "=" in config.name and not config.exists():  # a grid entry, not a config file
        extra.insert(0, str(config))
        config = None
    parsed = parse_grid(list(grid or []) + extra, objective.value)
    sets = _flag_sets({"train.epochs": epochs, "train.max_train_examples": max_train_examples}) + list(overrides or [])
    base = _experiment_config(config, data, model, sets, TINY)
    settings = EvalSettings(max_users=max_eval_users, pruning_rate=pruning_rate)
    _run_experiment("sweep", base, sweep_plan(objective.value, parsed, seeds, base.train.seed), out_dir, settings,
                    overwrite, parsed)


def main() -> None:  # pragma: no cover - `python -m bearrec.cli`
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
