"""A run's checkpoints: the newest complete and readable one to resume from; damaged ones (killed mid-save,
truncated or tampered) are moved aside, never deleted, and never unpickled."""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.trainer_pt_utils import safe_globals  # the numpy types of the RNG state the Trainer allows

from bearrec.checks import INT64_MAX, first_line, short


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest complete, readable checkpoint. Damaged ones (killed mid-save, truncated or tampered files) are
    moved aside to ``damaged-checkpoint-<step>``, named in a warning, and the one before is tried: nothing is
    deleted, and the Trainer's checkpoint rotation (``checkpoint-*``) no longer sees them."""
    if not checkpoint_dir.is_dir():
        return None
    found = sorted(((int(m.group(1)), path) for path in checkpoint_dir.iterdir()
                    if (m := re.fullmatch(r"checkpoint-(\d+)", path.name)) and path.is_dir()), reverse=True)
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        aside = _aside(path)
        path.rename(aside)
        warnings.warn(f"{path}: damaged ({problem}); moved aside to {aside.name}, resuming from the checkpoint "
                      "before it")
    return None


def _aside(path: Path) -> Path:
    """A free name ``damaged-<name>[-k]`` beside ``path``."""
    for k in range(1, 10_000):
        aside = path.with_name(f"damaged-{path.name}" + (f"-{k}" if k > 1 else ""))
        if not aside.exists():
            return aside
    raise FileExistsError(f"{path}: too many damaged checkpoints set aside beside it")


# the files of which a checkpoint must hold one: its weights, whole, sharded or LoRA adapters (as the Trainer looks for)
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
           "pytorch_model.bin.index.json", "adapter_model.bin")
# trainer_state.json fields the Trainer does arithmetic with on resume, and the types they must have
_STATE_TYPES = {"global_step": int, "max_steps": int, "num_train_epochs": int, "logging_steps": (int, float),
                "epoch": (int, float), "log_history": list, "best_metric": (int, float, type(None)),
                "stateful_callbacks": dict}


def checkpoint_problem(checkpoint: str | os.PathLike) -> str | None:
    """Why a checkpoint cannot be resumed from, or None. Its ``trainer_state.json`` (written last) must parse
    with the types the Trainer needs, and every weight and state file must load the safe way (safetensors,
    ``torch.load(weights_only=True)``): a truncated or tampered file is found here, never unpickled."""
    checkpoint = Path(checkpoint)
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except OSError:
        return "no trainer_state.json: interrupted while saving"
    except (ValueError, RecursionError) as err:
        return f"trainer_state.json: {first_line(err, 80)}"
    if not isinstance(state, dict):
        return "trainer_state.json: not a JSON object"
    for name, types in _STATE_TYPES.items():
        value = state.get(name)
        if name in state and (not isinstance(value, types) or isinstance(value, bool)
                              or (isinstance(value, int) and not 0 <= value <= INT64_MAX)):
            return f"trainer_state.json: {name} is {short(value)}"
    if not isinstance(state.get("global_step"), int):
        return "trainer_state.json: no global_step"
    if not any((checkpoint / name).is_file() for name in WEIGHTS):
        return "no weights file (model.safetensors, adapter_model.safetensors, ...)"
    for path in sorted(checkpoint.iterdir()):
        if path.name == "training_args.bin":  # a pickle the Trainer writes for people and never loads
            continue
        try:
            with warnings.catch_warnings(), safe_globals():
                warnings.simplefilter("ignore")  # torch warns about pickle protocols before it refuses
                if path.suffix == ".safetensors":
                    load_file(path)
                elif path.suffix in (".pt", ".pth", ".bin"):
                    torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # safetensors, pickle and zip errors share no base class
            if isinstance(err, pickle.UnpicklingError):
                return f"{path.name} holds more than tensors, which weights-only loading refuses"
            return f"{path.name} unreadable: {first_line(err, 120)}"
    return None
