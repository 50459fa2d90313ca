"""Safe writes: bearrec replaces only folders it wrote itself (:mod:`~bearrec.io.markers`), one writer at a time
(:mod:`~bearrec.io.locks`), atomically (:mod:`~bearrec.io.atomic`), and a full or read-only disk is one line
naming the path (:mod:`~bearrec.io.errors`)."""

from bearrec.io.atomic import atomic_file, atomic_folder, discarded_on_disk_error, recover, write_json, write_text
from bearrec.io.errors import DISK_ERRNOS, disk_error, disk_errors
from bearrec.io.locks import FolderInUse, folder_lock
from bearrec.io.markers import KINDS, LOCK, MARKER, check_output, check_replaceable, empty_folder, folder_kind, mark

__all__ = ["DISK_ERRNOS", "KINDS", "LOCK", "MARKER", "FolderInUse", "atomic_file", "atomic_folder", "check_output",
           "check_replaceable", "discarded_on_disk_error", "disk_error", "disk_errors", "empty_folder", "folder_kind", "folder_lock", "mark",
           "recover", "write_json", "write_text"]
