"""The out-of-core engine under the raw formats: a duckdb database in a scratch folder (tables spill to disk past
a memory limit), and the progress bars of its steps.

duckdb was chosen over polars' streaming engine by measurement (notes in docs/design.md): on 10^6 Amazon-2023
reviews (read, deduplicate, 5-core, windows of 10, parquet) duckdb took 5.2 s and 0.50 GB, polars 5.4 s and
0.65 GB, and duckdb's sorts, hash aggregates and window functions spill to disk under ``memory_limit``, while
the same SQL runs unchanged on a cluster engine.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

MEMORY_ENV = "BEARREC_PREPARE_MEMORY"  # duckdb's own buffers (default: see fit_memory); it spills beyond them
BYTES_PER_INTERACTION = 40  # the default cap once the log is read: 40 bytes an interaction, within 1 GB .. 6 GB


def memory_limit() -> str:
    """duckdb's ``memory_limit`` from ``$BEARREC_PREPARE_MEMORY`` (default 1GB while reading), checked: a size such
    as 800MB or 4GB."""
    value = os.environ.get(MEMORY_ENV, "1GB").strip()
    if not re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B|B)", value, flags=re.IGNORECASE):
        raise ValueError(f"{MEMORY_ENV} must be a size such as 800MB or 4GB, got {value!r}")
    return value


def fit_memory(con: duckdb.DuckDBPyConnection, interactions: int) -> None:
    """Unless ``$BEARREC_PREPARE_MEMORY`` says otherwise, cap duckdb's buffers at 40 bytes per interaction read,
    within 1 GB and 6 GB. Sorts and joins spill, but not every buffer of a window or of a sort feeding the parquet
    writer: 10^7 interactions need about 0.3 GB, 10^8 ran out of 1 GB."""
    if MEMORY_ENV not in os.environ:
        megabytes = min(max(BYTES_PER_INTERACTION * interactions >> 20, 1024), 6 * 1024)
        con.execute("SET memory_limit = $1", [f"{megabytes}MB"])


class Steps:
    """One progress task per step (a rich ``Progress``, or nothing): a bar from duckdb's query progress while a
    query runs, a spinner with the elapsed time otherwise."""

    def __init__(self, progress=None) -> None:
        self.progress = progress
        self.current = "preparing"  # the step running now, for an error's line

    @contextmanager
    def step(self, label: str, con: duckdb.DuckDBPyConnection | None = None) -> Iterator[None]:
        self.current = label
        if self.progress is None:
            yield
            return
        task = self.progress.add_task(label, total=100 if con is not None else None)
        stop = threading.Event()
        watcher = None
        if con is not None:
            def watch() -> None:
                while not stop.wait(0.25):
                    try:
                        done = con.query_progress()
                    except duckdb.Error:
                        continue
                    if done >= 0:
                        self.progress.update(task, completed=min(done, 100.0))

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        try:
            yield
        finally:
            stop.set()
            if watcher is not None:
                watcher.join()
            self.progress.update(task, total=100, completed=100)


@contextmanager
def scratch_database() -> Iterator[duckdb.DuckDBPyConnection]:
    """A duckdb connection spilling to a fresh scratch folder, removed afterwards whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix="bearrec-prepare-"))
    try:
        # A database file: its tables leave memory under the limit (an in-memory database kept 8 GB at 10^7).
        con = duckdb.connect(str(folder / "prepare.duckdb"))
        try:
            con.execute("SET memory_limit = $1", [memory_limit()])
            con.execute("SET temp_directory = $1", [str(folder / "spill")])
            # rowid is the record's place in its file; also, at 10^7 interactions, turning this off took 8 GB, not 2
            con.execute("SET preserve_insertion_order = true")
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def table_rows(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
