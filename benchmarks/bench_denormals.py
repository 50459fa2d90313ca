"""Training step cost with and without flushing subnormal floats (``train.flush_denormal``), in one run.

A from-scratch model gets slower per step as it trains on the CPU: its activations and gradients come to hold
subnormal floats (below 1.2e-38; a T5's unscaled attention saturates its softmax), which x86 computes in a slow
path. This times the forward and backward of the CE loss, exactly as training computes it (bearrec's collator and
answer logits), on the same batches of the run's train split, for the run's trained weights and for the same
architecture freshly initialised, each with the CPU flushing subnormals to zero and without. Best of three.

Usage (a run folder, or any of its checkpoints as the weights):
    python benchmarks/bench_denormals.py --run runs/office-sid-t5/runs/sft/seed0 \
        --weights runs/office-sid-t5/runs/sft/seed0/checkpoints/checkpoint-9648
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder (its config.yaml and dataset)")
    parser.add_argument("--weights", type=Path, help="a model or checkpoint folder (default: RUN/model)")
    parser.add_argument("--data", type=Path, help="the dataset folder (default: the run's)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bearrec.config import load_config
    from bearrec.data.dataset import RecDataset
    from bearrec.items.prompts import encode_split
    from bearrec.lm.forward import is_encoder_decoder
    from bearrec.lm.models import build_tiny_model, load_model
    from bearrec.objectives import sft_loss
    from bearrec.runs import item_space
    from bearrec.training.collators import Collator
    from bearrec.training.diagnostics import flush_denormals
    from bearrec.training.trainer import RecTrainer

    config = load_config(args.run / "config.yaml")
    weights = args.weights or args.run / "model"
    data = args.data or json.loads((args.run / "run.json").read_text())["dataset_dir"]
    dataset = RecDataset.load(data)
    trained, tokenizer = load_model(weights)
    fresh = build_tiny_model(tokenizer, config.tiny, seed=config.train.seed)
    encoder = item_space(tokenizer, dataset, config).encoder
    prompts, targets = encode_split(dataset, "train", encoder, args.batches * args.batch_size, seed=0)
    collate = Collator(tokenizer.pad_token_id, with_prompts=is_encoder_decoder(trained))
    examples = [{"prompt": p, "answer": encoder.answers[t], "item": t} for p, t in zip(prompts, targets)]
    batches = [collate(examples[i : i + args.batch_size]) for i in range(0, len(examples), args.batch_size)]

    def steps(model) -> float:
        model.train()
        torch.manual_seed(0)  # the same dropout masks in every timing
        start = time.perf_counter()
        for batch in batches:
            logits = RecTrainer._answer_logits(model, batch, batch["labels"], 1)  # [N, A, V]
            sft_loss(logits, batch["labels"]).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    seconds = {}
    for flush in (False, True):
        with flush_denormals(flush):
            for name, model in (("fresh", fresh), ("trained", trained)):
                steps(model)  # warm-up
                seconds[(name, flush)] = min(steps(model) for _ in range(3))
    per_batch = {f"{name}_{'flush' if flush else 'ieee'}_s_per_batch": s / len(batches)
                 for (name, flush), s in seconds.items()}
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {args.threads} thread(s)",
        "weights": str(weights), "architecture": trained.config.model_type, "batches": len(batches),
        "batch_size": args.batch_size, **per_batch,
        "trained_ieee_vs_fresh_ieee": seconds[("trained", False)] / seconds[("fresh", False)],
        "trained_ieee_vs_trained_flush": seconds[("trained", False)] / seconds[("trained", True)],
        "fresh_ieee_vs_fresh_flush": seconds[("fresh", False)] / seconds[("fresh", True)],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
