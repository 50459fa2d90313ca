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

One writer per folder: :func:`folder_lock` holds an exclusive ``fcntl.flock`` on ``.bearrec.lock`` inside an
output folder for as long as a command writes there; a second writer is refused with one line naming the
holder. The kernel drops the lock of a killed process, so its successor takes it over. :func:`atomic_folder`
hands the lock on to the new folder before swapping it in, so the folder at the path is locked throughout.

A write that fails for lack of space or permission (ENOSPC, EROFS, EACCES, ...) becomes one ``OSError``
naming the path the user asked for, never a temporary name, and leaves nothing half-written
(:func:`disk_errors`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import fnmatch
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bearrec.checks import first_line

MARKER = ".bearrec"
LOCK = ".bearrec.lock"
OWN = (MARKER, LOCK)  # bearrec's bookkeeping in every folder it writes
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
        _swap_into_place(tmp, folder)
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


# ------------------------------------------------------------------------------------------------ disk errors
# errno values that mean "this path cannot be written now": no space, no quota, read-only, no permission
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
_HINTS = {errno.ENOSPC: "free some space and run the command again", errno.EDQUOT: "free some space and run the "
          "command again", errno.EFBIG: "the file system refuses a file this large"}


def disk_error(path: str | os.PathLike, err: BaseException) -> OSError | None:
    """The one-line ``OSError`` a failed write of ``path`` becomes, or None if ``err`` is not a disk failure.

    Libraries report a full disk in their own words (torch: ``RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos``; safetensors and pyarrow: errors without an errno), so such an error
    is a disk failure only if a small write beside ``path`` fails now as well (call this before removing what
    the failed write left, which frees space).
    """
    if isinstance(err, OSError) and err.errno is not None:
        code = err.errno if err.errno in DISK_ERRNOS else None
    elif isinstance(err, _NOT_DISK):
        code = None
    else:
        code = _errno_in(err)
        if code is None:
            probe = _probe_write(Path(path).parent)
            code = probe.errno if probe is not None and probe.errno in DISK_ERRNOS else None
    if code is None:
        return None
    reason = os.strerror(code).lower()
    hint = _HINTS.get(code)
    return OSError(code, f"{reason}; {hint}" if hint else reason, str(path))


def _errno_in(err: BaseException) -> int | None:
    """A disk errno that a library's error (or the errors it was raised from) names in its message:
    ``os error 28`` (Rust), ``[Errno 28]``, ``errno 28`` or the system's own words (``No space left on device``)."""
    while err is not None:
        text = str(err)
        for match in re.finditer(r"(?:os error|errno)\s*(\d+)", text, re.IGNORECASE):
            if int(match.group(1)) in DISK_ERRNOS:
                return int(match.group(1))
        for code in DISK_ERRNOS:
            if os.strerror(code).lower() in text.lower():
                return code
        err = err.__cause__ or err.__context__
    return None


_NOT_DISK = (ValueError, KeyError, TypeError, AttributeError, IndexError, AssertionError, NotImplementedError)


def _probe_write(folder: Path) -> OSError | None:
    """Why the nearest existing folder of ``folder`` cannot take a 64 KiB file now, or None if it can."""
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        fd, name = tempfile.mkstemp(prefix=".bearrec-probe-", dir=folder)
    except OSError as err:
        return err
    try:
        os.write(fd, bytes(65536))
        os.fsync(fd)
    except OSError as err:
        return err
    finally:
        os.close(fd)
        os.unlink(name)
    return None


@contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write under this block into one ``OSError`` naming ``path`` (see :func:`disk_error`)."""
    try:
        yield
    except Exception as err:
        named = disk_error(path, err)
        if named is None:
            raise
        raise named from err


# ---------------------------------------------------------------------------------------------- folder locks
class FolderInUse(ValueError):
    """Another process writes the folder; ``str(err)`` is one line naming it."""


class _Lock:
    """The flock this process holds on ``folder/.bearrec.lock`` (one per folder; nested holders share it)."""

    def __init__(self, folder: Path, kind: str, fd: int | None, created: list[Path]):
        self.folder, self.kind, self.fd, self.created, self.depth, self.old = folder, kind, fd, created, 1, None

    def move_to(self, new_folder: Path) -> None:
        """Lock ``new_folder``'s own lock file too, before it is swapped in at this lock's path."""
        if self.fd is None:
            return
        fd = os.open(new_folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows the new file yet
        _write_owner(fd)
        self.old, self.fd = self.fd, fd

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


def _write_owner(fd: int) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
             "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)


def _read_owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text() or "{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
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
    if key in _held:
        _held[key].depth += 1
        try:
            yield
        finally:
            _held[key].depth -= 1
        return
    check_output(folder)
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
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
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
            import warnings

            warnings.warn(f"{folder}: taking over the lock of {_describe(stale)}, which ended without releasing it "
                          "(killed?); check the folder's content", stacklevel=3)
        if _writable(fd):
            _write_owner(fd)
        return fd


def _writable(fd: int) -> bool:
    return (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) != os.O_RDONLY
