"""Which folders bearrec may replace. Every folder bearrec writes as a whole (a dataset, a run, an experiment, a
quickstart, a saved model) carries a small marker file, ``.bearrec``, naming its *kind*. An output folder may
be replaced only if it is empty or holds a bearrec folder of the same kind with nothing in it that bearrec would
not have written there (:func:`check_replaceable`); the working directory and its ancestors never. Anything
else is refused with one line, before any work starts."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path

from bearrec.checks import first_line

MARKER = ".bearrec"


LOCK = ".bearrec.lock"


OWN = (MARKER, LOCK)  # bearrec's bookkeeping in every folder it writes


# What bearrec writes at the top of each kind of folder (glob patterns). ``None``: any file names
# (a saved Hugging Face model); then only the marker (or, for folders written before markers
# existed, the file named in LEGACY_SIGN) tells that bearrec wrote it.
KINDS: dict[str, tuple[str, ...] | None] = {
    "dataset": ("items.parquet", "train.parquet", "valid.parquet", "test.parquet", "dataset.json"),
    "run": ("config.yaml", "run.json", "tokenizer", "checkpoints", "model", "train_log.json", "result.json",
            "eval_*.json", "eval_*.csv", "eval_*.png", "*.safetensors"),
    "experiment": ("experiment.json", "runs", "results.json", "results.md", "*.png"),
    "quickstart": ("data", "sft", "bear", "results.json", "results.md", "results.png"),  # + its objectives' runs
    "model": None,
}


LEGACY_SIGN = {"dataset": ("dataset.json",), "run": ("run.json",), "experiment": ("experiment.json",),
               "quickstart": ("results.json",), "model": ("config.json", "adapter_config.json")}


def folder_kind(folder: str | os.PathLike) -> str | None:
    """The kind of bearrec folder ``folder`` is (from its marker, or for older folders its content), else None."""
    folder = Path(folder)
    try:
        kind = json.loads((folder / MARKER).read_text()).get("kind")
        return kind if kind in KINDS else None
    except (OSError, ValueError, AttributeError):
        pass
    for kind, signs in LEGACY_SIGN.items():
        if any((folder / sign).is_file() for sign in signs) and not _foreign_entries(folder, kind):
            return kind
    return None


def _foreign_entries(folder: Path, kind: str, also: tuple[str, ...] = ()) -> list[str]:
    patterns = KINDS[kind]
    if patterns is None:
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.name not in OWN and not any(fnmatch.fnmatchcase(p.name, pat) for pat in (*patterns, *also)))


def check_output(folder: str | os.PathLike) -> Path:
    """Refuse an output path that is the working directory or one of its ancestors, or an existing file."""
    folder = Path(folder)
    try:
        resolved = folder.resolve()
    except (RuntimeError, OSError) as err:  # a symlink loop: RuntimeError before Python 3.13, OSError (ELOOP) after
        raise ValueError(f"{folder}: cannot be resolved ({first_line(err)}); choose another output path") from None
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ValueError(f"{folder}: is the working directory{'' if resolved == cwd else ' or holds it'}; "
                         "choose a new folder for the output")
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: exists and is not a folder; choose another output path")
    return folder


def check_replaceable(folder: str | os.PathLike, kind: str, also: tuple[str, ...] = ()) -> Path:
    """Raise unless ``folder`` is missing, empty, or a bearrec ``kind`` folder holding only bearrec's files.

    ``also``: names the caller writes there besides the kind's own (the quickstart's one run per objective).
    """
    folder = check_output(folder)
    if not folder.is_dir() or not any(p.name != LOCK for p in folder.iterdir()):
        return folder
    found = folder_kind(folder)
    if found != kind:
        what = f"a bearrec {found} folder" if found else "not a folder bearrec wrote"
        raise FileExistsError(f"{folder}: exists and is {what}, not a {kind}; bearrec will not replace it "
                              "(choose another output folder)")
    foreign = _foreign_entries(folder, kind, also)
    if foreign:
        raise FileExistsError(f"{folder}: this {kind} folder also holds {', '.join(foreign[:3])}"
                              f"{' ...' if len(foreign) > 3 else ''}, which bearrec did not write; it will not "
                              "replace it (move those files, or choose another output folder)")
    return folder


def empty_folder(folder: str | os.PathLike) -> None:
    """Remove everything in ``folder`` but its lock file (which its writer holds). Callers check first that the
    folder is bearrec's own (:func:`check_replaceable`)."""
    for path in Path(folder).iterdir():
        if path.name == LOCK:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def mark(folder: str | os.PathLike, kind: str) -> None:
    """Write the marker that says bearrec wrote ``folder`` as a ``kind`` folder."""
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    (Path(folder) / MARKER).write_text(json.dumps({"kind": kind}) + "\n")
