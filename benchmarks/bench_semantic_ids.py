"""Semantic IDs, two benchmarks in one script.

1. Training throughput (examples/s) of models over semantic IDs, in one run: batch size, length grouping, the
   objectives and the backbone shape side by side; the ``smollm2-*`` variants (not run by default) train
   SmolLM2-135M over the codes as new tokens (LoRA with the new rows as trainable tokens or modules to save, full
   fine-tuning, the new rows alone, packed, with titles in the prompt) and over titles. Each variant trains in its own process for one
   epoch on the same seeded subsample of the train split, without validation; examples/s = examples / seconds of
   the epoch. The ratio column compares with the first variant.

       python benchmarks/bench_semantic_ids.py --data data/office-sid --max-train-examples 3000
       python benchmarks/bench_semantic_ids.py --data data/office-sid --max-train-examples 256 \
           --variants smollm2-codes,smollm2-codes-modules-to-save,smollm2-codes-packed,smollm2-titles

2. ``--quantiser``: building the codes (RQ-KMeans, :mod:`bearrec.items.rq_kmeans`), one process per case for its
   wall time and peak RSS, and the share of items sharing all codes before disambiguation. Workloads: ``random``
   (uniform 384-d unit vectors, for timing), ``clustered`` (title-like, :mod:`bearrec.items.synthetic_embeddings`)
   or ``npy:PATH`` (saved embeddings, e.g. MiniLM over a catalog's titles). Variants: ``before`` (the settings of
   bearrec <= 0.1: raw residuals, nearest last level), ``unit`` (unit residuals only), ``unique`` (the unique last
   level only), ``default`` (both), ``balanced`` (default + balanced) and ``balanced-plain`` (balanced, raw
   residuals, nearest last level).

       python benchmarks/bench_semantic_ids.py --quantiser --workload random --items 100000,1000000 \
           --backends faiss,sklearn --variants default
       python benchmarks/bench_semantic_ids.py --quantiser --workload clustered --items 10000,100000 \
           --backends faiss --variants before,unit,default,balanced-plain,balanced
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
# SmolLM2-135M (issue 31): over the codes as new tokens, how the new rows train, packing, against titles
SMOLLM2 = {"model": "smollm2-135m", "train.batch_size": 16, "train.group_by_length": True}
VARIANTS.update({
    "smollm2-codes": ("sft", SMOLLM2),
    "smollm2-codes-modules-to-save": ("sft", {**SMOLLM2, "code_tokens.rows": "modules-to-save"}),
    "smollm2-codes-packed": ("sft", {**SMOLLM2, "train.pack": "true"}),
    "smollm2-codes-full": ("sft", {**SMOLLM2, "lora": False}),
    "smollm2-codes-new-rows": ("sft", {**SMOLLM2, "lora": False, "code_tokens.only_new_rows": True}),
    # prompts with titles are 4-5x longer: batch 4 (16 needs more than the 24 GB machine has beside other work)
    "smollm2-codes-b4": ("sft", {**SMOLLM2, "train.batch_size": 4}),
    "smollm2-codes-titles-prompt-b4": ("sft", {**SMOLLM2, "train.batch_size": 4,
                                               "code_tokens.prompt": "instruction-titles"}),
    "smollm2-titles-b4": ("sft", {**SMOLLM2, "train.batch_size": 4, "representation": "titles"}),
})
DEFAULT = ",".join(v for v in VARIANTS if not v.startswith("smollm2"))
# quantiser variant -> SemanticIdConfig fields over the defaults (3 levels of 256)
QUANTISERS = {
    "before": {"normalize_residuals": False, "unique_last_level": False},
    "unit": {"unique_last_level": False},
    "unique": {"normalize_residuals": False},
    "default": {},
    "balanced-plain": {"balanced": True, "normalize_residuals": False, "unique_last_level": False},
    "balanced": {"balanced": True},
}


def embeddings_of(workload: str, items: int):
    """``[items, 384]`` float32 unit rows of the workload (``npy:PATH`` ignores ``items``)."""
    import numpy as np

    from bearrec.items.synthetic_embeddings import clustered_embeddings

    if workload.startswith("npy:"):
        return np.load(workload[4:])
    if workload == "clustered":
        return clustered_embeddings(items, seed=1)
    x = np.random.default_rng(0).standard_normal(size=(items, 384), dtype=np.float32)
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x


def quantise_one(args) -> dict:
    from bearrec.items.rq_kmeans import rq_kmeans
    from bearrec.items.sid_config import SemanticIdConfig
    from bearrec.items.sid_quality import sid_quality

    x = embeddings_of(args.workload, args.items_one)
    config = SemanticIdConfig(backend=args.backend, levels=args.levels, codebook_size=args.codebook_size,
                              **QUANTISERS[args.quantiser_variant]).validate()
    start = time.perf_counter()
    codes = rq_kmeans(x, config)
    seconds = time.perf_counter() - start
    report = sid_quality(codes, config.codebook_size)
    return {"workload": args.workload, "items": len(x), "backend": args.backend, "variant": args.quantiser_variant,
            "seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "shared_share": report["shared_share"], "items_sharing_codes": report["items_sharing_codes"],
            "largest_group": report["largest_group"],
            "max_items_per_code": [level["max_items_per_code"] for level in report["per_level"]],
            "normalised_entropy": [round(level["normalised_entropy"], 3) for level in report["per_level"]]}


def quantiser_main(args) -> None:
    sizes = [int(float(n)) for n in args.items.split(",")]
    results = []
    for items in sizes:
        for backend in args.backends.split(","):
            for variant in args.variants.split(","):
                cmd = [sys.executable, __file__, "--quantiser", "--one", "--workload", args.workload, "--items",
                       str(items), "--backends", backend, "--variants", variant, "--levels", str(args.levels),
                       "--codebook-size", str(args.codebook_size)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{items} items, {backend}, {variant} failed:\n{done.stderr[-2000:]}")
                r = json.loads(done.stdout.strip().splitlines()[-1])
                results.append(r)
                print(f"{r['workload'][:24]:<24} {r['items']:>8} {backend:<8} {variant:<15} {r['seconds']:8.1f} s "
                      f"{r['peak_rss_gb']:6.2f} GB  shared {100 * r['shared_share']:6.2f} % "
                      f"({r['items_sharing_codes']}, largest {r['largest_group']})  max/code {r['max_items_per_code']}"
                      f"  H/log2K {r['normalised_entropy']}", file=sys.stderr, flush=True)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "results": results},
                     indent=2))


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
            "examples_per_second": log["examples"] / log["seconds_per_epoch"], "parameters": log["parameters"]["total"],
            "trainable": log["parameters"]["trainable"],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a dataset folder with semantic IDs (training throughput)")
    parser.add_argument("--max-train-examples", type=int, default=3000, help="per variant (apao-pairwise: a tenth)")
    parser.add_argument("--variants", help=f"comma-separated, from {', '.join(VARIANTS)} (training, all by default) "
                        f"or, with --quantiser, from {', '.join(QUANTISERS)} (default: default)")
    parser.add_argument("--variant", choices=list(VARIANTS), help="run one variant in this process (internal)")
    parser.add_argument("--quantiser", action="store_true", help="benchmark building the codes instead")
    parser.add_argument("--workload", default="random", help="--quantiser: random, clustered or npy:PATH")
    parser.add_argument("--items", default="100000,1000000", help="--quantiser: catalog sizes, comma-separated")
    parser.add_argument("--backends", default="faiss,sklearn", help="--quantiser: k-means backends, comma-separated")
    parser.add_argument("--levels", type=int, default=3, help="--quantiser: code levels")
    parser.add_argument("--codebook-size", type=int, default=256, help="--quantiser: codes per level")
    parser.add_argument("--one", action="store_true", help="--quantiser: run one case in this process (internal)")
    args = parser.parse_args()
    if args.quantiser:
        args.variants = args.variants or "default"
        unknown = [v for v in args.variants.split(",") if v not in QUANTISERS]
        if unknown:
            parser.error(f"unknown quantiser variant(s) {', '.join(unknown)}")
        if args.one:
            args.items_one, args.backend, args.quantiser_variant = int(args.items), args.backends, args.variants
            print(json.dumps(quantise_one(args)))
        else:
            quantiser_main(args)
        return
    if args.data is None:
        parser.error("--data is required (or --quantiser)")
    args.variants = args.variants or DEFAULT
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
              f"{r['vs_first']:6.2f}x  {r['parameters']:>9} params ({r['trainable']} trainable)  "
              f"{r['peak_rss_gb']:5.2f} GB", file=sys.stderr, flush=True)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "data": str(args.data),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
