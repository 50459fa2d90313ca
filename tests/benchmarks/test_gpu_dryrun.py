"""The GPU plan's scripts (benchmarks/gpu/) on the CPU: the tiny model, a few examples and users, the same code
paths apart from CUDA, so that they cannot rot between GPU leases.

pack cuts a small wheel in two and sizes each call; command 1 runs as the lease runs it: the first call carries
base + part 1 and stops waiting for part 2 (the smoke test skips without CUDA), the second carries part 2, trains
SFT, BEAR and MSL, evaluates them and stops at the budget before the exact ranks, a third resumes and finishes;
command 2 then compares our beam search with Hugging Face's. The fast tests check the budget arithmetic, the
hard stop and the pack's sizes without training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))


def _wheel(folder: Path) -> Path:
    """A small but valid wheel (a package with some bulk, so that its two parts are not empty)."""
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
def pack(tmp_path_factory):
    """The synthetic dataset packed with a small wheel as the payload, as pack.py packs office-bear and SmolLM2."""
    import pack as packer

    from bearrec.data.synthetic import SyntheticConfig, generate_synthetic

    tmp = tmp_path_factory.mktemp("gpu-plan")
    generate_synthetic(SyntheticConfig(num_users=40, num_categories=3, items_per_category=12)).save(tmp / "data")
    packer.main(["--out", str(tmp / ".gpu"), "--data", str(tmp / "data"), "--payload", str(_wheel(tmp)),
                 "--no-extra-wheels"])
    return tmp


def _carry(tmp: Path, call: str, names: list[str]) -> Path:
    """What one `run` call carries: the named folders of .gpu/."""
    carried = tmp / "calls" / call / ".gpu"
    carried.mkdir(parents=True)
    for name in names:
        shutil.copytree(tmp / ".gpu" / name, carried / name)
    return carried


def test_pack_cuts_the_payload_in_two_calls_that_fit(pack):
    import pack as packer

    manifest = json.loads((pack / ".gpu" / "base" / "manifest.json").read_text())
    assert [p["folder"] for p in manifest["parts"]] == ["part1", "part2"] and manifest["payload"]["model"] is None
    assert [c["carry"] for c in manifest["calls"]] == [[".gpu/base", ".gpu/part1"], [".gpu/part2"]]
    assert all(c["mib"] <= 64 - 8 for c in manifest["calls"]), manifest["calls"]  # the run tool's limit, less headroom
    with pytest.raises(SystemExit, match="would send"):  # a limit the working tree alone exceeds
        packer.calls(pack / ".gpu", limit_mib=1.0, headroom_mib=0.0)


def test_a_part_damaged_in_transit_is_refused(pack, tmp_path):
    import machine

    damaged = _carry(pack, "bad", ["part2"])
    part = damaged / "part2" / "payload.part2"
    part.write_bytes(b"x" + part.read_bytes()[1:])
    manifest = json.loads((pack / ".gpu" / "base" / "manifest.json").read_text())
    with pytest.raises(SystemExit, match="damaged in transit"):
        machine._take_parts(tmp_path, damaged, manifest)


def test_the_h200_figures_plan_one_epoch_and_leave_what_does_not_fit_to_a_later_lease(capsys):
    import step1_reproduce

    step1_reproduce.main(["--plan"])
    table = capsys.readouterr().out
    assert "1 epoch(s)" in table
    second = [line.split("|") for line in table.splitlines() if line.startswith("| 2nd")]
    fit = [float(row[-2]) for row in second if "does not fit" not in row[-2]]
    assert fit and fit[-1] <= 530 - 15  # the second call's steps end a margin before its budget
    first_left = next(i for i, row in enumerate(second) if "does not fit" in row[-2])
    assert all("does not fit" in row[-2] for row in second[first_left:])  # the command stops at the first
    # with beam search at the H200's measured 250 s, the call brings back SFT's whole row and leaves BEAR and MSL
    assert [row[2].split(":")[0].strip() for row in second[:first_left]] == [
        "setup", "train sft", "beam search sft over the 1,925 test users, 128 a batch"]


def test_the_deadline_stops_at_safe_points_and_interrupts_a_step_at_the_budget():
    from common import Deadline, Stopped

    deadline = Deadline(budget_s=100.0, margin_s=10.0)
    assert deadline.fits(80.0) and not deadline.fits(95.0)
    with pytest.raises(Stopped, match="training sft is planned at 95 s"):
        deadline.require(95.0, "training sft")
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with Deadline(budget_s=0.3, margin_s=0.0):
            while time.perf_counter() - start < 10:  # a step slower than planned
                time.sleep(0.01)
    assert time.perf_counter() - start < 5


def _command(script: str, out: Path, state: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(GPU / script), "--out", str(out), "--state", str(state), "--dry-run",
                           *args], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / f"{script.split('_')[0]}.json").read_text())


@pytest.mark.slow
def test_both_commands_run_the_lease_stop_at_the_budget_and_resume(pack):
    state = pack / "state"
    # call 1: base + part 1; the smoke test skips without CUDA; the model waits for part 2
    first = _command("step1_reproduce.py", pack / "out1", state, "--carried", str(_carry(pack, "1", ["base", "part1"])),
                     "--budget-s", "120")
    call = first["calls"][-1]
    assert not call["complete"] and "part2" in call["stopped"], call
    assert call["setup"]["parts_taken"] == ["part1"] and not call["setup"]["unmet_requirements"]
    smoke = first["steps"]["smoke"]
    assert smoke["returncode"] == 0 and smoke["tests"] >= 9 and smoke["skipped"] == smoke["tests"], smoke
    # call 2: part 2; everything up to the exact ranks, whose planned time no budget holds
    second = _command("step1_reproduce.py", pack / "out2", state, "--carried", str(_carry(pack, "2", ["part2"])),
                      "--budget-s", "300", "--figure", "exact_per_user=1000")
    call = second["calls"][-1]
    assert not call["complete"] and "exact ranks of sft's users 0-1" in call["stopped"], call
    assert (state / "site" / "bearrec_dryrun_payload" / "bulk.txt").is_file()  # joined, checked, installed
    steps = second["steps"]
    assert steps["plan"]["epochs"] == 1 and steps["plan"]["objectives"] == ["sft", "bear", "msl"]
    # each objective's row is whole before the next one trains, and its trained run comes back for a later lease
    assert call["steps_done"] == ["setup", "plan", *[f"{s} {o}" for o in ("sft", "bear", "msl") for s in ("train", "test")]]
    assert (pack / "out2" / "trained.tar.gz").is_file()
    for objective, scoring in (("sft", "full"), ("bear", "masked"), ("msl", "masked")):
        assert steps[f"train {objective}"]["steps"] == 3 and steps[f"train {objective}"]["tokens_per_second"] > 0
        test = steps[f"test {objective}"]
        assert test["users"] >= 30 and test["scoring"] == scoring and 0 <= test["metrics"]["NDCG@10"] <= 1
    # call 3: nothing carried; resumes at the exact ranks, 2 users a chunk, and finishes
    third = _command("step1_reproduce.py", pack / "out3", state, "--budget-s", "300")
    call = third["calls"][-1]
    assert call["complete"] and not any(s.startswith(("train", "test")) for s in call["steps_done"]), call
    assert call["steps_done"] == [f"exact {o}" for o in ("sft", "bear", "msl")] * 2
    for objective in ("sft", "bear", "msl"):
        exact = third["steps"][f"exact {objective}"]
        assert [r["user"] for r in exact["rows"]] == [0, 1, 2, 3] and "PR@10" in exact["metrics"]
    assert "| bear |" in (pack / "out3" / "step1.md").read_text()
    assert len(list((pack / "out3").iterdir())) <= 8  # what a call brings back from $OUT
    # a later lease on a bare machine: call 2's files carried back (pack.py --resume) go on from its stop
    import pack as packer

    later = pack / "state-later-lease"
    carried = _carry(pack, "later-1", ["base", "part1"])
    packer.resume(pack / "out2", carried / "resume")
    _command("step1_reproduce.py", pack / "out5", later, "--carried", str(carried), "--no-smoke", "--budget-s", "120")
    resumed = _command("step1_reproduce.py", pack / "out6", later, "--carried", str(_carry(pack, "later-2", ["part2"])),
                       "--no-smoke", "--budget-s", "300")
    call = resumed["calls"][-1]
    assert call["complete"] and call["steps_done"] == ["setup", *[f"exact {o}" for o in ("sft", "bear", "msl")] * 2]
    assert resumed["steps"]["test bear"] == steps["test bear"]  # restored, not evaluated again
    assert "restored from an earlier lease" in (pack / "out5" / "step1.log").read_text()
    # command 2: ours against HF generate, the same lists
    bench = _command("step2_decoding.py", pack / "out4", state)
    assert bench["calls"][-1]["complete"]
    for n in (2, 4):
        row = bench["steps"][f"{n} users"]
        assert row["identical_lists"] == f"{n}/{n}" and row["ours_users_per_s"] > 0 and row["hf_users_per_s"] > 0
    assert (pack / "out4" / "step2.md").read_text().count("| tiny float32 |") == 2


def test_the_real_pack_still_fits_each_call():
    """The .gpu/ that pack.py wrote in this checkout (SmolLM2's wheel in two parts), against the working tree as it is
    now: what the lease's two calls will send. Skipped where no pack was made."""
    import pack as packer

    if not (ROOT / ".gpu" / "base" / "manifest.json").is_file():
        pytest.skip("no .gpu/ here: run benchmarks/gpu/pack.py before a lease")
    manifest = json.loads((ROOT / ".gpu" / "base" / "manifest.json").read_text())
    assert manifest["payload"]["model"] == "smollm2-135m" and len(manifest["parts"]) == 2
    assert all(c["mib"] <= 64 for c in packer.calls(ROOT / ".gpu", limit_mib=64.0, headroom_mib=0.0))


@pytest.mark.slow  # 1.5 min of CPU: bf16 on a CPU is slow
def test_the_smoke_tests_hold_on_the_cpu():
    """The smoke test's own logic (references, tolerances, tie handling) on the CPU (BEARREC_TEST_DEVICE=cpu), so
    that a wrong test is found here and not in the GPU lease: the 9 tests of tests/decoding/test_cuda.py that
    command 1 runs on the GPU (machine.SMOKE). No training: bf16 losses and gradients of one batch."""
    import machine

    done = subprocess.run([sys.executable, *machine.PYTEST, *machine.SMOKE], cwd=ROOT,
                          env={**os.environ, "BEARREC_TEST_DEVICE": "cpu"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("9 passed"), done.stdout[-3000:]
