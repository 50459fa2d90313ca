"""One writer per folder: :func:`folder_lock` holds an exclusive ``fcntl.flock`` on ``.bearrec.lock`` inside an
output folder for as long as a command writes there; a second writer is refused with one line naming the
holder. The kernel drops the lock of a killed process, so its successor takes it over. An atomic swap of the
folder (:mod:`bearrec.io.atomic`) hands the lock on, so the folder at the path is locked throughout."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bearrec.io.errors import DISK_ERRNOS, disk_errors
from bearrec.io.markers import LOCK, check_output, folder_kind


# ---------------------------------------------------------------------------------------------- folder locks
class FolderInUse(ValueError):
    """Another process writes the folder; ``str(err)`` is one line naming it."""


class _Lock:
    """The flock this process holds on ``folder/.bearrec.lock`` (one per folder; nested holders share it)."""

    def __init__(self, folder: Path, kind: str, fd: int | None, created: list[Path]):
        self.folder, self.kind, self.fd, self.created, self.old = folder, kind, fd, created, None

    def move_to(self, new_folder: Path) -> None:
        """Lock ``new_folder``'s own lock file too, before it is swapped in at this lock's path."""
        if self.fd is None:
            return
        fd = os.open(new_folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows the new file yet
        _write_owner(fd)
        self.old, self.fd = self.fd, fd

    def move_back(self) -> None:
        """Undo :meth:`move_to` after a swap that failed: the old folder, still at the path, keeps its lock."""
        if self.old is not None:
            os.close(self.fd)
            self.fd, self.old = self.old, None

    def release_old(self) -> None:
        if self.old is not None:
            os.close(self.old)
            self.old = None

    def release(self) -> None:
        """Unlock; the lock file goes too unless the folder is now a bearrec folder of the lock's kind (nothing is
        left in a folder the command refused), and so do the folders made only to hold it."""
        self.release_old()
        if self.fd is not None:
            try:
                if folder_kind(self.folder) == self.kind:
                    os.ftruncate(self.fd, 0)  # a lock file left with an owner in it means its owner was killed
                else:
                    (self.folder / LOCK).unlink(missing_ok=True)  # still held: nobody can take the unlinked file
            except OSError:
                pass
            os.close(self.fd)
        for folder in self.created:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break


_held: dict[str, _Lock] = {}


def _lock_key(folder: Path) -> str:
    return os.path.abspath(folder)


def _program() -> str:
    """``bearrec`` for the installed command and ``python -m bearrec.cli`` alike, else the script's name."""
    return "bearrec" if "bearrec" in Path(sys.argv[0]).parts or Path(sys.argv[0]).name == "bearrec" else Path(sys.argv[0]).name


def _write_owner(fd: int) -> None:
    """Who holds the lock, for the message a second writer gets; best effort (a full disk keeps the lock unnamed)."""
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
             "command": " ".join([_program(), *sys.argv[1:]])[:300]}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
    except OSError:
        pass


def _read_owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text() or "{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def _describe(owner: dict) -> str:
    if not owner.get("pid"):
        return "another process"
    where = f" on {owner['host']}" if owner.get("host") and owner["host"] != socket.gethostname() else ""
    command = f" ({owner['command']})" if owner.get("command") else ""
    since = f" since {owner['since']}" if owner.get("since") else ""
    return f"process {owner['pid']}{where}{command}{since}"


@contextmanager
def folder_lock(folder: str | os.PathLike, kind: str) -> Iterator[None]:
    """Hold the one-writer lock of output ``folder`` (created if missing), a bearrec ``kind`` folder, for the block.

    A folder another process holds is refused with :class:`FolderInUse` naming that process; a lock whose
    holder was killed is taken over with a warning. The same process may nest blocks on one folder. A read-only
    folder cannot be written by anyone, so it is used unlocked (the write itself will say why it fails). Folders
    made only to hold the lock are removed again if the block put nothing into them.
    """
    folder = Path(folder)
    key = _lock_key(folder)
    if key in _held:  # an outer block of this process holds it, and releases it
        yield
        return
    check_output(folder)
    if folder.is_dir() and any(p.name != LOCK for p in folder.iterdir()) and folder_kind(folder) != kind:
        yield  # not a folder this command may write (a dataset as a run's --out, a user's folder): never touched here;
        return  # the command refuses it with its own message
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    with disk_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
    lock = _Lock(folder, kind, _acquire(folder), created)
    _held[key] = lock
    try:
        yield
    finally:
        del _held[key]
        lock.release()


def _acquire(folder: Path) -> int | None:
    """An fd holding the flock of ``folder/LOCK``; None where no lock file can be made (a read-only folder, which
    nobody can write; a full disk, where the command's first write will say so, naming its path)."""
    path = folder / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise OSError(err.errno, "is a symbolic link, which bearrec will not write through (remove it)",
                              str(path)) from None
            if err.errno not in DISK_ERRNOS:
                raise
            try:
                fd = os.open(path, os.O_RDONLY)  # a lock file made before the folder became read-only
            except OSError:
                return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(f"{folder}: in use by {_describe(_read_owner(path))}; wait for it to finish, or "
                              "choose another output folder") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # the file was swapped or removed while we waited: lock the one at the path now
            os.close(fd)
            continue
        stale = _read_owner(path)
        if stale.get("pid") and stale.get("host", socket.gethostname()) == socket.gethostname() \
                and stale["pid"] != os.getpid():
            warnings.warn(f"{folder}: taking over the lock of {_describe(stale)}, which ended without releasing it "
                          "(killed?); check the folder's content", stacklevel=3)
        if _writable(fd):
            _write_owner(fd)
        return fd


def _writable(fd: int) -> bool:
    return (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) != os.O_RDONLY
