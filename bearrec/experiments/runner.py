"""Experiments: several runs on the same data, model, seed and budget, compared in one folder.

``bearrec compare`` plans one run per objective (and per conventional baseline, SASRec and BERT4Rec) per
seed; ``bearrec sweep`` plans one
run per point of a hyperparameter grid plus the SFT baseline. Each run lives in
``OUT/runs/<label>/seed<k>/`` (a normal run folder) and is finished once its ``result.json`` exists:
a restarted experiment skips finished runs and resumes an interrupted one from its last checkpoint.
``OUT/experiment.json`` records the plan; restarting with a different base config is refused.
"""

from __future__ import annotations

import itertools
import json
import math
import platform
import re
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bearrec.config import ExperimentConfig, from_dict, with_overrides
from bearrec.data.dataset import RecDataset
from bearrec.evaluation.evaluate import EvalSettings
from bearrec.evaluation.metrics import report_ks
from bearrec.evaluation.report import METRIC_COLUMNS
from bearrec.io import check_replaceable, folder_lock, mark, write_json
from bearrec.objectives import registry

BASELINES = ("sasrec", "bert4rec")  # conventional recommenders: config section = run label
BASELINE = "sft"


@dataclass
class RunSpec:
    """One run: a label (row of the results table), its seed and the config fields it changes."""

    label: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9.=_-]+', '_', self.label)}/seed{self.seed}"

    def config(self, base: ExperimentConfig) -> ExperimentConfig:
        return with_overrides(base, {**self.overrides, "train.seed": self.seed})


def objective_variant(entry: str) -> dict[str, Any]:
    """The overrides of one ``--objectives`` entry: ``bear`` or ``bear:formulation=paper:weight=1`` (fields of
    the objective's section, or ``section.field``); the entry itself is the run's label."""
    from bearrec.config import parse_value

    name, *fields = entry.split(":")
    section = registry.get(name.strip()).section
    overrides: dict[str, Any] = {"train.objective": name.strip()}
    for item in filter(None, (part.strip() for part in fields)):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"objective {entry!r}: expected name:field=value:... (e.g. bear:formulation=paper)")
        try:
            parsed = parse_value(value)
        except ValueError as err:
            raise ValueError(f"objective {entry!r}: {err}") from None
        if "." not in key and section is None:
            raise ValueError(f"objective {entry!r}: {name.strip()} has no settings; name them as section.field")
        overrides[key if "." in key else f"{section}.{key}"] = parsed
    return overrides


def parse_baselines(text: str) -> tuple[str, ...]:
    """``"sasrec,bert4rec"`` -> ``("sasrec", "bert4rec")``; ``"none"`` or ``""`` -> ``()``."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"--baselines: unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)} or none")
    return names


def compare_plan(objectives: list[str], seeds: int, base_seed: int = 0,
                 baselines: tuple[str, ...] = BASELINES) -> list[RunSpec]:
    """Seed-major order, so that every objective has a result early and later seeds refine them."""
    labels = list(dict.fromkeys(objectives))
    if BASELINE not in labels:
        labels.insert(0, BASELINE)
    specs = []
    for seed in range(base_seed, base_seed + seeds):
        specs += [RunSpec(name, seed, objective_variant(name)) for name in labels]
        specs += [RunSpec(name, seed) for name in baselines]
    return specs


def parse_grid(entries: list[str], objective: str) -> dict[str, list]:
    """``["weight=0.1,0.5", "train.lr=1e-4,1e-3"]`` -> ``{"bear.weight": [0.1, 0.5], "train.lr": [...]}``.

    A name without a section (``weight``) is a field of the swept objective's section.
    """
    from bearrec.config import parse_value

    spec = registry.get(objective)
    section = spec.section
    grid: dict[str, list] = {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"grid entry {entry!r}: expected name=v1,v2,... (e.g. weight=0.1,0.5,1)")
        if "." not in key:
            if section is None or key not in spec.fields():
                raise ValueError(f"grid entry {entry!r}: use section.field (e.g. bear.weight or train.lr)")
            key = f"{section}.{key}"
        try:
            grid[key] = [parse_value(v) for v in values.split(",")]
        except ValueError as err:
            raise ValueError(f"grid entry {entry!r}: {err}") from None
    if not grid:
        raise ValueError("empty grid: pass --grid name=v1,v2,... (e.g. --grid weight=0.1,0.5,1 temperature=0.5,1)")
    return grid


def grid_label(objective: str, point: dict[str, Any]) -> str:
    return f"{objective} " + " ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


def sweep_plan(objective: str, grid: dict[str, list], seeds: int, base_seed: int = 0) -> list[RunSpec]:
    """The SFT baseline and every grid point, per seed."""
    specs = []
    for seed in range(base_seed, base_seed + seeds):
        specs.append(RunSpec(BASELINE, seed, {"train.objective": BASELINE}))
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values))
            specs.append(RunSpec(grid_label(objective, point), seed, {"train.objective": objective, **point}))
    return specs


def environment() -> dict:
    """Library versions and machine, for results.json."""
    versions = {}
    for package in ("bearrec", "torch", "transformers", "peft", "accelerate", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"versions": versions, "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _recorded_plan(recorded: dict) -> dict | None:
    """An ``experiment.json``'s plan read through today's config and evaluation fields: a field added to bearrec
    since it was written counts as its default, which is the behaviour from before the field existed (a new
    field's default keeps the old behaviour), so an experiment resumes after an upgrade. None where the plan no
    longer reads (a field since removed or retyped): a different experiment."""
    try:
        return {"kind": recorded.get("kind"), "base_config": from_dict(recorded.get("base_config") or {}).to_dict(),
                "eval": asdict(EvalSettings(**(recorded.get("eval") or {})))}
    except (TypeError, ValueError):
        return None


def run_experiment(base: ExperimentConfig, specs: list[RunSpec], out_dir: str | Path, settings: EvalSettings,
                   kind: str, console=None, jobs: int = 1) -> list[dict]:
    """Train and evaluate every planned run that is not finished yet; returns one result per spec.

    ``jobs > 1`` trains that many runs at once, each in its own process with an equal share of the CPU threads
    (:func:`_parallel_runs`): for small models on a multi-core CPU, where one run cannot use every core.
    """
    if jobs < 1:
        raise ValueError(f"jobs {jobs}: at least 1 run at a time")
    with folder_lock(out_dir, "experiment"):
        return _run_experiment(base, specs, Path(out_dir), settings, kind, console, jobs)


def _run_experiment(base: ExperimentConfig, specs: list[RunSpec], out: Path, settings: EvalSettings, kind: str,
                    console, jobs: int) -> list[dict]:
    base.validate()
    settings.validate()
    if not base.data:
        raise ValueError("no dataset: pass DATA or set 'data' in the config")
    if not specs:
        raise ValueError("nothing to run: the plan is empty (--seeds must be at least 1)")
    if settings.beam_width < 10:
        raise ValueError(f"beam width {settings.beam_width}: the reported metrics go up to K=10, so B must be at least 10")
    folders = [s.folder for s in specs]
    if len(set(folders)) != len(folders):
        raise ValueError(f"two planned runs share a folder ({next(f for f in folders if folders.count(f) > 1)}): "
                         "repeated grid values?")
    dataset = RecDataset.load(base.data)
    for spec in specs:  # fail on a bad override before hours of training, not after (baselines: base.validate)
        if spec.label not in BASELINES:
            spec.config(base)
    plan = {"kind": kind, "base_config": base.to_dict(), "eval": asdict(settings)}
    previous = out / "experiment.json"
    if previous.is_file():
        if _recorded_plan(json.loads(previous.read_text())) != plan:
            raise FileExistsError(f"{out}: holds a different experiment (other config or evaluation); "
                                  "choose another --out, or --overwrite to start again")
    else:
        check_replaceable(out, "experiment")  # a new experiment goes only into a new or empty folder
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "experiment")
    write_json(previous, {**plan, "runs": [asdict(s) | {"folder": s.folder} for s in specs]})
    results: dict[int, dict] = {}
    for n, spec in enumerate(specs):
        done = out / "runs" / spec.folder / "result.json"
        if done.is_file():
            results[n] = json.loads(done.read_text())
            if console:
                console.print(f"[{n + 1}/{len(specs)}] {spec.label} seed {spec.seed}: finished earlier, kept")
    pending = [n for n in range(len(specs)) if n not in results]
    if jobs > 1 and len(pending) > 1:
        results.update(_parallel_runs(base, specs, pending, out, settings, jobs, console))
        return [results[n] for n in range(len(specs))]
    durations = []
    started = time.perf_counter()
    for n in pending:
        spec = specs[n]
        if console:
            left = len(specs) - n
            eta = f", about {_clock(left * sum(durations) / len(durations))} left" if durations else ""
            console.print(f"[bold][{n + 1}/{len(specs)}] {spec.label} seed {spec.seed}[/bold] "
                          f"(elapsed {_clock(time.perf_counter() - started)}{eta})")
        results[n] = _one_run(base, spec, dataset, settings, out, console)
        durations.append(results[n]["wall_seconds"])
    return [results[n] for n in range(len(specs))]


def _one_run(base: ExperimentConfig, spec: RunSpec, dataset: RecDataset | None, settings: EvalSettings, out: Path,
             console=None) -> dict:
    """Train and evaluate one planned run; its ``result.json`` marks it finished."""
    dataset = dataset if dataset is not None else RecDataset.load(base.data)
    folder = out / "runs" / spec.folder
    run_start = time.perf_counter()
    if spec.label in BASELINES:
        config = replace(getattr(base, spec.label), seed=spec.seed)
        result = _baseline_run(spec.label, dataset, config, settings, folder, console)
    else:
        result = _lm_run(spec.config(base), dataset, settings, folder, console)
    result.update(label=spec.label, seed=spec.seed, overrides=spec.overrides, folder=spec.folder,
                  wall_seconds=time.perf_counter() - run_start)
    write_json(folder / "result.json", result)
    return result


def _start_worker(threads: int, parent: int) -> None:
    """A parallel run's process: its share of the CPU threads, progress printed as lines when each bar completes
    (two processes redrawing live bars on one terminal garble both), and an end when the experiment's process
    ends. A killed parent (SIGKILL, a closed terminal) would otherwise leave its workers training on into the run
    folders that a restarted experiment resumes; they stop within a second instead, as if killed themselves,
    which every run survives (tests/test_crash.py)."""
    import os
    import threading

    import rich
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.disable_progress_bar()
    rich.reconfigure(stderr=True, force_interactive=False)

    def watch() -> None:  # the parent's pid comes from the parent: it may have died while this process started
        while os.getppid() == parent:  # an orphan is adopted by another process
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="bearrec-parent-watch").start()


def _parallel_runs(base: ExperimentConfig, specs: list[RunSpec], pending: list[int], out: Path,
                   settings: EvalSettings, jobs: int, console=None) -> dict[int, dict]:
    """The ``pending`` runs, ``jobs`` at a time in spawned processes with ``threads // jobs`` threads each.

    Each run is the same function as in a sequential experiment, seeded the same way; only its thread count
    differs, so its numbers can differ from a sequential run's in the last float bits. A failed run stops the
    experiment after the runs in progress end; every finished run keeps its ``result.json``.
    """
    import multiprocessing
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, torch.get_num_threads() // jobs)
    if console:
        console.print(f"{len(pending)} runs, {jobs} at a time, {threads} CPU thread(s) each; "
                      "their training logs are in each run's folder")
    results: dict[int, dict] = {}
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked torch threads
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                             initargs=(threads, os.getpid())) as pool:
        running = {pool.submit(_one_run, base, specs[n], None, settings, out): n for n in pending}
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                n = running.pop(future)
                try:
                    results[n] = future.result()
                except BaseException:
                    for other in running:
                        other.cancel()
                    raise
                if console:
                    r = results[n]
                    console.print(f"[{len(results)}/{len(pending)}] {r['label']} seed {r['seed']} finished in "
                                  f"{_clock(r['wall_seconds'])} (elapsed {_clock(time.perf_counter() - started)})")
    return results


def _lm_run(config: ExperimentConfig, dataset: RecDataset, settings: EvalSettings, folder: Path, console) -> dict:
    from bearrec.runs import evaluate_run, train_run

    if (folder / "train_log.json").is_file() and (folder / "model").is_dir():
        log = json.loads((folder / "train_log.json").read_text())  # trained, interrupted while evaluating
    else:
        log = train_run(config, folder, resume=(folder / "config.yaml").is_file(), dataset=dataset, console=console)
    result = evaluate_run(folder, split=settings.split, beam_width=settings.beam_width, max_users=settings.max_users,
                          pruning_rate=settings.pruning_rate, seed=settings.seed, console=console, dataset=dataset,
                          pruning_users=settings.pruning_users, pruning_node_budget=settings.pruning_node_budget,
                          exclude_history=settings.exclude_history)
    return {"kind": "lm", "metrics": result["metrics"], "pruning": result.get("pruning"), "users": result["users"],
            "scoring": result.get("scoring"), "length_penalty": result.get("length_penalty"),
            "decoder": result["decoder"],
            "of_users": result["of_users"], "retrieved_rank": result["retrieved_rank"],
            "seconds_per_epoch": log["seconds_per_epoch"], "best_valid_ndcg10": log.get("best_valid_ndcg10"),
            "epochs_trained": len(log["epochs"]), "best_epoch": _best_epoch(log["epochs"]), "parameters": log.get("parameters"),
            "train_examples": log.get("examples"), "config": config.to_dict()}


def _best_epoch(epochs: list[dict]) -> int | None:
    """The epoch whose validation NDCG@10 was best (the first of equals, as model selection keeps it)."""
    scored = [e for e in epochs if e.get("NDCG@10") is not None]
    return int(max(scored, key=lambda e: e["NDCG@10"])["epoch"]) if scored else None


def _baseline_run(name: str, dataset: RecDataset, config, settings: EvalSettings, folder: Path, console) -> dict:
    """Train and evaluate a conventional baseline (``name`` in :data:`BASELINES`) by full catalog ranking."""
    from bearrec.baselines.bert4rec import train_bert4rec
    from bearrec.baselines.sasrec import train_sasrec
    from bearrec.baselines.seqrec import evaluate, save_weights

    folder.mkdir(parents=True, exist_ok=True)
    model, log = {"sasrec": train_sasrec, "bert4rec": train_bert4rec}[name](dataset, config, console)
    save_weights(model, folder / "model.safetensors")
    result = evaluate(model, dataset, settings.split, settings.max_users, settings.seed, top_k=settings.beam_width,
                      ks=report_ks(settings.beam_width), exclude_history=settings.exclude_history)
    return {"kind": name, **result, "pruning": None, "seconds_per_epoch": log["seconds_per_epoch"],
            "best_valid_ndcg10": log["best_valid_ndcg10"], "epochs_trained": log["epochs_run"],
            "best_epoch": log["best_epoch"], "train_windows": log["train_windows"],
            "parameters": {"total": sum(p.numel() for p in model.parameters())}, "config": log["config"]}


def evaluate_chosen_on_test(out_dir: str | Path, results: list[dict], base: ExperimentConfig,
                            settings: EvalSettings, console=None) -> dict:
    """A sweep's model selection: the grid point with the best mean *validation* NDCG@10 over seeds is chosen,
    then it and the SFT baseline (every seed) are evaluated on the test split, once: their ``eval_test.json``
    is reused on a restart. The grid itself is never evaluated on test, so the choice cannot see test data.
    """
    if settings.split != "valid":
        raise ValueError("a sweep selects on the valid split; its grid is never evaluated on test")
    valid: dict[str, list[float]] = {}  # label -> validation NDCG@10 of each seed
    for r in results:
        if r["label"] != BASELINE:
            valid.setdefault(r["label"], []).append(r["metrics"]["NDCG@10"])
    if not valid:
        return {}
    chosen = max(valid, key=lambda label: float(np.mean(valid[label])))
    test = replace(settings, split="test")
    dataset = None  # loaded once, and only if some test result is not saved yet
    tested = []
    for r in results:
        if r["label"] not in (BASELINE, chosen):
            continue
        folder = Path(out_dir) / "runs" / r["folder"]
        saved = folder / "eval_test.json"
        if saved.is_file():
            result = json.loads(saved.read_text())
        else:
            from bearrec.runs import evaluate_run

            dataset = dataset or RecDataset.load(base.data)
            if console:
                console.print(f"test split: {r['label']} seed {r['seed']}")
            result = evaluate_run(folder, split="test", beam_width=test.beam_width, max_users=test.max_users,
                                  pruning_rate=test.pruning_rate, seed=test.seed, console=console, dataset=dataset,
                                  pruning_users=test.pruning_users, pruning_node_budget=test.pruning_node_budget,
                                  exclude_history=test.exclude_history)
        tested.append({"label": r["label"], "seed": r["seed"], "kind": "lm", "metrics": result["metrics"],
                       "pruning": result.get("pruning"), "users": result["users"], "of_users": result["of_users"],
                       "retrieved_rank": result["retrieved_rank"], "seconds_per_epoch": r["seconds_per_epoch"]})
    return {"criterion": "best mean validation NDCG@10 over seeds", "chosen": chosen,
            "point": next(r["overrides"] for r in results if r["label"] == chosen),
            "valid_ndcg10": float(np.mean(valid[chosen])), "test": summarize(tested),
            "test_users": tested[0]["users"] if tested else 0}


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --- summaries ---------------------------------------------------------------------------------------------



def summarize(results: list[dict], ks=(5, 10)) -> dict:
    """Per label: mean and std over seeds of every metric, seconds per epoch, pooled pruning counts; per
    label other than SFT: relative improvement over SFT and whether the NDCG@10 difference exceeds noise."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["label"], []).append(r)
    rows = {}
    for label, runs in groups.items():
        row = {"seeds": [r["seed"] for r in runs], "kind": runs[0]["kind"], "mean": {}, "std": {},
               "best_epochs": [r.get("best_epoch") for r in runs], "epochs_trained": [r.get("epochs_trained") for r in runs]}
        metrics = list(METRIC_COLUMNS) + sorted({m for r in runs for m in r["metrics"]} - set(METRIC_COLUMNS))
        for metric in metrics:
            values = [r["metrics"][metric] for r in runs if metric in r["metrics"]]
            values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
            if values:
                row["mean"][metric] = float(np.mean(values))
                row["std"][metric] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        row["seconds_per_epoch"] = float(np.nanmean([r["seconds_per_epoch"] for r in runs]))
        row["users"] = runs[0]["users"]
        row["pruning"] = _pool_pruning([r["pruning"] for r in runs if r.get("pruning")], ks)
        rows[label] = row
    if BASELINE in groups:
        for label, row in rows.items():
            if label != BASELINE:
                row["vs_sft"] = _versus(groups[label], groups[BASELINE], row["mean"], rows[BASELINE]["mean"])
    return rows


def _pool_pruning(summaries: list[dict], ks) -> dict | None:
    """Pruning counts summed over seeds (PR@K of the pooled users)."""
    if not summaries:
        return None
    pooled: dict = {"pruning_step_histogram": {}, "ranked_users": sum(s.get("ranked_users", 0) for s in summaries),
                    "unranked_users": sum(s.get("unranked_users", 0) for s in summaries)}
    for k in ks:
        positives = sum(s[f"top{k}_positives"] for s in summaries)
        pruned = sum(s[f"pruned@{k}"] for s in summaries)
        violations = sum(round(s[f"pruned@{k}"] * s[f"violation_share@{k}"]) for s in summaries if s[f"pruned@{k}"])
        pooled.update({f"top{k}_positives": positives, f"pruned@{k}": pruned,
                       f"PR@{k}": pruned / positives if positives else math.nan,
                       f"violation_share@{k}": violations / pruned if pruned else math.nan})
    for s in summaries:
        for step, count in s["pruning_step_histogram"].items():
            pooled["pruning_step_histogram"][int(step)] = pooled["pruning_step_histogram"].get(int(step), 0) + count
    pooled["pruned_all_ranks"] = sum(s["pruned_all_ranks"] for s in summaries)
    return pooled


def _versus(runs: list[dict], baseline: list[dict], mean: dict, base_mean: dict) -> dict:
    """Relative improvement over SFT, a seed-noise test and a paired bootstrap over users (NDCG@10)."""
    from scipy import stats

    relative = {m: (mean[m] - base_mean[m]) / base_mean[m] if base_mean.get(m) else None
                for m in METRIC_COLUMNS[:4] if m in mean and m in base_mean}
    ours = [r["metrics"]["NDCG@10"] for r in runs]
    theirs = [r["metrics"]["NDCG@10"] for r in baseline]
    out: dict = {"relative": relative, "ndcg10_difference": float(np.mean(ours) - np.mean(theirs))}
    if len(ours) > 1 and len(theirs) > 1:
        test = stats.ttest_ind(ours, theirs, equal_var=False)
        p = float(test.pvalue) if not math.isnan(test.pvalue) else 1.0
        out["seed_test"] = {"test": "Welch t-test over seeds", "p_value": p, "exceeds_seed_noise": p < 0.05}
    # Users are the same rows in every run: resample them, with both sides averaged over their seeds.
    gain = _per_user_ndcg(runs) - _per_user_ndcg(baseline)
    rng = np.random.default_rng(0)
    boot = np.concatenate([gain[rng.integers(0, gain.size, (200, gain.size))].mean(axis=1) for _ in range(10)])
    low, high = np.percentile(boot, [2.5, 97.5])
    out["user_bootstrap"] = {"ci95": [float(low), float(high)], "excludes_zero": bool(low > 0 or high < 0)}
    out["paired_test"] = sign_flip_test(gain)
    return out


EXACT_SIGN_FLIPS = 18  # users that differ: up to 2^18 sign patterns are enumerated, more are sampled


def sign_flip_test(gain: np.ndarray, resamples: int = 100_000) -> dict:
    """Paired permutation test over users: is the mean per-user difference ``gain`` (``[users]``, one run's
    NDCG@10 minus the other's, each averaged over its seeds) further from 0 than random sign flips make it?

    Users with no difference carry no information and every sign pattern of theirs is the same, so only the
    users that differ are flipped: exactly (all ``2^n`` patterns) when ``n <= EXACT_SIGN_FLIPS``, otherwise
    with ``resamples`` random patterns. Two-sided; with no differing user, p = 1.
    """
    from scipy import stats

    differ = gain[gain != 0]
    n = int(differ.size)
    out = {"test": "sign-flip permutation over users", "users": int(gain.size), "users_differ": n,
           "users_better": int((differ > 0).sum()), "users_worse": int((differ < 0).sum())}
    if n < 2:  # no user, or one whose two sign patterns tie: nothing can be told apart
        return {**out, "p_value": 1.0, "exact": True, "significant": False}
    exact = n <= EXACT_SIGN_FLIPS
    result = stats.permutation_test(
        (differ,), lambda d, axis: np.mean(d, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=np.inf if exact else resamples, alternative="two-sided", rng=np.random.default_rng(0))
    p = float(min(1.0, result.pvalue))
    return {**out, "p_value": p, "exact": exact, "significant": p < 0.05}


def _per_user_ndcg(runs: list[dict]) -> np.ndarray:
    """NDCG@10 per user (metrics.py's definition), averaged over the runs (seeds)."""
    ranks = np.array([r["retrieved_rank"] for r in runs], dtype=float)
    with np.errstate(divide="ignore"):
        return np.where((ranks >= 1) & (ranks <= 10), 1 / np.log2(ranks + 1), 0.0).mean(axis=0)


def p_text(p: float) -> str:
    """A p-value as a report prints it: three decimals, or "< 0.001" (a sampled test's p is never 0)."""
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def verdict(label: str, row: dict) -> str:
    """One sentence on whether ``label`` beats SFT beyond the noise."""
    vs = row["vs_sft"]
    diff = vs["ndcg10_difference"]
    if diff == 0:
        parts = [f"{label}: the same NDCG@10 as SFT"]
    else:
        parts = [f"{label}: NDCG@10 {abs(diff):.4f} {'higher' if diff > 0 else 'lower'} than SFT"]
    seed = vs.get("seed_test")
    if seed:
        parts.append(f"{'exceeds' if seed['exceeds_seed_noise'] else 'within'} the seed noise "
                     f"(Welch t-test over {len(row['seeds'])} seeds, p {p_text(seed['p_value'])})")
    else:
        parts.append("one seed only, so the seed noise is unknown (use --seeds 3)")
    low, high = vs["user_bootstrap"]["ci95"]
    parts.append(f"95% user-bootstrap interval of the difference [{low:+.4f}, {high:+.4f}]"
                 + (" excludes 0" if vs["user_bootstrap"]["excludes_zero"] else " includes 0"))
    paired = vs.get("paired_test")
    if paired:
        parts.append(f"{paired['users_differ']} of {paired['users']} users differ ({paired['users_better']} better, "
                     f"{paired['users_worse']} worse); {'exact' if paired['exact'] else 'sampled'} sign-flip test "
                     f"p {p_text(paired['p_value'])}")
    return "; ".join(parts) + "."


# --- reports ------------------------------------------------------------------------------------------------

def write_report(out_dir: str | Path, results: list[dict], base: ExperimentConfig, settings: EvalSettings,
                 kind: str, command: str, grid: dict[str, list] | None = None, selection: dict | None = None) -> dict:
    """``results.json``, ``results.md`` and the figures of an experiment folder; returns the summary rows.

    ``selection`` (a sweep's :func:`evaluate_chosen_on_test`) adds the chosen point and its test results."""
    from bearrec.evaluation.report import (
        ceiling_figure,
        efficiency_figure,
        pr_figure,
        pruning_comparison_figure,
        pruning_markdown,
        summary_markdown,
        summary_runs,
        sweep_figure,
        training_markdown,
    )
    from bearrec.io import write_text

    out = Path(out_dir)
    rows = summarize(results)
    dataset = RecDataset.load(base.data)
    first = next((r for r in results if r["kind"] == "lm"), None)
    users = results[0]["users"] if results else 0
    title = f"{kind}: {Path(base.data).name}, model {base.model}, {users} {settings.split} users, B={settings.beam_width}"
    write_json(out / "results.json", {
        "title": title, "command": command, "kind": kind, "dataset": dataset.summary(), "eval": asdict(settings),
        "grid": grid, "base_config": base.to_dict(), "summary": rows, "selection": selection,
        "environment": environment(),
        "runs": [{k: v for k, v in r.items() if k != "retrieved_rank"} for r in results],
    })
    figures = []
    if any(row["pruning"] for row in rows.values()):
        pr_figure(rows, out / "pr_at_k.png", f"Pruning rate (paper Fig. 6), {Path(base.data).name}")
        pruning_comparison_figure(rows, out / "pruning.png", f"Pruning attribution (paper Fig. 4), {Path(base.data).name}")
        figures += ["pr_at_k.png", "pruning.png"]
    if any("exact_NDCG@10" in row["mean"] for row in rows.values()):
        ceiling_figure(rows, out / "ceiling.png", f"What pruning costs: beam search vs the exact ranking, {Path(base.data).name}")
        figures.append("ceiling.png")
    efficiency_figure(rows, out / "efficiency.png", f"Training time vs NDCG@10 (paper Fig. 9), {Path(base.data).name}")
    figures.append("efficiency.png")
    if grid:
        points = {r["label"]: {k: r["overrides"][k] for k in grid} for r in results if r["label"] != BASELINE}
        sweep_figure(rows, points, out / "sweep.png", f"Sensitivity (paper Fig. 8), {Path(base.data).name}")
        figures.append("sweep.png")

    subsample = (f"{users} of {results[0]['of_users']} {settings.split} rows (seeded subsample, seed {settings.seed})"
                 if results and users < results[0]["of_users"] else f"all {users} {settings.split} rows")
    train_examples = first.get("train_examples") if first else None
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             f"- data: `{base.data}` ({dataset.summary()['items']} items); evaluated on {subsample}",
             f"- model: {base.model}" + (f" ({first['parameters']['total']:,} parameters, "
                                        f"{first['parameters']['trainable']:,} trained)" if first and first.get("parameters") else ""),
             f"- training: {train_examples if train_examples is not None else '?'} examples, up to {base.train.epochs} epochs, "
             f"best validation NDCG@10 kept ({base.train.valid_users if base.train.valid_users is not None else 'all'}"
             " validation users)",
             "- N = NDCG, H = HR (beam search, B = {}); exact N/H = the exact ranking's (every item ranked by its "
             "probability, nothing pruned) and gap N@10 = exact N@10 minus beam search's on the same users (what "
             "pruning costs, the ceiling for BEAR); PR = pruning rate (lower is better); mean ± std over "
             "seeds".format(settings.beam_width),
             "- decoding: " + ", ".join(f"{label} {how}" for label, how in
                                        {r["label"]: f"{r.get('decoder', 'beam')}" + (f", {r['scoring']} scoring" if r.get("scoring") else "")
                                         for r in results if r["kind"] == "lm"}.items())
             + f"; length_penalty {base.decoding.length_penalty:g}",
             "", summary_markdown(rows)]
    if settings.beam_width > 10:
        lines += [f"## At K = {settings.beam_width}", "", summary_markdown(rows, ks=(settings.beam_width,)), ""]
    lines += ["## Training", "", training_markdown(rows), ""]
    verdicts = [verdict(label, row) for label, row in rows.items() if "vs_sft" in row]
    if verdicts:
        lines += ["## Is the difference real?", ""] + [f"- {v}" for v in verdicts] + [""]
    if selection:
        chosen = selection["chosen"]
        lines += ["## Chosen on validation, reported on test", "",
                  f"Selection: {selection['criterion']}: **{chosen}** (validation NDCG@10 "
                  f"{selection['valid_ndcg10']:.4f}). Only it and SFT were evaluated on the test split "
                  f"({selection['test_users']} users); no other grid point ever was.", "",
                  summary_markdown(selection["test"]), ""]
        if "vs_sft" in selection["test"].get(chosen, {}):
            lines += [f"- test: {verdict(chosen, selection['test'][chosen])}", ""]
    if any(row["pruning"] for row in rows.values()):
        ranked = {label: row["pruning"]["ranked_users"] for label, row in rows.items() if row["pruning"]}
        lines += ["## Pruning attribution (paper Figure 4, users pooled over seeds)", "",
                  "PR@K and this table come from the exact ranks of "
                  + ", ".join(f"{n} users ({label})" for label, n in ranked.items())
                  + (f" (the first {settings.pruning_users} evaluated users per run)" if settings.pruning_users else "")
                  + "." + (f" Users whose rank was still undecided after {settings.pruning_node_budget} expanded trie nodes "
                           "are left out: " + ", ".join(f"{row['pruning']['unranked_users']} ({label})"
                                                         for label, row in rows.items() if row["pruning"]) + "."
                           if settings.pruning_node_budget else ""), "",
                  pruning_markdown({k: v for k, v in summary_runs(rows).items() if v["pruning"]}), ""]
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    write_text(out / "results.md", "\n".join(lines))
    return rows
