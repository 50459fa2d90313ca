"""Shared helper of the resume tests: a training run killed right after a checkpoint is saved."""

from __future__ import annotations

from pathlib import Path

import pytest


def crash_after_saving(config, out: Path, epoch: int) -> None:
    """Train ``config`` into ``out`` and crash right after the checkpoint of ``epoch`` is saved, as a kill there
    would leave the run folder."""
    from transformers import TrainerCallback

    import bearrec.training.trainer as train_module
    from bearrec.runs import train_run

    class Crash(Exception):
        pass

    class CrashOnSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if round(state.epoch) == epoch:
                raise Crash

    original = train_module.EpochLog
    train_module.EpochLog = type("CrashingEpochLog", (original, CrashOnSave), {})
    try:
        with pytest.raises(Crash):
            train_run(config, out)
    finally:
        train_module.EpochLog = original
