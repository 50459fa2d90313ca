"""One entry for the raw formats: a :class:`PrepareConfig` in, a dataset folder (:func:`prepare_folder`, what
``bearrec prepare`` does, the splits written from duckdb without entering Python) or a :class:`RecDataset`
(:func:`read_raw`) out. Each format's files are loaded into the table ``raw`` plus an items frame
(:mod:`bearrec.data.amazon`, :mod:`bearrec.data.tables`, :mod:`bearrec.data.lcrec`), then
:mod:`bearrec.data.pipeline` does the rest in SQL."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd

from bearrec.data.amazon import load as load_amazon
from bearrec.data.catalogs import read_items, register_ids
from bearrec.data.config import RAW_FORMATS, PrepareConfig
from bearrec.data.dataset import DataError, RecDataset
from bearrec.data.engine import MEMORY_ENV, Steps, fit_memory, scratch_database, table_rows
from bearrec.data.lcrec import load_interactions as load_lcrec
from bearrec.data.lcrec import read_items as read_lcrec_items
from bearrec.data.pipeline import Prepared, build
from bearrec.data.tables import INTERACTIONS, MOVIELENS_CSV, MOVIELENS_DAT, RECBOLE, Layout, load_interactions


@contextmanager
def prepared(config: PrepareConfig, steps: Steps) -> Iterator[Prepared]:
    """The prepared examples of a validated raw-format ``config``, in a scratch database removed on exit;
    ``steps`` shows each step's bar and names the step in a duckdb failure's line, writing included."""
    if config.format not in RAW_FORMATS:
        raise ValueError(f"format {config.format!r} is not a raw format ({', '.join(RAW_FORMATS)})")
    with scratch_database() as con:
        try:
            items, items_path, timed = _load(con, config, steps)
            fit_memory(con, table_rows(con, "raw"))
            if config.split == "time" and not timed:
                raise DataError(config.inputs[0], "has no times: a time split would cut the users in file order, not "
                                                  "by time; use --split leave-one-out", field="split")
            source = {"format": config.format, "paths": [str(p) for p in config.inputs]}
            yield build(con, items, items_path, config, source, steps)
        except duckdb.Error as err:  # a full disk while spilling, memory: one line naming the step, not a traceback
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"prepare failed while {steps.current}: {type(err).__name__}: {reason} (scratch space "
                             f"under {tempfile.gettempdir()}; memory cap ${MEMORY_ENV})") from None


def read_raw(config: PrepareConfig, progress=None) -> RecDataset:
    """The dataset of a validated raw-format ``config``, in memory."""
    with prepared(config, Steps(progress)) as result:
        return result.to_dataset()


def prepare_folder(config: PrepareConfig, out: str | os.PathLike, progress=None) -> dict:
    """Write the dataset of a validated raw-format ``config`` to ``out`` (atomically); returns its summary."""
    steps = Steps(progress)
    with prepared(config, steps) as result:
        summary = result.write(out, steps)
        return {"summary": summary, "cleaning": result.meta["cleaning"]}


def _load(con: duckdb.DuckDBPyConnection, config: PrepareConfig, steps: Steps) -> tuple[pd.DataFrame, Path, bool]:
    """Fill ``raw``; return the items frame, the path that names it in messages and whether the interactions have
    times (LC-Rec's lists and a RecBole file without a time column have only an order)."""
    paths = [Path(p) for p in config.inputs]
    fmt = config.format
    if fmt in ("amazon", "amazon2023"):
        return load_amazon(con, fmt, paths[0], paths[1], steps), paths[1], True
    if fmt == "lcrec":
        with steps.step(f"reading {paths[1].name}"):
            items = read_lcrec_items(paths[1])
        with steps.step(f"reading {paths[0].name}"):
            load_lcrec(con, paths[0], set(items["item_id"]), paths[1])
        return items, paths[1], False
    with steps.step(f"reading {paths[1].name}"):
        items = read_items(con, fmt, paths[1])
        register_ids(con, items)
    with steps.step(f"reading {paths[0].name}", con):
        timed = load_interactions(con, paths[0], _layout(fmt, paths[0]), paths[1])
    return items, paths[1], timed


def _layout(fmt: str, path: Path) -> Layout:
    if fmt == "interactions":
        return INTERACTIONS
    if fmt == "recbole":
        return RECBOLE
    plain = path.suffix not in (".csv", ".parquet") and not path.name.endswith(".csv.gz")
    return MOVIELENS_DAT if plain else MOVIELENS_CSV
