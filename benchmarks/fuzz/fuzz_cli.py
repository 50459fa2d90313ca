"""Fuzz / misuse harness for the `bearrec` command line (issue 12; round 2, issue 28: folder locks, dataset
fingerprints, damaged checkpoints, full disks, stricter input).

Every case runs ``python -m bearrec.cli ARGV`` as a subprocess of the checkout this file lives in
(``PYTHONPATH=<repo root>``), with its working directory in a fresh temporary folder that holds only
the files the case planted (and, for some cases, copies of a small synthetic dataset ``syn/`` and a
trained tiny run ``run/``, built once per harness run). The actual result is classified as

    clean-error  exit 2, exactly one stderr line, starting with ``error:`` (``warning:``/``note:`` lines
                 before it are tolerated)
    wrong-error  a clean error that does not name what the case expects (file, row, field or flag)
    traceback    any other failure: a Python traceback, a multi-line message, another exit code
    accepted     exit 0 where an error was expected (or, for an ``ok`` case that must warn, no warning)
    data-loss    a file that existed before the command (planted by the case, or a fixture copy) was
                 deleted or changed: sha256 before/after. Highest priority.
    left-behind  an error exit that left a new file or folder (hidden temp folders included) in the
                 case folder, or a stale temp folder the command should have cleaned up
    hang         the command ran past the per-case timeout
    wrong-output the exit and the messages are as expected, but the case's post-condition (``check``) fails
    ok           exit 0

and compared with the case's expectation (``error`` -> clean-error, ``ok`` -> ok, ``either`` -> ok or
clean-error). Exit code 0 when every case meets its expectation, 1 otherwise.

    python benchmarks/fuzz/fuzz_cli.py --json fuzz.json            # all cases, 2 workers
    python benchmarks/fuzz/fuzz_cli.py --only reader-amazon -j 1   # a subset (id or class substring)
    python benchmarks/fuzz/fuzz_cli.py --list                      # the cases, nothing run
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
OUTCOMES = ("clean-error", "wrong-error", "traceback", "accepted", "data-loss", "left-behind", "hang", "wrong-output",
            "ok", "skipped", "harness-error")
EXPECTED = {"error": {"clean-error"}, "ok": {"ok"}, "either": {"ok", "clean-error"}}
TOLERATED_PREFIXES = ("warning:", "note:")

# Fixtures, built once per harness run with the CLI itself and copied into the cases that need them.
FIXTURES = {
    "syn": ["prepare", "synthetic", "--out", "syn", "--users", "40"],
    "run": ["train", "syn", "--out", "run", "--epochs", "1", "--batch-size", "16", "--set", "train.valid_users=10",
            "--set", "tiny.hidden_size=32", "--set", "tiny.num_hidden_layers=1"],
    # titles that prepare normalises (tab, decomposed é) for the recommend cases; run on it with --data odd
    "odd": ["prepare", "interactions", "odd_src/interactions.csv", "odd_src/items.csv", "--out", "odd"],
    # a run with two checkpoints (checkpoint-13, checkpoint-26), for "resume from the newest intact one"
    "run2": ["train", "syn", "--out", "run2", "--epochs", "2", "--batch-size", "16", "--set", "train.valid_users=10",
             "--set", "tiny.hidden_size=32", "--set", "tiny.num_hidden_layers=1"],
    # the same generator with another seed: other content (other fingerprint), same item ids
    "synb": ["prepare", "synthetic", "--out", "synb", "--users", "40", "--seed", "1"],
}
RUNS = ("run", "run2")  # fixtures that are runs of syn/
# Small training settings so that cases the old code accepts still finish in seconds.
SMALL = ["--epochs", "1", "--batch-size", "16", "--set", "train.valid_users=0", "--set", "tiny.hidden_size=32",
         "--set", "tiny.num_hidden_layers=1"]
SMALL_SETS = ["--set", "train.valid_users=0", "--set", "tiny.hidden_size=32", "--set", "tiny.num_hidden_layers=1",
              "--set", "train.batch_size=16"]


DEAD_PID = 2**22 + 12345  # above Linux's default pid_max: never a running process

@dataclass
class Case:
    id: str
    cls: str
    argv: list[str]
    expect: str = "error"  # error | ok | either
    names: tuple[str, ...] = ()  # substrings the error line must hold (case-insensitive; "a|b" = either)
    files: dict[str, str | bytes] = field(default_factory=dict)  # planted in the case folder
    needs: tuple[str, ...] = ()  # fixtures to copy in: syn, run (implies syn), odd
    setup: Callable[[Path], None] | None = None  # extra preparation in the case folder (truncate, chmod, ...)
    mutable: tuple[str, ...] = ("run/",)  # path prefixes the command may legitimately change
    readonly: tuple[str, ...] = ()  # folders made read-only (chmod 555, plus chattr +i when run as root)
    warns: str | None = None  # ok cases: a "warning:" line holding this substring must be printed
    stale: tuple[str, ...] = ()  # paths the command must clean up (stale temp folders of killed runs)
    note: str = ""
    # --- round 2 (issue 28): locks, fingerprints, damaged checkpoints, full disks, strict input
    holder: str | None = None  # a background process holds the one-writer lock of this folder during the command
    holder_kind: str = "run"  # the folder kind the holder locks it as
    holder_killed: bool = False  # the holder is killed (SIGKILL) before the command: its lock file is stale
    fsize: int | None = None  # RLIMIT_FSIZE of the command in bytes: a larger write fails with EFBIG (a full disk)
    tmpfs: tuple[str, str] | None = None  # (folder, size): a real small tmpfs mounted there (root only), ENOSPC
    fifo: dict[str, str] = field(default_factory=dict)  # named pipes, written by a background process (<(printf))
    server: bool = False  # the command serves: once it prints "serving ... at URL", GET /health, then Ctrl-C
    late: bool = False  # the failure may come after progress output (bars, "epoch 1: ...") on stderr
    forbid: tuple[str, ...] = ()  # substrings no stderr line may hold (temporary names: ".tmp", "bearrec-tmp")
    kept: tuple[str, ...] = ()  # globs of files whose content must still exist somewhere in the case folder after
    check: Callable[[Path, dict], str | None] | None = None  # post-condition: (folder, run info) -> problem or None
    timeout: float | None = None  # seconds, instead of --timeout
    may_leave: tuple[str, ...] = ()  # path prefixes an error exit may add (a checkpoint set aside, results it wrote)


# ------------------------------------------------------------------------------------------- inputs
TITLES = ["Red Stapler", "Blue Pen", "Green Folder", "Black Marker", "White Paper"]
USERS = ["U1", "U2", "U3", "U4", "U5"]
ITEMS = ["p1", "p2", "p3", "p4", "p5"]
DEEP = "[" * 100_000


def csv_text(header: str, rows: list[str], newline: str = "\n") -> str:
    return newline.join([header, *rows]) + newline


def processed(items=None, train=None, valid=None, test=None, folder="in", **raw) -> dict[str, str | bytes]:
    """A processed folder (items.csv + train/valid/test.csv); rows as CSV text lines; ``raw`` = whole files."""
    items = items if items is not None else [f'{i},{t}' for i, t in enumerate(TITLES, 1)]
    train = train if train is not None else ['u1,"[1, 2]",', 'u1,"[1, 2, 3]",', 'u2,"[2, 3]",', 'u2,"[2, 3, 4]",',
                                             'u3,"[3, 4]",']
    valid = valid if valid is not None else ['u1,"[1, 2, 3, 4]",', 'u2,"[2, 3, 4, 5]",']
    test = test if test is not None else ['u1,"[1, 2, 3, 4, 5]",', 'u3,"[3, 4, 5]",']
    files = {f"{folder}/items.csv": csv_text("item_id,title", items)}
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        files[f"{folder}/{name}.csv"] = csv_text("user_id,item_ids,timestamp", rows)
    files.update({f"{folder}/{k.replace('_csv', '.csv')}": v for k, v in raw.items()})
    return files


def review(user: str, item: str, time_json: str) -> str:
    return f'{{"reviewerID": "{user}", "asin": "{item}", "unixReviewTime": {time_json}}}'


def meta(item: str, title_json: str) -> str:
    return f'{{"asin": "{item}", "title": {title_json}}}'


def amazon(first_review: str | None = None, first_meta: str | None = None, reviews: list[str] | None = None,
           metas: list[str] | None = None, extra_meta: tuple[str, ...] = ()) -> dict[str, str | bytes]:
    """5 users x 5 items (a 5-core), every line JSON; replace the first review or meta line to fuzz it."""
    reviews = reviews if reviews is not None else [
        review(u, p, str(1_500_000_000 + 100 * i + j)) for i, u in enumerate(USERS) for j, p in enumerate(ITEMS)]
    metas = metas if metas is not None else [meta(p, json.dumps(t)) for p, t in zip(ITEMS, TITLES)]
    if first_review is not None:
        reviews = [first_review, *reviews[1:]]
    if first_meta is not None:
        metas = [first_meta, *metas[1:]]
    return {"reviews.json": "\n".join(reviews) + "\n", "meta.json": "\n".join([*metas, *extra_meta]) + "\n"}


def interactions(first_row: str | None = None, first_item: str | None = None, rows: list[str] | None = None,
                 items: list[str] | None = None, newline: str = "\n") -> dict[str, str | bytes]:
    """interactions.csv (user,item,timestamp; 5 users x 5 items) + items.csv (item,title)."""
    rows = rows if rows is not None else [f"{u},{p},{1_500_000_000 + 100 * i + j}"
                                          for i, u in enumerate(USERS) for j, p in enumerate(ITEMS)]
    items = items if items is not None else [f"{p},{t}" for p, t in zip(ITEMS, TITLES)]
    if first_row is not None:
        rows = [first_row, *rows[1:]]
    if first_item is not None:
        items = [first_item, *items[1:]]
    return {"interactions.csv": csv_text("user,item,timestamp", rows, newline),
            "items.csv": csv_text("item,title", items, newline)}


def gz(files: dict, *names: str, truncate: bool = False, fake: bool = False) -> dict:
    """Rename ``names`` to NAME.gz, gzip-compressed; the first of them only is truncated to half, or plain
    bytes under a .gz name, so that the error must name that file."""
    files = dict(files)
    for n, name in enumerate(names):
        data = files.pop(name)
        data = data.encode() if isinstance(data, str) else data
        if not (fake and n == 0):
            data = gzip.compress(data, mtime=0)
            data = data[: len(data) // 2] if truncate and n == 0 else data
        files[name + ".gz"] = data
    return files


def with_bom(files: dict) -> dict:
    return {k: b"\xef\xbb\xbf" + (v.encode() if isinstance(v, str) else v) for k, v in files.items()}


def non_utf8(files: dict, name: str) -> dict:
    files = dict(files)
    files[name] = files[name].encode().replace(b"Blue", b"Bl\xffe")
    return files


AMAZON = ["prepare", "amazon", "reviews.json", "meta.json", "--out", "data"]
AMAZON_GZ = ["prepare", "amazon", "reviews.json.gz", "meta.json.gz", "--out", "data"]
INTER = ["prepare", "interactions", "interactions.csv", "items.csv", "--out", "data"]
PROC = ["prepare", "processed", "in", "--out", "data"]
USER_DOCS = {"mydocs/thesis.txt": "four years of work\n", "mydocs/figures/fig1.csv": "x,y\n1,2\n"}
CWD_FILES = {"notes.txt": "my notes\n", "paper/draft.tex": "\\section{Intro}\n"}


def alt(name: str) -> str:
    """A config field named as the field, its flag or in words: batch_size|batch-size|batch size."""
    return f"{name}|{name.replace('_', '-')}|{name.replace('_', ' ')}" if "_" in name else name


# ------------------------------------------------------------------------------------------- setups
def truncate(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        for path in sorted(folder.glob(rel)):
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * keep)])
    return run


def replace_bytes(rel: str, data: bytes) -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        for path in sorted(folder.glob(rel)):
            path.write_bytes(data)
    return run


def remove(rel: str) -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        for path in sorted(folder.glob(rel)):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return run


def chain(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        for step in steps:
            step(folder)
    return run


class _Canary:
    """A pickle that, if unpickled, creates the file PWNED in the working directory (harmless)."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


TAMPERED_PICKLE = pickle.dumps(_Canary(), protocol=2)


def symlink(name: str, target: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).symlink_to(target)


def empty_split(split: str, dataset: str = "syn") -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        import pandas as pd

        path = folder / dataset / f"{split}.parquet"
        pd.read_parquet(path).iloc[:0].to_parquet(path, index=False)
    return run


def long_title_dataset(folder: Path) -> None:
    """syn/ with one catalog item whose title is 10,000 characters (what prepare accepts)."""
    import pandas as pd

    path = folder / "syn" / "items.parquet"
    items = pd.read_parquet(path)
    items.loc[0, "title"] = " ".join(f"word{i}" for i in range(1700))[:10_000]
    items.to_parquet(path, index=False)


# ------------------------------------------------------------------------------------------- cases
def out_safety_cases() -> list[Case]:
    c = "out-safety"
    docs = dict(USER_DOCS)
    cwd = dict(CWD_FILES)
    train = ["train", "syn", *SMALL]
    return [
        Case("out/prepare-synthetic-into-user-folder", c, ["prepare", "synthetic", "--users", "40", "--out", "mydocs"],
             names=("mydocs",), files=docs),
        Case("out/train-into-user-folder", c, [*train, "--out", "mydocs"], names=("mydocs",), files=docs, needs=("syn",)),
        Case("out/prepare-processed-onto-its-input", c, ["prepare", "processed", "in", "--out", "in"], names=("in",),
             files=processed()),
        Case("out/prepare-processed-into-input-parent", c, ["prepare", "processed", "in", "--out", "."],
             files={**processed(), **cwd}),
        Case("out/prepare-interactions-onto-input-folder", c,
             ["prepare", "interactions", "src/interactions.csv", "src/items.csv", "--out", "src"], names=("src",),
             files={f"src/{k}": v for k, v in interactions().items()}),
        Case("out/train-onto-its-dataset", c, [*train, "--out", "syn"], names=("syn",), needs=("syn",)),
        Case("out/prepare-synthetic-into-cwd", c, ["prepare", "synthetic", "--users", "40", "--out", "."], files=cwd),
        Case("out/prepare-synthetic-into-empty-string", c, ["prepare", "synthetic", "--users", "40", "--out", ""],
             files=cwd, note="Path('') is the working directory"),
        Case("out/train-into-cwd", c, [*train, "--out", "."], files=cwd, needs=("syn",)),
        Case("out/prepare-into-existing-file", c, ["prepare", "synthetic", "--users", "40", "--out", "notes.txt"],
             names=("notes.txt",), files=cwd),
        Case("out/train-into-existing-file", c, [*train, "--out", "notes.txt"], names=("notes.txt",), files=cwd,
             needs=("syn",)),
        Case("out/train-under-existing-file", c, [*train, "--out", "notes.txt/run"], names=("notes.txt",), files=cwd,
             needs=("syn",)),
        Case("out/prepare-under-read-only-folder", c, ["prepare", "synthetic", "--users", "40", "--out", "ro/data"],
             names=("ro",), files={"ro/keep.txt": "read-only\n"}, readonly=("ro",)),
        Case("out/train-under-read-only-folder", c, [*train, "--out", "ro/run"], names=("ro",),
             files={"ro/keep.txt": "read-only\n"}, readonly=("ro",), needs=("syn",)),
        Case("out/prepare-through-symlink-to-user-folder", c,
             ["prepare", "synthetic", "--users", "40", "--out", "link"], files=docs, setup=symlink("link", "mydocs")),
        Case("out/train-through-symlink-to-user-folder", c, [*train, "--out", "link"], files=docs, needs=("syn",),
             setup=symlink("link", "mydocs")),
        Case("out/prepare-synthetic-over-a-run", c, ["prepare", "synthetic", "--users", "40", "--out", "run"],
             names=("run",), needs=("run",), mutable=(), note="a run is not a dataset"),
        Case("out/train-over-another-dataset", c, [*train, "--out", "syn2"], names=("syn2",), needs=("syn",),
             setup=lambda f: shutil.copytree(f / "syn", f / "syn2")),
        Case("out/train-over-existing-run-without-resume", c, [*train, "--out", "run"], names=("run",),
             needs=("run",), mutable=()),
        Case("out/compare-overwrite-user-folder", c,
             ["compare", "--data", "syn", "--model", "tiny", "--objectives", "sft", "--baselines", "none", "--max-eval-users",
              "4", "--no-pruning-rate", "--epochs", "1", *SMALL_SETS, "--out", "mydocs", "--overwrite"],
             names=("mydocs",), files=docs, needs=("syn",)),
        Case("out/sweep-overwrite-user-folder", c,
             ["sweep", "--data", "syn", "--grid", "weight=1", "--max-eval-users", "4", "--epochs", "1", *SMALL_SETS,
              "--out", "mydocs", "--overwrite"], names=("mydocs",), files=docs, needs=("syn",)),
        Case("out/compare-into-user-folder", c,
             ["compare", "--data", "syn", "--model", "tiny", "--objectives", "sft", "--baselines", "none", "--max-eval-users",
              "4", "--no-pruning-rate", "--epochs", "1", *SMALL_SETS, "--out", "mydocs"],
             expect="either", files=docs, needs=("syn",), note="adds to a user folder: fine as long as nothing is lost"),
        Case("out/quickstart-into-user-folder", c,
             ["quickstart", "--users", "40", "--epochs", "1", "--eval-users", "4", "--out", "mydocs"],
             names=("mydocs",), files={**docs, "mydocs/data/survey.csv": "id,answer\n1,yes\n"},
             note="quickstart writes mydocs/data/, which already holds the user's files"),
        # controls: what must keep working
        Case("out/prepare-synthetic-new-subfolder-of-user-folder", c,
             ["prepare", "synthetic", "--users", "40", "--out", "mydocs/data"], expect="ok", files=docs),
        Case("out/prepare-synthetic-replaces-its-own-dataset", c,
             ["prepare", "synthetic", "--users", "40", "--seed", "1", "--out", "syn"], expect="ok", needs=("syn",),
             mutable=("syn/",)),
        Case("out/prepare-cleans-stale-temp-folder", c, ["prepare", "synthetic", "--users", "40", "--out", "syn"],
             expect="ok", needs=("syn",), mutable=("syn/", f".syn.bearrec-tmp-{DEAD_PID}-k1ll3d/"),
             files={f".syn.bearrec-tmp-{DEAD_PID}-k1ll3d/items.parquet": b"half-written"},
             stale=(f".syn.bearrec-tmp-{DEAD_PID}-k1ll3d",),
             note="temp folder of a killed prepare (bearrec names them .NAME.bearrec-tmp-<pid>-...)"),
        Case("out/prepare-keeps-user-hidden-folder", c, ["prepare", "synthetic", "--users", "40", "--out", "syn"],
             expect="ok", needs=("syn",), mutable=("syn/",), files={".syn.backup/items.parquet": b"my backup"},
             note="a hidden sibling bearrec did not name is never touched"),
        Case("out/train-nested-new-folder", c, [*train, "--out", "runs/a/b"], expect="ok", needs=("syn",)),
    ]


def settings_cases() -> list[Case]:
    c = "settings"
    cases = []

    def train(cid: str, args: list[str], names: tuple[str, ...], expect: str = "error", note: str = "") -> None:
        cases.append(Case(f"settings/train-{cid}", c, ["train", "syn", *SMALL, *args, "--out", "r"], expect=expect,
                          names=names, needs=("syn",), note=note))

    # train flags
    train("epochs-0", ["--epochs", "0"], ("epochs",))
    train("epochs-neg", ["--epochs", "-1"], ("epochs",))
    train("lr-nan", ["--lr", "nan"], ("lr",))
    train("batch-size-neg", ["--batch-size", "-4"], (alt("batch_size"),))
    train("bear-weight-neg", ["--objective", "bear", "--weight", "-5"], ("weight",))
    train("bear-temperature-neg", ["--objective", "bear", "--temperature", "-1"], ("temperature",))
    train("beam-sim-beam-width-0", ["--objective", "beam-sim", "--beam-width", "0"], (alt("beam_width"),))
    train("lora-rank-0", ["--lora-rank", "0"], ("rank",))
    train("max-prompt-tokens-0", ["--max-prompt-tokens", "0"], (alt("max_prompt_tokens"),))
    train("model-missing", ["--model", "no/such-model-dir"], ("no/such-model-dir",))
    # --set fields of every section
    for key, value, expect in [
        ("train.grad_accum_steps", "0", "error"), ("train.weight_decay", "-1", "error"),
        ("train.warmup_ratio", "2", "error"), ("train.epochs", "1.5", "error"), ("train.epochs", "1e400", "error"),
        ("train.epochs", "", "error"), ("train.nonsense", "1", "error"),
        ("tiny.num_hidden_layers", "0", "error"), ("tiny.max_position_embeddings", "0", "error"),
        ("lora_settings.rank", "-8", "error"), ("bear.weight", "-5", "error"), ("bear.surrogate", "hinge", "error"),
        ("beam_sim.beam_width", "-1", "error"), ("sasrec.hidden_size", "0", "error"),
        ("sasrec.num_heads", "3", "error"), ("model", "''", "error"),
    ]:
        field_name = key.split(".")[-1]
        objective = ["--objective", "beam-sim"] if key.startswith("beam_sim") else (
            ["--objective", "bear"] if key.startswith("bear.") else [])
        slug = f"{key}={value}".replace("/", "_") if value else f"{key}-empty"
        train(f"set-{slug}", [*objective, "--set", f"{key}={value}"], (field_name,), expect)
    # other commands' options (the ones that would run long if accepted are kept small)
    cmp = ["compare", "--data", "syn", "--model", "tiny", "--objectives", "sft", "--baselines", "none", "--max-eval-users",
           "4", "--no-pruning-rate", "--epochs", "1", *SMALL_SETS, "--out", "cmp"]
    swp = ["sweep", "--data", "syn", "--grid", "weight=1", "--max-eval-users", "4", "--epochs", "1", *SMALL_SETS,
           "--out", "swp"]
    qs = ["quickstart", "--users", "40", "--epochs", "1", "--eval-users", "4", "--out", "qs"]
    syn = ["prepare", "synthetic", "--out", "data"]
    for cid, argv, names, needs in [
        ("compare-seeds-0", [*cmp, "--seeds", "0"], ("seeds",), ("syn",)),
        ("compare-max-eval-users-0", [*cmp, "--max-eval-users", "0"], (alt("max_eval_users"),), ("syn",)),
        ("compare-pruning-users-neg", [*cmp, "--pruning-rate", "--pruning-users", "-1"], (alt("pruning_users"),), ("syn",)),
        ("compare-beam-width-0", [*cmp, "--beam-width", "0"], (alt("beam_width"),), ("syn",)),
        ("compare-epochs-0", [*cmp, "--epochs", "0"], ("epochs",), ("syn",)),
        ("compare-objectives-unknown", [*cmp, "--objectives", "sft,dpo"], ("dpo",), ("syn",)),
        ("compare-sasrec-heads-3", [*cmp, "--baselines", "sasrec", "--set", "sasrec.num_heads=3"], ("num_heads",), ("syn",)),
        ("sweep-seeds-0", [*swp, "--seeds", "0"], ("seeds",), ("syn",)),
        ("sweep-grid-weight-neg", [*swp, "--grid", "weight=-1,1"], ("weight",), ("syn",)),
        ("sweep-grid-unknown-section", [*swp, "--grid", "foo.bar=1,2"], ("foo",), ("syn",)),
        ("sweep-max-eval-users-neg", [*swp, "--max-eval-users", "-1"], (alt("max_eval_users"),), ("syn",)),
        ("quickstart-users-0", [*qs, "--users", "0"], ("users",), ()),
        ("quickstart-weight-neg", [*qs, "--weight", "-5"], ("weight",), ()),
        ("prepare-synthetic-users-0", [*syn, "--users", "0"], ("users",), ()),
        ("prepare-synthetic-users-neg", [*syn, "--users", "-1"], ("users",), ()),
        ("prepare-synthetic-seed-neg", [*syn, "--users", "40", "--seed", "-1"], ("seed",), ()),
        ("prepare-min-interactions-neg", [*INTER, "--min-interactions", "-3"], (alt("min_interactions"),), ()),
        ("prepare-min-interactions-0", [*INTER, "--min-interactions", "0"], (alt("min_interactions"),), ()),
        ("prepare-domain-empty", [*INTER, "--domain", ""], ("domain",), ()),
    ]:
        files = interactions() if "min-interactions" in cid or "domain" in cid else (
            processed() if "processed" in cid else {})
        cases.append(Case(f"settings/{cid}", c, argv, names=names, needs=needs, files=files))
    return cases


def yaml_cases() -> list[Case]:
    c = "yaml"
    cases = []
    train = ["train", "syn", *SMALL, "--out", "r"]
    for cid, value, names in [
        ("unclosed-list", "train.epochs=[", ("train.epochs",)),
        ("unclosed-map", "train.epochs={", ("train.epochs",)),
        ("python-tag", 'train.epochs=!!python/object/apply:os.system ["touch PWNED"]', ("train.epochs",)),
        ("section-scalar", "train=5", ("train",)),
        ("unknown-section", "foo.bar=1", ("foo",)),
        ("no-equals", "train.epochs", ("train.epochs",)),
        ("deep-nesting", "train.epochs=" + "[" * 20_000, ("train.epochs",)),
    ]:
        cases.append(Case(f"yaml/set-{cid}", c, [*train, "--set", value], names=names, needs=("syn",)))
    cases.append(Case("yaml/set-data-field-without-data", c, ["train", "--set", "data.x=1", "--out", "r"],
                      names=("data",)))
    cases.append(Case("yaml/set-data-field-with-data", c, [*train, "--set", "data.x=1"], names=("data",),
                      needs=("syn",)))
    configs = {
        "broken": ("train:\n  epochs: [1, 2\n", ("broken.yaml",)),
        "python-tag": ("train:\n  epochs: !!python/object/apply:os.system ['touch PWNED']\n", ("python-tag.yaml",)),
        "scalar": ("42\n", ("scalar.yaml",)),
        "list": ("- train\n- bear\n", ("list.yaml",)),
        "unknown-section": ("foo:\n  bar: 1\n", ("foo",)),
        "non-utf8": b"train:\n  epochs: 3 \xff\n",
        "deep": "a: " + "[" * 20_000 + "\n",
        "section-list": ("train:\n  - 1\n  - 2\n", ("train",)),
        "bad-field-type": ("train:\n  epochs: three\n", ("epochs",)),
    }
    for name, spec in configs.items():
        text, names = spec if isinstance(spec, tuple) else (spec, (f"{name}.yaml",))
        cases.append(Case(f"yaml/train-config-{name}", c, ["train", "syn", "--config", f"{name}.yaml", "--out", "r"],
                          names=names, files={f"{name}.yaml": text}, needs=("syn",)))
    for cmd in ("compare", "sweep"):
        extra = ["--grid", "weight=1"] if cmd == "sweep" else ["--model", "tiny"]
        for name in ("broken", "scalar"):
            text, names = configs[name]
            cases.append(Case(f"yaml/{cmd}-config-{name}", c, [cmd, f"{name}.yaml", *extra, "--out", "x"],
                              names=names, files={f"{name}.yaml": text}))
    cases.append(Case("yaml/train-config-is-a-folder", c, ["train", "--config", "syn", "--out", "r"], names=("syn",),
                      needs=("syn",)))
    cases.append(Case("yaml/train-config-empty-file-no-data", c, ["train", "--config", "empty.yaml", "--out", "r"],
                      names=("data",), files={"empty.yaml": ""}))
    return cases


def reader_cases() -> list[Case]:
    cases = []
    # --- processed folder
    c = "reader-processed"
    for cid, files, expect, names in [
        ("base", processed(), "ok", ()),
        ("bom", with_bom(processed()), "ok", ()),
        ("crlf", {k: v.replace("\n", "\r\n") for k, v in processed().items()}, "ok", ()),
        ("header-only-splits", processed(train=[], valid=[], test=[]), "error", ("train.csv",)),
        ("header-only-train", processed(train=[]), "error", ("train.csv",)),
        ("header-only-items", processed(items=[]), "error", ("items.csv",)),
        ("empty-items-file", processed(items_csv=""), "error", ("items.csv",)),
        ("empty-train-file", processed(train_csv=""), "error", ("train.csv",)),
        ("all-titles-empty", processed(items=[f"{i}," for i in range(1, 6)]), "error", ("title",)),
        ("empty-item-id", processed(items=[",Orphan", *[f"{i},{t}" for i, t in enumerate(TITLES, 1)]]), "error",
         ("item_id",)),
        ("duplicate-item-id", processed(items=["1,Red Stapler", "1,Other", *[f"{i},{t}" for i, t in
                                                                            enumerate(TITLES[1:], 2)]]),
         "error", ("item_id",)),
        ("duplicate-titles", processed(items=[f"{i},Same Title" for i in range(1, 6)]), "ok", ()),
        ("title-10k-chars", processed(items=["1," + "x" * 10_000, *[f"{i},{t}" for i, t in
                                                                    enumerate(TITLES[1:], 2)]]), "ok", ()),
        ("non-utf8-title", non_utf8(processed(), "in/items.csv"), "error", ("items.csv", "row 3")),
        ("item-ids-not-json", processed(train=['u1,"[1, 2",']), "error", ("train.csv", "item_ids")),
        ("item-ids-deep-nesting", processed(train=[f"u1,{DEEP},"]), "error", ("train.csv", "item_ids")),
        ("item-ids-unknown", processed(train=['u1,"[1, 99]",']), "error", ("train.csv", "99")),
        ("ragged-row", processed(train=['u1,"[1, 2]",,,extra']), "error", ("train.csv",)),
        ("nul-byte", {**processed(), "in/items.csv": b"item_id,title\n1,Red\x00Stapler\n2,Blue Pen\n3,Green Folder\n"
                      b"4,Black Marker\n5,White Paper\n"}, "either", ()),
        ("odd-timestamps-ignored", processed(train=['u1,"[1, 2]",1e400', 'u1,"[1, 2, 3]",abc']), "ok", ()),
        ("missing-test-file", {k: v for k, v in processed().items() if not k.endswith("test.csv")}, "error",
         ("test.csv",)),
    ]:
        cases.append(Case(f"reader-processed/{cid}", c, PROC, expect=expect, names=names, files=files))

    # --- amazon JSON lines
    c = "reader-amazon"
    first = lambda t: review("U1", "p1", t)  # noqa: E731
    for cid, files, expect, names, extra in [
        ("base", amazon(), "ok", (), []),
        ("base-gz", gz(amazon(), "reviews.json", "meta.json"), "ok", (), "gz"),
        ("not-gzip-gz", gz(amazon(), "reviews.json", "meta.json", fake=True), "error", ("reviews.json.gz",), "gz"),
        ("truncated-gz", gz(amazon(), "reviews.json", "meta.json", truncate=True), "error", ("reviews.json.gz",),
         "gz"),
        ("empty-reviews", {**amazon(), "reviews.json": ""}, "error", ("reviews.json",), []),
        ("empty-meta", {**amazon(), "meta.json": ""}, "error", ("meta.json",), []),
        ("time-1e300", amazon(first_review=first("1e300")), "error", ("unixReviewTime",), []),
        ("time-1e400", amazon(first_review=first("1e400")), "error", ("unixReviewTime",), []),
        ("time-10e30-int", amazon(first_review=first(str(10 ** 30))), "error", ("unixReviewTime",), []),
        ("time-true", amazon(first_review=first("true")), "error", ("unixReviewTime",), []),
        ("time-abc", amazon(first_review=first('"abc"')), "error", ("unixReviewTime",), []),
        ("time-negative", amazon(first_review=first("-5")), "either", ("unixReviewTime",), []),
        ("title-list", amazon(first_meta=meta("p1", '["a", "b"]')), "error", ("title",), []),
        ("title-dict", amazon(first_meta=meta("p1", '{"a": 1}')), "error", ("title",), []),
        ("title-number", amazon(first_meta=meta("p1", "42")), "error", ("title",), []),
        ("title-deep-nesting", amazon(first_meta=meta("p1", DEEP)), "error", ("meta.json",), []),
        ("title-empty", amazon(first_meta=meta("p1", '""')), "either", ("title",), "k2"),
        ("title-10k-chars", amazon(first_meta=meta("p1", json.dumps("y" * 10_000))), "ok", (), []),
        ("all-titles-empty", amazon(metas=[meta(p, '""') for p in ITEMS]), "error", ("title",), []),
        ("empty-asin", amazon(first_review=review("U1", "", "1500000000")), "error", ("asin",), []),
        ("missing-reviewer", amazon(first_review='{"asin": "p1", "unixReviewTime": 1500000000}'), "error",
         ("reviewerID",), []),
        ("deep-nesting-line", amazon(first_review=DEEP), "error", ("reviews.json", "row 1"), []),
        ("not-json-line", amazon(first_review="this is not json"), "error", ("reviews.json", "row 1"), []),
        ("non-utf8", {**amazon(), "meta.json": amazon()["meta.json"].encode().replace(b"Blue", b"Bl\xffe")}, "error",
         ("meta.json", "row 2"), []),
        ("k-core-removes-all", amazon(), "error", ("min", "interactions"), ["--min-interactions", "50"]),
    ]:
        argv = AMAZON_GZ if extra == "gz" else [*AMAZON, *(["--min-interactions", "2"] if extra == "k2" else
                                                         extra if isinstance(extra, list) else [])]
        cases.append(Case(f"reader-amazon/{cid}", c, argv, expect=expect, names=names, files=files))

    # --- interactions.csv + items.csv
    c = "reader-interactions"
    row = lambda t: f"U1,p1,{t}"  # noqa: E731
    items_rows = lambda first: [first, *[f"{p},{t}" for p, t in zip(ITEMS[1:], TITLES[1:])]]  # noqa: E731
    for cid, files, expect, names, extra in [
        ("base", interactions(), "ok", (), []),
        ("gz", gz(interactions(), "interactions.csv", "items.csv"), "ok", (), "gz"),
        ("truncated-gz", gz(interactions(), "interactions.csv", "items.csv", truncate=True), "error",
         ("interactions.csv.gz",), "gz"),
        ("not-gzip-gz", gz(interactions(), "interactions.csv", "items.csv", fake=True), "error",
         ("interactions.csv.gz",), "gz"),
        ("header-only-interactions", interactions(rows=[]), "error", ("interactions.csv",), []),
        ("header-only-items", interactions(items=[]), "error", ("items.csv|interactions.csv",), []),
        ("empty-interactions-file", {**interactions(), "interactions.csv": ""}, "error", ("interactions.csv",), []),
        ("time-1e300", interactions(first_row=row("1e300")), "error", ("timestamp",), []),
        ("time-1e400", interactions(first_row=row("1e400")), "error", ("timestamp",), []),
        ("time-10e30-int", interactions(first_row=row(str(10 ** 30))), "error", ("timestamp",), []),
        ("time-true", interactions(first_row=row("true")), "error", ("timestamp",), []),
        ("time-abc", interactions(first_row=row("abc")), "error", ("timestamp",), []),
        ("time-negative", interactions(first_row=row("-5")), "either", ("timestamp",), []),
        ("empty-item-id-everywhere", interactions(
            rows=[f"{u},{'' if p == 'p1' else p},{1_500_000_000 + 100 * i + j}" for i, u in enumerate(USERS)
                  for j, p in enumerate(ITEMS)], items=items_rows(",Red Stapler")), "error", ("item",), []),
        ("empty-user-id", interactions(first_row=",p1,1500000000"), "either", ("user",), []),
        ("unknown-item", interactions(first_row="U1,zz,1500000000"), "error", ("zz",), []),
        ("duplicate-item-id", interactions(items=[*[f"{p},{t}" for p, t in zip(ITEMS, TITLES)], "p1,Again"]),
         "error", ("p1",), []),
        ("all-titles-empty", interactions(items=[f"{p}," for p in ITEMS]), "error", ("title",), []),
        ("title-empty", interactions(items=items_rows("p1,")), "either", ("title",), ["--min-interactions", "2"]),
        ("title-10k-chars", interactions(items=items_rows("p1," + "z" * 10_000)), "ok", (), []),
        ("non-utf8", non_utf8(interactions(), "items.csv"), "error", ("items.csv", "row 3"), []),
        ("k-core-removes-all", interactions(), "error", ("min", "interactions"), ["--min-interactions", "50"]),
    ]:
        argv = (["prepare", "interactions", "interactions.csv.gz", "items.csv.gz", "--out", "data"] if extra == "gz"
                else [*INTER, *extra])
        cases.append(Case(f"reader-interactions/{cid}", c, argv, expect=expect, names=names, files=files))
    return cases


def recommend_cases() -> list[Case]:
    c = "recommend"
    rec = ["recommend", "run"]
    odd = ["--data", "odd", "--allow-other-data"]  # another catalog than the run's (issue 28: must be allowed)
    ids = [f"i{k:05d}" for k in range(480)]
    cases = [
        Case("recommend/top-k-0", c, [*rec, "i00001", "i00002", "--top-k", "0"], names=(alt("top_k"),)),
        Case("recommend/top-k-neg", c, [*rec, "i00001", "i00002", "--top-k", "-1"], names=(alt("top_k"),)),
        Case("recommend/beam-width-0", c, [*rec, "i00001", "--top-k", "0", "--beam-width", "0"],
             names=(alt("beam_width"),)),
        Case("recommend/top-k-above-beam", c, [*rec, "i00001", "--top-k", "11"], names=(alt("top_k"),)),
        Case("recommend/unknown-item", c, [*rec, "i00001", "nope"], names=("nope",)),
        Case("recommend/empty-string-item", c, [*rec, "i00001", ""], names=("history item 2",)),
        Case("recommend/run-is-user-folder", c, ["recommend", "mydocs", "i00001"], names=("mydocs",), files=USER_DOCS),
        Case("recommend/history-by-title", c, [*rec, "Atlas Stapler Metro", "i00002"], expect="ok",
             note="the title of i00001 in syn/ (synthetic, seed 0, 40 users)"),
        Case("recommend/history-duplicates", c, [*rec, "i00001", "i00001", "i00001"], expect="ok"),
        Case("recommend/history-50-items", c, [*rec, *ids[:50]], expect="ok", warns="",
             note="far beyond the training window (10 items): must warn"),
        Case("recommend/history-400-items", c, [*rec, *ids[:400]], expect="ok", warns="",
             note="the prompt is cut at max_prompt_tokens: must warn"),
        Case("recommend/title-with-tab", c, [*rec, *odd, "Tab\tTitle", "Plain Title"], expect="ok",
             note="prepare collapsed the tab; recommend must normalise alike"),
        Case("recommend/title-nfc-for-nfd-catalog", c, [*rec, *odd, "Caf\u00e9 Noir", "Plain Title"],
             expect="ok", note="catalog title given in NFD; the user types NFC"),
        Case("recommend/title-nfd-raw-with-tab", c, [*rec, *odd, "Cafe\u0301\tNoir"], expect="ok"),
        Case("recommend/title-extra-spaces", c, [*rec, *odd, "  Plain   Title "], expect="ok"),
    ]
    for case in cases:
        case.needs = case.needs or (("run", "odd") if "odd" in case.argv else ("run",))
    return cases


def evaluate_cases() -> list[Case]:
    c = "evaluate"
    ev = ["evaluate", "run", "--max-users", "4"]
    return [
        Case("evaluate/pruning-users-neg", c, [*ev, "--pruning-users", "-1"], names=(alt("pruning_users"),),
             needs=("run",)),
        Case("evaluate/beam-width-0", c, [*ev, "--beam-width", "0"], names=(alt("beam_width"),), needs=("run",)),
        Case("evaluate/max-users-0", c, ["evaluate", "run", "--max-users", "0"], names=(alt("max_users"),),
             needs=("run",)),
        Case("evaluate/max-users-neg", c, ["evaluate", "run", "--max-users", "-1"], names=(alt("max_users"),),
             needs=("run",)),
        Case("evaluate/split-bogus", c, [*ev, "--split", "bogus"], names=("bogus",), needs=("run",)),
        Case("evaluate/split-train", c, [*ev, "--split", "train"], expect="either", needs=("run",)),
        Case("evaluate/report-without-pruning", c, [*ev, "--report", "--no-pruning-rate"], names=("--report",),
             needs=("run",)),
        Case("evaluate/data-not-a-dataset", c, [*ev, "--data", "mydocs"], names=("mydocs",), needs=("run",),
             files=USER_DOCS),
        Case("evaluate/empty-test-split", c, ev, names=("test",), needs=("run",), setup=empty_split("test")),
        Case("evaluate/ok", c, [*ev, "--report"], expect="ok", needs=("run",)),
    ]


def failed_train_cases() -> list[Case]:
    """Train errors must leave no run folder behind (and no parent folders it created)."""
    c = "failed-train"
    cases = []
    for cid, args, names in [
        ("batch-size-0", ["--batch-size", "0"], (alt("batch_size"),)),
        ("bear-beam-width-0", ["--objective", "bear", "--beam-width", "0"], (alt("beam_width"),)),
        ("bear-temperature-0", ["--objective", "bear", "--temperature", "0"], ("temperature",)),
        ("lr-neg", ["--lr", "-1"], ("lr",)),
        ("max-train-examples-neg", ["--max-train-examples", "-1"], (alt("max_train_examples"),)),
        ("max-train-examples-0", ["--max-train-examples", "0"], (alt("max_train_examples"),)),
        ("valid-users-neg", ["--set", "train.valid_users=-1"], ("valid_users",)),
        ("tiny-heads-3", ["--set", "tiny.num_attention_heads=3"], ("num_attention_heads",)),
        ("tiny-hidden-0", ["--set", "tiny.hidden_size=0"], ("hidden_size",)),
    ]:
        cases.append(Case(f"failed-train/{cid}", c, ["train", "syn", *SMALL, *args, "--out", "runs/new"],
                          names=names, needs=("syn",)))
    cases += [
        Case("failed-train/empty-train-split", c, ["train", "syn", *SMALL, "--out", "runs/new"], names=("train",),
             needs=("syn",), setup=empty_split("train"), mutable=("syn/",)),
        Case("failed-train/rerun-after-failure", c, ["train", "syn", *SMALL, "--out", "runs/new"], expect="ok",
             needs=("syn",), setup=lambda f: subprocess.run(
                 [sys.executable, "-m", "bearrec.cli", "train", "syn", *SMALL, "--batch-size", "0", "--out",
                  "runs/new"], cwd=f, env=case_env(f.parent.parent), capture_output=True, timeout=300),
             mutable=("runs/",), note="a failed train must not block the corrected command"),
        Case("failed-train/title-10k-chars", c, ["train", "syn", *SMALL, "--out", "r"], expect="error",
             names=("i00000", "positions"), needs=("syn",), setup=long_title_dataset, mutable=("syn/",),
             note="2,309 tokens, more than the tiny model's 2,048 positions: refused before training, naming the item"),
    ]
    return cases


def artefact_cases() -> list[Case]:
    c = "artefacts"
    ev = ["evaluate", "run", "--max-users", "4", "--no-pruning-rate"]
    rec = ["recommend", "run", "i00001"]
    resume = ["train", "--resume", "--out", "run"]
    ckpt = "run/checkpoints/checkpoint-*"
    return [
        Case("artefacts/evaluate-truncated-safetensors", c, ev, names=("model.safetensors",), needs=("run",),
             setup=truncate("run/model/model.safetensors")),
        Case("artefacts/recommend-truncated-safetensors", c, rec, names=("model.safetensors",), needs=("run",),
             setup=truncate("run/model/model.safetensors")),
        Case("artefacts/evaluate-garbage-safetensors", c, ev, names=("model.safetensors",), needs=("run",),
             setup=replace_bytes("run/model/model.safetensors", b"\xff" * 64)),
        Case("artefacts/evaluate-garbage-model-config", c, ev, names=("config.json",), needs=("run",),
             setup=replace_bytes("run/model/config.json", b"{not json")),
        Case("artefacts/evaluate-missing-tokenizer", c, ev, names=("run",), needs=("run",),
             setup=remove("run/model/tokenizer*.json")),
        Case("artefacts/evaluate-no-run-json", c, ev, names=("run.json",), needs=("run",), setup=remove("run/run.json")),
        Case("artefacts/evaluate-broken-config-yaml", c, ev, names=("config.yaml",), needs=("run",),
             setup=replace_bytes("run/config.yaml", b"train: [\n")),
        Case("artefacts/evaluate-python-tag-config-yaml", c, ev, names=("config.yaml",), needs=("run",),
             setup=replace_bytes("run/config.yaml", b"train: !!python/object/apply:os.system ['touch PWNED']\n")),
        Case("artefacts/evaluate-truncated-dataset-parquet", c, ev, names=("test.parquet",), needs=("run",),
             setup=truncate("syn/test.parquet"), mutable=("run/", "syn/")),
        Case("artefacts/resume-no-run-json", c, resume, expect="either", names=("run.json",), needs=("run",),
             setup=remove("run/run.json")),
        # issue 28: a damaged checkpoint is set aside (damaged-checkpoint-13, named in a warning) and the run resumes
        # from the one before it, here the start; it used to be an error naming the file
        *[Case(f"artefacts/resume-{cid}", c, resume, expect="ok", warns=name, needs=("run",), setup=setup,
               kept=(f"{ckpt}/*",), check=checks(exists("run/checkpoints/damaged-checkpoint-13"), NO_CANARY))
          for cid, name, setup in [
              ("tampered-optimizer", "optimizer.pt", replace_bytes(f"{ckpt}/optimizer.pt", TAMPERED_PICKLE)),
              ("tampered-rng-state", "rng_state.pth", replace_bytes(f"{ckpt}/rng_state.pth", TAMPERED_PICKLE)),
              ("tampered-scheduler", "scheduler.pt", replace_bytes(f"{ckpt}/scheduler.pt", TAMPERED_PICKLE)),
              ("truncated-checkpoint-weights", "model.safetensors", truncate(f"{ckpt}/model.safetensors"))]],
    ]


# ------------------------------------------------------------------------------------------- round 2 (issue 28)
# One writer per folder, dataset fingerprints, damaged checkpoints, full disks and read-only folders, stricter
# input, errors that name their cause.
CMP_ARGS = ["compare", "--data", "syn", "--model", "tiny", "--objectives", "sft", "--baselines", "none",
            "--max-eval-users", "4", "--no-pruning-rate", "--epochs", "1", *SMALL_SETS]
SWP_ARGS = ["sweep", "--data", "syn", "--grid", "weight=1", "--max-eval-users", "4", "--epochs", "1", *SMALL_SETS]
QS_ARGS = ["quickstart", "--users", "40", "--epochs", "1", "--eval-users", "4", "--objectives", "sft"]
SYN40 = ["prepare", "synthetic", "--users", "40"]
TRAIN_SMALL = ["train", "syn", *SMALL]
EVAL_FAST = ["evaluate", "run", "--max-users", "4", "--no-pruning-rate"]
RESUME = ["train", "--resume", "--out", "run"]
SERVE = ["serve", "run", "--port", "0", "--log-level", "warning"]
TEMP_NAMES = (".tmp", "bearrec-tmp", "bearrec-old", "bearrec-probe")
CKPT = "run/checkpoints/checkpoint-13"


def edit_json(rel: str, change: Callable[[object], object]) -> Callable[[Path], None]:
    """Rewrite a JSON file with ``change(value)`` (which may edit in place and return None)."""
    def run(folder: Path) -> None:
        path = folder / rel
        value = json.loads(path.read_text())
        changed = change(value)
        path.write_text(json.dumps(value if changed is None else changed, indent=2))
    return run


def set_key(key: str, value: object) -> Callable[[dict], None]:
    return lambda record: record.__setitem__(key, value)


def del_key(key: str) -> Callable[[dict], None]:
    return lambda record: record.pop(key, None) and None


def copy_path(src: str, dst: str) -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        target = folder / dst
        if target.is_dir():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (folder / src).is_dir() else shutil.copy2)(folder / src, target)
    return run


def swap_files(a: str, b: str) -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        tmp = folder / (a + ".swap")
        os.replace(folder / a, tmp)
        os.replace(folder / b, folder / a)
        os.replace(tmp, folder / b)
    return run


def edit_title(dataset: str = "syn", row: int = 0, title: str = "Edited Title") -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        import pandas as pd

        path = folder / dataset / "items.parquet"
        items = pd.read_parquet(path)
        items.loc[row, "title"] = title
        items.to_parquet(path, index=False)
    return run


def mkdirs(*rels: str) -> Callable[[Path], None]:
    return lambda folder: [(folder / rel).mkdir(parents=True, exist_ok=True) for rel in rels] and None


def plant_lock(rel: str, owner: dict | bytes) -> Callable[[Path], None]:
    """A .bearrec.lock nobody holds, as a killed writer (or something else) left it."""
    def run(folder: Path) -> None:
        path = folder / rel / ".bearrec.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = owner if isinstance(owner, bytes) else json.dumps({"host": socket.gethostname(), **owner}).encode()
        path.write_bytes(data)
    return run


def fill_disk(rel: str) -> Callable[[Path], None]:
    """Fill the file system holding ``rel`` (a tmpfs) up to the last byte: ENOSPC for the next write."""
    def run(folder: Path) -> None:
        with open(folder / rel, "wb", buffering=0) as handle:  # unbuffered: nothing left to flush at close
            for block in (65536, 4096, 1):
                try:
                    while True:
                        handle.write(bytes(block))
                except OSError:
                    pass
    return run


def move_run_into(disk: str) -> Callable[[Path], None]:
    """run/ into the mounted folder ``disk`` (its run.json keeps pointing at the case's syn/)."""
    def run(folder: Path) -> None:
        shutil.copytree(folder / "run", folder / disk / "run", symlinks=True)
        shutil.rmtree(folder / "run")
    return run


# post-conditions: (folder, info) -> problem or None; info holds code, stdout, stderr and, for servers, health
def checks(*steps: Callable[[Path, dict], str | None]) -> Callable[[Path, dict], str | None]:
    def run(folder: Path, info: dict) -> str | None:
        return next((problem for step in steps if (problem := step(folder, info))), None)
    return run


def stdout_has(text: str) -> Callable[[Path, dict], str | None]:
    return lambda folder, info: None if text in info["stdout"] else f"stdout lacks {text!r}"


def stderr_has(*texts: str) -> Callable[[Path, dict], str | None]:
    def run(folder: Path, info: dict) -> str | None:
        missing = [t for t in texts if t.lower() not in info["stderr"].lower()]
        return f"stderr lacks {missing}" if missing else None
    return run


def exists(*rels: str) -> Callable[[Path, dict], str | None]:
    def run(folder: Path, info: dict) -> str | None:
        missing = [rel for rel in rels if not list(folder.glob(rel))]
        return f"missing: {', '.join(missing)}" if missing else None
    return run


def absent(*rels: str) -> Callable[[Path, dict], str | None]:
    def run(folder: Path, info: dict) -> str | None:
        there = [rel for rel in rels if list(folder.glob(rel))]
        return f"should not exist: {', '.join(there)}" if there else None
    return run


def healthy(folder: Path, info: dict) -> str | None:
    if not info.get("served"):
        return "the server never said 'serving ... at URL'"
    return None if info.get("health") == 200 else f"GET /health: {info.get('health')}"


def dataset_meta(rel: str, expect: dict) -> Callable[[Path, dict], str | None]:
    """dataset.json of ``rel`` holds these values (``cleaning.KEY`` or ``summary.KEY`` or a top-level key)."""
    def run(folder: Path, info: dict) -> str | None:
        meta = json.loads((folder / rel / "dataset.json").read_text())
        wrong = {}
        for key, want in expect.items():
            value = meta
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value != want:
                wrong[key] = value
        return f"dataset.json: {wrong} (expected {expect})" if wrong else None
    return run


NO_CANARY = absent("PWNED")
SUMMARY_5 = {"summary.items": 5, "summary.train_examples": 16, "summary.valid_examples": 2,
             "summary.test_examples": 2}  # what the LF interactions() give


def lock_held_cases() -> list[Case]:
    """A second writer of a folder another process writes is refused with one line naming that process."""
    c = "lock-held"
    held = ("in use", "{pid}")
    cases = [
        Case("lock-held/prepare-synthetic", c, [*SYN40, "--out", "data"], names=("data", *held), holder="data",
             holder_kind="dataset"),
        Case("lock-held/prepare-interactions", c, INTER, names=("data", *held), files=interactions(), holder="data",
             holder_kind="dataset"),
        Case("lock-held/prepare-replacing-its-dataset", c, [*SYN40, "--seed", "1", "--out", "syn"],
             names=("syn", *held), needs=("syn",), holder="syn", holder_kind="dataset", mutable=(),
             note="the dataset in the held folder must stay as it is"),
        Case("lock-held/train-new-run", c, [*TRAIN_SMALL, "--out", "r"], names=("r", *held), needs=("syn",),
             holder="r"),
        Case("lock-held/train-nested-folder", c, [*TRAIN_SMALL, "--out", "runs/a/b"], names=("runs/a/b", *held),
             needs=("syn",), holder="runs/a/b"),
        Case("lock-held/train-trailing-slash", c, [*TRAIN_SMALL, "--out", "r/"], names=("r", *held),
             needs=("syn",), holder="r", note="r/ and r are one folder"),
        Case("lock-held/train-through-symlink", c, [*TRAIN_SMALL, "--out", "link"], names=("link", *held),
             needs=("syn",), holder="r", setup=symlink("link", "r"), note="the lock is on the file, not the name"),
        Case("lock-held/train-resume", c, RESUME, names=("run", *held), needs=("run",), holder="run", mutable=()),
        Case("lock-held/compare", c, [*CMP_ARGS, "--out", "cmp"], names=("cmp", *held), needs=("syn",), holder="cmp",
             holder_kind="experiment"),
        Case("lock-held/compare-overwrite", c, [*CMP_ARGS, "--out", "cmp", "--overwrite"], names=("cmp", *held),
             needs=("syn",), holder="cmp", holder_kind="experiment",
             files={"cmp/.bearrec": '{"kind": "experiment"}\n', "cmp/results.md": "an earlier experiment\n"},
             note="--overwrite must not empty a folder another process writes"),
        Case("lock-held/sweep", c, [*SWP_ARGS, "--out", "swp"], names=("swp", *held), needs=("syn",), holder="swp",
             holder_kind="experiment"),
        Case("lock-held/evaluate", c, EVAL_FAST, names=("run", *held), needs=("run",), holder="run", mutable=()),
        Case("lock-held/evaluate-read-only-run", c, EVAL_FAST, names=("run", *held), needs=("run",), holder="run",
             readonly=("run",), mutable=(), note="the holder locks the lock file the read-only run already has"),
        Case("lock-held/quickstart", c, [*QS_ARGS, "--out", "qs"], names=("qs", *held), holder="qs",
             holder_kind="quickstart"),
    ]
    return cases


def lock_stale_cases() -> list[Case]:
    """A lock whose holder was killed is taken over, with a warning naming that process."""
    c = "lock-stale"
    take = "taking over"
    cases = [
        Case("lock-stale/prepare-synthetic", c, [*SYN40, "--out", "data"], expect="ok", warns=take, holder="data",
             holder_kind="dataset", holder_killed=True),
        Case("lock-stale/train-new-run", c, [*TRAIN_SMALL, "--out", "r"], expect="ok", warns=take, needs=("syn",),
             holder="r", holder_killed=True),
        Case("lock-stale/train-nested-folder", c, [*TRAIN_SMALL, "--out", "runs/a/b"], expect="ok", warns=take,
             needs=("syn",), holder="runs/a/b", holder_killed=True),
        Case("lock-stale/train-resume", c, RESUME, expect="ok", warns=take, needs=("run",), holder="run",
             holder_killed=True),
        Case("lock-stale/evaluate", c, EVAL_FAST, expect="ok", warns=take, needs=("run",), holder="run",
             holder_killed=True),
        Case("lock-stale/compare", c, [*CMP_ARGS, "--out", "cmp"], expect="ok", warns=take, needs=("syn",),
             holder="cmp", holder_kind="experiment", holder_killed=True),
        Case("lock-stale/quickstart", c, [*QS_ARGS, "--out", "qs"], expect="ok", warns=take, holder="qs",
             holder_kind="quickstart", holder_killed=True),
        Case("lock-stale/planted-dead-pid", c, [*TRAIN_SMALL, "--out", "r"], expect="ok", warns=take, needs=("syn",),
             setup=plant_lock("r", {"pid": DEAD_PID, "since": "2020-01-01 00:00:00", "command": "bearrec train"}),
             mutable=("r/",), note="a lock file naming a process that no longer exists"),
        Case("lock-stale/planted-other-host", c, [*TRAIN_SMALL, "--out", "r"], expect="ok", needs=("syn",),
             setup=plant_lock("r", {"pid": 4242, "host": "elsewhere.example", "command": "bearrec train"}),
             mutable=("r/",), note="not locked by anyone: taken (a process elsewhere cannot be checked)"),
        Case("lock-stale/planted-garbage", c, EVAL_FAST, expect="ok", needs=("run",),
             setup=plant_lock("run", b"\x00\xffnot json{"), note="an unreadable owner: lock taken, no crash"),
    ]
    return cases


def lock_other_cases() -> list[Case]:
    """Reading is not writing, and a lock covers one folder: these must work while another process holds a lock."""
    c = "lock-other"
    return [
        Case("lock-other/train-from-held-dataset", c, [*TRAIN_SMALL, "--out", "r"], expect="ok", needs=("syn",),
             holder="syn", holder_kind="dataset", note="train reads syn/, writes r/"),
        Case("lock-other/evaluate-with-held-dataset", c, EVAL_FAST, expect="ok", needs=("run",), holder="syn",
             holder_kind="dataset"),
        Case("lock-other/recommend-from-held-run", c, ["recommend", "run", "i00001"], expect="ok", needs=("run",),
             holder="run", note="recommend reads the run"),
        Case("lock-other/serve-held-run", c, [*SERVE, "--decoders", "beam"], expect="ok", needs=("run",), holder="run",
             server=True, check=healthy, timeout=90),
        Case("lock-other/train-under-held-parent", c, [*TRAIN_SMALL, "--out", "runs/a/b"], expect="ok",
             needs=("syn",), holder="runs/a", holder_kind="experiment", note="runs/a is held, runs/a/b is not"),
        Case("lock-other/train-beside-held-run", c, [*TRAIN_SMALL, "--out", "r2"], expect="ok", needs=("syn",),
             holder="r"),
        Case("lock-other/prepare-from-held-input", c, PROC, expect="ok", files=processed(), holder="in",
             holder_kind="dataset"),
    ]


def lock_clean_cases() -> list[Case]:
    """A command that refuses a folder leaves no lock file in it, and no folders it made only for the lock;
    odd lock files are errors naming them, never a reason to write elsewhere."""
    c = "lock-clean"
    return [
        Case("lock-clean/evaluate-missing-nested-run", c, ["evaluate", "nope/deeper"], names=("nope/deeper",)),
        Case("lock-clean/evaluate-a-dataset", c, ["evaluate", "syn"], names=("syn",), needs=("syn",),
             setup=remove("syn/.bearrec.lock"), note="a dataset without a lock file must not get one"),
        Case("lock-clean/evaluate-a-user-folder", c, ["evaluate", "mydocs"], names=("mydocs",), files=USER_DOCS),
        Case("lock-clean/resume-an-empty-folder", c, ["train", "--resume", "--out", "empty"], names=("empty",),
             setup=mkdirs("empty")),
        Case("lock-clean/prepare-broken-input-nested-out", c, ["prepare", "processed", "in", "--out", "a/b/c"],
             names=("train.csv",), files=processed(train=['u1,"[1, 2",'])),
        Case("lock-clean/train-from-user-folder-nested-out", c, ["train", "mydocs", *SMALL, "--out", "a/b"],
             names=("mydocs",), files=USER_DOCS),
        Case("lock-clean/train-fails-in-existing-empty-folder", c, ["train", "mydocs", *SMALL, "--out", "r"],
             names=("mydocs",), files=USER_DOCS, setup=mkdirs("r"), note="r/ stays, without a lock file"),
        Case("lock-clean/compare-missing-data-nested-out", c,
             [*[a if a != "syn" else "nope" for a in CMP_ARGS], "--out", "a/b/c"], names=("nope",)),
        Case("lock-clean/quickstart-users-0-nested-out", c, [*QS_ARGS, "--users", "0", "--out", "a/b"],
             names=("users",)),
        Case("lock-clean/lock-file-is-a-folder", c, EVAL_FAST, names=(".bearrec.lock",), needs=("run",),
             setup=chain(remove("run/.bearrec.lock"), mkdirs("run/.bearrec.lock/x")), mutable=()),
        Case("lock-clean/lock-file-is-symlink-to-user-file", c, EVAL_FAST, expect="either", needs=("run",),
             files=USER_DOCS, setup=chain(remove("run/.bearrec.lock"), symlink("run/.bearrec.lock",
                                                                             "../mydocs/thesis.txt")),
             note="a planted symlink: the user's file it points to must not be written (or truncated)"),
    ]


def fingerprint_cases() -> list[Case]:
    """runs are bound to the content of the dataset they were trained on (run.json's dataset_fingerprint)."""
    c = "fingerprint"
    reprepared = copy_path("synb", "syn")
    titles = edit_title()
    meta_edit = edit_json("syn/dataset.json", set_key("note", "edited by hand"))
    test_swapped = copy_path("synb/test.parquet", "syn/test.parquet")
    refused = ("syn", "{fp:syn}", "{fp:run}")
    rec = ["recommend", "run", "i00001"]
    ds = ("run/", "syn/")
    cases = [
        Case("fingerprint/evaluate-reprepared-other-seed", c, EVAL_FAST, names=refused, needs=("run", "synb"),
             setup=reprepared, mutable=ds),
        Case("fingerprint/evaluate-title-edited", c, EVAL_FAST, names=(*refused, "items.parquet"), needs=("run",),
             setup=titles, mutable=ds),
        Case("fingerprint/evaluate-dataset-json-edited", c, EVAL_FAST, names=(*refused, "dataset.json"),
             needs=("run",), setup=meta_edit, mutable=ds),
        Case("fingerprint/evaluate-test-split-swapped", c, EVAL_FAST, names=(*refused, "test.parquet"),
             needs=("run", "synb"), setup=test_swapped, mutable=ds),
        Case("fingerprint/recommend-reprepared", c, rec, names=refused, needs=("run", "synb"), setup=reprepared,
             mutable=ds),
        Case("fingerprint/serve-reprepared", c, SERVE, names=refused, needs=("run", "synb"), setup=reprepared,
             mutable=ds, server=True, timeout=90, note="must fail before serving"),
        Case("fingerprint/resume-reprepared", c, RESUME, names=refused, needs=("run", "synb"), setup=reprepared,
             mutable=("syn/",)),
        Case("fingerprint/resume-title-edited", c, RESUME, names=(*refused, "items.parquet"), needs=("run",),
             setup=titles, mutable=("syn/",)),
        Case("fingerprint/evaluate-other-data", c, [*EVAL_FAST, "--data", "synb"],
             names=("synb", "{fp:synb}", "{fp:run}", "--allow-other-data"), needs=("run", "synb")),
        Case("fingerprint/evaluate-other-data-allowed", c, [*EVAL_FAST, "--data", "synb", "--allow-other-data"],
             expect="ok", warns="synb", needs=("run", "synb")),
        Case("fingerprint/recommend-other-data-allowed", c, [*rec, "--data", "synb", "--allow-other-data"],
             expect="ok", warns="synb", needs=("run", "synb")),
        Case("fingerprint/serve-other-data", c, [*SERVE, "--data", "synb"], names=("synb", "--allow-other-data"),
             needs=("run", "synb"), server=True, timeout=90),
        Case("fingerprint/serve-other-data-allowed", c, [*SERVE, "--data", "synb", "--allow-other-data",
                                                         "--decoders", "beam"],
             expect="ok", warns="synb", needs=("run", "synb"), server=True, check=healthy, timeout=90),
        Case("fingerprint/evaluate-same-content-elsewhere", c, [*EVAL_FAST, "--data", "copy"], expect="ok",
             needs=("run",), setup=copy_path("syn", "copy")),
        Case("fingerprint/evaluate-changed-allowed-without-data", c, [*EVAL_FAST, "--allow-other-data"],
             expect="ok", warns="syn", needs=("run", "synb"), setup=reprepared, mutable=ds,
             note="the recorded folder changed and --allow-other-data lets it through: a warning must say so"),
        Case("fingerprint/evaluate-run-json-without-fingerprint", c, EVAL_FAST, expect="ok", warns="fingerprint",
             needs=("run",), setup=edit_json("run/run.json", del_key("dataset_fingerprint")),
             note="runs written before fingerprints"),
        Case("fingerprint/resume-run-json-without-fingerprint", c, RESUME, expect="ok", warns="fingerprint",
             needs=("run",), setup=edit_json("run/run.json", del_key("dataset_fingerprint"))),
    ]
    for cid, value in [("string", "not-a-fingerprint"), ("int", 12345), ("object", {"sha": 1})]:
        cases.append(Case(f"fingerprint/evaluate-fingerprint-garbage-{cid}", c, EVAL_FAST, names=("run.json",),
                          needs=("run",), setup=edit_json("run/run.json", set_key("dataset_fingerprint", value))))
    for cid, value in [("string", "x")]:
        cases.append(Case(f"fingerprint/evaluate-reprepared-dataset-files-{cid}", c, EVAL_FAST, names=("run.json",),
                          needs=("run", "synb"), mutable=ds,
                          setup=chain(reprepared, edit_json("run/run.json", set_key("dataset_files", value))),
                          note="run.json's per-file digests garbled, and the data changed"))
    return cases


def checkpoint_cases() -> list[Case]:
    """A damaged checkpoint is moved aside to damaged-checkpoint-N with a warning; --resume continues from the
    newest intact one (or the start). Nothing is deleted: the damaged files must still be somewhere."""
    c = "checkpoint-damage"
    state = f"{CKPT}/trainer_state.json"
    aside = exists("run/checkpoints/damaged-checkpoint-13")

    def damaged(cid: str, setup, kept=(f"{CKPT}/*",), check=None, expect="ok", note="") -> Case:
        return Case(f"checkpoint-damage/{cid}", c, RESUME, expect=expect, warns="damaged" if expect == "ok" else None,
                    needs=("run",), setup=setup, kept=kept, check=check or checks(aside, NO_CANARY), note=note)

    cases = [
        damaged("state-empty", replace_bytes(state, b"")),
        damaged("state-truncated", truncate(state)),
        damaged("state-global-step-string", edit_json(state, set_key("global_step", "ten"))),
        damaged("state-not-an-object", replace_bytes(state, b"[1, 2, 3]")),
        damaged("state-negative-step", edit_json(state, set_key("global_step", -1))),
        damaged("state-deep-nesting", replace_bytes(state, b"[" * 100_000)),
        damaged("state-global-step-huge", edit_json(state, set_key("global_step", 10 ** 30)),
                note="an int, but not one the Trainer can count to"),
        damaged("state-missing", remove(state), note="killed while saving: trainer_state.json is written last"),
        damaged("optimizer-truncated", truncate(f"{CKPT}/optimizer.pt")),
        damaged("optimizer-malicious-pickle", replace_bytes(f"{CKPT}/optimizer.pt", TAMPERED_PICKLE)),
        damaged("safetensors-truncated", truncate(f"{CKPT}/model.safetensors")),
        damaged("safetensors-missing", remove(f"{CKPT}/model.safetensors"),
                note="a checkpoint without its weights cannot be resumed from either"),
        Case("checkpoint-damage/run2-newest-damaged", c, ["train", "--resume", "--out", "run2"], expect="ok",
             warns="damaged", needs=("run2",), mutable=("run2/",),
             setup=edit_json("run2/checkpoints/checkpoint-26/trainer_state.json", set_key("global_step", "ten")),
             kept=("run2/checkpoints/checkpoint-26/*",),
             check=checks(exists("run2/checkpoints/damaged-checkpoint-26"),
                          stderr_has("resuming run2 from run2/checkpoints/checkpoint-13"))),
        Case("checkpoint-damage/run2-both-damaged", c, ["train", "--resume", "--out", "run2"], expect="ok",
             warns="damaged", needs=("run2",), mutable=("run2/",),
             setup=chain(truncate("run2/checkpoints/checkpoint-26/model.safetensors"),
                         truncate("run2/checkpoints/checkpoint-13/optimizer.pt")),
             kept=("run2/checkpoints/checkpoint-*/*",),
             check=checks(exists("run2/checkpoints/damaged-checkpoint-26", "run2/checkpoints/damaged-checkpoint-13"),
                          stderr_has("from the start"))),
        Case("checkpoint-damage/run2-aside-name-taken", c, ["train", "--resume", "--out", "run2"], expect="ok",
             warns="damaged", needs=("run2",), mutable=("run2/",),
             files={"run2/checkpoints/damaged-checkpoint-26/note.txt": "set aside earlier\n"},
             setup=truncate("run2/checkpoints/checkpoint-26/trainer_state.json"),
             kept=("run2/checkpoints/checkpoint-26/*", "run2/checkpoints/damaged-checkpoint-26/*"),
             check=exists("run2/checkpoints/damaged-checkpoint-26-2")),
    ]
    epochs = "run/checkpoints/epochs.json"
    for cid, data in [("garbage", b"{not json"), ("not-a-list", b"{}"), ("deep-nesting", b"[" * 100_000)]:
        cases.append(Case(f"checkpoint-damage/epochs-json-{cid}", c, RESUME, expect="ok", warns="epochs.json",
                          needs=("run",), setup=replace_bytes(epochs, data), kept=(epochs,),
                          check=exists("run/checkpoints/damaged-epochs.json")))
    cases.append(Case("checkpoint-damage/epochs-json-aside-name-taken", c, RESUME, expect="ok", warns="epochs.json",
                      needs=("run",), files={"run/checkpoints/damaged-epochs.json": "an earlier damaged log\n"},
                      setup=replace_bytes(epochs, b"{not json"), kept=(epochs, "run/checkpoints/damaged-epochs.json")))
    return cases


def disk_full_cases() -> list[Case]:
    """A full disk (RLIMIT_FSIZE: EFBIG 'file too large'; a small tmpfs: ENOSPC): one line naming the path the user
    gave (never a temporary name), nothing half-written, no new run folder without a complete checkpoint."""
    c = "disk-full"
    cases = []
    for cid, argv, fsize, names, extra in [
        ("prepare-synthetic-1k", [*SYN40, "--out", "data"], 1_000, ("data",), {}),
        ("prepare-synthetic-8k", [*SYN40, "--out", "data"], 8_000, ("data",), {}),
        ("prepare-interactions-1k", INTER, 1_000, ("data",), {"files": interactions()}),
        ("prepare-replacing-dataset-5k", [*SYN40, "--seed", "1", "--out", "syn"], 5_000, ("syn",),
         {"needs": ("syn",), "mutable": ()}),
        ("train-100k", [*TRAIN_SMALL, "--out", "r"], 100_000, ("r",), {"needs": ("syn",)}),
        ("train-270k", [*TRAIN_SMALL, "--out", "r"], 270_000, ("r",),
         {"needs": ("syn",), "note": "model.safetensors (257 kB) fits, optimizer.pt (522 kB) does not"}),
        ("resume-100k", RESUME, 100_000, ("run",),
         {"needs": ("run",), "setup": truncate(f"{CKPT}/trainer_state.json"), "kept": ("run/model/*", "run/run.json"),
          "may_leave": ("run/checkpoints/damaged-checkpoint-13/", "run/checkpoints/runs/"),
          "note": "the damaged checkpoint is set aside, the new one cannot be saved: the run itself stays"}),
        ("evaluate-100", EVAL_FAST, 100, ("eval_test",), {"needs": ("run",), "check": stdout_has("N@10"),
                                                           "mutable": ()}),
        ("evaluate-pruning-100", ["evaluate", "run", "--max-users", "4"], 100, ("eval_test",),
         {"needs": ("run",), "check": stdout_has("N@10"), "mutable": ()}),
        ("evaluate-report-20k", ["evaluate", "run", "--max-users", "4", "--report"], 20_000, ("eval_test_pruning.png",),
         {"needs": ("run",), "may_leave": ("run/eval_test.json", "run/eval_test_users.csv"),
          "note": "the figure is the one file that does not fit (the metrics files before it do)"}),
        ("evaluate-latent-100", [*EVAL_FAST, "--decoder", "latent"], 100, ("eval_test_latent.json",),
         {"needs": ("run",), "check": checks(stdout_has("N@10"), stderr_has("warning:", "latent")), "mutable": ()}),
        ("compare-3k", [*CMP_ARGS, "--out", "cmp"], 3_000, ("cmp",), {"needs": ("syn",)}),
        ("compare-100k", [*CMP_ARGS, "--out", "cmp"], 100_000, ("cmp",), {"needs": ("syn",)}),
        ("quickstart-100k", [*QS_ARGS, "--out", "qs"], 100_000, ("qs",), {}),
    ]:
        cases.append(Case(f"disk-full/{cid}", c, argv, names=names, fsize=fsize, forbid=TEMP_NAMES, late=True,
                          **extra))
    cases += [
        Case("disk-full/train-1m-fits", c, [*TRAIN_SMALL, "--out", "r"], expect="ok", fsize=1_000_000, needs=("syn",),
             note="control: every file fits"),
        Case("disk-full/recommend-latent-100", c, ["recommend", "run", "i00001", "--decoder", "latent"], expect="ok",
             warns="latent", fsize=100, needs=("run",), note="the memory cache cannot be written: built in memory"),
        Case("disk-full/serve-100", c, SERVE, expect="ok", warns="latent", fsize=100, needs=("run",), server=True,
             check=healthy, timeout=90),
    ]
    # a real full file system (root: a small tmpfs)
    cases += [
        Case("disk-full/tmpfs-prepare", c, [*SYN40, "--out", "disk/data"], names=("disk/data",), tmpfs=("disk", "12k"),
             forbid=TEMP_NAMES),
        Case("disk-full/tmpfs-train-checkpoint", c, [*TRAIN_SMALL, "--out", "disk/r"], names=("disk/r",),
             tmpfs=("disk", "600k"), needs=("syn",), forbid=TEMP_NAMES, late=True),
        Case("disk-full/tmpfs-evaluate-full", c, ["evaluate", "disk/run", "--max-users", "4", "--no-pruning-rate"],
             names=("eval_test",), tmpfs=("disk", "8m"), needs=("run",),
             setup=chain(move_run_into("disk"), fill_disk("disk/filler")), forbid=TEMP_NAMES, late=True,
             check=stdout_has("N@10"), mutable=()),
        Case("disk-full/tmpfs-compare", c, [*CMP_ARGS, "--out", "disk/cmp"], names=("disk/cmp",),
             tmpfs=("disk", "600k"), needs=("syn",), forbid=TEMP_NAMES, late=True),
    ]
    return cases


def read_only_cases() -> list[Case]:
    """A read-only run: evaluate shows its metrics and then names the file it cannot write; recommend and serve
    work (the latent memory cache is built in memory, with a warning)."""
    c = "read-only"
    ro = {"needs": ("run",), "readonly": ("run",), "mutable": ()}
    return [
        Case("read-only/evaluate", c, EVAL_FAST, names=("eval_test.json",), check=stdout_has("N@10"), late=True,
             **ro),
        Case("read-only/evaluate-latent", c, [*EVAL_FAST, "--decoder", "latent"], names=("eval_test_latent.json",),
             check=stdout_has("N@10"), late=True, **ro),
        Case("read-only/evaluate-without-lock-file", c, EVAL_FAST, names=("eval_test.json",), needs=("run",),
             readonly=("run",), setup=remove("run/.bearrec.lock"), check=stdout_has("N@10"), mutable=(), late=True,
             note="no lock file can be made: used unlocked"),
        Case("read-only/recommend-latent", c, ["recommend", "run", "i00001", "--decoder", "latent"], expect="ok",
             warns="latent", **ro),
        Case("read-only/serve", c, SERVE, expect="ok", warns="latent", server=True, check=healthy, timeout=90, **ro),
        Case("read-only/serve-beam-only", c, [*SERVE, "--decoders", "beam"], expect="ok", server=True, check=healthy,
             timeout=90, **ro),
        Case("read-only/resume", c, RESUME, names=("run",), late=True, may_leave=("run/checkpoints/runs/",),
             note="only run/ itself is read-only: a TensorBoard log of the attempt may appear in checkpoints/runs/",
             **ro),
        Case("read-only/prepare-replacing-dataset", c, [*SYN40, "--seed", "1", "--out", "syn"], names=("syn",),
             needs=("syn",), readonly=("syn",), mutable=()),
    ]


def input_cases() -> list[Case]:
    cases = []
    # --- exact duplicate interactions: dropped, one warning, counted in dataset.json
    c = "input-duplicates"
    base_rows = [f"{u},{p},{1_500_000_000 + 100 * i + j}" for i, u in enumerate(USERS) for j, p in enumerate(ITEMS)]
    dup_count = lambda n: dataset_meta("data", {"cleaning.duplicate_interactions_dropped": n})  # noqa: E731
    cases += [
        Case("input-duplicates/adjacent", c, INTER, expect="ok", warns="duplicate",
             files=interactions(rows=[base_rows[0], *base_rows]), check=dup_count(1)),
        Case("input-duplicates/three-at-the-end", c, INTER, expect="ok", warns="duplicate",
             files=interactions(rows=[*base_rows, *base_rows[:3]]), check=dup_count(3)),
        Case("input-duplicates/every-row-twice", c, INTER, expect="ok", warns="duplicate",
             files=interactions(rows=[*base_rows, *base_rows]), check=checks(dup_count(25), dataset_meta(
                 "data", SUMMARY_5))),
        Case("input-duplicates/same-pair-other-time-kept", c, INTER, expect="ok",
             files=interactions(rows=[*base_rows, "U1,p1,1600000000"]), check=dup_count(0),
             note="a repeat purchase at another time is not a duplicate"),
        Case("input-duplicates/amazon", c, AMAZON, expect="ok", warns="duplicate",
             files=amazon(reviews=[review(u, p, str(1_500_000_000 + 100 * i + j)) for i, u in enumerate(USERS)
                                   for j, p in enumerate(ITEMS)] * 2), check=dup_count(25)),
        Case("input-duplicates/gzip", c, ["prepare", "interactions", "interactions.csv.gz", "items.csv.gz", "--out",
                                          "data"], expect="ok", warns="duplicate",
             files=gz(interactions(rows=[*base_rows, base_rows[4]]), "interactions.csv", "items.csv"),
             check=dup_count(1)),
    ]
    # --- CR-only and mixed line ends, in every CSV (and JSON-lines) file
    c = "input-line-ends"

    def cr(files: dict, mixed: bool = False) -> dict:
        out = {}
        for name, text in files.items():
            lines = text.split("\n")
            if text.endswith("\n"):
                lines = lines[:-1]
            ends = ["\r", "\r\n", "\n"] if mixed else ["\r"]
            out[name] = "".join(line + ends[k % len(ends)] for k, line in enumerate(lines))
        return out

    codes = {"codes.csv": csv_text("item_id,codes", [f'{p},"[{k}, {k}]"' for k, p in enumerate(ITEMS)])}
    sem = [*INTER, "--semantic-ids", "codes.csv"]
    cases += [
        Case("input-line-ends/interactions-cr-only", c, INTER, expect="ok", files=cr(interactions()),
             check=dataset_meta("data", SUMMARY_5)),
        Case("input-line-ends/interactions-mixed", c, INTER, expect="ok", files=cr(interactions(), mixed=True),
             check=dataset_meta("data", SUMMARY_5)),
        Case("input-line-ends/interactions-cr-no-final-newline", c, INTER, expect="ok",
             files={k: v.rstrip("\r") for k, v in cr(interactions()).items()}, check=dataset_meta("data", SUMMARY_5)),
        Case("input-line-ends/interactions-cr-bom", c, INTER, expect="ok", files=with_bom(cr(interactions())),
             check=dataset_meta("data", SUMMARY_5)),
        Case("input-line-ends/interactions-cr-gzip", c, ["prepare", "interactions", "interactions.csv.gz",
                                                         "items.csv.gz", "--out", "data"], expect="ok",
             files=gz(cr(interactions()), "interactions.csv", "items.csv"), check=dataset_meta("data", SUMMARY_5)),
        Case("input-line-ends/interactions-cr-bad-row-number", c, INTER, names=("interactions.csv", "row 4",
                                                                                "timestamp"),
             files=cr(interactions(rows=[*base_rows[:2], "U1,p3,abc", *base_rows[3:]])),
             note="rows counted by CR line ends: header row 1, the third data row is row 4"),
        Case("input-line-ends/items-cr-non-utf8-row", c, INTER, names=("items.csv", "row 3"),
             files=non_utf8(cr(interactions()), "items.csv")),
        Case("input-line-ends/processed-cr-only", c, PROC, expect="ok", files=cr(processed()),
             check=dataset_meta("data", {"summary.items": 5, "summary.train_examples": 5})),
        Case("input-line-ends/amazon-cr-only", c, AMAZON, expect="ok", files=cr(amazon()),
             check=dataset_meta("data", {"summary.items": 5})),
        Case("input-line-ends/semantic-ids-cr-only", c, sem, expect="ok", files={**interactions(), **cr(codes)},
             check=dataset_meta("data", {"summary.items": 5})),
    ]
    # --- semantic-ID codes outside 0..2^31-1 (or not integers): file, row and field
    c = "input-semantic-ids"
    for cid, value, expect in [("2-pow-63", str(2 ** 63), "error"), ("2-pow-31", str(2 ** 31), "error"),
                               ("negative", "-1", "error"), ("float", "1.5", "error"), ("true", "true", "error"),
                               ("string", '""a""', "error"), ("nested", "[1]", "error"),
                               ("2-pow-31-minus-1", str(2 ** 31 - 1), "ok")]:
        rows = [f'{p},"[{k}, {k}]"' for k, p in enumerate(ITEMS)]
        rows[1] = f'p2,"[{value}, 1]"'
        cases.append(Case(f"input-semantic-ids/code-{cid}", c, sem, expect=expect,
                          names=("codes.csv", "row 3", "codes") if expect == "error" else (),
                          files={**interactions(), "codes.csv": csv_text("item_id,codes", rows)}))
    cases.append(Case("input-semantic-ids/codes-not-a-list", c, sem, names=("codes.csv", "row 3", "codes"),
                      files={**interactions(), "codes.csv": csv_text("item_id,codes", [
                          f'{p},"[{k}, {k}]"' if p != "p2" else "p2,7" for k, p in enumerate(ITEMS)])}))
    # --- a title that equals another item's id: warned about at prepare, naming both
    c = "input-title-id"

    def names_both(a: str, b: str) -> Callable[[Path, dict], str | None]:
        def run(folder: Path, info: dict) -> str | None:
            hit = [line for line in info["stderr"].splitlines() if line.startswith("warning:") and a in line
                   and b in line]
            return None if hit else f"no warning line naming both {a} and {b}"
        return run

    items_eq = lambda first: [first, *[f"{p},{t}" for p, t in zip(ITEMS[1:], TITLES[1:])]]  # noqa: E731
    cases += [
        Case("input-title-id/interactions", c, INTER, expect="ok", warns="p3", files=interactions(
            items=items_eq("p1,p3")), check=names_both("'p1'", "'p3'")),
        Case("input-title-id/processed", c, PROC, expect="ok", warns="3", files=processed(
            items=["1,3", *[f"{i},{t}" for i, t in enumerate(TITLES[1:], 2)]]), check=names_both("'1'", "'3'")),
        Case("input-title-id/amazon", c, AMAZON, expect="ok", warns="p3", files=amazon(first_meta=meta("p1", '"p3"')),
             check=names_both("'p1'", "'p3'")),
        Case("input-title-id/after-normalisation", c, INTER, expect="ok", warns="p3", files=interactions(
            items=items_eq('p1,"  p3\t"')), check=names_both("'p1'", "'p3'"), note="the cleaned title is 'p3'"),
        Case("input-title-id/two-items-crossed", c, INTER, expect="ok", warns="p2", files=interactions(
            items=["p1,p2", "p2,p1", *[f"{p},{t}" for p, t in zip(ITEMS[2:], TITLES[2:])]]),
             check=checks(names_both("'p1'", "'p2'"))),
        Case("input-title-id/own-id", c, INTER, expect="either", files=interactions(items=items_eq("p1,p1")),
             note="an item titled with its own id: nothing ambiguous"),
    ]
    return cases


def yaml_strict_cases() -> list[Case]:
    """YAML read strictly: duplicate keys and YAML 1.1-only numbers (base 60, leading zeros, underscores) refused,
    naming file, row and key; the same forms in --set name --set; configs may come from a pipe."""
    c = "yaml-strict"
    cases = []
    train = ["train", "syn", *SMALL, "--config", "c.yaml", "--out", "r"]
    for cid, text, names in [
        ("two-train-sections", "train:\n  epochs: 1\ntrain:\n  lr: 0.1\n", ("c.yaml", "row 3", "train")),
        ("repeated-field", "train:\n  epochs: 1\n  epochs: 2\n", ("c.yaml", "row 3", "epochs")),
        ("repeated-in-flow-mapping", "train: {epochs: 1, epochs: 2}\n", ("c.yaml", "row 1", "epochs")),
        ("sexagesimal-int", "train:\n  epochs: 1:00\n", ("c.yaml", "row 2", "epochs")),
        ("leading-zero", "train:\n  epochs: 010\n", ("c.yaml", "row 2", "epochs")),
        ("leading-zero-negative", "train:\n  seed: -010\n", ("c.yaml", "row 2", "seed")),
        ("underscore-int", "train:\n  epochs: 1_0\n", ("c.yaml", "row 2", "epochs")),
        ("seed-beyond-range", "train:\n  seed: 99999999999999999999999\n", ("seed",)),
    ]:
        cases.append(Case(f"yaml-strict/config-{cid}", c, train, names=names, files={"c.yaml": text}, needs=("syn",)))
    cases.append(Case("yaml-strict/config-lr-1e-3", c, train, expect="ok", files={"c.yaml": "train:\n  lr: 1e-3\n"},
                      needs=("syn",), note="--set train.lr=1e-3 is accepted; the same value in a file should be too"))
    cases.append(Case("yaml-strict/compare-config-repeated-field", c,
                      ["compare", "c.yaml", "--model", "tiny", "--out", "x"], names=("c.yaml", "row 3", "epochs"),
                      files={"c.yaml": "data: syn\ntrain:\n  epochs: 1\n  epochs: 2\n"}, needs=("syn",)))
    cases.append(Case("yaml-strict/sweep-config-sexagesimal", c,
                      ["sweep", "c.yaml", "--grid", "weight=1", "--out", "x"], names=("c.yaml", "row 3", "epochs"),
                      files={"c.yaml": "data: syn\ntrain:\n  epochs: 1:00\n"}, needs=("syn",)))
    for cid, value, names in [
        ("underscore", "train.epochs=1_0", ("--set", "train.epochs")),
        ("sexagesimal", "train.epochs=1:00", ("--set", "train.epochs")),
        ("leading-zero", "train.epochs=010", ("--set", "train.epochs")),
        ("seed-beyond-range", "train.seed=99999999999999999999999", ("train.seed",)),
        ("repeated-key-in-flow-mapping", "train={epochs: 1, epochs: 2}", ("--set", "epochs")),
    ]:
        cases.append(Case(f"yaml-strict/set-{cid}", c, [*TRAIN_SMALL, "--set", value, "--out", "r"], names=names,
                          needs=("syn",)))
    cases.append(Case("yaml-strict/sweep-set-leading-zero", c, [*SWP_ARGS, "--set", "train.epochs=010", "--out", "x"],
                      names=("--set", "train.epochs"), needs=("syn",)))
    cases.append(Case("yaml-strict/set-lr-1e-3", c, [*TRAIN_SMALL, "--set", "train.lr=1e-3", "--out", "r"],
                      expect="ok", needs=("syn",), note="control"))
    # --config <(printf ...): a named pipe, readable once
    small_cfg = ("data: syn\nmodel: tiny\ntrain:\n  epochs: 1\n  batch_size: 16\n  valid_users: 0\n"
                 "tiny:\n  hidden_size: 32\n  num_hidden_layers: 1\n")
    cases += [
        Case("yaml-strict/train-config-from-pipe", c, ["train", "--config", "cfg.yaml", "--out", "r"], expect="ok",
             needs=("syn",), fifo={"cfg.yaml": small_cfg}),
        Case("yaml-strict/train-config-from-pipe-underscore", c, ["train", "syn", "--config", "cfg.yaml", "--out", "r"],
             names=("cfg.yaml", "row 2", "epochs"), needs=("syn",), fifo={"cfg.yaml": "train:\n  epochs: 1_0\n"}),
        Case("yaml-strict/compare-config-from-pipe", c,
             ["compare", "cfg.yaml", "--objectives", "sft", "--baselines", "none", "--max-eval-users", "4",
              "--no-pruning-rate", "--out", "x"], expect="ok", needs=("syn",), fifo={"cfg.yaml": small_cfg}),
        Case("yaml-strict/sweep-config-from-pipe", c,
             ["sweep", "cfg.yaml", "--grid", "weight=1", "--max-eval-users", "4", "--out", "x"], expect="ok",
             needs=("syn",), fifo={"cfg.yaml": small_cfg}),
    ]
    return cases


def cause_cases() -> list[Case]:
    """Errors that name their cause: the flag, the path, the missing file."""
    c = "cause"
    loop = symlink("loop", "loop")
    return [
        Case("cause/serve-port-70000", c, ["serve", "run", "--port", "70000"], names=("--port",), needs=("run",)),
        Case("cause/serve-port-neg", c, ["serve", "run", "--port", "-1"], names=("--port",), needs=("run",)),
        Case("cause/serve-port-huge", c, ["serve", "run", "--port", "99999999999999999999"], names=("port",),
             needs=("run",)),
        Case("cause/prepare-out-symlink-loop", c, [*SYN40, "--out", "loop"], names=("loop",), setup=loop),
        Case("cause/train-out-symlink-loop", c, [*TRAIN_SMALL, "--out", "loop"], names=("loop",), needs=("syn",),
             setup=loop),
        Case("cause/train-out-two-link-loop", c, [*TRAIN_SMALL, "--out", "a"], names=("a",), needs=("syn",),
             setup=chain(symlink("a", "b"), symlink("b", "a"))),
        Case("cause/compare-out-symlink-loop", c, [*CMP_ARGS, "--out", "loop"], names=("loop",), needs=("syn",),
             setup=loop),
        Case("cause/sweep-out-symlink-loop", c, [*SWP_ARGS, "--out", "loop"], names=("loop",), needs=("syn",),
             setup=loop),
        Case("cause/quickstart-out-symlink-loop", c, [*QS_ARGS, "--out", "loop"], names=("loop",), setup=loop),
        Case("cause/evaluate-run-symlink-loop", c, ["evaluate", "loop"], names=("loop",), setup=loop),
        Case("cause/resume-without-config-yaml", c, RESUME, names=("config.yaml",), needs=("run",),
             setup=remove("run/config.yaml"), mutable=()),
        Case("cause/resume-config-yaml-is-a-folder", c, RESUME, names=("config.yaml",), needs=("run",),
             setup=chain(remove("run/config.yaml"), mkdirs("run/config.yaml")), mutable=()),
        Case("cause/resume-missing-folder", c, ["train", "--resume", "--out", "nope"], names=("nope", "no such folder")),
        Case("cause/resume-a-file", c, ["train", "--resume", "--out", "notes.txt"], names=("notes.txt",),
             files=CWD_FILES),
    ]


def round2_cases() -> list[Case]:
    return [*lock_held_cases(), *lock_stale_cases(), *lock_other_cases(), *lock_clean_cases(), *fingerprint_cases(),
            *checkpoint_cases(), *disk_full_cases(), *read_only_cases(), *input_cases(), *yaml_strict_cases(),
            *cause_cases()]


def all_cases() -> list[Case]:
    cases = [*out_safety_cases(), *settings_cases(), *yaml_cases(), *reader_cases(), *recommend_cases(),
             *evaluate_cases(), *failed_train_cases(), *artefact_cases(), *round2_cases()]
    ids = Counter(case.id for case in cases)
    dup = [k for k, n in ids.items() if n > 1]
    assert not dup, f"duplicate case ids: {dup}"
    return cases


# ------------------------------------------------------------------------------------------- runner
def case_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "BEARREC_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb",
        "_TYPER_STANDARD_TRACEBACK": "1",  # plain tracebacks (readable in the JSON); the classification is the same
    })
    return env


FSIZE_WRAPPER = ("import os, resource, signal, sys; n = int(sys.argv[1]); signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                 "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
                 "os.execv(sys.executable, [sys.executable, '-m', 'bearrec.cli', *sys.argv[2:]])")
SERVING = re.compile(r"^serving .* at (http://\S+)")


def run_cli(argv: list[str], cwd: Path, env: dict, timeout: float, fsize: int | None = None,
            server: bool = False) -> tuple[int | None, str, str, float, dict]:
    """(exit code or None on timeout, stdout, stderr, seconds, extra); the whole process group is killed on timeout.

    ``fsize``: the command runs under RLIMIT_FSIZE (SIGXFSZ ignored, so a larger write fails with EFBIG).
    ``server``: once stdout says ``serving ... at URL``, GET URL/health (``extra["health"]``), then Ctrl-C (SIGINT).
    """
    command = ([sys.executable, "-c", FSIZE_WRAPPER, str(fsize), *argv] if fsize is not None
               else [sys.executable, "-m", "bearrec.cli", *argv])
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    out_lines: list[bytes] = []
    err_chunks: list[bytes] = []
    extra: dict = {}

    def read_out():
        for line in proc.stdout:
            out_lines.append(line)
            match = SERVING.match(line.decode(errors="replace").strip()) if server else None
            if match and "health" not in extra:
                extra["served"], extra["health_attempts"] = True, 0
                deadline = time.monotonic() + 30
                while True:  # the line may come before the socket accepts connections: retry for a while
                    extra["health_attempts"] += 1
                    try:
                        with urllib.request.urlopen(match.group(1).rstrip(")") + "/health", timeout=30) as reply:
                            extra["health"] = reply.status
                        break
                    except Exception as err:  # noqa: BLE001 - recorded, judged by the case
                        extra["health"] = f"{type(err).__name__}: {err}"
                        if time.monotonic() > deadline or proc.poll() is not None:
                            break
                        time.sleep(0.2)
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass

    def read_err():
        err_chunks.append(proc.stderr.read())

    readers = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    if extra.get("served") and code is not None:  # a server stopped by our Ctrl-C: make sure nothing is left
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for reader in readers:
        reader.join(timeout=10)
    out = b"".join(out_lines).decode(errors="replace")
    err = b"".join(err_chunks).decode(errors="replace")
    return code, out, err, time.perf_counter() - start, extra


def snapshot(folder: Path) -> tuple[dict[str, str], set[str]]:
    """(sha256 of every file or link target, every path) under ``folder``, relative, hidden ones included.
    Named pipes and other special files are listed but never opened (reading a FIFO would block)."""
    hashes, paths = {}, set()
    if not folder.is_dir():
        return hashes, paths
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for name in dirs + files:
            path = base / name
            rel = path.relative_to(folder).as_posix()
            paths.add(rel + ("/" if path.is_dir() and not path.is_symlink() else ""))
            if path.is_symlink():
                hashes[rel] = "link:" + os.readlink(path)
            elif name in files:
                try:
                    mode = path.lstat().st_mode
                    hashes[rel] = (hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(mode)
                                   else f"special:{stat.S_IFMT(mode)}")
                except OSError:
                    hashes[rel] = "unreadable"
    return hashes, paths


def lock(path: Path) -> bool:
    """Make a folder read-only, for root too (chattr +i); False when that is not possible."""
    path.chmod(0o555)
    if os.geteuid() != 0:
        return True
    if not shutil.which("chattr"):
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def unlock(path: Path) -> None:
    if path.exists():
        if os.geteuid() == 0 and shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755)


def write_files(folder: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def copy_fixtures(case: Case, fixtures: Path, folder: Path) -> None:
    needs = set(case.needs) | ({"syn"} if set(RUNS) & set(case.needs) else set())
    for name in sorted(needs):
        shutil.copytree(fixtures / name, folder / name, symlinks=True)
    for name in RUNS:  # a run must point at this case's own copy of the dataset
        if name in needs:
            run_json = folder / name / "run.json"
            record = json.loads(run_json.read_text())
            record["dataset_dir"] = str((folder / "syn").resolve())
            run_json.write_text(json.dumps(record, indent=2))


# A process that holds the one-writer lock of a folder (bearrec's own folder_lock), as a second bearrec would.
HOLDER = ("import sys, time; from bearrec.io import folder_lock; ctx = folder_lock(sys.argv[1], sys.argv[2]); "
          "ctx.__enter__(); print('ready', flush=True); time.sleep(600)")


def start_holder(case: Case, folder: Path, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, case.holder, case.holder_kind], cwd=folder, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=60)
    if not line or line[0].strip() != b"ready":
        stop(proc)
        raise RuntimeError(f"lock holder of {case.holder} did not start: {proc.stderr.read()[-500:]!r}")
    if case.holder_killed:
        stop(proc)  # SIGKILL: the kernel drops the flock, the owner written in .bearrec.lock stays
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def start_fifos(case: Case, folder: Path) -> list[subprocess.Popen]:
    """Named pipes with a writer each, like bash's ``<(printf ...)``: the command reads the content once."""
    writers = []
    for rel, content in case.fifo.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        writers.append(subprocess.Popen([sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                                         str(path), content], stdin=subprocess.DEVNULL, start_new_session=True))
    return writers


def mount_tmpfs(folder: Path, size: str) -> bool:
    """A small tmpfs at ``folder`` (a real full disk: ENOSPC); False when that is not possible (not root)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def umount(folder: Path) -> None:
    for args in (["umount", str(folder)], ["umount", "-l", str(folder)]):
        if subprocess.run(args, capture_output=True).returncode == 0:
            return


def dataset_fingerprint(folder: Path) -> str:
    """bearrec's dataset fingerprint (data/dataset.py): SHA-256 over the five files' names and SHA-256s."""
    names = ("items.parquet", "train.parquet", "valid.parquet", "test.parquet", "dataset.json")
    digests = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def resolve_names(case: Case, folder: Path, holder_pid: int | None) -> tuple[str, ...]:
    """``names`` with placeholders filled: {pid} (the lock holder), {fp:RUN} (the fingerprint RUN/run.json records,
    12 hex), {fp:DATASET} (the fingerprint of a dataset folder, 12 hex)."""
    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key == "pid":
            return str(holder_pid)
        target = folder / key.split(":", 1)[1]
        if (target / "run.json").is_file():
            return str(json.loads((target / "run.json").read_text()).get("dataset_fingerprint"))[:12]
        return dataset_fingerprint(target)[:12]
    return tuple(re.sub(r"\{(pid|fp:[^}]+)\}", fill, name) for name in case.names)


def file_hashes(folder: Path, globs: tuple[str, ...]) -> dict[str, str]:
    hashes = {}
    for pattern in globs:
        for path in sorted(folder.glob(pattern)):
            if path.is_file() and not path.is_symlink():
                hashes[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


PROGRESS_LINE = re.compile(r"━|^(resuming |epoch \d+: |\[\d+/\d+\] |synthetic data: |wrote |note: )")
TRACEBACK_LINE = re.compile(r"^(Traceback|\s*File \")|[╭╰│]")


def classify(case: Case, code: int | None, stderr: str, lost: list[str], new: list[str], stale: list[str],
             names: tuple[str, ...] | None = None, problem: str | None = None) -> str:
    names = case.names if names is None else names
    if lost:
        return "data-loss"
    if code is None:
        return "hang"
    if (code != 0 and new) or stale:
        return "left-behind"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if code == 0:
        if case.expect in ("ok", "either") and case.warns is not None and not any(
                line.startswith("warning:") and case.warns.lower() in line.lower() for line in lines):
            return "accepted"  # accepted silently: the case needs a warning
        if case.expect not in ("ok", "either"):
            return "accepted"
        return "wrong-output" if problem else "ok"
    rest = [line for line in lines if not line.startswith(TOLERATED_PREFIXES)]
    if case.late and rest and not any(TRACEBACK_LINE.search(line) for line in rest):
        rest = [line for line in rest[:-1] if not PROGRESS_LINE.search(line)] + rest[-1:]
    if code != 2 or len(rest) != 1 or not rest[0].startswith("error:") or rest[0] == "error:":
        return "traceback"
    if case.forbid and any(bad.lower() in stderr.lower() for bad in case.forbid):
        return "wrong-error"  # e.g. a temporary file's name instead of the path the user asked for
    if case.expect == "error":  # names only checked for expected errors; "either" cases just need to be clean
        message = rest[0].lower()
        if not all(any(alt_.lower() in message for alt_ in name.split("|")) for name in names):
            return "wrong-error"
    return "wrong-output" if problem else "clean-error"


def _skipped(case: Case, why: str) -> dict:
    return {"id": case.id, "class": case.cls, "argv": case.argv, "expected": case.expect, "actual": "skipped",
            "passed": True, "note": why}


def run_case(case: Case, fixtures: Path, cases_dir: Path, env: dict, timeout: float, keep: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=case.id.replace("/", "__") + ".", dir=cases_dir))
    locked: list[Path] = []
    mounted: Path | None = None
    holder = None
    writers: list[subprocess.Popen] = []
    try:
        copy_fixtures(case, fixtures, folder)
        write_files(folder, case.files)
        if case.tmpfs:
            if not mount_tmpfs(folder / case.tmpfs[0], case.tmpfs[1]):
                return _skipped(case, "cannot mount a tmpfs (not root?)")
            mounted = folder / case.tmpfs[0]
        if case.setup:
            case.setup(folder)
        for rel in case.readonly:
            locked.append(folder / rel)
            if not lock(folder / rel):
                return _skipped(case, "cannot make a folder read-only for root")
        if case.holder:
            holder = start_holder(case, folder, env)
        names = resolve_names(case, folder, holder.pid if holder else None)
        kept = file_hashes(folder, case.kept)
        before, before_paths = snapshot(folder)
        writers = start_fifos(case, folder)
        code, out, err, seconds, extra = run_cli(case.argv, folder, env, case.timeout or timeout, case.fsize,
                                                 case.server)
        for writer in writers:
            stop(writer)
        stop(holder)  # before looking: the holder must not hold anything open in the folder any more
        after, after_paths = snapshot(folder)
        mutable = case.mutable + ((f"{case.holder.rstrip('/')}/.bearrec.lock",) if case.holder_killed else ())
        guarded = {p: h for p, h in before.items() if not p.startswith(mutable)}
        lost = sorted(p for p, h in guarded.items() if after.get(p) != h)
        present = set(after.values())
        lost += sorted(f"{p} (content no longer anywhere in the folder)" for p, h in kept.items() if h not in present)
        ok_outputs = code == 0
        new = [] if ok_outputs else sorted(p for p in after_paths - before_paths - set(case.fifo)
                                           if not p.startswith(case.may_leave))
        stale = sorted(p for p in case.stale if (folder / p).exists())
        info = {"code": code, "stdout": out, "stderr": err, **extra}
        problem = None
        if case.check is not None and code is not None:
            try:
                problem = case.check(folder, info)
            except Exception as check_err:  # noqa: BLE001 - a check that cannot even read the output: a problem
                problem = f"check failed: {check_err!r}"
        actual = classify(case, code, err, lost, new, stale, names, problem)
        return {
            "id": case.id, "class": case.cls, "argv": case.argv, "expected": case.expect,
            "expected_names": list(names), "warns": case.warns, "actual": actual,
            "passed": actual in EXPECTED[case.expect], "exit_code": code, "seconds": round(seconds, 2),
            "stderr_head": [line for line in err.splitlines() if line.strip()][:6],
            "stderr_tail": [line for line in err.splitlines() if line.strip()][-4:],
            "stderr_lines": len([line for line in err.splitlines() if line.strip()]),
            "stdout_tail": out.splitlines()[-3:], "lost_files": lost[:20], "new_paths": new[:20],
            "stale_paths": stale, "canary_unpickled": (folder / "PWNED").exists(), "note": case.note,
            "check_problem": problem, "holder_pid": holder.pid if holder else None, "fsize": case.fsize,
            "health": extra.get("health"),
            "health_attempts": extra.get("health_attempts"), "folder": str(folder) if keep else None,
        }
    finally:
        for writer in writers:
            stop(writer)
        stop(holder)
        for path in locked:
            unlock(path)
        if mounted is not None:
            umount(mounted)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        elif mounted is not None:
            pass  # the tmpfs content is gone with the mount; the rest of the folder is kept


ODD_SRC = interactions(items=[f"{p},{t}" for p, t in zip(ITEMS, ['"Cafe\u0301\tNoir"', '"Tab\tTitle"',
                                                                 "Plain Title", "Blue Pen", "Green Folder"])])


def build_fixtures(workdir: Path, env: dict, timeout: float, wanted: set[str]) -> Path:
    fixtures = workdir / "fixtures"
    fixtures.mkdir(parents=True, exist_ok=True)
    write_files(fixtures, {f"odd_src/{k}": v for k, v in ODD_SRC.items()})
    order = [name for name in FIXTURES if name in wanted or (name == "syn" and set(RUNS) & wanted)]
    for name in order:
        code, out, err, seconds, _ = run_cli(FIXTURES[name], fixtures, env, max(timeout, 300))
        if code != 0:
            sys.exit(f"fixture {name} failed (exit {code}): {' '.join(FIXTURES[name])}\n{err[-2000:]}")
        print(f"fixture {name}: {seconds:.1f} s", flush=True)
    return fixtures


def summary_table(results: list[dict]):
    from rich.table import Table

    classes = list(dict.fromkeys(r["class"] for r in results))
    used = [o for o in OUTCOMES if any(r["actual"] == o for r in results)]
    table = Table(title=f"bearrec fuzz: {len(results)} cases, {sum(r['passed'] for r in results)} as expected")
    table.add_column("class")
    for outcome in used:
        table.add_column(outcome, justify="right")
    table.add_column("cases", justify="right")
    table.add_column("as expected", justify="right")
    for cls in [*classes, "all"]:
        rows = [r for r in results if cls in ("all", r["class"])]
        counts = Counter(r["actual"] for r in rows)
        table.add_row(cls, *[str(counts.get(o, "")) for o in used], str(len(rows)),
                      str(sum(r["passed"] for r in rows)), end_section=cls == classes[-1])
    return table


def failures_table(results: list[dict]):
    from rich.table import Table

    table = Table(title="not as expected")
    for name in ("case", "expected", "actual", "last stderr line, or the lost / new paths"):
        table.add_column(name, overflow="fold")
    for r in results:
        if r["passed"]:
            continue
        detail = (r.get("lost_files") or r.get("new_paths") or r.get("stale_paths") or [""])[:3]
        tail = r.get("stderr_tail") or r.get("stderr_head") or [""]
        said = [line for line in tail if line[:1].strip() and ":" in line] or tail  # the exception, not a "^" marker
        text = ", ".join(detail) if r["actual"] in ("data-loss", "left-behind") else said[-1][:160]
        table.add_row(r["id"], r["expected"], r["actual"], text)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[],
                        help="run cases whose id or class contains this substring (repeatable)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="parallel workers [2]")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per case before it counts as a hang [120]")
    parser.add_argument("--json", type=Path, help="write every case's argv, expectation and result here")
    parser.add_argument("--workdir", type=Path, help="folder for fixtures and case folders [a new temp folder]")
    parser.add_argument("--keep", action="store_true", help="keep the case folders (and workdir) for inspection")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--quiet", action="store_true", help="no per-case progress lines")
    args = parser.parse_args(argv)

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 180)
    cases = [case for case in all_cases()
             if not args.only or any(s in case.id or s == case.cls for s in args.only)]
    if args.list:
        for case in cases:
            console.print(f"{case.id:55} {case.expect:7} {' '.join(case.argv)[:110]!r}", highlight=False, markup=False,
                          soft_wrap=True)
        console.print(f"{len(cases)} cases: " + ", ".join(f"{k} {v}" for k, v in Counter(c.cls for c in cases).items()))
        return 0
    if not cases:
        console.print("no case matches --only")
        return 1
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bearrec-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = case_env(workdir)
    started = time.perf_counter()
    try:
        wanted = {need for case in cases for need in case.needs}
        fixtures = build_fixtures(workdir, env, args.timeout, wanted)
        cases_dir = workdir / "cases"
        cases_dir.mkdir(exist_ok=True)
        results = []
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(run_case, case, fixtures, cases_dir, env, args.timeout, args.keep): case
                       for case in cases}
            for done, future in enumerate(as_completed(futures), 1):
                try:
                    result = future.result()
                except Exception as err:  # a bug in a case's setup, not in bearrec
                    case = futures[future]
                    result = {"id": case.id, "class": case.cls, "argv": case.argv, "expected": case.expect,
                              "actual": "harness-error", "passed": False, "stderr_head": [repr(err)]}
                results.append(result)
                if not args.quiet:
                    mark = "ok  " if result["passed"] else "FAIL"
                    console.print(f"[{done}/{len(cases)}] {mark} {result['id']}: {result['actual']} "
                                  f"(expected {result['expected']}, {result.get('seconds', 0):.1f} s)",
                                  highlight=False, markup=False)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    order = {case.id: i for i, case in enumerate(cases)}
    results.sort(key=lambda r: order[r["id"]])
    console.print(summary_table(results))
    if not all(r["passed"] for r in results):
        console.print(failures_table(results))
    elapsed = time.perf_counter() - started
    console.print(f"{sum(r['passed'] for r in results)}/{len(results)} cases as expected in {elapsed / 60:.1f} min")
    if args.json:
        counts = {cls: dict(Counter(r["actual"] for r in results if r["class"] == cls))
                  for cls in dict.fromkeys(r["class"] for r in results)}
        payload = {"repo": str(REPO), "python": sys.version.split()[0], "jobs": args.jobs, "timeout_s": args.timeout,
                   "seconds": round(elapsed, 1), "cases": len(results),
                   "as_expected": sum(r["passed"] for r in results),
                   "outcomes": dict(Counter(r["actual"] for r in results)), "by_class": counts, "results": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
        console.print(f"wrote {args.json}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
