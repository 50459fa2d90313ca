"""Folders written before the redesign still load and behave the same (the redesign issue: "Folders written before
the change still load, and a test keeps one of each").

The code of commit a5f373f (the last before dataset fingerprints, folder locks and the package redesign) is taken
from the repository's history (``git archive``) and writes, once per test session, a dataset, a finished run (with
its own evaluation and ``recommend`` output) and a finished ``compare`` experiment: the commands are ``OLD_COMMANDS``.
No weights are shipped. Each test works on a copy in ``tmp_path`` (the folders use relative paths, hence
``monkeypatch.chdir``). Without the history (an sdist, a shallow clone) the tests skip, saying so.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bearrec.cli import app

pytestmark = pytest.mark.slow  # the old code trains its run and its experiment (in a subprocess)

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "a5f373f"
TINY = ["--set", "tiny.hidden_size=32", "--set", "tiny.intermediate_size=64", "--set", "tiny.num_hidden_layers=1",
        "--set", "tiny.num_attention_heads=2", "--set", "tiny.vocab_size=600"]
# The commands the old code ran after writing its folders (minus `bearrec`), run again by the current code.
EVALUATE = ["evaluate", "run", "--data", "data", "--max-users", "40"]
HISTORY = ["i00029", "i00022", "i00029", "i00016", "i00057"]
RECOMMEND = ["recommend", "run", *HISTORY, "--data", "data", "--top-k", "10"]
COMPARE = ["compare", "--data", "data", "--objectives", "sft", "--model", "tiny", "--seeds", "1", "--baselines", "none",
           "--max-train-examples", "100", "--max-eval-users", "10", "--epochs", "1", "--no-pruning-rate", *TINY,
           "--set", "train.valid_users=8", "--out", "exp"]

# What a5f373f ran, from an empty folder, to write the folders (relative paths, so that a copy works anywhere).
OLD_COMMANDS = [
    ["prepare", "synthetic", "--users", 100, "--pruning-pressure", 0.3, "--seed", 0, "--out", "data"],
    ["train", "data", "--out", "run", "--model", "tiny", "--objective", "sft", "--epochs", 8, "--lr", 0.005,
     "--batch-size", 16, "--seed", 0, *TINY, "--set", "train.valid_users=16", "--set", "train.patience=0"],
    EVALUATE,
    COMPARE,
]

runner = CliRunner()


def run_cli(args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def written_before(tmp_path_factory) -> Path:
    """The folders a5f373f writes (``OLD_COMMANDS``), its ``recommend`` output in ``recommend_expected.txt``, and
    no checkpoints (a finished run loads without them)."""
    tmp = tmp_path_factory.mktemp("pre-redesign")
    code, root = tmp / "code", tmp / "folders"
    code.mkdir()
    root.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_COMMIT, "bearrec"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT} is not in this checkout's history (git archive: "
                    f"{archive.stderr.decode(errors='replace').strip()[:120]})")
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    env = {**os.environ, "PYTHONPATH": str(code)}

    def old_cli(args) -> str:
        done = subprocess.run([sys.executable, "-m", "bearrec.cli", *map(str, args)], cwd=root, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    for args in OLD_COMMANDS[:3]:
        old_cli(args)
    (root / "recommend_expected.txt").write_text(old_cli(RECOMMEND))
    old_cli(OLD_COMMANDS[3])
    for folder in [root / "run" / "checkpoints", *root.glob("exp/runs/*/*/checkpoints")]:
        shutil.rmtree(folder)
    return root


@pytest.fixture
def old(written_before, tmp_path, monkeypatch) -> Path:
    """A copy of the folders a5f373f wrote, the working directory."""
    root = tmp_path / "pre-redesign"
    shutil.copytree(written_before, root)
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


def kept(before, after, where: str = "") -> list[str]:
    """Where ``after`` does not keep ``before``: every old key is still there with the same value (``same``), in
    nested dicts; keys the current code adds (new metrics) are allowed."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [problem for key in before for problem in
                (kept(before[key], after[key], f"{where}/{key}") if key in after else [f"{where}/{key} is gone"])]
    return [] if same(before, after) else [f"{where}: {before!r} -> {after!r}"]


def added(before, after, where: str = "") -> set[str]:
    """The paths of the keys ``after`` has and ``before`` has not, in nested dicts."""
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return set()
    return {f"{where}/{key}" for key in after if key not in before} | {
        path for key in before if key in after for path in added(before[key], after[key], f"{where}/{key}")}


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(text.splitlines()))


def test_the_old_code_wrote_no_locks(written_before):
    assert not list(written_before.rglob(".bearrec.lock"))  # a5f373f had no folder locks


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
    assert Path(meta["dataset_dir"]).is_absolute()  # where the old code wrote it: the tests pass the copy's data


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
    # every field but the wall-clock times (decode_seconds, beam_search_seconds, exact_rank_seconds) keeps its value:
    # split, users, settings, metrics, retrieved_rank, exact_ranking, pruning. Metrics added since (MRR@K, coverage,
    # Gini, tail share, the gap's parts) are new keys beside the old ones.
    timings = {key for key in before if key.endswith("_seconds")}
    assert timings == {key for key in after if key.endswith("_seconds")}
    assert set(after) == set(before)
    differ = kept({key: value for key, value in before.items() if key not in timings}, after)
    assert not differ, differ
    assert set(after["metrics"]) - set(before["metrics"]), "the fixture predates the field's metrics"
    # per user: target, rank in the beam, exact rank, pruning step and cause, as before; the gap's parts per user
    # (and the positive's log-probability rank) are new columns after them
    old_rows, new_rows = rows(before_users), rows((old / "run" / "eval_test_users.csv").read_text())
    width = len(old_rows[0])
    assert len(new_rows) == len(old_rows) and len(new_rows[0]) > width
    assert [row[:width] for row in new_rows] == old_rows
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
    # the recorded plan is read through today's config fields: every old value kept, and the fields added since
    # (train.report_to, train.alignment_ratio, code_tokens) written with their defaults, which are the old behaviour
    assert not kept(before, after), kept(before, after)
    new_fields = {"/base_config/train/report_to", "/base_config/train/alignment_ratio", "/base_config/code_tokens"}
    assert added(before, after) == new_fields
    assert after["base_config"]["train"]["report_to"] == ["tensorboard"]
    assert after["base_config"]["train"]["alignment_ratio"] == 0
    assert after["base_config"]["code_tokens"] == {"init": "mean", "rows": "trainable-tokens", "only_new_rows": False,
                                                  "prompt": "auto"}
    assert (old / "exp" / "efficiency.png").is_file()
    # the report is written again from the kept run: results.json keeps every old value (versions, platform and
    # threads of the machine that writes it aside) beside the metrics added since; results.md has new columns, so
    # only its title is compared
    was, now = json.loads(report["results.json"]), json.loads((old / "exp" / "results.json").read_text())
    assert set(now) == set(was)
    was.pop("environment"), now.pop("environment")
    assert not kept(was, now), kept(was, now)
    markdown = (old / "exp" / "results.md").read_text()
    assert markdown.splitlines()[0] == report["results.md"].splitlines()[0] and "MRR@10" in markdown
