"""Folders written before the redesign still load and behave the same (the redesign issue: "Folders written before
the change still load, and a test keeps one of each").

``tests/fixtures/pre-redesign`` holds a dataset, a finished run (with the old code's evaluation) and a finished
``compare`` experiment, all written by commit a5f373f; its README.md names the exact commands. Each test works on
a copy in ``tmp_path`` (the folders use relative paths from the fixture root, hence ``monkeypatch.chdir``); nothing
is written into the repository.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import sys
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bearrec.cli import app

FIXTURE = Path(__file__).parent / "fixtures" / "pre-redesign"
TINY = ["--set", "tiny.hidden_size=32", "--set", "tiny.intermediate_size=64", "--set", "tiny.num_hidden_layers=1",
        "--set", "tiny.num_attention_heads=2", "--set", "tiny.vocab_size=600"]
# The exact commands of the fixture's README.md (minus `bearrec`), run again by the current code.
EVALUATE = ["evaluate", "run", "--data", "data", "--max-users", "40"]
HISTORY = ["i00029", "i00022", "i00029", "i00016", "i00057"]
RECOMMEND = ["recommend", "run", *HISTORY, "--data", "data", "--top-k", "10"]
COMPARE = ["compare", "--data", "data", "--objectives", "sft", "--model", "tiny", "--seeds", "1", "--baselines", "none",
           "--max-train-examples", "100", "--max-eval-users", "10", "--epochs", "1", "--no-pruning-rate", *TINY,
           "--set", "train.valid_users=8", "--out", "exp"]

runner = CliRunner()


def run_cli(args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def old(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture, the working directory."""
    root = tmp_path / "pre-redesign"
    shutil.copytree(FIXTURE, root)
    monkeypatch.chdir(root)
    return root


def same(a, b) -> bool:
    """Exactly equal, NaN equal to NaN (a PR@K without positives is NaN in eval_test.json), in nested JSON."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(text.splitlines()))


def test_fixture_is_small_and_has_no_locks_or_checkpoints():
    files = [p for p in FIXTURE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_500_000
    assert not [p for p in files if p.name == ".bearrec.lock" or "checkpoints" in p.parts]


def test_dataset_folder_loads(old):
    from bearrec.data.dataset import RecDataset

    dataset = RecDataset.load(old / "data")
    assert len(dataset.items) == 480 and len(dataset.titles) == 480
    assert {split: len(frame) for split, frame in dataset.splits.items()} == {"train": 473, "valid": 100, "test": 100}
    assert dataset.domain == "products"
    # the current code fingerprints an old folder by its files' content
    assert dataset.file_digests == {name: hashlib.sha256((old / "data" / name).read_bytes()).hexdigest()
                                    for name in dataset.file_digests}
    assert set(dataset.file_digests) == {"items.parquet", "train.parquet", "valid.parquet", "test.parquet",
                                         "dataset.json"}
    shutil.copytree(old / "data", old / "elsewhere" / "data")  # content, not place
    assert dataset.fingerprint and RecDataset.load(old / "elsewhere" / "data").fingerprint == dataset.fingerprint
    # a5f373f predates fingerprints: its run.json records none, so there is nothing to compare it with.
    meta = json.loads((old / "run" / "run.json").read_text())
    assert "dataset_fingerprint" not in meta
    assert Path(meta["dataset_dir"]).is_absolute()  # where the fixture was made: the tests pass the copy's data


def test_run_loads(old):
    from bearrec.runs import load_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, tokenizer, dataset, config = load_run(old / "run", old / "data")
    assert config.model == "tiny" and config.train.objective == "sft" and config.tiny.hidden_size == 32
    assert len(dataset.titles) == 480
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert any("records no dataset fingerprint" in str(w.message) for w in caught)


def test_evaluate_gives_the_old_metrics(old):
    before = json.loads((old / "run" / "eval_test.json").read_text())
    before_users = (old / "run" / "eval_test_users.csv").read_text()
    result = run_cli(EVALUATE)
    assert result.exit_code == 0, result.output
    after = json.loads((old / "run" / "eval_test.json").read_text())
    # every field but the wall-clock times (decode_seconds, beam_search_seconds, exact_rank_seconds) is equal:
    # split, users, settings, metrics, retrieved_rank, exact_ranking, pruning
    timings = {key for key in before if key.endswith("_seconds")}
    assert timings == {key for key in after if key.endswith("_seconds")}
    assert set(after) == set(before)
    differ = {key: (before[key], after[key]) for key in set(before) - timings if not same(before[key], after[key])}
    assert not differ, differ
    # per user: target, rank in the beam, exact rank, pruning step and cause
    assert rows((old / "run" / "eval_test_users.csv").read_text()) == rows(before_users)
    assert before["metrics"]["NDCG@10"] > 0  # the fixture checks something: the model finds some targets


def test_recommend_prints_the_old_list(old):
    expected = [line for line in (old / "recommend_expected.txt").read_text().splitlines() if line.strip()]
    assert len(expected) == 10
    result = run_cli(RECOMMEND)
    assert result.exit_code == 0, result.output
    printed = [line for line in result.stdout.splitlines() if line.strip()]
    assert printed == expected


def test_compare_resumes_the_old_experiment(old, monkeypatch):
    before = json.loads((old / "exp" / "experiment.json").read_text())
    finished = (old / "exp" / "runs" / "sft" / "seed0" / "result.json").read_text()
    report = {name: (old / "exp" / name).read_text() for name in ("results.json", "results.md")}
    for name in ("results.json", "results.md", "efficiency.png"):
        (old / "exp" / name).unlink()
    monkeypatch.setattr(sys, "argv", ["bearrec", *COMPARE])  # the report quotes the command line
    result = run_cli(COMPARE)
    assert result.exit_code == 0, result.output
    assert "[1/1] sft seed 0: finished earlier, kept" in result.output  # the recorded plan still matches
    assert "epoch 1" not in result.output  # nothing trained again
    assert (old / "exp" / "runs" / "sft" / "seed0" / "result.json").read_text() == finished
    after = json.loads((old / "exp" / "experiment.json").read_text())
    assert after == before
    assert (old / "exp" / "efficiency.png").is_file()
    assert (old / "exp" / "results.md").read_text() == report["results.md"]
    was, now = json.loads(report["results.json"]), json.loads((old / "exp" / "results.json").read_text())
    assert set(now) == set(was)
    for key in was:
        if key != "environment":  # versions, platform and threads of the machine that writes the report
            assert same(now[key], was[key]), key
