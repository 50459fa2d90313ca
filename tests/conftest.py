"""Shared test setup.

The fast lane, ``pytest -m "not slow"`` (under 2 minutes on an idle 2-core machine), trains nothing and leaves
out the other tests of seconds each (the SmolLM2 conversion, brute-force grids with small forwards). A test (or a
fixture it uses) that starts a training loop must be marked ``slow``. The guard below enforces it while the test is set up and run, for the Hugging Face
Trainer (every LM objective) and the baselines' loop; a test that trains in a subprocess is marked by hand.

Shared fixtures: ``tiny_data`` (a small synthetic dataset, read only) and ``tiny_run`` (a tiny Llama trained on
it once per session, handed to each test module as its own copy).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cli_helpers import small_synthetic

from bearrec.config import ExperimentConfig, TinyConfig, TrainConfig
from bearrec.runs import train_run

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core (pyproject.toml's addopts): a worker's torch, and the subprocesses its
    # tests start, use one thread each, so that the workers do not fight over the cores.
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


class TrainingInFastLane(AssertionError):
    pass


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise TrainingInFastLane(f"{what} in a test not marked slow: mark it @pytest.mark.slow (tests/conftest.py)")

    return refuse


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _guard(item):
        return (yield)


class _guard:
    """Within a test not marked ``slow``, training raises :class:`TrainingInFastLane`."""

    def __init__(self, item):
        self.active = item.get_closest_marker("slow") is None
        self.patch = pytest.MonkeyPatch()

    def __enter__(self):
        if self.active:
            import transformers

            import bearrec.baselines.seqrec

            self.patch.setattr(transformers.Trainer, "train", _refuse("Trainer.train"))
            self.patch.setattr(bearrec.baselines.seqrec, "fit", _refuse("baseline training (seqrec.fit)"))
        return self

    def __exit__(self, *exc):
        self.patch.undo()
        return False


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small synthetic dataset (30 users, 20 items), shared by the test files that only read it."""
    return small_synthetic(tmp_path_factory.mktemp("tiny-data") / "syn")


@pytest.fixture(scope="session")
def tiny_trained(tiny_data, tmp_path_factory) -> Path:
    """A finished tiny run on ``tiny_data``: 2 epochs, so two checkpoints, and the last epoch kept (no best-epoch
    selection). Trained once per session; tests take it through :func:`tiny_run`."""
    folder = tmp_path_factory.mktemp("tiny-trained") / "run"
    train_run(ExperimentConfig(data=str(tiny_data), tiny=TinyConfig(hidden_size=32, num_hidden_layers=1),
                               train=TrainConfig(epochs=2, batch_size=16, valid_users=8, select_best=False)), folder)
    return folder


@pytest.fixture(scope="module")
def tiny_run(tiny_trained, tmp_path_factory) -> Path:
    """This test module's copy of the session's tiny run: what the module writes into it (an evaluation, an item
    memory) is not seen by another. A test using it trains (once per session), so it is marked slow."""
    return Path(shutil.copytree(tiny_trained, tmp_path_factory.mktemp("run") / "run"))
