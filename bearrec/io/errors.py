"""A write that fails for lack of space or permission (ENOSPC, EDQUOT, EROFS, EACCES, EPERM, EFBIG) becomes one
``OSError`` naming the path the user asked for, never a temporary name (:func:`disk_errors`)."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# ------------------------------------------------------------------------------------------------ disk errors
# errno values that mean "this path cannot be written now": no space, no quota, read-only, no permission
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO})


_HINTS = {errno.ENOSPC: "free some space and run the command again", errno.EDQUOT: "free some space and run the "
          "command again", errno.EFBIG: "the file system refuses a file this large",
          errno.EIO: "the write was cut short: is the disk full?"}


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
        if code is None or code == errno.EIO:  # a cut-short write: the probe tells a full disk (ENOSPC) apart
            probe = _probe_write(Path(path).parent)
            code = probe.errno if probe is not None and probe.errno in DISK_ERRNOS else code
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
        if "inline_container" in text and "unexpected pos" in text:  # torch's zip writer wrote less than it was given
            return errno.EIO
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
