"""The Trainer's callbacks of a run: early stopping that respects ``train.min_epochs``, and the per-epoch log
(seconds, validation metrics) kept beside the checkpoints with a progress bar."""

from __future__ import annotations

import json
import math
import statistics
import time
import warnings
from pathlib import Path

import transformers
from transformers import TrainerCallback

from bearrec.checks import first_line
from bearrec.io import write_json


class EarlyStoppingCallback(transformers.EarlyStoppingCallback):
    """transformers' early stopping, which never ends a run before epoch ``min_epochs`` (``train.min_epochs``).

    It keeps its parent's name because the Trainer restores a callback's checkpointed state (the patience count)
    into the callback of the same class name: runs checkpointed with the parent resume into this one.
    ``min_epochs`` is not in that state; :class:`RecTrainer` carries it over to the restored callback.
    """

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float | None = 0.0,
                 min_epochs: int = 0):
        super().__init__(early_stopping_patience, early_stopping_threshold)
        self.min_epochs = min_epochs

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        stopping = control.should_training_stop  # set by something else: not ours to undo
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if not stopping and (state.epoch or 0) < self.min_epochs - 1e-6:
            control.should_training_stop = False


class EpochLog(TrainerCallback):
    """Seconds per epoch (training only, evaluation excluded) and a rich progress bar.

    The list is kept in ``<checkpoint dir>/epochs.json`` (rewritten atomically after each epoch and its
    validation, before the epoch's checkpoint is saved), so a resumed run logs every epoch, not only the
    ones after the resume: it keeps the entries up to the epoch of the checkpoint it resumes from.
    """

    FILE = "epochs.json"

    @staticmethod
    def seconds_per_epoch(epochs: list[dict]) -> float:
        """The median training seconds of the logged epochs (nan for none): the median, not the mean, so that an
        epoch that ran while the job was paused (SIGSTOP) or starved counts once and does not swell the figure."""
        return statistics.median(e["seconds"] for e in epochs) if epochs else math.nan

    def __init__(self, progress=None, checkpoint_dir: Path | None = None, resume_from: str | None = None):
        self.progress, self.task, self.epochs, self._start = progress, None, [], 0.0
        self.path = Path(checkpoint_dir) / self.FILE if checkpoint_dir is not None else None
        if resume_from and self.path is not None and self.path.is_file():
            reached = json.loads((Path(resume_from) / "trainer_state.json").read_text()).get("epoch") or 0
            self.epochs = [e for e in self._read() if e["epoch"] <= reached + 1e-6]

    def _read(self) -> list[dict]:
        """The epochs logged so far; a damaged log is moved aside with a warning (the run resumes, and its log
        starts again at the resumed epoch)."""
        try:
            epochs = json.loads(self.path.read_text())
            if isinstance(epochs, list) and all(isinstance(e, dict) and isinstance(e.get("epoch"), (int, float))
                                                for e in epochs):
                return epochs
            problem = "not a list of epochs"
        except (OSError, ValueError, RecursionError) as err:
            problem = first_line(err, 80)
        aside = next(path for k in range(1, 10_000) if not (path := self.path.with_name(
            f"damaged-{k}-{self.path.name}" if k > 1 else f"damaged-{self.path.name}")).exists())
        self.path.rename(aside)
        warnings.warn(f"{self.path}: damaged ({problem}); moved aside to {aside.name}, and the run's epoch log "
                      "restarts at the resumed epoch")
        return []

    def _keep(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, self.epochs)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        if self.progress is not None:
            steps = math.ceil(state.max_steps / max(args.num_train_epochs, 1))
            done = state.global_step % steps if steps else 0
            self.task = self.progress.add_task(f"epoch {int(state.epoch or 0) + 1}/{int(args.num_train_epochs)}",
                                               total=steps, completed=done)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs.append({"epoch": round(state.epoch or 0, 3), "seconds": time.perf_counter() - self._start})
        self._keep()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.epochs and metrics:
            self.epochs[-1].update({k.removeprefix("eval_"): v for k, v in metrics.items()})
            if self.progress is not None:
                shown = ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in metrics.items() if k != "epoch")
                self.progress.console.print(f"epoch {self.epochs[-1]['epoch']:g}: valid {shown}")
            self._keep()
