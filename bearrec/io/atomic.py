"""Atomic writes: a kill at any moment leaves the old or the new folder or file, never half of one.

:func:`atomic_folder` fills a hidden temporary sibling (``.NAME.bearrec-tmp-<pid>-...``) and swaps
it into place: with one ``renameat2(RENAME_EXCHANGE)`` where the OS offers it, otherwise by renaming
the old folder aside (``.NAME.bearrec-old-<pid>-...``) first. Either way a kill leaves the old or the
new folder (or, between the two renames of the fallback, the old one aside, which the next call
puts back), and the next call removes temporary folders whose process is gone. A folder this process
holds the lock of (:mod:`bearrec.io.locks`) stays locked across the swap.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bearrec.io.errors import DISK_ERRNOS, disk_errors
from bearrec.io.locks import _held, _lock_key
from bearrec.io.markers import LOCK, MARKER, check_replaceable, mark

_TMP, _OLD = "bearrec-tmp", "bearrec-old"


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
    with disk_errors(folder):
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{_TMP}-{os.getpid()}-", dir=folder.parent))
    _normal_permissions(tmp, 0o777)  # mkdtemp makes 0700 folders
    try:
        with disk_errors(folder):
            yield tmp
            mark(tmp, kind)
        check_replaceable(folder, kind)
        held = _held.get(_lock_key(folder))
        if held is not None:
            held.move_to(tmp)  # the new folder is locked before it takes the path
        try:
            with disk_errors(folder):
                _swap_into_place(tmp, folder)
        except BaseException:
            if held is not None:
                held.move_back()
            raise
        if held is not None:
            held.release_old()
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
    try:
        os.replace(folder, aside)  # a kill from here to the next line leaves the old folder aside: recover() restores it
    except OSError:
        aside.rmdir()  # the old folder could not be moved (read-only, immutable): it stays where it was
        raise
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
    """Yield a temporary file beside ``path`` to write; it replaces ``path`` (rename) only if the block succeeds.
    A full disk or read-only folder is an ``OSError`` naming ``path``, and nothing is left behind."""
    path = Path(path)
    with disk_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with disk_errors(path):
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


@contextmanager
def discarded_on_disk_error(folder: str | os.PathLike, keep=lambda folder: False) -> Iterator[None]:
    """Remove ``folder`` again if the block fails for lack of space or permission and the folder was new (missing,
    or holding only its lock) when the block began, unless ``keep(folder)``: a new experiment that could not write
    its first result leaves nothing behind, one with finished runs stays to be resumed."""
    folder = Path(folder)
    new = not folder.is_dir() or all(p.name == LOCK for p in folder.iterdir())
    try:
        yield
    except OSError as err:
        if new and err.errno in DISK_ERRNOS and folder.is_dir() and not keep(folder):
            for path in folder.iterdir():
                if path.name != LOCK:
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            (folder / MARKER).unlink(missing_ok=True)
        raise
