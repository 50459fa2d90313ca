"""Replay a training batch whose gradients came out non-finite, under each attention kernel, to find which one fails.

When a step's gradients are NaN or infinite, training skips it and keeps the batch with the trainable weights it
met in ``<run>/checkpoints/nonfinite-step<N>.safetensors`` (bearrec.training.diagnostics.dump_batch). This script rebuilds the
run's model from its config, puts those weights back, and runs that batch's forward and backward once per variant:

* ``sdpa``: PyTorch's scaled_dot_product_attention choosing its kernel itself (what training used);
* ``sdpa-efficient``, ``sdpa-flash``, ``sdpa-cudnn``, ``sdpa-math``: the same, restricted to one kernel
  (``torch.nn.attention.sdpa_kernel``); a kernel that cannot take these inputs on this device is reported so;
* ``eager``: transformers' plain matmul-softmax attention.

Each under the training's autocast (bf16 where the device has it). Per variant: the loss, whether it and the
gradients are finite, and the first parameter whose gradient is not. Written to ``OUT/nan_probe.json`` and
printed as a table. The first GPU lease found SFT's step 348 of office-bear with a finite forward and NaN
gradients (docs/gpu.md); this is the experiment that says which kernel.

Usage (GPU machine):  python3 benchmarks/gpu/nan_probe.py --run STATE/runs/office-bear-lora/runs/sft/seed0 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

VARIANTS = ("sdpa", "sdpa-efficient", "sdpa-flash", "sdpa-cudnn", "sdpa-math", "eager")


def load_replay(run: Path, dump: Path | None = None):
    """(model, objective, inputs, dump path): the run's model with the dumped weights, on the accelerator."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from bearrec.config import load_config
    from bearrec.data.dataset import RecDataset
    from bearrec.distributed import device
    from bearrec.runs import new_model

    dumps = sorted((run / "checkpoints").glob("nonfinite-step*.safetensors"))
    dump = dump or (dumps[-1] if dumps else None)
    if dump is None or not dump.is_file():
        raise SystemExit(f"{run / 'checkpoints'}: no nonfinite-step*.safetensors (training skipped no step)")
    config = load_config(run / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    model, _ = new_model(config, RecDataset.load(config.data), tokenizer)
    saved = load_file(str(dump))
    weights = {k.removeprefix("weight."): v for k, v in saved.items() if k.startswith("weight.")}
    if not weights:
        raise SystemExit(f"{dump}: holds the batch but not the weights (too many trainable values were kept out)")
    names = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise SystemExit(f"{dump}: weight {unknown[0]} is not in the model that {run / 'config.yaml'} builds")
    with torch.no_grad():
        for name, value in weights.items():
            names[name].copy_(value)
    model.to(device()).train()
    objective = config.objective_config()
    if objective.needs_search or objective.negatives:
        raise SystemExit(f"objective {config.train.objective}: its loss needs the trainer (search or a reference); "
                         "the probe replays sft, msl, bear and the APAO pointwise loss")
    inputs = {k.removeprefix("input."): v.to(device()) for k, v in saved.items() if k.startswith("input.")}
    if "group_labels" in inputs:
        raise SystemExit(f"{dump}: an APAO pairwise batch (grouped answers); the probe replays single-answer batches")
    return model, objective, inputs, dump


def run_variant(model, objective, inputs: dict, variant: str) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bearrec.training.trainer import RecTrainer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation("eager" if variant == "eager" else "sdpa")
    backend = {"sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa-flash": SDPBackend.FLASH_ATTENTION,
               "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}.get(variant)
    kind = inputs["input_ids"].device.type
    bf16 = kind == "cuda" and torch.cuda.is_bf16_supported()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # training mode, as the step ran: the same dropout masks for every variant
    try:
        with sdpa_kernel(backend) if backend is not None else nullcontext(), \
                torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            labels = inputs["labels"]
            logits = RecTrainer._answer_logits(model, inputs, labels, 1)  # as training computed them
            extra = {"step": 0} | ({"candidates": inputs["candidates"]} if "candidates" in inputs else {})
            loss, _ = objective.loss(logits, labels, extra)
            loss.backward()
    except RuntimeError as err:  # no kernel of that kind for these inputs on this device
        return {"variant": variant, "available": False, "reason": str(err).splitlines()[0][:200]}
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    return {"variant": variant, "available": True, "autocast_bf16": bf16, "loss": float(loss.detach()),
            "loss_finite": bool(torch.isfinite(loss)), "grads_finite": not bad,
            "first_nonfinite_grad": bad[0] if bad else None, "nonfinite_grad_parameters": len(bad)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="the run folder whose training skipped a step")
    p.add_argument("--dump", type=Path, help="one nonfinite-step*.safetensors [default: the run's last]")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--out", type=Path, required=True, help="results folder (on the GPU machine: $OUT)")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    model, objective, inputs, dump = load_replay(args.run, args.dump)
    rows = [run_variant(model, objective, inputs, v) for v in variants]
    mask = inputs["attention_mask"]
    report = {"run": str(args.run), "dump": str(dump), "batch": list(mask.shape), "lengths": mask.sum(1).tolist(),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "variants": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nan_probe.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{dump}: batch {report['batch']} on {report['device']}, torch {torch.__version__}")
    print("| variant | loss | gradients | first non-finite gradient |\n|---|---:|---|---|")
    for r in rows:
        if not r["available"]:
            print(f"| {r['variant']} | not available: {r['reason']} | | |")
        else:
            print(f"| {r['variant']} | {r['loss']:.4f} | {'finite' if r['grads_finite'] else 'NOT finite'} | "
                  f"{r['first_nonfinite_grad'] or '-'} |")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
