"""The three decoders side by side on the same users: beam search, exact top-K and L2D (global and local).

For one trained run (or, by default, the tiny model trained one epoch on the quickstart's synthetic data):
* seconds per user of constrained beam search (B = K), of exact top-K (``exact_top_k``: best-first over the
  trie, nothing pruned) with the trie nodes it expanded per user and how many users it certified, and of
  L2D decoding (``decoding/latent.py``), whose item memory build (one forward per training prompt, once per
  model) is timed apart;
* the ratio of each to beam search, measured in the same process on the same prompts;
* NDCG@10 / HR@10 of each list on those users (the exact decoder's list holds the K items of highest
  summed log-probability; with a length penalty beam search orders its list differently, so it is no ceiling).

Usage:
    python benchmarks/bench_decoders.py --users 200
    python benchmarks/bench_decoders.py --run runs/office-bear-sft --users 100 --node-budget 4096
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="trained run folder (default: tiny model on synthetic data, 1 epoch)")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--k", type=int, default=10, help="K, and the beam width B")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--node-budget", type=int, default=None, help="exact: trie nodes per user (default: none)")
    parser.add_argument("--scoring", choices=["full", "masked"], default=None, help="[default: the run's]")
    parser.add_argument("--split", default="test")
    parser.add_argument("--memory-examples", type=int, default=None,
                        help="build the L2D memory from a seeded subsample of the train split (a large model on a CPU); "
                             "the full build time is then extrapolated and marked so")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from bearrec.decoding import decode, item_memory
    from bearrec.decoding.latent import build_item_memory
    from bearrec.evaluation.metrics import ranking_metrics
    from bearrec.items.prompts import encode_split
    from bearrec.runs import item_space, load_run

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or _default_run(Path(tmp))
        model, tokenizer, dataset, config = load_run(run)
        space = item_space(tokenizer, dataset, config)
        encoder = space.encoder
        histories, targets = dataset.examples(args.split, args.users, seed=0)
        prompts = space.prompts(histories)
        targets = torch.tensor(targets)
        decoding = replace(config.decoding, scoring=args.scoring or config.scoring)
        users = len(histories)
        rows = {}

        def measure(label: str, memory=None, **kw) -> None:
            start = time.perf_counter()
            found = decode(model, prompts, space.trie, args.k, replace(decoding, **kw), memory, args.batch_size)
            seconds = time.perf_counter() - start
            metrics = ranking_metrics(found.item_ids, targets)
            rows[label] = {"seconds": seconds, "ms_per_user": 1000 * seconds / users,
                           "NDCG@10": metrics["NDCG@10"], "HR@10": metrics["HR@10"]}
            if label == "exact":
                rows[label].update(nodes_expanded_per_user=float(found.nodes_expanded.float().mean()),
                                   certified_users=int(found.certified.sum()))
            print(f"{label}: {rows[label]}", flush=True)

        measure("beam", decoder="beam")
        measure("exact", decoder="exact", node_budget=args.node_budget)
        start = time.perf_counter()
        if args.memory_examples is None:
            memory, _ = item_memory(model, encoder, dataset, None, args.batch_size)
            memory_seconds = time.perf_counter() - start
        else:  # a subsample: the build time is linear in the prompts, so it is extrapolated to the full split
            sample, sample_targets = encode_split(dataset, "train", encoder, args.memory_examples, seed=0)
            memory = build_item_memory(model, sample, sample_targets, len(dataset.titles), tokenizer.pad_token_id,
                                       args.batch_size)
            memory_seconds = (time.perf_counter() - start) * len(dataset.splits["train"]) / len(sample)
        for variant in ("global", "local"):
            measure(f"latent-{variant}", decoder="latent", memory=memory, latent_variant=variant)
        for row in rows.values():
            row["vs_beam"] = row["seconds"] / rows["beam"]["seconds"]
        result = {"run": str(args.run or "default tiny synthetic run"), "model": config.model, "users": users,
                  "items": len(dataset.titles), "k": args.k, "scoring": decoding.scoring,
                  "length_penalty": config.decoding.length_penalty, "node_budget": args.node_budget,
                  "memory_seconds": memory_seconds, "memory_prompts": int(memory.targets.numel()),
                  "memory_extrapolated_to": len(dataset.splits["train"]) if args.memory_examples else None, "decoders": rows,
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform()}
    print(_markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def _default_run(tmp: Path) -> Path:
    from bearrec.config import ExperimentConfig, TrainConfig
    from bearrec.data.synthetic import generate_synthetic
    from bearrec.runs import train_run

    data = generate_synthetic().save(tmp / "data")
    config = ExperimentConfig(data=str(data), train=TrainConfig(epochs=1, valid_users=0))
    train_run(config, tmp / "run")
    return tmp / "run"


def _markdown(result: dict) -> str:
    lines = [f"{result['model']}, {result['items']} items, {result['users']} users, K = B = {result['k']}, "
             f"{result['scoring']} scoring; L2D item memory built from {result['memory_prompts']} training prompts"
             + (f" (a subsample; {result['memory_seconds']:.1f} s extrapolated to all {result['memory_extrapolated_to']})"
                if result["memory_extrapolated_to"] else f" in {result['memory_seconds']:.1f} s")
             + " (once per model, not in the rows)", "",
             "| decoder | ms / user | vs beam | NDCG@10 | HR@10 | nodes expanded / user | certified |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, row in result["decoders"].items():
        nodes = f"{row['nodes_expanded_per_user']:.0f}" if "nodes_expanded_per_user" in row else ""
        certified = f"{row['certified_users']}/{result['users']}" if "certified_users" in row else ""
        lines.append(f"| {label} | {row['ms_per_user']:.1f} | {row['vs_beam']:.2f}x | {row['NDCG@10']:.4f} | "
                     f"{row['HR@10']:.4f} | {nodes} | {certified} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
