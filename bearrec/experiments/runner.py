"""Running an experiment: several runs on the same data, model, seed and budget, in one folder (the plan is
:mod:`bearrec.experiments.plan`'s, the statistics and report their own modules'). Each run lives in
``OUT/runs/<label>/seed<k>/`` (a normal run folder) and is finished once its ``result.json`` exists:
a restarted experiment skips finished runs and resumes an interrupted one from its last checkpoint.
``OUT/experiment.json`` records the plan; restarting with a different base config is refused.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import rich
import torch
import transformers

from bearrec.baselines.bert4rec import train_bert4rec
from bearrec.baselines.sasrec import train_sasrec
from bearrec.baselines.seqrec import evaluate, save_weights
from bearrec.config import ExperimentConfig, from_dict
from bearrec.data.dataset import RecDataset
from bearrec.evaluation.evaluate import EvalSettings
from bearrec.experiments.plan import BASELINE, BASELINES, RunSpec
from bearrec.experiments.statistics import summarize
from bearrec.io import check_replaceable, discarded_on_disk_error, folder_lock, mark, write_json
from bearrec.runs import evaluate_run, train_run
from bearrec.training.tracking import log_result


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
                   kind: str, console=None, jobs: int = 1, dataset: RecDataset | None = None) -> list[dict]:
    """Train and evaluate every planned run that is not finished yet; returns one result per spec. ``base`` and
    ``settings`` arrive checked (their ``validate``, where the command line builds them). ``dataset`` is
    ``base.data`` already loaded (the command line loads it once for the runs, the test evaluation and the
    report); None loads it here.

    ``jobs > 1`` trains that many runs at once, each in its own process with an equal share of the CPU threads
    (:func:`_parallel_runs`): for small models on a multi-core CPU, where one run cannot use every core.
    """
    if jobs < 1:
        raise ValueError(f"jobs {jobs}: at least 1 run at a time")
    finished = lambda folder: any(folder.glob("runs/*/*/result.json"))  # noqa: E731
    with folder_lock(out_dir, "experiment"), discarded_on_disk_error(out_dir, keep=finished):
        return _run_experiment(base, specs, Path(out_dir), settings, kind, console, jobs, dataset)


def _run_experiment(base: ExperimentConfig, specs: list[RunSpec], out: Path, settings: EvalSettings, kind: str,
                    console, jobs: int, dataset: RecDataset | None) -> list[dict]:
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
    dataset = dataset if dataset is not None else RecDataset.load(base.data)
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
        config = spec.config(base)
        result = _lm_run(config, dataset, settings, folder, console)
        log_result(result["trackers"], {"objective": config.train.objective, "seed": str(spec.seed), "run": spec.label},
                   _split_metrics(settings.split, result["metrics"]))
    result.update(label=spec.label, seed=spec.seed, overrides=spec.overrides, folder=spec.folder,
                  wall_seconds=time.perf_counter() - run_start)
    write_json(folder / "result.json", result)
    return result


def _split_metrics(split: str, metrics: dict) -> dict:
    """A run's final metrics as its trackers get them, named by their split: ``test/NDCG@10``."""
    return {f"{split}/{name}": value for name, value in metrics.items()}


def _start_worker(threads: int, parent: int) -> None:
    """A parallel run's process: its share of the CPU threads, progress printed as lines when each bar completes
    (two processes redrawing live bars on one terminal garble both), and an end when the experiment's process
    ends. A killed parent (SIGKILL, a closed terminal) would otherwise leave its workers training on into the run
    folders that a restarted experiment resumes; they stop within a second instead, as if killed themselves,
    which every run survives (tests/training/test_crash.py)."""
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
    if (folder / "train_log.json").is_file() and (folder / "model").is_dir():
        log = json.loads((folder / "train_log.json").read_text())  # trained, interrupted while evaluating
    else:
        log = train_run(config, folder, resume=(folder / "config.yaml").is_file(), dataset=dataset, console=console)
    result = evaluate_run(folder, settings, data=dataset, console=console)
    return {"kind": "lm", "metrics": result["metrics"], "pruning": result.get("pruning"), "users": result["users"],
            "scoring": result.get("scoring"), "length_penalty": result.get("length_penalty"),
            "decoder": result["decoder"],
            "of_users": result["of_users"], "retrieved_rank": result["retrieved_rank"],
            "seconds_per_epoch": log["seconds_per_epoch"], "best_valid_ndcg10": log.get("best_valid_ndcg10"),
            "epochs_trained": len(log["epochs"]), "best_epoch": _best_epoch(log["epochs"]), "parameters": log.get("parameters"),
            "train_examples": log.get("examples"), "config": config.to_dict(),
            "trackers": log.get("trackers", {})}  # the MLflow / W&B runs of its training (train.report_to)


def _best_epoch(epochs: list[dict]) -> int | None:
    """The epoch whose validation NDCG@10 was best (the first of equals, as model selection keeps it)."""
    scored = [e for e in epochs if e.get("NDCG@10") is not None]
    return int(max(scored, key=lambda e: e["NDCG@10"])["epoch"]) if scored else None


def _baseline_run(name: str, dataset: RecDataset, config, settings: EvalSettings, folder: Path, console) -> dict:
    """Train and evaluate a conventional baseline (``name`` in :data:`BASELINES`) by full catalog ranking."""
    folder.mkdir(parents=True, exist_ok=True)
    model, log = {"sasrec": train_sasrec, "bert4rec": train_bert4rec}[name](dataset, config, console)
    save_weights(model, folder / "model.safetensors")
    result = evaluate(model, dataset, settings)
    return {"kind": name, **result, "pruning": None, "seconds_per_epoch": log["seconds_per_epoch"],
            "best_valid_ndcg10": log["best_valid_ndcg10"], "epochs_trained": log["epochs_run"],
            "best_epoch": log["best_epoch"], "train_windows": log["train_windows"],
            "parameters": {"total": sum(p.numel() for p in model.parameters())}, "config": log["config"]}


def evaluate_chosen_on_test(out_dir: str | Path, results: list[dict], base: ExperimentConfig,
                            settings: EvalSettings, console=None, dataset: RecDataset | None = None) -> dict:
    """A sweep's model selection: the grid point with the best mean *validation* NDCG@10 over seeds is chosen,
    then it and the SFT baseline (every seed) are evaluated on the test split, once: their ``eval_test.json``
    is reused on a restart. The grid itself is never evaluated on test, so the choice cannot see test data.
    ``dataset`` is ``base.data`` already loaded; None loads it the first time a test result is not saved yet.
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
    tested = []
    for r in results:
        if r["label"] not in (BASELINE, chosen):
            continue
        folder = Path(out_dir) / "runs" / r["folder"]
        saved = folder / "eval_test.json"
        if saved.is_file():
            result = json.loads(saved.read_text())
        else:
            dataset = dataset if dataset is not None else RecDataset.load(base.data)
            if console:
                console.print(f"test split: {r['label']} seed {r['seed']}")
            result = evaluate_run(folder, test, data=dataset, console=console)
            log_result(r.get("trackers", {}), {}, _split_metrics("test", result["metrics"]))
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


# --- reports ------------------------------------------------------------------------------------------------
