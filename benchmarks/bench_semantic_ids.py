"""Training throughput (examples/s) of from-scratch models over semantic IDs, in one run: batch size, length
grouping, the objectives and the backbone shape side by side.

Each variant trains in its own process for one epoch on the same seeded subsample of the train split, without
validation; examples/s = examples / seconds of the epoch. The ratio column compares with the first variant.

Usage (the APAO setting of ../shared/data/office, see docs/results.md for `prepare`):
    python benchmarks/bench_semantic_ids.py --data data/office-sid --max-train-examples 3000
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APAO_LLAMA = {"tiny.num_hidden_layers": 8, "tiny.intermediate_size": 1024, "tiny.num_attention_heads": 8}
# APAO's T5 (TIGER, its config/models/t5_config.json): 4 encoder and 4 decoder layers, d_model 128, d_ff 1024,
# 6 heads of 64, dropout 0.1
TIGER = {"tiny.architecture": "t5", "tiny.num_hidden_layers": 4, "tiny.intermediate_size": 1024,
         "tiny.num_attention_heads": 6, "tiny.head_size": 64}
# label -> (objective, config overrides); the tiny default is 2 layers, hidden 128, feed-forward 384, 4 heads
VARIANTS = {
    "sft-b32": ("sft", {"train.batch_size": 32}),
    "sft-b256": ("sft", {"train.batch_size": 256}),
    "sft-b256-grouped": ("sft", {"train.batch_size": 256, "train.group_by_length": True}),
    "sft-b64-grouped": ("sft", {"train.batch_size": 64, "train.group_by_length": True}),
    "sft-b64-grouped-packed": ("sft", {"train.batch_size": 64, "train.group_by_length": True, "train.pack": "true"}),
    "bear-b64-grouped": ("bear", {"train.batch_size": 64, "train.group_by_length": True}),
    "bear-b64-grouped-packed": ("bear", {"train.batch_size": 64, "train.group_by_length": True, "train.pack": "true"}),
    "msl-b256-grouped": ("msl", {"train.batch_size": 256, "train.group_by_length": True}),
    "bear-b256-grouped": ("bear", {"train.batch_size": 256, "train.group_by_length": True}),
    "apao-pointwise-b256-grouped": ("apao-pointwise", {"train.batch_size": 256, "train.group_by_length": True}),
    "apao-pairwise-b64-grouped": ("apao-pairwise", {"train.batch_size": 64, "train.group_by_length": True}),
    "apao-pairwise-k20-b64-grouped": ("apao-pairwise", {"train.batch_size": 64, "train.group_by_length": True,
                                                         "apao.num_negatives": 20}),
    "sft-apao-llama-b256-grouped": ("sft", {"train.batch_size": 256, "train.group_by_length": True, **APAO_LLAMA}),
    "sft-t5-tiny-b256-grouped": ("sft", {"train.batch_size": 256, "train.group_by_length": True,
                                         "tiny.architecture": "t5"}),
    "sft-tiger-b256-grouped": ("sft", {"train.batch_size": 256, "train.group_by_length": True, **TIGER}),
}
DEFAULT = ",".join(VARIANTS)


def run_one(args) -> dict:
    import transformers

    from bearrec.config import ExperimentConfig, TrainConfig, with_overrides
    from bearrec.runs import train_run

    transformers.logging.disable_progress_bar()
    objective, overrides = VARIANTS[args.variant]
    limit = args.max_train_examples // (10 if objective == "apao-pairwise" else 1)  # it costs ~10x per example
    config = with_overrides(ExperimentConfig(data=str(args.data), representation="semantic-ids", train=TrainConfig(
        objective=objective, epochs=1, valid_users=0, max_train_examples=limit)), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        log = train_run(config, Path(tmp) / "run")
    return {"variant": args.variant, "examples": log["examples"], "seconds": log["seconds_per_epoch"],
            "examples_per_second": log["examples"] / log["seconds_per_epoch"], "parameters": log["parameters"]["total"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a dataset folder with semantic IDs")
    parser.add_argument("--max-train-examples", type=int, default=3000, help="per variant (apao-pairwise: a tenth)")
    parser.add_argument("--variants", default=DEFAULT, help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--variant", choices=list(VARIANTS), help="run one variant in this process (internal)")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_one(args)))
        return
    labels = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in labels if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}")
    results = []
    for label in labels:
        cmd = [sys.executable, __file__, "--variant", label, "--data", str(args.data),
               "--max-train-examples", str(args.max_train_examples)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        r["vs_first"] = r["examples_per_second"] / results[0]["examples_per_second"]
        print(f"{label:<32} {r['examples']:>6} ex  {r['seconds']:8.1f} s  {r['examples_per_second']:8.1f} ex/s  "
              f"{r['vs_first']:6.2f}x  {r['parameters']:>9} params", file=sys.stderr, flush=True)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "data": str(args.data),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
