"""`bearrec quickstart`, `compare` and `sweep`: several runs on the same data, model, seed and budget, one report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from bearrec.cli.app import JOBS_HELP, _cli_errors, _flag_sets, app, console, out


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
    from bearrec.experiments.quickstart import QuickstartConfig, run_quickstart
    from bearrec.objectives import registry

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
    from bearrec.config import load_config
    from bearrec.yamlfiles import read_yaml

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


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_experiment(kind: str, base, specs, out_dir: Path, settings, overwrite: bool, grid=None, jobs: int = 1) -> None:
    import shlex

    from bearrec.data.dataset import RecDataset
    from bearrec.evaluation.report import rich_table, summary_runs
    from bearrec.experiments.report import write_report
    from bearrec.experiments.runner import evaluate_chosen_on_test, run_experiment
    from bearrec.experiments.statistics import verdict
    from bearrec.io import check_replaceable, empty_folder, folder_lock

    settings.validate()
    # Loaded once, for the runs, the test evaluation of a sweep and the report (no data: run_experiment says so).
    dataset = RecDataset.load(base.data) if base.data else None
    with folder_lock(out_dir, "experiment"):
        if overwrite and out_dir.exists():
            check_replaceable(out_dir, "experiment")  # --overwrite deletes only an earlier bearrec experiment
            empty_folder(out_dir)
        try:
            results = run_experiment(base, specs, out_dir, settings, kind, console, jobs, dataset)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted:[/yellow] finished runs are kept in {out_dir}; "
                          "run the same command again to resume", soft_wrap=True)
            raise typer.Exit(130) from None
        selection = (evaluate_chosen_on_test(out_dir, results, base, settings, console, dataset) if kind == "sweep"
                     else None)
        rows = write_report(out_dir, results, base, settings, kind, shlex.join(["bearrec", *sys.argv[1:]]), grid,
                            selection, dataset)
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
    baseline_seeds: Annotated[Optional[int], typer.Option(help="seeds of each baseline, which trains in seconds: more than --seeds adds baseline runs after every LM run [default: --seeds]")] = None,
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
    from bearrec.evaluation.evaluate import EvalSettings
    from bearrec.experiments.plan import compare_plan, cpu_budget, parse_baselines
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
    budget = cpu_budget(base, gpu=torch_cuda(), max_eval_users=max_eval_users, pruning_users=pruning_users,
                        pruning_node_budget=pruning_node_budget)
    if budget is not None:
        console.print(f"[yellow]note:[/yellow] {budget.note}", soft_wrap=True)
        base, max_eval_users = budget.config, budget.max_eval_users
        pruning_users, pruning_node_budget = budget.pruning_users, budget.pruning_node_budget
    unknown = [n for n in names if n.split(":")[0] not in registry.REGISTRY]
    if unknown:
        raise ValueError(f"unknown objective(s) {', '.join(unknown)}; choose from {', '.join(registry.names())}")
    settings = EvalSettings(beam_width=beam_width or base.train.valid_beam_width, max_users=max_eval_users, pruning_rate=pruning_rate,
                            pruning_users=pruning_users, pruning_node_budget=pruning_node_budget,
                            exclude_history=exclude_history)
    plan = compare_plan(names, seeds, base.train.seed, parse_baselines(baselines), baseline_seeds)
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
    from bearrec.experiments.plan import parse_grid, sweep_plan
    from bearrec.lm.models import TINY
    from bearrec.objectives import registry

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
