"""Shared test setup.

The fast lane, ``pytest -m "not slow"``, trains nothing: a test (or a fixture it uses) that starts a training loop
must be marked ``slow``. The guard below enforces it while the test is set up and run, for the Hugging Face
Trainer (every LM objective) and the baselines' loop; a test that trains in a subprocess is marked by hand.
"""

from __future__ import annotations

import pytest


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
