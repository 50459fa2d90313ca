"""The GPU plan's scripts (benchmarks/gpu/) on the CPU: tiny models, a few users and steps, the same code paths
apart from CUDA, so that they cannot rot between GPU leases.

pack cuts a small wheel into parts; step 0 takes them in over two "calls" (two carried folders), joins, checks
and installs; step 1 runs the CUDA tests, which must skip cleanly here; step 2 benchmarks decoding against
Hugging Face on a tiny random Llama; step 3 runs the reproduction's compare, is stopped at its first safe point,
and a second call resumes and completes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))


def _wheel(folder: Path) -> Path:
    """A small but valid wheel (a package with some bulk, so that it splits into several parts)."""
    name = "bearrec_dryrun_payload"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    files = {f"{name}/__init__.py": "VALUE = 42\n", f"{name}/bulk.txt": os.urandom(120_000).hex(),
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{name}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},sha256={hashlib.sha256(c.encode()).hexdigest()},{len(c)}\n" for n, c in files.items())
    with zipfile.ZipFile(path, "w") as z:
        for n, c in files.items():
            z.writestr(n, c)
        z.writestr(f"{name}-1.0.dist-info/RECORD", record + f"{name}-1.0.dist-info/RECORD,,\n")
    return path


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """Data, pack and state shared by the steps, with the process's environment and import path restored after."""
    from bearrec.data.synthetic import SyntheticConfig, generate_synthetic

    saved_env, saved_path = dict(os.environ), list(sys.path)
    tmp = tmp_path_factory.mktemp("gpu-plan")
    generate_synthetic(SyntheticConfig(num_users=40, num_categories=3, items_per_category=12)).save(tmp / "data")
    import pack

    pack.main(["--out", str(tmp / ".gpu"), "--data", str(tmp / "data"), "--payload", str(_wheel(tmp)),
               "--no-extra-wheels", "--part-mib", "0.1"])
    yield tmp
    os.environ.clear()
    os.environ.update(saved_env)
    sys.path[:] = saved_path


def _carry(tmp: Path, call: str, parts: list[str]) -> Path:
    """What one `run` call would carry: .gpu/base and the named parts."""
    carried = tmp / "calls" / call / ".gpu"
    carried.mkdir(parents=True)
    for name in ["base", *parts]:
        shutil.copytree(tmp / ".gpu" / name, carried / name)
    return carried


def test_step0_joins_parts_across_calls_and_installs(plan):
    import step0_setup

    manifest = json.loads((plan / ".gpu" / "base" / "manifest.json").read_text())
    names = [p["folder"] for p in manifest["parts"]]
    assert len(names) >= 2 and manifest["payload"]["model"] is None
    state = plan / "state"
    first = step0_setup.main(["--carried", str(_carry(plan, "1", names[:1])), "--out", str(plan / "out0a"),
                              "--state", str(state), "--dry-run"])
    assert first["parts_taken"] == ["payload.part1"] and not first["payload_ready"]
    assert (state / "data" / "office-bear" / "dataset.json").is_file()  # the dataset reached the state folder
    assert all(r["ok"] for r in first["requirements"]), first["requirements"]
    # a part damaged in transit is refused, naming it
    damaged = _carry(plan, "bad", names[1:2])
    part = next((damaged / names[1]).iterdir())
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(SystemExit, match="damaged in transit"):
        step0_setup.main(["--carried", str(damaged), "--out", str(plan / "out0b"), "--state", str(state)])
    second = step0_setup.main(["--carried", str(_carry(plan, "2", names[1:])), "--out", str(plan / "out0c"),
                               "--state", str(state), "--dry-run"])
    assert second["payload_ready"] and sorted(first["parts_taken"] + second["parts_taken"]) == sorted(
        p["file"] for p in manifest["parts"])
    assert (state / "site" / "bearrec_dryrun_payload" / "bulk.txt").is_file()  # joined, checked, installed
    assert list((state / "site").glob("bearrec-*.dist-info"))  # the wheel built from this checkout
    assert json.loads((plan / "out0c" / "step0.json").read_text())["environment"]["versions"]["torch"]


def test_step1_cuda_tests_skip_cleanly_without_a_gpu(plan):
    out = plan / "out1"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "step1_tests.py"), "--out", str(out), "--state",
                    str(plan / "state"), "--dry-run", "--suite", "none"], check=True, capture_output=True, timeout=300)
    report = json.loads((out / "step1.json").read_text())["cuda"]
    assert report["returncode"] == 0 and report["tests"] >= 20 and report["skipped"] == report["tests"]


@pytest.mark.slow
def test_cuda_tests_hold_on_the_cpu():
    """The CUDA tests' own logic (references, tolerances, tie handling) on the CPU (BEARREC_TEST_DEVICE=cpu), so
    that a wrong test is found here and not in a GPU lease. Skipped here: the bf16 training steps (the Trainer's bf16
    needs a GPU) and the shared-prompt cases of T5, which skip on the GPU too."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "decoding" / "test_cuda.py")],
                          cwd=ROOT, env={**os.environ, "BEARREC_TEST_DEVICE": "cpu"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert "failed" not in summary and int(summary.split(" passed")[0].split()[-1]) >= 30, summary


def test_step2_decoding_benchmark_on_a_tiny_model(plan):
    import step2_decoding

    out = plan / "out2"
    rows = step2_decoding.main(["--out", str(out), "--state", str(plan / "state"), "--dry-run",
                                "--data", str(plan / "data")])["rows"]
    assert [r["users"] for r in rows] == [2, 4]
    for r in rows:
        assert r["identical_lists"] == f"{r['users']}/{r['users']}"  # ours = HF generate on the same model
        assert r["ours_users_per_s"] > 0 and r["hf_users_per_s"] > 0 and r["bare_forwards_users_per_s"] > 0
        assert r["exact_certified"].endswith(f"/{r['users']}") and r["l2d_users_per_s"] > 0
    table = (out / "step2.md").read_text()
    assert table.count("\n| tiny bfloat16 |") == 2


@pytest.mark.slow
def test_step3_stops_at_a_safe_point_and_resumes(plan):
    state, out = plan / "state", plan / "out3"
    script = [sys.executable, str(ROOT / "benchmarks" / "gpu" / "step3_reproduce.py"), "--out", str(out), "--state",
              str(state), "--dry-run", "--data", str(plan / "data")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for attempt in range(2):  # on a loaded machine the tiny compare (12 s) may finish before the stop lands: once more
        subprocess.run(script + ["--stop-after-checkpoint"], check=True, capture_output=True, timeout=600, env=env)
        first = json.loads((out / "step3.json").read_text())
        log = (out / "step3.log").read_text()[-3000:]
        if not first["complete"]:
            break
        if attempt == 1:  # seen in the full suite on a loaded machine; the stop path is then left untested here
            pytest.skip("the tiny compare finished before step 3 saw its first checkpoint, twice: stop/resume untested")
        shutil.rmtree(state / "runs")  # a fresh experiment for the second attempt
    assert not first["complete"] and first["call"]["stopped"], log
    assert first["call"]["returncode"] == 130, log  # bearrec's exit on Ctrl-C
    assert first["runs"][0]["label"] == "sft" and first["runs"][0]["checkpoints"]  # stopped after a checkpoint
    subprocess.run(script, check=True, capture_output=True, timeout=600, env=env)
    second = json.loads((out / "step3.json").read_text())
    assert second["complete"] and not second["call"]["stopped"]
    assert second["runs_before"]["sft/seed0"] == first["runs"][0]["state"]
    runs = {r["label"]: r for r in second["runs"]}
    assert set(runs) == {"sft", "msl", "bear", "sasrec"} and all(r["state"] == "done" for r in runs.values())
    assert len(runs["sft"]["epoch_seconds"]) == 2  # the epoch before the stop was kept, not trained again
    for label in ("msl", "bear"):
        assert runs[label]["step_time_vs_sft"] > 0 and runs[label]["tokens_per_second"] > 0
        assert runs[label]["pr_ranked_users"] == 8 and runs[label]["exact_NDCG@10"] is not None
    assert (out / "step3_results.md").is_file() and "| sft |" in (out / "step3.md").read_text()
