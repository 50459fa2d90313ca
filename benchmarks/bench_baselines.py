"""The conventional baselines alone: SASRec and BERT4Rec over several seeds, scored on every test user.

Trains each model with its config section's defaults (plus ``--set`` overrides), keeps the epoch with
the best validation NDCG@10, ranks the whole catalog for every test row and prints mean ± std over the
seeds, seconds per training epoch, the epoch of the best validation NDCG@10 and, as the floor, the
most popular train targets. What ``bearrec compare`` does for its baseline rows, without the LMs.

Usage (the numbers of docs/results.md; one thread, as on the project's shared 2-core machines):
    python benchmarks/bench_baselines.py --data data/office --models sasrec,bert4rec --seeds 3
    python benchmarks/bench_baselines.py --data data/books --models sasrec --seeds 1 --set sasrec.loss=bce
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bearrec.baselines.bert4rec import train_bert4rec
from bearrec.baselines.configs import BERT4RecConfig, SASRecConfig
from bearrec.baselines.sasrec import train_sasrec
from bearrec.baselines.seqrec import evaluate, evaluate_popularity
from bearrec.data.dataset import RecDataset
from bearrec.evaluation.evaluate import EvalSettings
from bearrec.evaluation.report import METRIC_COLUMNS
from bearrec.yamlfiles import parse_value

MODELS = {"sasrec": (SASRecConfig, train_sasrec), "bert4rec": (BERT4RecConfig, train_bert4rec)}
METRICS = METRIC_COLUMNS[:4]  # NDCG@5, NDCG@10, HR@5, HR@10


def run(dataset: RecDataset, name: str, seed: int, overrides: dict) -> dict:
    config_class, train = MODELS[name]
    config = config_class(seed=seed, **overrides)
    start = time.perf_counter()
    model, log = train(dataset, config)
    test = evaluate(model, dataset, EvalSettings(split="test"))
    return {"model": name, "seed": seed, "test": test["metrics"], "users": test["users"],
            "valid": evaluate(model, dataset, EvalSettings(split="valid"))["metrics"], "wall_seconds": time.perf_counter() - start, **log}


def table(runs: list[dict], popularity: dict) -> str:
    lines = ["| | " + " | ".join(METRICS) + " | valid N@10 | s/epoch | best epoch (of run) |",
             "|---|" + "---:|" * (len(METRICS) + 3)]
    for name in dict.fromkeys(r["model"] for r in runs):
        own = [r for r in runs if r["model"] == name]
        cells = [_mean_std([r["test"][m] for r in own]) for m in METRICS]
        cells += [_mean_std([r["valid"]["NDCG@10"] for r in own]), f"{np.mean([r['seconds_per_epoch'] for r in own]):.1f}",
                  ", ".join(f"{r['best_epoch']} ({r['epochs_run']})" for r in own)]
        lines.append(f"| {name} ({len(own)} seeds) | " + " | ".join(cells) + " |")
    lines.append("| popularity | " + " | ".join(f"{popularity[m]:.4f}" for m in METRICS) + " | | | |")
    return "\n".join(lines)


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder from `bearrec prepare`")
    parser.add_argument("--models", default="sasrec,bert4rec", help="comma-separated from sasrec, bert4rec")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="section.field=value, e.g. sasrec.loss=bce or bert4rec.mask_ratio=0.4")
    parser.add_argument("--json", type=Path, help="write every run's metrics and log here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    overrides: dict[str, dict] = {n: {} for n in MODELS}
    for item in args.overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if section not in MODELS or not field:
            parser.error(f"--set {item}: expected sasrec.field=value or bert4rec.field=value")
        overrides[section][field] = parse_value(value)
    dataset = RecDataset.load(args.data)
    runs = []
    for name in names:
        for seed in range(args.seeds):
            runs.append(run(dataset, name, seed, overrides[name]))
            r = runs[-1]
            print(f"{name} seed {seed}: test NDCG@10 {r['test']['NDCG@10']:.4f}, best epoch {r['best_epoch']} of "
                  f"{r['epochs_run']}, {r['seconds_per_epoch']:.1f} s/epoch", flush=True)
    print(table(runs, evaluate_popularity(dataset)["metrics"]))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
