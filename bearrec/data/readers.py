"""Readers that turn source files into a :class:`~bearrec.data.dataset.RecDataset`.

Formats
-------
* ``processed`` (:func:`read_processed`): a folder with ``items.csv`` (``item_id,title``) and
  ``train.csv``, ``valid.csv``, ``test.csv`` (``user_id,item_ids,timestamp``). ``item_ids`` is a
  JSON list of ids, oldest first: the last id is the target, the ids before it the history. The
  splits are given, so ``timestamp`` is not needed and not read. This is the layout of the real
  data in ``../shared/data/office`` and ``../shared/data/books``.
* ``amazon`` (:func:`read_amazon`): raw Amazon review JSON lines (``reviewerID``, ``asin``,
  ``unixReviewTime``) plus metadata lines (``asin``, ``title``) that are JSON (2018 release) or
  Python dict literals (2014 release). Either file may be gzipped (``.gz``).
* ``interactions`` (:func:`read_interactions`): ``interactions.csv`` (``user,item,timestamp``,
  Unix seconds) plus ``items.csv`` (``item,title``).
* ``amazon2023``, ``movielens``, ``recbole``, ``lcrec``: the field's formats (:mod:`bearrec.data.amazon`,
  :mod:`bearrec.data.tables`, :mod:`bearrec.data.catalogs`, :mod:`bearrec.data.lcrec`). Parquet is accepted
  wherever CSV is.

Every raw format is read as a stream into duckdb and goes through :mod:`bearrec.data.pipeline` in SQL
(:mod:`bearrec.data.prepare`); settings travel as one :class:`~bearrec.data.config.PrepareConfig`.

The raw formats go through the pipeline of the BEAR / BIGRec papers: exact duplicate interactions
(the same user, item and timestamp as an earlier line, as the 2018 Amazon dumps repeat) are dropped, one
of each kept, with one :class:`DataWarning` naming the file, the first repeated line and the count
(``meta["cleaning"]["duplicate_interactions_dropped"]``); the same user and item at *different* times is a
repeat purchase and stays, so an example's target may also be in its history. Then items without a title
are dropped, then an iterative k-core filter keeps users and items with at least ``min_interactions``
interactions until nothing changes. Each user's interactions are sorted by time (ties keep file
order); every position i >= 1 of a user's sequence is one example (history = up to ``history_len``
previous items, target = item i, time = the target's time). All examples are then split
chronologically by target time: oldest 80 % train, next 10 % valid, newest 10 % test (examples with
equal times keep the order of users' first appearance). The catalog is the items that survive the
k-core filter, in the order of the items file.

``split="leave-one-out"`` splits per user instead (TIGER, APAO and most semantic-ID papers): a user's
last example (target = last item) is test, the one before it valid, every earlier one train, so a
user's train examples target items[1:-2]. ``history_len`` (``prepare --max-history``, default 10)
is the longest history kept; APAO keeps 20.

Catalog cleaning (every format, :func:`clean_catalog`)
-------------------------------------------------------
Titles are HTML-unescaped (``&amp;`` -> ``&``) and their whitespace collapsed and stripped. Real data
has quirks that are not bad input, so by default (``strict=False``) they are fixed, not refused:

* An item whose title is empty is dropped from the catalog. In the processed format every example
  whose target is that item is dropped too, the item is removed from histories, and an example
  whose history becomes empty is dropped. (In the raw formats the item's interactions are dropped
  before filtering, so no example ever refers to it.)
* A title shared by several items stays on the first of them (catalog order); every later item gets
  `` (item <item_id>)`` appended, so that a generated title names exactly one item and the first
  item's title stays exactly as the source gives it.

In the raw formats cleaning runs on every item that has an interaction, before the k-core filter; a
metadata line without a ``title`` key counts as an empty title.

A title that equals another catalog item's id (item ``A`` titled ``B`` where ``B`` is an item id) is kept
but warned about, naming both items (counted in ``titles_equal_to_other_ids``): ``recommend`` and ``serve``
look a history entry up as an exact title first and as an id second, so ``B`` names item ``A`` there and
item ``B`` is reachable by its own title only. The check runs on the final catalog (after the k-core filter
in the raw formats), in every format.

Each fix emits a one-line :class:`DataWarning` naming file, row and field (the first five of each
kind, then one line with the count of the rest). ``strict=True`` raises :class:`DataError` at the
first empty or duplicate title instead (so on raw Amazon data it refuses the first reviewed item
that has no title). Counts go to ``meta["cleaning"]``; ``meta["source"]``
records the format and the paths. Items that appear in no split stay in the catalog.

Errors
------
Bad input (a missing file or column, unparsable ``item_ids``, an unknown item id, an empty
history, a line that is not UTF-8, a missing or garbled timestamp in the interactions format)
raises :class:`DataError`, whose message is one line naming the file, the row (1-based line number
in the file, header = line 1) and the field.

Line ends: LF, CRLF and CR alone (old Mac files), also mixed within one file, all end a line, in every
CSV (:func:`read_csv`, which the semantic-ID reader uses too) and JSON-lines file, and row numbers count
them the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bearrec.checks import short
from bearrec.data.cleaning import (
    FixLog,
    clean_catalog,
    drop_items_from_examples,
    refuse_duplicate_ids,
    warn_titles_equal_to_ids,
)
from bearrec.data.config import PrepareConfig
from bearrec.data.dataset import SPLITS, DataError, RecDataset
from bearrec.data.parsing import read_csv

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------- public API
def read_dataset(config: PrepareConfig) -> RecDataset:
    """The dataset a validated ``config`` describes, in memory (``bearrec prepare`` writes raw formats without
    this: :func:`bearrec.data.prepare.prepare_folder`)."""
    if config.format == "processed":
        return read_processed(config.inputs[0], domain=config.domain, strict=config.strict,
                              keep_untitled=config.keep_untitled)
    from bearrec.data.prepare import read_raw  # lazy: only raw formats need duckdb (a GPU image may lack it)

    return read_raw(config)


def read_source(
    fmt: str,
    inputs: Sequence[PathLike],
    domain: str | None = None,
    strict: bool = False,
    min_interactions: int = 5,
    history_len: int | None = None,
    split: str | None = None,
    keep_untitled: bool = False,
) -> RecDataset:
    """Read ``inputs`` in format ``fmt`` (:data:`bearrec.data.config.FORMATS`); the keywords are the fields of
    :class:`PrepareConfig`, checked once. ``history_len`` (default 10) and ``split`` (default "time") apply to the
    raw formats only: a processed folder brings its own split and histories."""
    config = PrepareConfig(fmt, tuple(inputs), domain, strict, min_interactions, history_len, split, keep_untitled)
    return read_dataset(config.validated())


def read_processed(folder: PathLike, domain: str = "products", strict: bool = False,
                   keep_untitled: bool = False) -> RecDataset:
    """Read a processed folder (items.csv plus train/valid/test.csv with JSON ``item_ids``); ``keep_untitled`` as
    :func:`clean_catalog`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "folder not found")
    log = FixLog()
    items_path = folder / "items.csv"
    items = read_csv(items_path, ("item_id", "title"))
    refuse_duplicate_ids(items, "item_id", items_path)
    known = pd.Index(items["item_id"])
    splits = {name: _read_split(folder / f"{name}.csv", known, items_path.name) for name in SPLITS}
    if splits["train"].empty:
        raise DataError(folder / "train.csv", "no training examples: the file has a header but no rows", row=1)

    items, cleaning = clean_catalog(items, items_path, strict, log, keep_untitled)
    cleaning["titles_equal_to_other_ids"] = warn_titles_equal_to_ids(items, items_path, log)
    dropped = set(known.difference(items["item_id"]))
    splits, purge = drop_items_from_examples(splits, dropped, {name: folder / f"{name}.csv" for name in SPLITS}, log)
    log.flush()

    dataset = RecDataset(
        items=items[["item_id", "title"]],
        splits={name: frame.drop(columns="_line").reset_index(drop=True) for name, frame in splits.items()},
        domain=domain,
        meta={"source": {"format": "processed", "paths": [str(folder)]}, "cleaning": {**cleaning, **purge}},
    )
    dataset.validate(source=str(folder))
    return dataset


def read_amazon(reviews_path: PathLike, meta_path: PathLike, domain: str = "products", strict: bool = False,
                min_interactions: int = 5, history_len: int = 10, split: str = "time",
                keep_untitled: bool = False) -> RecDataset:
    """Read raw Amazon reviews plus metadata (2014 or 2018) and build the k-core, sliding-window dataset (8:1:1 by
    time, or leave-one-out per user)."""
    return read_source("amazon", [reviews_path, meta_path], domain, strict, min_interactions, history_len, split,
                       keep_untitled)


def read_interactions(interactions_csv: PathLike, items_csv: PathLike, domain: str = "products",
                      strict: bool = False, min_interactions: int = 5, history_len: int = 10, split: str = "time",
                      keep_untitled: bool = False) -> RecDataset:
    """Read a generic interactions.csv (user,item,timestamp) plus items.csv (item,title); the columns may also
    be called ``user_id`` and ``item_id`` (as in ``../shared/data/office``); either may be parquet."""
    return read_source("interactions", [interactions_csv, items_csv], domain, strict, min_interactions, history_len,
                       split, keep_untitled)


def _read_split(path: Path, known: pd.Index, items_name: str) -> pd.DataFrame:
    """Read a processed split into user_id, history, target, _line; refuse bad or unknown ids."""
    frame = read_csv(path, ("user_id", "item_ids"))
    lines = frame["_line"].to_numpy()
    id_lists = []
    for raw, line in zip(frame["item_ids"].tolist(), lines):
        try:
            ids = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: a list nested thousands deep
            ids = None
        if not isinstance(ids, list):
            raise DataError(path, f"not a JSON list of item ids: {short(raw)}", row=int(line), field="item_ids")
        if len(ids) < 2:
            message = f"history is empty: needs at least 2 ids (history, then target), got {len(ids)}"
            raise DataError(path, message, row=int(line), field="item_ids")
        # JSON numbers become the same strings as the ids in items.csv; anything odd (1.0, true,
        # nested lists) becomes a string no catalog holds and is reported as unknown below.
        id_lists.append([str(item) for item in ids])

    lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    flat = pd.Series([item for ids in id_lists for item in ids], dtype=object)
    unknown = ~flat.isin(known)
    if unknown.any():
        k = int(unknown.to_numpy().argmax())
        owner = int(np.searchsorted(np.cumsum(lengths), k, side="right"))
        message = f"unknown item id {flat.iat[k]!r} (not in {items_name})"
        raise DataError(path, message, row=int(lines[owner]), field="item_ids")
    return pd.DataFrame(
        {
            "user_id": frame["user_id"],
            "history": pd.Series([ids[:-1] for ids in id_lists], index=frame.index, dtype=object),
            "target": [ids[-1] for ids in id_lists],
            "_line": lines,
        },
        index=frame.index,
    )
