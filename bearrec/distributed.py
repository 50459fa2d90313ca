"""Several processes (``accelerate launch``, ``torchrun``): who writes the run folder, and users shared out.

Training under DDP is the Trainer's (each process trains on its share of every batch). What is ours:

* the run folder is written by the main process only (:func:`on_main`), after every process has made
  its checks (:func:`barrier`), so that no process sees a half-written folder or refuses the folder
  another one has just created;
* decoding users are split into contiguous shares, one per process, and the results are gathered in
  the original order on every process (:func:`map_users`): validation and evaluation with N processes
  decode N times fewer users each and return exactly what one process would (under FSDP or DeepSpeed,
  whose forwards are collective, every process decodes every user instead);
* each process decodes on its own device (:func:`device`).

With one process (a plain ``python`` or ``bearrec`` call) every function is a no-op and nothing of
``torch.distributed`` is touched. The process state is accelerate's ``PartialState``, which the
Trainer shares, so the process group is initialised once whichever comes first.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from accelerate import PartialState
from accelerate.state import AcceleratorState, DistributedType
from accelerate.utils import broadcast_object_list, gather_object


def state():
    """accelerate's ``PartialState`` when several processes were launched, else None (one process)."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not launched and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    # On the CPU (no GPU, or ACCELERATE_USE_CPU as the Trainer reads it) accelerate needs cpu=True for gloo.
    cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    shared = PartialState(cpu=cpu)
    return shared if shared.num_processes > 1 else None


def barrier() -> None:
    """Wait until every process reaches this point (nothing with one process)."""
    shared = state()
    if shared is not None:
        shared.wait_for_everyone()


def is_main() -> bool:
    """Whether this is the process that writes (the only one, or the main one under a launcher)."""
    shared = state()
    return shared is None or shared.is_main_process


def device() -> torch.device:
    """This process's device: its own GPU under a launcher, else the GPU if there is one, else the CPU."""
    shared = state()
    if shared is not None:
        return shared.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def on_main(fn):
    """``fn()`` on the main process only; the others wait for it. An error on the main process is raised on
    every process (as a ``RuntimeError`` naming it on the others), so none is left waiting."""
    shared = state()
    if shared is None:
        return fn()
    error, result = None, None
    if shared.is_main_process:
        try:
            result = fn()
        except Exception as err:  # re-raised below, after the others learnt of it
            error = err
    message = [f"{type(error).__name__}: {error}" if error is not None else None]
    broadcast_object_list(message, from_process=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise RuntimeError(f"the main process failed: {message[0]}")
    return result


def share(n: int) -> slice:
    """This process's contiguous share of ``n`` users (the first ``n % world`` processes take one more)."""
    shared = state()
    if shared is None:
        return slice(0, n)
    size, extra = divmod(n, shared.num_processes)
    rank = shared.process_index
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


def map_users(fn, *args, progress=None, **kwargs):
    """``fn(*args, **kwargs)`` over all users, each process taking its :func:`share`; the results are gathered
    on every process in user order.

    Every tensor argument, positional or keyword, is per user (first dimension: the user) and is sliced, as are
    :class:`~bearrec.lm.forward.Prompts` (a tuple of such tensors); the others (model, trie, settings) are passed
    as they are. ``fn`` returns a tensor or a dataclass of
    tensors with the user first, as the decoders do. ``progress`` goes to ``fn`` on the main process only,
    counting each of its users once per process (an estimate of the total).
    """
    shared = state()
    if shared is None or sharded_weights():
        return fn(*args, progress=progress, **kwargs)
    n = next(_per_user(a) for a in [*args, *kwargs.values()] if _per_user(a) is not None)
    part = share(n)

    def cut(value):
        if isinstance(value, torch.Tensor):
            return value[part]
        return value.rows(part) if _per_user(value) is not None else value

    counted = None if progress is None or not shared.is_main_process else (lambda k: progress(k * shared.num_processes))
    out = None
    if part.stop > part.start:
        out = fn(*map(cut, args), progress=counted, **{key: cut(value) for key, value in kwargs.items()})
    return _concat([p for p in gather_object([_to_cpu(out)]) if p is not None])


def _per_user(value) -> int | None:
    """The number of users of a per-user argument (a tensor, or prompts with ``rows``), else None."""
    if isinstance(value, torch.Tensor):
        return value.shape[0]
    if isinstance(value, tuple) and hasattr(value, "rows"):
        return value[0].shape[0]
    return None


def sharded_weights() -> bool:
    """Whether the weights are split across processes (FSDP, DeepSpeed): then every forward is a collective that
    all processes must join, so each decodes every user (as one process would) instead of its share."""
    if any(os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true" for name in ("FSDP", "DEEPSPEED")):
        return True
    if not AcceleratorState._shared_state:  # no Accelerator (nor Trainer) in this process
        return False
    return AcceleratorState().distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _to_cpu(out):
    if isinstance(out, torch.Tensor):
        return out.cpu()
    if dataclasses.is_dataclass(out):
        return dataclasses.replace(out, **{f.name: _to_cpu(getattr(out, f.name)) for f in dataclasses.fields(out)})
    return out


def _concat(parts: list):
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    fields = {}
    for f in dataclasses.fields(first):
        values = [getattr(p, f.name) for p in parts]
        fields[f.name] = None if values[0] is None else torch.cat(values)
    return type(first)(**fields)
