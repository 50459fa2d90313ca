"""Training cost of SFT, BEAR and beam-sim on the same model and data, in one run.

Each objective trains in its own process (so that peak memory is its own) for the same number of
epochs on the same examples, without validation. Reports seconds per epoch, tokens per second, the
ratio to SFT, and peak memory (resident set on CPU, allocated memory on GPU).

Usage (CPU, tiny model, the quickstart's synthetic data):
    python benchmarks/bench_training.py
With another model or dataset:
    python benchmarks/bench_training.py --data data/office --model tiny --max-train-examples 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OBJECTIVES = ("sft", "bear", "beam-sim")


def run_one(args) -> dict:
    import torch
    import transformers

    from bearrec.config import ExperimentConfig, TrainConfig
    from bearrec.runs import train_run

    transformers.logging.disable_progress_bar()
    config = ExperimentConfig(data=str(args.data), model=args.model, train=TrainConfig(
        objective=args.objective, epochs=args.epochs, batch_size=args.batch_size, valid_users=0,
        max_train_examples=args.max_train_examples))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        log = train_run(config, Path(tmp) / "run")
        total = time.perf_counter() - start
    tokens = [h["tokens_per_second"] for h in log["log_history"] if "tokens_per_second" in h]
    gpu = torch.cuda.is_available()
    return {
        "objective": args.objective,
        "seconds_per_epoch": log["seconds_per_epoch"],
        "tokens_per_second": sum(tokens) / len(tokens) if tokens else None,
        "examples": log["examples"],
        "total_seconds": total,
        "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2**20) if gpu
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "memory_kind": "GPU allocated" if gpu else "process RSS",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="dataset folder (default: the quickstart's synthetic data)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-train-examples", type=int)
    parser.add_argument("--objective", choices=OBJECTIVES, help="run one objective in this process (internal)")
    args = parser.parse_args()
    if args.objective:
        print(json.dumps(run_one(args)))
        return
    if args.data is None:
        from bearrec.data.synthetic import generate_synthetic

        args.data = Path(tempfile.mkdtemp(prefix="bench-training-")) / "data"
        generate_synthetic().save(args.data)
    results = []
    for objective in OBJECTIVES:
        cmd = [sys.executable, __file__, "--objective", objective, "--data", str(args.data), "--model", args.model,
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
        if args.max_train_examples:
            cmd += ["--max-train-examples", str(args.max_train_examples)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    sft = results[0]
    for r in results:
        r["time_vs_sft"] = r["seconds_per_epoch"] / sft["seconds_per_epoch"]
        r["memory_vs_sft"] = r["peak_memory_mb"] / sft["peak_memory_mb"]
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "model": args.model,
                      "data": str(args.data), "results": results}, indent=2))


if __name__ == "__main__":
    main()
