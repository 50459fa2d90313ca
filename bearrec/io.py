"""Safe writes: bearrec replaces only folders it wrote itself, and a kill at any moment loses nothing.

Every folder bearrec writes as a whole (a dataset, a run, an experiment, a quickstart, a saved
model) carries a small marker file, ``.bearrec``, naming its *kind*. An output folder may be replaced
only if it is empty or holds a bearrec folder of the same kind with nothing in it that bearrec
would not have written there (:func:`check_replaceable`); the working directory and its ancestors
never. Anything else is refused with one line, before any work starts.

:func:`atomic_folder` fills a hidden temporary sibling (``.NAME.bearrec-tmp-<pid>-...``) and swaps
it into place: with one ``renameat2(RENAME_EXCHANGE)`` where the OS offers it, otherwise by renaming
the old folder aside (``.NAME.bearrec-old-<pid>-...``) first. Either way a kill leaves the old or the
new folder (or, between the two renames of the fallback, the old one aside, which the next call
puts back), and the next call removes temporary folders whose process is gone.
"""

from __future__ import annotations

import ctypes
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = ".bearrec"
_TMP, _OLD = "bearrec-tmp", "bearrec-old"

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
                  if p.name != MARKER and not any(fnmatch.fnmatchcase(p.name, pat) for pat in (*patterns, *also)))


def check_output(folder: str | os.PathLike) -> Path:
    """Refuse an output path that is the working directory or one of its ancestors, or an existing file."""
    folder = Path(folder)
    resolved = folder.resolve()
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
    if not folder.is_dir() or not any(folder.iterdir()):
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


def mark(folder: str | os.PathLike, kind: str) -> None:
    """Write the marker that says bearrec wrote ``folder`` as a ``kind`` folder."""
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    (Path(folder) / MARKER).write_text(json.dumps({"kind": kind}) + "\n")


@contextmanager
def atomic_folder(folder: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yield a temporary sibling of ``folder`` to fill; it replaces ``folder`` only if the block succeeds.

    ``folder`` must be replaceable as a ``kind`` folder (:func:`check_replaceable`), checked both before
    and after the block (the block may run for a long time).
    """
    folder = Path(folder)
    recover(folder)
    check_replaceable(folder, kind)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{_TMP}-{os.getpid()}-", dir=folder.parent))
    _normal_permissions(tmp, 0o777)  # mkdtemp makes 0700 folders
    try:
        yield tmp
        mark(tmp, kind)
        check_replaceable(folder, kind)
        _swap_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the new folder on failure, the old one after an exchange


def _normal_permissions(path: str | os.PathLike, mode: int) -> None:
    """Give a private temporary file or folder the permissions a plain ``open``/``mkdir`` would (``mode`` & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _swap_into_place(new: Path, folder: Path) -> None:
    """Put ``new`` at ``folder``; afterwards ``new`` holds the old folder (or nothing) for the caller to remove."""
    if not folder.exists():
        os.replace(new, folder)
        return
    if _exchange(new, folder):
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{_OLD}-{os.getpid()}-", dir=folder.parent))
    os.replace(folder, aside)  # a kill from here to the next line leaves the old folder aside: recover() restores it
    os.replace(new, folder)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def recover(folder: str | os.PathLike) -> None:
    """Tidy up after killed writers of ``folder``: put an old folder set aside back if ``folder`` is
    missing, and remove temporary siblings whose process no longer runs."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return
    for path in folder.parent.iterdir():
        stage, pid = _leftover(path.name, folder.name)
        if stage is None or _alive(pid):
            continue
        if stage == _OLD and not folder.exists():
            os.replace(path, folder)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _leftover(name: str, target: str) -> tuple[str | None, int]:
    for stage in (_TMP, _OLD):
        prefix = f".{target}.{stage}-"
        if name.startswith(prefix):
            pid = name[len(prefix):].split("-", 1)[0]
            if pid.isdigit():
                return stage, int(pid)
    return None, 0


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers are from an earlier, failed block of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file beside ``path`` to write; it replaces ``path`` (rename) only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _normal_permissions(tmp, 0o666)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temporary file in the same folder, then rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2, default=str))
