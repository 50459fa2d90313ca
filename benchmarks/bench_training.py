"""Training cost of SFT, MSL, BEAR (official and paper formulations) and beam-sim on the same model and data, in one run.

Each objective trains in its own process (so that peak memory is its own) for the same number of
epochs on the same examples, without validation. Reports seconds per epoch, tokens per second, the
ratio to SFT (per epoch and per optimizer step), and peak memory (resident set on CPU, allocated
memory on GPU) with its ratio to SFT. The target of issue 13: MSL/SFT and BEAR/SFT <= 1.05.

Usage (CPU, tiny model, the quickstart's synthetic data):
    python benchmarks/bench_training.py
With another model or dataset:
    python benchmarks/bench_training.py --data data/office --model tiny --max-train-examples 2000
Another selection (beam-sim is slow: it simulates beam search every step):
    python benchmarks/bench_training.py --objectives sft,msl,bear,bear-paper,beam-sim
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

# label -> (objective, config overrides)
OBJECTIVES = {
    "sft": ("sft", {}),
    "msl": ("msl", {}),
    "bear": ("bear", {}),  # official formulation, the authors' defaults
    "bear-paper": ("bear", {"bear.formulation": "paper"}),
    "beam-sim": ("beam-sim", {}),
}
DEFAULT = "sft,msl,bear,bear-paper"


def run_one(args) -> dict:
    import torch
    import transformers

    from bearrec.config import ExperimentConfig, TrainConfig, with_overrides
    from bearrec.runs import train_run

    transformers.logging.disable_progress_bar()
    objective, overrides = OBJECTIVES[args.objective]
    config = with_overrides(ExperimentConfig(data=str(args.data), model=args.model, train=TrainConfig(
        objective=objective, epochs=args.epochs, batch_size=args.batch_size, valid_users=0,
        max_train_examples=args.max_train_examples)), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        log = train_run(config, Path(tmp) / "run")
        total = time.perf_counter() - start
    tokens = [h["tokens_per_second"] for h in log["log_history"] if "tokens_per_second" in h]
    gpu = torch.cuda.is_available()
    return {
        "objective": args.objective,
        "seconds_per_epoch": log["seconds_per_epoch"],
        "seconds_per_step": sum(e["seconds"] for e in log["epochs"]) / max(log["global_step"], 1),
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
    parser.add_argument("--objectives", default=DEFAULT, help=f"comma-separated, from {', '.join(OBJECTIVES)} (first = the baseline)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per objective, interleaved; the fastest counts")
    parser.add_argument("--objective", choices=list(OBJECTIVES), help="run one objective in this process (internal)")
    args = parser.parse_args()
    if args.objective:
        print(json.dumps(run_one(args)))
        return
    if args.data is None:
        from bearrec.data.synthetic import generate_synthetic

        args.data = Path(tempfile.mkdtemp(prefix="bench-training-")) / "data"
        generate_synthetic().save(args.data)
    labels = [o.strip() for o in args.objectives.split(",") if o.strip()]
    unknown = [o for o in labels if o not in OBJECTIVES]
    if unknown:
        parser.error(f"unknown objective(s) {', '.join(unknown)}")
    best: dict[str, dict] = {}
    for _ in range(args.repeats):  # interleaved, so that machine load drifts hit every objective alike
        for label in labels:
            cmd = [sys.executable, __file__, "--objective", label, "--data", str(args.data), "--model", args.model,
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
            if args.max_train_examples:
                cmd += ["--max-train-examples", str(args.max_train_examples)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1]) | {"objective": label}
            if label not in best or r["seconds_per_step"] < best[label]["seconds_per_step"]:
                best[label] = r
    results = [best[label] for label in labels]
    sft = results[0]
    for r in results:
        r["time_vs_sft"] = r["seconds_per_epoch"] / sft["seconds_per_epoch"]
        r["step_time_vs_sft"] = r["seconds_per_step"] / sft["seconds_per_step"]
        r["memory_vs_sft"] = r["peak_memory_mb"] / sft["peak_memory_mb"]
    print("objective    s/step   time/SFT  memory/SFT", file=sys.stderr)
    for r in results:
        print(f"{r['objective']:<12} {r['seconds_per_step']:.4f}   {r['step_time_vs_sft']:.3f}     {r['memory_vs_sft']:.3f}",
              file=sys.stderr)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "model": args.model,
                      "data": str(args.data), "results": results}, indent=2))


if __name__ == "__main__":
    main()
