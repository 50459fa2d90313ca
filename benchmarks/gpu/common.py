"""What both commands of the GPU plan share: arguments, the machine's state folder, the call's time budget
(:class:`Deadline`), the record each command keeps and copies to ``$OUT`` after every step (:class:`Record`),
and the environment every result carries.

A command runs in a fresh copy of the repository on the GPU machine; what must survive between the calls of one
lease (the parts carried so far, installed wheels, the model, the dataset, training runs, finished steps) lives in
the state folder (``--state``, default ``$BEARREC_GPU_STATE`` or ``/var/tmp/bearrec-gpu``) on the machine's local
disk, lost when the machine goes back. Results go to ``--out`` (``$OUT``): a few small files, rewritten after every
step, so that whatever the call has done comes back even if it is stopped.
"""

from __future__ import annotations

import _thread
import argparse
import hashlib
import json
import os
import platform
import signal
import sys
import threading
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


def parser(doc: str, budget_s: float, margin_s: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="results folder (on the GPU machine: $OUT); required")
    p.add_argument("--state", type=Path, default=DEFAULT_STATE, help="the machine's state folder, kept between calls")
    p.add_argument("--budget-s", type=float, default=budget_s,
                   help="this call's budget: no step starts that would not end before it, and a step still running "
                        "at it is stopped (keep the run tool's timeout_s about 30 s above it)")
    p.add_argument("--margin-s", type=float, default=margin_s, help="kept free before the budget to write the results")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU-sized: the tiny model, few examples and users, the same code paths "
                        "(tests/benchmarks/test_gpu_dryrun.py)")
    return p


class Stopped(Exception):
    """The budget left does not hold the next step: stop here, at a safe point; the same command resumes."""


class Deadline:
    """A call's time budget, counted from the command's start.

    ``fits(seconds)`` says whether a step planned to take ``seconds`` still ends ``margin`` before the budget
    (the safe points); ``require`` raises :class:`Stopped` where it does not. Inside ``with deadline:`` a step
    still running when the budget itself is reached is interrupted (``KeyboardInterrupt`` in the main thread):
    the backstop for a step slower than planned, so that the command writes its results and ends before the run
    tool's ``timeout_s`` kills it."""

    def __init__(self, budget_s: float, margin_s: float):
        self.budget, self.margin, self.start = budget_s, margin_s, time.perf_counter()
        self._timer: threading.Timer | None = None
        self._sigint = None  # the SIGINT handler before __enter__

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    def fits(self, seconds: float) -> bool:
        return self.left() >= seconds + self.margin

    def require(self, seconds: float, what: str) -> None:
        if not self.fits(seconds):
            raise Stopped(f"{self.left():.0f} s left of {self.budget:.0f}; {what} is planned at {seconds:.0f} s "
                          f"(+ {self.margin:.0f} s margin)")

    def __enter__(self) -> Deadline:
        # interrupt_main goes through the SIGINT handler, and a process started in the background by a shell
        # inherits SIGINT ignored: Python's own handler is put back for the step, so that the backstop still fires.
        self._sigint = signal.getsignal(signal.SIGINT)
        if self._sigint is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self._timer = threading.Timer(max(self.left(), 0.0), _thread.interrupt_main)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self._timer is not None:
            self._timer.cancel()
        if self._sigint is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return False


class Record:
    """One command's record: ``STATE/<name>.json`` (every call's steps, kept across the calls of a lease), copied to
    ``OUT/<name>.json`` after every step, with a log (``OUT/<name>.log``) that ``log()`` also prints."""

    def __init__(self, name: str, args, command: list[str]):
        self.name, self.dry_run = name, bool(args.dry_run)
        self.state, self.out = Path(args.state).resolve(), Path(args.out).resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.state / f"{name}.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"steps": {}, "calls": []}
        self.call = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(command),
                     "budget_s": args.budget_s, "steps_done": []}
        self.data["calls"].append(self.call)
        self._log = open(self.out / f"{name}.log", "a", encoding="utf-8")
        self.started = time.perf_counter()

    @property
    def steps(self) -> dict:
        return self.data["steps"]

    def log(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def done(self, step: str, payload: dict) -> None:
        """Step ``step`` finished with ``payload`` (its numbers and seconds): kept, and written out."""
        self.steps[step] = payload
        self.call["steps_done"].append(step)
        self.log(f"[{time.perf_counter() - self.started:.0f} s] {step}: done" +
                 (f" in {payload['seconds']:.1f} s" if isinstance(payload.get("seconds"), (int, float)) else ""))
        self.save()

    def save(self, **fields) -> None:
        self.call.update(fields, wall_seconds=round(time.perf_counter() - self.started, 1))
        self.data.update(environment=environment(), dry_run=self.dry_run)
        text = json.dumps(self.data, indent=1, default=str)
        for path in (self.path, self.out / self.path.name):  # whole or not at all: a stop may come at any line
            path.with_suffix(".tmp").write_text(text)
            os.replace(path.with_suffix(".tmp"), path)


def use_state(state: Path) -> None:
    """This process reads the model cache from the state folder, the wheels installed there after the repository
    (the working tree's bearrec wins), and never the hub (the machine has no network)."""
    site = str(Path(state) / "site")
    paths = [str(ROOT), site, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    os.environ.update(BEARREC_CACHE=str(Path(state) / "cache"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))  # subprocesses (the smoke test) too
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if site not in sys.path:
        sys.path.append(site)


def environment() -> dict:
    """Versions, device, driver: what every result records."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = None
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1), "capability":
                   f"{props.major}.{props.minor}", "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()}
    return {"versions": versions, "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "gpu": gpu}


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
