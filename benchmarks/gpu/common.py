"""What every step of the GPU plan shares: arguments, the machine's state folder, the log, the environment
record and a subprocess that stops at a deadline.

A step runs in a fresh copy of the repository on the GPU machine; what must survive between the calls of one
lease (installed wheels, the model, the dataset, training runs) lives in the state folder (``--state``,
default ``$BEARREC_GPU_STATE`` or ``/var/tmp/bearrec-gpu``) on the machine's local disk. Results go to
``--out`` (on the device machine: ``$OUT``), a few small files that come back with the call.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE = Path(os.environ.get("BEARREC_GPU_STATE", "/var/tmp/bearrec-gpu"))
DATASET = "office-bear"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "gguf", "bearrec")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="results folder (on the GPU machine: $OUT)")
    p.add_argument("--state", type=Path, default=DEFAULT_STATE, help="the machine's state folder, kept between calls")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU-sized: tiny models, few users and steps, the same code paths (tests/benchmarks/test_gpu_dryrun.py)")
    return p


class Step:
    """One step's context: folders made, the import path and model cache pointed into the state folder, and
    ``log()`` printing to stdout and ``OUT/<name>.log``."""

    def __init__(self, name: str, args):
        self.name, self.args, self.started = name, args, time.perf_counter()
        self.state, self.out = Path(args.state).resolve(), Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        self.site = self.state / "site"  # wheels installed by step 0
        self.data = self.state / "data" / DATASET
        self.env = child_env(self.state)
        for key in ("BEARREC_CACHE", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM"):
            os.environ[key] = self.env[key]
        if self.site.is_dir() and str(self.site) not in sys.path:
            sys.path.append(str(self.site))  # after the repository: the working tree's bearrec wins
        self._log = open(self.out / f"{name}.log", "a", encoding="utf-8")

    def require(self, data: bool = True, model: bool = True) -> None:
        """Stop with one line if step 0 has not prepared this machine (a machine that went back starts bare)."""
        missing = [what for what, needed, path in (
            ("the dataset", data, self.data / "dataset.json"),
            ("SmolLM2 (converted once both model parts are in)", model, self.state / "cache" / "smollm2-135m" / "config.json"))
            if needed and not path.is_file()]
        if missing:
            raise SystemExit(f"{self.state}: missing {' and '.join(missing)} on this machine; run step 0 with "
                             ".gpu/part1, then with .gpu/part2 (a machine that went back starts bare)")

    def log(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def write(self, payload: dict, name: str | None = None) -> Path:
        """``OUT/<name or step>.json``, with the environment and the step's wall time."""
        path = self.out / f"{name or self.name}.json"
        payload = {"step": self.name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_seconds": round(self.elapsed(), 1),
                   "dry_run": bool(self.args.dry_run), "environment": environment(), **payload}
        path.write_text(json.dumps(payload, indent=2, default=str))
        return path


def child_env(state: Path) -> dict:
    """Environment of subprocesses: the repository first on the import path, then the wheels of step 0; the
    model cache in the state folder; no hub access (the machine has no network)."""
    paths = [str(ROOT), str(Path(state) / "site"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "BEARREC_CACHE": str(Path(state) / "cache"),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def environment() -> dict:
    """Versions, device, driver: what every result records."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
               "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
               "bf16": torch.cuda.is_bf16_supported()}
    return {"versions": versions, "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "gpu": gpu}


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_until(cmd: list[str], step: Step, deadline: float, stop_now=None, poll: float = 2.0) -> dict:
    """Run ``cmd`` (output into the step's log) until it ends or ``deadline`` (seconds since the step began) passes;
    ``stop_now()`` is asked every ``poll`` seconds whether to stop early (at a safe point, such as just after a
    checkpoint). A stopped command gets SIGINT (bearrec: one line, exit 130), then SIGKILL after 20 s.
    Returns {"returncode", "stopped", "reason", "seconds"}."""
    start = time.perf_counter()
    step.log("$", " ".join(cmd))
    with open(step.out / f"{step.name}.log", "a", encoding="utf-8") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=step.env, cwd=ROOT,
                                start_new_session=True)
        reason = None
        while proc.poll() is None:
            time.sleep(poll)
            if step.elapsed() > deadline:
                reason = "deadline"
            elif stop_now is not None and stop_now():
                reason = "safe point before the deadline"
            if reason:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                break
    step.log(f"exit {proc.returncode} after {time.perf_counter() - start:.1f} s" + (f" (stopped: {reason})" if reason else ""))
    return {"returncode": proc.returncode, "stopped": reason is not None, "reason": reason,
            "seconds": round(time.perf_counter() - start, 1)}
