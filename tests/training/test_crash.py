"""Crash safety and reproducibility.

``prepare``, ``train``, ``compare`` and ``sweep`` run as real processes and are killed with SIGKILL at
random moments (the moments are printed on failure, to reproduce it). A later command never trusts a
half-written file: the output is always the old or the new complete folder, ``--resume`` (or a rerun)
reaches the bit-identical weights and the same metrics as an uninterrupted run, and no temporary
folder survives the next command. Each test is bounded in time by its kill count and a timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bearrec.config import ExperimentConfig, TrainConfig
from bearrec.data.dataset import RecDataset
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.evaluation.evaluate import EvalSettings
from bearrec.lm.models import TinyConfig
from bearrec.runs import evaluate_run, train_run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "tiny.hidden_size=32", "--set", "tiny.num_hidden_layers=1", "--set", "train.valid_users=10",
         "--set", "train.batch_size=16"]
TIMEOUT = 240


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "bearrec.cli", *map(str, args)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _finish(args, cwd: Path) -> float:
    """Run to completion; return the seconds it took."""
    started = time.perf_counter()
    done = subprocess.run(_command(*args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    return time.perf_counter() - started


def _kill_after(args, cwd: Path, seconds: float) -> bool:
    """Start the command and SIGKILL it after ``seconds``; True if it was killed before it finished."""
    process = subprocess.Popen(_command(*args), cwd=cwd, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        process.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*bearrec-*"))


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("syn") / "syn"
    generate_synthetic(SyntheticConfig(num_users=40, num_categories=2, items_per_category=12)).save(folder)
    return folder


def test_prepare_killed_at_random_moments_leaves_the_old_or_the_new_dataset(tmp_path):
    rng = random.Random()
    duration = _finish(["prepare", "synthetic", "--out", "data", "--users", 3000], tmp_path)
    sizes = {3000}
    moments = []
    for users in (3001, 3002, 3003):
        moment = rng.uniform(0.5 * duration, 1.1 * duration)
        moments.append(round(moment, 2))
        if not _kill_after(["prepare", "synthetic", "--out", "data", "--users", users], tmp_path, moment):
            sizes = {users}  # it finished before the kill: the new dataset
        else:
            sizes.add(users)
        found = RecDataset.load(tmp_path / "data").summary()["test_examples"]  # never missing, never half
        assert found in sizes, f"kill moments {moments}"
        sizes = {found}
    _finish(["prepare", "synthetic", "--out", "data", "--users", 3004], tmp_path)
    assert RecDataset.load(tmp_path / "data").summary()["test_examples"] == 3004
    assert _leftovers(tmp_path) == [], f"kill moments {moments}"


def test_train_killed_at_random_moments_resumes_to_identical_weights(syn, tmp_path):
    rng = random.Random()
    args = ["train", syn, "--epochs", 3, "--objective", "bear", *SMALL]
    duration = _finish([*args, "--out", "full"], tmp_path)
    moments = []
    for _ in range(2):
        moment = rng.uniform(0.2 * duration, 0.95 * duration)
        moments.append(round(moment, 2))
        resume = (tmp_path / "killed" / "config.yaml").is_file()
        _kill_after(["train", "--resume", "--out", "killed"] if resume else [*args, "--out", "killed"], tmp_path, moment)
    if (tmp_path / "killed" / "config.yaml").is_file():
        _finish(["train", "--resume", "--out", "killed"], tmp_path)
    else:  # killed before the run folder appeared: a plain rerun
        _finish([*args, "--out", "killed"], tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _sha256(killed / "model" / "model.safetensors") == _sha256(full / "model" / "model.safetensors"), \
        f"kill moments {moments}"
    log_full, log_killed = (json.loads((d / "train_log.json").read_text()) for d in (full, killed))
    assert [e["NDCG@10"] for e in log_killed["epochs"]] == [e["NDCG@10"] for e in log_full["epochs"]], \
        f"every epoch is logged after a resume; kill moments {moments}"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("command", [
    ["compare", "--model", "tiny", "--objectives", "sft,bear", "--baselines", "none"],
    ["sweep", "--grid", "weight=0.5,2"],
], ids=["compare", "sweep"])
def test_experiment_killed_at_a_random_moment_reaches_the_same_results(syn, tmp_path, command):
    rng = random.Random()
    args = [*command, "--data", syn, "--epochs", 2, "--max-eval-users", 12, "--no-pruning-rate", *SMALL]
    duration = _finish([*args, "--out", "full"], tmp_path)
    moment = rng.uniform(0.3 * duration, 0.9 * duration)
    _kill_after([*args, "--out", "killed"], tmp_path, moment)
    _finish([*args, "--out", "killed"], tmp_path)
    metrics = [{r["label"]: r["metrics"] for r in json.loads((tmp_path / d / "results.json").read_text())["runs"]}
               for d in ("full", "killed")]
    assert metrics[0] == metrics[1], f"kill moment {moment:.2f} s"
    assert _leftovers(tmp_path) == []


def _group_alive(pgid: int) -> list[int]:
    """Processes of a process group that still run (zombies waiting for a reaper do not count)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_parallel_experiment_workers_end_with_their_killed_parent(syn, tmp_path):
    """compare --jobs: SIGKILL the experiment's process alone; its workers stop instead of training on into the
    folders, and a restart reaches the results of an uninterrupted run."""
    args = ["compare", "--model", "tiny", "--objectives", "sft,bear", "--baselines", "none", "--data", syn,
            "--epochs", 2, "--max-eval-users", 12, "--no-pruning-rate", *SMALL, "--jobs", 2]
    _finish([*args, "--out", "full"], tmp_path)
    process = subprocess.Popen(_command(*args, "--out", "killed"), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while not list((tmp_path / "killed" / "runs").glob("*/seed0/config.yaml")):  # a worker is training
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)  # the parent only, not its process group
    process.wait()
    deadline = time.monotonic() + 10
    while _group_alive(process.pid):
        assert time.monotonic() < deadline, f"workers still running: {_group_alive(process.pid)}"
        time.sleep(0.2)
    _finish([*args, "--out", "killed"], tmp_path)
    metrics = [{r["label"]: r["metrics"] for r in json.loads((tmp_path / d / "results.json").read_text())["runs"]}
               for d in ("full", "killed")]
    assert metrics[0] == metrics[1]
    assert _leftovers(tmp_path) == []


def test_same_config_and_seed_give_bit_identical_weights_and_metrics(syn, tmp_path):
    config = ExperimentConfig(data=str(syn), tiny=TinyConfig(hidden_size=32, num_hidden_layers=1),
                              train=TrainConfig(objective="bear", epochs=2, batch_size=16, valid_users=10, seed=3))
    results = []
    for name in ("a", "b"):
        log = train_run(config, tmp_path / name)
        metrics = evaluate_run(tmp_path / name, EvalSettings(max_users=20, pruning_users=5))
        results.append((_sha256(tmp_path / name / "model" / "model.safetensors"),
                        [e["NDCG@10"] for e in log["epochs"]], metrics["metrics"], metrics["pruning"]))
    assert results[0] == results[1]
    other = train_run(config.__class__(**{**config.__dict__, "train": TrainConfig(**{**config.train.__dict__, "seed": 4})}),
                      tmp_path / "c")
    assert _sha256(tmp_path / "c" / "model" / "model.safetensors") != results[0][0] and other["epochs"]
