"""When training goes wrong: the diagnosis of a non-finite step (which module first produced inf/nan, with and
without autocast), the batch and weights dumped beside it, and subnormal floats flushed on the CPU."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

if TYPE_CHECKING:
    from bearrec.training.trainer import RecTrainer


def nonfinite_diagnosis(model, inputs: dict, trainer: RecTrainer) -> dict:
    """Where a batch's non-finite gradients come from, for the warning and the training log.

    Re-runs the batch's forward (no gradients) under the training's autocast with a hook on every module and
    names the first module, in call order, whose output is not finite, then once more in full precision
    (autocast off) to tell a bf16 overflow from a NaN the data or the weights carry. Also: the loss of each
    pass, the parameters whose gradients are not finite (the first 5), and the batch's shape and sequence lengths.
    """
    bad_grads = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    mask = inputs["attention_mask"]

    def run(autocast) -> tuple[str | None, float]:
        first: list[str] = []

        def hook(module, args, output, name):
            out = output[0] if isinstance(output, tuple) else getattr(output, "logits", output)
            if not first and torch.is_tensor(out) and out.is_floating_point() and not torch.isfinite(out).all():
                first.append(name)

        handles = [m.register_forward_hook(lambda mod, a, o, n=n: hook(mod, a, o, n)) for n, m in model.named_modules() if n]
        try:
            with torch.no_grad(), autocast:
                loss = trainer.compute_loss(model, inputs)
        finally:
            for h in handles:
                h.remove()
        return (first[0] if first else None), float(loss)

    parts = dict(trainer._parts)  # the re-runs must not count in the logged diagnostics
    mixed_module, mixed_loss = run(trainer.autocast_smart_context_manager())
    full_module, full_loss = run(torch.autocast(mask.device.type, enabled=False))
    trainer._parts = parts
    return {"first_nonfinite_module": mixed_module, "loss": mixed_loss,
            "first_nonfinite_module_autocast_off": full_module, "loss_autocast_off": full_loss,
            "nonfinite_grad_parameters": bad_grads[:5], "batch": list(mask.shape),
            "lengths": mask.sum(1).tolist()}


DUMP_MAX_WEIGHTS = 50_000_000  # trainable values kept with a non-finite batch (LoRA: all of them; full fine-tuning: none)


def dump_batch(model, inputs: dict, path: Path) -> Path:
    """The batch (``input.<key>``) and, up to :data:`DUMP_MAX_WEIGHTS` values, the trainable weights
    (``weight.<name>``) as they were for that forward, in one safetensors file."""
    tensors = {f"input.{k}": v.detach().cpu().contiguous() for k, v in inputs.items() if torch.is_tensor(v)}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if sum(p.numel() for p in trainable.values()) <= DUMP_MAX_WEIGHTS:
        tensors |= {f"weight.{n}": p.detach().cpu().contiguous() for n, p in trainable.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def flushing_denormals() -> bool:
    """Whether the calling thread flushes subnormal floats to zero (``torch.set_flush_denormal``, which has no
    getter): a subnormal times one comes out zero only then."""
    subnormal = torch.tensor([torch.finfo(torch.float32).tiny / 4])  # [1]: computed on this thread
    return bool((subnormal * 1.0).item() == 0.0)


@contextmanager
def flush_denormals(enabled: bool):
    """``train.flush_denormal``: inside the block, subnormal floats are flushed to zero on the CPU (``enabled``)
    or kept (IEEE); the calling thread's earlier mode is restored after it. A CPU that cannot flush keeps them.

    The mode is per thread and a new thread inherits its creator's, so a block opened before the process's
    first parallel operation covers the intra-op (OpenMP) threads too; opened later, it covers the calling
    thread only (one-thread runs, such as ``compare``'s parallel jobs, entirely).
    """
    before = flushing_denormals()
    switched = enabled != before and torch.set_flush_denormal(enabled)
    try:
        yield
    finally:
        if switched:
            torch.set_flush_denormal(before)
