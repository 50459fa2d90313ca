"""Fuzz / misuse harness for the `bearrec` command line (issue 12).

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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
OUTCOMES = ("clean-error", "wrong-error", "traceback", "accepted", "data-loss", "left-behind", "hang", "ok", "skipped",
            "harness-error")
EXPECTED = {"error": {"clean-error"}, "ok": {"ok"}, "either": {"ok", "clean-error"}}
TOLERATED_PREFIXES = ("warning:", "note:")

# Fixtures, built once per harness run with the CLI itself and copied into the cases that need them.
FIXTURES = {
    "syn": ["prepare", "synthetic", "--out", "syn", "--users", "40"],
    "run": ["train", "syn", "--out", "run", "--epochs", "1", "--batch-size", "16", "--set", "train.valid_users=10",
            "--set", "tiny.hidden_size=32", "--set", "tiny.num_hidden_layers=1"],
    # titles that prepare normalises (tab, decomposed é) for the recommend cases; run on it with --data odd
    "odd": ["prepare", "interactions", "odd_src/interactions.csv", "odd_src/items.csv", "--out", "odd"],
}
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
        Case("recommend/history-by-title", c, [*rec, "Atlas Stapler Eco", "i00002"], expect="ok"),
        Case("recommend/history-duplicates", c, [*rec, "i00001", "i00001", "i00001"], expect="ok"),
        Case("recommend/history-50-items", c, [*rec, *ids[:50]], expect="ok", warns="",
             note="far beyond the training window (10 items): must warn"),
        Case("recommend/history-400-items", c, [*rec, *ids[:400]], expect="ok", warns="",
             note="the prompt is cut at max_prompt_tokens: must warn"),
        Case("recommend/title-with-tab", c, [*rec, "--data", "odd", "Tab\tTitle", "Plain Title"], expect="ok",
             note="prepare collapsed the tab; recommend must normalise alike"),
        Case("recommend/title-nfc-for-nfd-catalog", c, [*rec, "--data", "odd", "Caf\u00e9 Noir", "Plain Title"],
             expect="ok", note="catalog title given in NFD; the user types NFC"),
        Case("recommend/title-nfd-raw-with-tab", c, [*rec, "--data", "odd", "Cafe\u0301\tNoir"], expect="ok"),
        Case("recommend/title-extra-spaces", c, [*rec, "--data", "odd", "  Plain   Title "], expect="ok"),
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
        Case("artefacts/resume-tampered-optimizer", c, resume, names=("optimizer.pt",), needs=("run",),
             setup=replace_bytes(f"{ckpt}/optimizer.pt", TAMPERED_PICKLE)),
        Case("artefacts/resume-tampered-rng-state", c, resume, names=("rng_state.pth",), needs=("run",),
             setup=replace_bytes(f"{ckpt}/rng_state.pth", TAMPERED_PICKLE)),
        Case("artefacts/resume-tampered-scheduler", c, resume, names=("scheduler.pt",), needs=("run",),
             setup=replace_bytes(f"{ckpt}/scheduler.pt", TAMPERED_PICKLE)),
        Case("artefacts/resume-truncated-checkpoint-weights", c, resume, names=("model.safetensors",), needs=("run",),
             setup=truncate(f"{ckpt}/model.safetensors")),
    ]


def all_cases() -> list[Case]:
    cases = [*out_safety_cases(), *settings_cases(), *yaml_cases(), *reader_cases(), *recommend_cases(),
             *evaluate_cases(), *failed_train_cases(), *artefact_cases()]
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


def run_cli(argv: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int | None, str, str, float]:
    """(exit code or None on timeout, stdout, stderr, seconds); the whole process group is killed on timeout."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bearrec.cli", *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    return code, out.decode(errors="replace"), err.decode(errors="replace"), time.perf_counter() - start


def snapshot(folder: Path) -> tuple[dict[str, str], set[str]]:
    """(sha256 of every file or link target, every path) under ``folder``, relative, hidden ones included."""
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
                    hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
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
    needs = set(case.needs) | ({"syn"} if "run" in case.needs else set())
    for name in sorted(needs):
        shutil.copytree(fixtures / name, folder / name, symlinks=True)
    if "run" in needs:  # the run must point at this case's own copy of the dataset
        run_json = folder / "run" / "run.json"
        record = json.loads(run_json.read_text())
        record["dataset_dir"] = str((folder / "syn").resolve())
        run_json.write_text(json.dumps(record, indent=2))


def classify(case: Case, code: int | None, stderr: str, lost: list[str], new: list[str], stale: list[str]) -> str:
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
        return "ok" if case.expect in ("ok", "either") else "accepted"
    rest = [line for line in lines if not line.startswith(TOLERATED_PREFIXES)]
    if code != 2 or len(rest) != 1 or not rest[0].startswith("error:") or rest[0] == "error:":
        return "traceback"
    if case.expect == "error":  # names only checked for expected errors; "either" cases just need to be clean
        message = rest[0].lower()
        if not all(any(alt_.lower() in message for alt_ in name.split("|")) for name in case.names):
            return "wrong-error"
    return "clean-error"


def run_case(case: Case, fixtures: Path, cases_dir: Path, env: dict, timeout: float, keep: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=case.id.replace("/", "__") + ".", dir=cases_dir))
    locked: list[Path] = []
    try:
        copy_fixtures(case, fixtures, folder)
        write_files(folder, case.files)
        if case.setup:
            case.setup(folder)
        for rel in case.readonly:
            locked.append(folder / rel)
            if not lock(folder / rel):
                return {"id": case.id, "class": case.cls, "argv": case.argv, "expected": case.expect,
                        "actual": "skipped", "passed": True, "note": "cannot make a folder read-only for root"}
        before, before_paths = snapshot(folder)
        code, out, err, seconds = run_cli(case.argv, folder, env, timeout)
        after, after_paths = snapshot(folder)
        guarded = {p: h for p, h in before.items() if not p.startswith(case.mutable)}
        lost = sorted(p for p, h in guarded.items() if after.get(p) != h)
        ok_outputs = code == 0
        new = [] if ok_outputs else sorted(after_paths - before_paths)
        stale = sorted(p for p in case.stale if (folder / p).exists())
        actual = classify(case, code, err, lost, new, stale)
        return {
            "id": case.id, "class": case.cls, "argv": case.argv, "expected": case.expect,
            "expected_names": list(case.names), "warns": case.warns, "actual": actual,
            "passed": actual in EXPECTED[case.expect], "exit_code": code, "seconds": round(seconds, 2),
            "stderr_head": [line for line in err.splitlines() if line.strip()][:6],
            "stderr_tail": [line for line in err.splitlines() if line.strip()][-4:],
            "stderr_lines": len([line for line in err.splitlines() if line.strip()]),
            "stdout_tail": out.splitlines()[-3:], "lost_files": lost[:20], "new_paths": new[:20],
            "stale_paths": stale, "canary_unpickled": (folder / "PWNED").exists(), "note": case.note,
            "folder": str(folder) if keep else None,
        }
    finally:
        for path in locked:
            unlock(path)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


ODD_SRC = interactions(items=[f"{p},{t}" for p, t in zip(ITEMS, ['"Cafe\u0301\tNoir"', '"Tab\tTitle"',
                                                                 "Plain Title", "Blue Pen", "Green Folder"])])


def build_fixtures(workdir: Path, env: dict, timeout: float, wanted: set[str]) -> Path:
    fixtures = workdir / "fixtures"
    fixtures.mkdir(parents=True, exist_ok=True)
    write_files(fixtures, {f"odd_src/{k}": v for k, v in ODD_SRC.items()})
    order = [name for name in FIXTURES if name in wanted or (name == "syn" and "run" in wanted)]
    for name in order:
        code, out, err, seconds = run_cli(FIXTURES[name], fixtures, env, max(timeout, 300))
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
