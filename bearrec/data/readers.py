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

The two raw formats go through the pipeline of the BEAR / BIGRec papers: exact duplicate interactions
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

Catalog cleaning (every format, :func:`_clean_catalog`)
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
CSV (:func:`_read_csv`, which the semantic-ID reader uses too) and JSON-lines file, and row numbers count
them the same way.
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import io
import json
import math
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bearrec.data.dataset import SPLITS, DataError, RecDataset, normalize_title

PathLike = str | os.PathLike

# Unix times in seconds fit comfortably inside +-1e11 (year 5138); larger values are milliseconds or garbage.
MAX_UNIX_SECONDS = 10**11

SPLIT_MODES = ("time", "leave-one-out")  # 8:1:1 by target time | per user: last test, second-to-last valid

_FORMATS = {
    "processed": ("folder",),
    "amazon": ("reviews", "meta"),
    "interactions": ("interactions.csv", "items.csv"),
}


class DataWarning(UserWarning):
    """A real-world quirk in the input that a reader fixed (see the module docstring)."""


# ---------------------------------------------------------------------------------- public API
def read_source(
    fmt: str,
    inputs: Sequence[PathLike],
    domain: str = "products",
    strict: bool = False,
    min_interactions: int = 5,
    history_len: int | None = None,
    split: str | None = None,
    keep_untitled: bool = False,
) -> RecDataset:
    """Read ``inputs`` in format ``fmt``: "processed" (folder), "amazon" (reviews, meta) or
    "interactions" (interactions.csv, items.csv). ``history_len`` (default 10) and ``split`` (default "time")
    apply to the raw formats only: a processed folder brings its own split and histories."""
    where = ", ".join(map(str, inputs)) or "<no input>"
    if isinstance(min_interactions, bool) or not isinstance(min_interactions, int) or min_interactions < 1:
        raise ValueError(f"min_interactions (--min-interactions) must be an integer of at least 1, got {min_interactions!r}")
    if history_len is not None and (isinstance(history_len, bool) or not isinstance(history_len, int) or history_len < 1):
        raise ValueError(f"history_len (--max-history) must be an integer of at least 1, got {history_len!r}")
    if split is not None and split not in SPLIT_MODES:
        raise ValueError(f"split (--split) must be one of {', '.join(SPLIT_MODES)}, got {split!r}")
    if not re.fullmatch(r"[^\W\d_][\w -]*", domain or ""):
        raise ValueError(f"domain (--domain) must be a plural noun for the prompt, such as products or books: got {domain!r}")
    if fmt not in _FORMATS:
        raise DataError(where, f"unknown format {fmt!r}; expected one of {', '.join(_FORMATS)}", field="format")
    expected = _FORMATS[fmt]
    if len(inputs) != len(expected):
        raise DataError(
            where,
            f"format {fmt!r} takes {len(expected)} input(s) ({', '.join(expected)}), got {len(inputs)}",
            field="inputs",
        )
    if fmt == "processed":
        if history_len is not None or split is not None:
            raise ValueError("--max-history and --split apply to the raw formats (amazon, interactions); a processed "
                             "folder brings its own split and histories")
        return read_processed(inputs[0], domain=domain, strict=strict, keep_untitled=keep_untitled)
    reader = read_amazon if fmt == "amazon" else read_interactions
    return reader(*inputs, domain=domain, strict=strict, min_interactions=min_interactions,
                  history_len=history_len or 10, split=split or "time", keep_untitled=keep_untitled)


def read_processed(folder: PathLike, domain: str = "products", strict: bool = False,
                   keep_untitled: bool = False) -> RecDataset:
    """Read a processed folder (items.csv plus train/valid/test.csv with JSON ``item_ids``); ``keep_untitled`` as
    :func:`_clean_catalog`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "folder not found")
    log = _FixLog()
    items_path = folder / "items.csv"
    items = _read_csv(items_path, ("item_id", "title"))
    _refuse_duplicate_ids(items, "item_id", items_path)
    known = pd.Index(items["item_id"])
    splits = {name: _read_split(folder / f"{name}.csv", known, items_path.name) for name in SPLITS}
    if splits["train"].empty:
        raise DataError(folder / "train.csv", "no training examples: the file has a header but no rows", row=1)

    items, cleaning = _clean_catalog(items, items_path, strict, log, keep_untitled)
    cleaning["titles_equal_to_other_ids"] = _warn_titles_equal_to_ids(items, items_path, log)
    dropped = set(known.difference(items["item_id"]))
    splits, purge = _drop_items_from_examples(splits, dropped, {name: folder / f"{name}.csv" for name in SPLITS}, log)
    log.flush()

    dataset = RecDataset(
        items=items[["item_id", "title"]],
        splits={name: frame.drop(columns="_line").reset_index(drop=True) for name, frame in splits.items()},
        domain=domain,
        meta={"source": {"format": "processed", "paths": [str(folder)]}, "cleaning": {**cleaning, **purge}},
    )
    dataset.validate(source=str(folder))
    return dataset


def read_amazon(
    reviews_path: PathLike,
    meta_path: PathLike,
    domain: str = "products",
    strict: bool = False,
    min_interactions: int = 5,
    history_len: int = 10,
    split: str = "time",
    keep_untitled: bool = False,
) -> RecDataset:
    """Read raw Amazon reviews plus metadata and build the k-core, sliding-window dataset (8:1:1 by time, or
    leave-one-out per user)."""
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    users, item_ids, times, review_lines = [], [], [], []
    for line, record in _read_json_lines(reviews_path):
        user, item = (_id_field(record, key, reviews_path, line) for key in ("reviewerID", "asin"))
        times.append(_unix_seconds(_field(record, "unixReviewTime", reviews_path, line), reviews_path, line, "unixReviewTime"))
        users.append(user)
        item_ids.append(item)
        review_lines.append(line)
    if not users:
        raise DataError(reviews_path, "no reviews: the file holds no JSON line")
    interactions = pd.DataFrame({"user": users, "item": item_ids, "timestamp": np.array(times, dtype=np.int64),
                                 "_line": np.array(review_lines, dtype=np.int64)})

    # A metadata dump covers a whole category; parsing (slow for Python literals) only the lines of
    # reviewed items keeps reading fast. Lines whose asin the regex cannot see are parsed anyway.
    reviewed = set(item_ids)

    def unreviewed(text: str) -> bool:
        asin = _meta_asin(text)
        return asin is not None and asin not in reviewed

    meta_ids, titles, lines = [], [], []
    for line, record in _read_json_lines(meta_path, skip=unreviewed):
        meta_ids.append(_id_field(record, "asin", meta_path, line))
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(meta_path, f"title must be a string, got {type(title).__name__} {_short(title)}",
                            row=line, field="title")
        titles.append(title or "")
        lines.append(line)
    if not meta_ids:
        raise DataError(meta_path, "no metadata line for any reviewed item: no item has a title")
    # The 2018 metadata repeats some lines; the first one wins.
    items = pd.DataFrame({"item_id": pd.Series(meta_ids, dtype=object), "title": pd.Series(titles, dtype=object),
                          "_line": lines}).drop_duplicates("item_id")

    source = {"format": "amazon", "paths": [str(reviews_path), str(meta_path)]}
    return _build_from_interactions(
        interactions, items, meta_path, domain, strict, min_interactions, history_len, source, split,
        keep_untitled)


def read_interactions(
    interactions_csv: PathLike,
    items_csv: PathLike,
    domain: str = "products",
    strict: bool = False,
    min_interactions: int = 5,
    history_len: int = 10,
    split: str = "time",
    keep_untitled: bool = False,
) -> RecDataset:
    """Read a generic interactions.csv (user,item,timestamp) plus items.csv (item,title); the columns may also
    be called ``user_id`` and ``item_id`` (as in ``../shared/data/office``)."""
    interactions_csv, items_csv = Path(interactions_csv), Path(items_csv)
    items = _read_csv(items_csv, ("item", "title"), _ID_ALIASES).rename(columns={"item": "item_id"})
    _refuse_duplicate_ids(items, "item", items_csv)
    interactions = _read_csv(interactions_csv, ("user", "item", "timestamp"), _ID_ALIASES)
    if interactions.empty:
        raise DataError(interactions_csv, "no interactions: the file has a header but no rows", row=1)
    for column in ("user", "item"):
        empty = interactions[column].str.strip() == ""
        if empty.any():
            k = int(empty.to_numpy().argmax())
            raise DataError(interactions_csv, f"{column} id is empty", row=int(interactions["_line"].iat[k]), field=column)

    times = pd.to_numeric(interactions["timestamp"], errors="coerce")
    bad = times.isna() | ~np.isfinite(times) | (times.abs() >= MAX_UNIX_SECONDS)
    if bad.any():
        k = int(bad.to_numpy().argmax())
        raw = interactions["timestamp"].iat[k]
        message = "timestamp is missing" if not raw.strip() else f"not a Unix time in seconds: {_short(raw)}"
        if np.isfinite(times.iat[k]) and abs(times.iat[k]) >= MAX_UNIX_SECONDS:
            message += " (out of range; milliseconds? divide by 1000)"
        raise DataError(interactions_csv, message, row=int(interactions["_line"].iat[k]), field="timestamp")
    unknown = ~interactions["item"].isin(items["item_id"])
    if unknown.any():
        k = int(unknown.to_numpy().argmax())
        raise DataError(
            interactions_csv,
            f"unknown item id {interactions['item'].iat[k]!r} (not in {items_csv.name})",
            row=int(interactions["_line"].iat[k]),
            field="item",
        )
    interactions = pd.DataFrame({"user": interactions["user"], "item": interactions["item"], "timestamp": times,
                                 "_line": interactions["_line"]})

    source = {"format": "interactions", "paths": [str(interactions_csv), str(items_csv)]}
    return _build_from_interactions(
        interactions, items, items_csv, domain, strict, min_interactions, history_len, source, split,
        keep_untitled)


# ---------------------------------------------------------------------------------- cleaning
class _FixLog:
    """Warns about the first few fixes of each kind and counts the rest, so that real data with
    hundreds of quirks does not flood the console."""

    LIMIT = 5

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def warn(self, kind: str, path: PathLike, message: str, row: int, field: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= self.LIMIT:
            # Same one-line "file, row, field: message" format as the errors.
            warnings.warn(str(DataError(path, message, row=row, field=field)), DataWarning, stacklevel=4)

    def flush(self) -> None:
        for kind, count in self.counts.items():
            if count > self.LIMIT:
                warnings.warn(
                    f"{count - self.LIMIT} more {kind} not shown ({count} in all, counted in meta['cleaning'])",
                    DataWarning,
                    stacklevel=3,
                )


def _clean_catalog(items: pd.DataFrame, path: Path, strict: bool, log: _FixLog,
                   keep_untitled: bool = False) -> tuple[pd.DataFrame, dict[str, int]]:
    """Normalise titles, drop items with an empty title and make titles unique.

    ``keep_untitled`` (items named by semantic IDs, which need no title): an empty title becomes
    ``(untitled item <item_id>)`` instead, and the item stays.

    ``items`` has columns item_id, title, _line (source line, for messages). Returns the cleaned
    catalog in the same order and the counts for ``meta["cleaning"]``.
    """
    raw = items["title"]
    # html.unescape is slow per call; only titles with an '&' can hold an entity.
    has_entity = raw.str.contains("&", regex=False)
    html_unescaped = int((raw[has_entity].map(html.unescape) != raw[has_entity]).sum())
    titles = raw.map(normalize_title)  # the same normalisation `recommend` applies to titles it looks up
    items = items.assign(title=titles)

    empty = titles == ""
    if strict and empty.any():
        first = items[empty].iloc[0]
        raise DataError(path, "title is empty (strict mode)", row=int(first["_line"]), field="title")
    fix = "kept as '(untitled item <id>)' (its semantic ID names it)" if keep_untitled else "dropped"
    for item_id, line in zip(items.loc[empty, "item_id"], items.loc[empty, "_line"]):
        log.warn("empty-title items", path, f"title is empty; item {item_id!r} {fix}", row=int(line), field="title")
    if keep_untitled:
        items.loc[empty, "title"] = "(untitled item " + items.loc[empty, "item_id"] + ")"
    else:
        items = items[~empty].copy()

    # A disambiguated title could in theory equal another item's title, hence the loop.
    disambiguated = 0
    while (dup := items["title"].duplicated()).any():
        first_of = items.drop_duplicates("title").set_index("title")
        for item_id, title, line in zip(items.loc[dup, "item_id"], items.loc[dup, "title"], items.loc[dup, "_line"]):
            first_id, first_line = first_of.at[title, "item_id"], int(first_of.at[title, "_line"])
            message = f"title {_short(title)} is also the title of item {first_id!r} (row {first_line})"
            if strict:
                raise DataError(path, message + " (strict mode)", row=int(line), field="title")
            renamed = f"{message}; renamed to add ' (item {item_id})'"
            log.warn("duplicate titles", path, renamed, row=int(line), field="title")
        items.loc[dup, "title"] = items.loc[dup, "title"] + " (item " + items.loc[dup, "item_id"] + ")"
        disambiguated += int(dup.sum())

    counts = {
        "html_unescaped": html_unescaped,
        ("empty_title_items_named" if keep_untitled else "empty_title_items_dropped"): int(empty.sum()),
        "duplicate_titles_disambiguated": disambiguated,
    }
    return items, counts


def _warn_titles_equal_to_ids(items: pd.DataFrame, path: Path, log: _FixLog) -> int:
    """Warn about every item whose (cleaned) title equals another item's id, as ``recommend`` and ``serve``
    would look that id up (exact title first, then id): there the id names the titled item, not its own.
    ``items`` is the final catalog (item_id, title, _line). Returns the count."""
    typed = items["item_id"].map(normalize_title)  # an id typed as a history entry, as the title lookup sees it
    owner = dict(zip(typed, items["item_id"]))
    title_of = dict(zip(items["item_id"], items["title"]))
    hit = items["title"].isin(owner.keys()) & (items["title"].map(owner) != items["item_id"])
    for item_id, title, line in zip(items.loc[hit, "item_id"], items.loc[hit, "title"], items.loc[hit, "_line"]):
        other = owner[title]
        message = (f"item {item_id!r} has the title {_short(title)}, which is also the id of item {other!r}; "
                   f"recommend and serve read {_short(title)} as this title (item {item_id!r}), so item {other!r} is "
                   f"found by its title {_short(title_of[other])} only")
        log.warn("titles equal to another item's id", path, message, row=int(line), field="title")
    return int(hit.sum())


def _drop_items_from_examples(
    splits: dict[str, pd.DataFrame], dropped: set[str], paths: dict[str, Path], log: _FixLog
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Remove dropped items from processed examples: as a target the example goes, in a history
    the entry goes (and the example with it when its history becomes empty)."""
    examples_dropped = entries_removed = 0
    if not dropped:
        return splits, {"examples_dropped": 0, "history_entries_removed": 0}
    cleaned = {}
    for name, frame in splits.items():
        path = paths[name]
        gone = frame["target"].isin(dropped)
        for target, line in zip(frame.loc[gone, "target"], frame.loc[gone, "_line"]):
            message = f"example dropped: target item {target!r} has an empty title"
            log.warn("dropped examples", path, message, int(line), "item_ids")
        examples_dropped += int(gone.sum())
        frame = frame[~gone].copy()

        histories = frame["history"].explode()
        touched = histories[histories.isin(dropped)].index.unique()
        for index in touched:
            old = frame.at[index, "history"]
            new = [item for item in old if item not in dropped]
            entries_removed += len(old) - len(new)
            frame.at[index, "history"] = new
            removed = sorted(set(old) - set(new))
            line = int(frame.at[index, "_line"])
            message = f"item(s) {removed} with an empty title removed from the history"
            log.warn("examples with history entries removed", path, message, line, "item_ids")
            if not new:
                message = "example dropped: its history held only empty-title items"
                log.warn("dropped examples", path, message, line, "item_ids")
        emptied = frame["history"].map(len) == 0
        examples_dropped += int(emptied.sum())
        cleaned[name] = frame[~emptied]
    return cleaned, {"examples_dropped": examples_dropped, "history_entries_removed": entries_removed}


# ---------------------------------------------------------------------------------- raw pipeline
def _build_from_interactions(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    items_path: Path,
    domain: str,
    strict: bool,
    min_interactions: int,
    history_len: int,
    source: dict,
    split: str = "time",
    keep_untitled: bool = False,
) -> RecDataset:
    """Clean the catalog, k-core filter, build sliding-window examples and split them 8:1:1 by time (or
    leave-one-out per user).

    ``interactions`` has columns user, item, timestamp, _line (file order); ``items`` item_id, title, _line.
    """
    log = _FixLog()
    read = len(interactions)
    interactions, duplicates = _drop_duplicate_interactions(interactions, source["paths"][0])
    # Only reviewed items can reach a k-core catalog; cleaning the rest of a category-wide metadata
    # dump would only add noise to the counts and warnings.
    items = items[items["item_id"].isin(interactions["item"])]
    items, cleaning = _clean_catalog(items, items_path, strict, log, keep_untitled)
    unique = len(interactions)
    interactions = interactions[interactions["item"].isin(items["item_id"])]
    without_title = unique - len(interactions)
    interactions = _k_core(interactions, min_interactions)
    if interactions.empty:
        log.flush()
        kept = f", {duplicates} of them exact duplicates" if duplicates else ""
        raise DataError(items_path if without_title == unique else source["paths"][0],
                        f"no interaction is left after cleaning and the {min_interactions}-core filter ({read} read"
                        f"{kept}, {unique - without_title} distinct ones with a titled item); lower --min-interactions "
                        "or add data")
    examples = _sliding_window(interactions, history_len)
    if split == "leave-one-out":
        splits = _leave_one_out(examples.drop(columns="timestamp"))
    else:
        # Integer cut points: 8:1:1 exactly when the count divides, never a float rounding surprise.
        examples = examples.iloc[np.argsort(examples["timestamp"].to_numpy(), kind="stable")].drop(columns="timestamp")
        n = len(examples)
        cuts = {"train": (0, n * 8 // 10), "valid": (n * 8 // 10, n * 9 // 10), "test": (n * 9 // 10, n)}
        splits = {name: examples.iloc[a:b].reset_index(drop=True) for name, (a, b) in cuts.items()}

    catalog = items[items["item_id"].isin(interactions["item"])]
    cleaning["titles_equal_to_other_ids"] = _warn_titles_equal_to_ids(catalog, items_path, log)
    log.flush()
    catalog = catalog[["item_id", "title"]]
    source = {
        **source,
        "min_interactions": min_interactions,
        "history_len": history_len,
        "split": split,
        "interactions_read": read,
        "interactions_without_titled_item": without_title,
        "interactions_after_k_core": len(interactions),
        "users": int(interactions["user"].nunique()),
    }
    dataset = RecDataset(
        items=catalog,
        splits=splits,
        domain=domain,
        meta={"source": source, "cleaning": {**cleaning, "examples_dropped": 0, "history_entries_removed": 0,
                                             "duplicate_interactions_dropped": duplicates}},
    )
    dataset.validate(source=source["paths"][0])
    return dataset


def _drop_duplicate_interactions(interactions: pd.DataFrame, path: PathLike) -> tuple[pd.DataFrame, int]:
    """Drop rows whose (user, item, timestamp) an earlier row already has, keeping the first; one
    :class:`DataWarning` naming ``path``, the first dropped row and the count. The same user and item at
    another time (a repeat purchase) is not a duplicate. Returns the rows left and the count."""
    dup = interactions.duplicated(["user", "item", "timestamp"], keep="first")
    count = int(dup.sum())
    if count:
        first = interactions[dup].iloc[0]
        stamp = first["timestamp"]
        stamp = int(stamp) if float(stamp).is_integer() else stamp
        message = (f"{count} duplicate interaction(s) dropped, one of each kept (same user, item and timestamp as an "
                   f"earlier row; first: user {_short(first['user'])}, item {_short(first['item'])}, timestamp "
                   f"{stamp}); counted in duplicate_interactions_dropped")
        warnings.warn(str(DataError(path, message, row=int(first["_line"]))), DataWarning, stacklevel=4)
        interactions = interactions[~dup.to_numpy()]
    return interactions, count


def _k_core(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keep users and items with at least ``k`` interactions, repeating until nothing changes
    (dropping a user can push an item below ``k`` and vice versa)."""
    while len(interactions):
        user_counts = interactions.groupby("user")["item"].transform("size")
        item_counts = interactions.groupby("item")["user"].transform("size")
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            break
        interactions = interactions[keep]
    return interactions


def _leave_one_out(examples: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per user (rows grouped by user, in time order): the last example test, the one before valid, the rest train.
    A user with one example gives a test row only, with two a valid and a test row."""
    from_end = examples.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()  # 0 = the user's last
    parts = {"train": from_end >= 2, "valid": from_end == 1, "test": from_end == 0}
    return {name: examples[keep].reset_index(drop=True) for name, keep in parts.items()}


def _sliding_window(interactions: pd.DataFrame, history_len: int) -> pd.DataFrame:
    """One example per position i >= 1 of each user's time-sorted sequence."""
    codes, _ = pd.factorize(interactions["user"])  # users in order of first appearance
    # np.lexsort is stable: interactions at the same time keep their file order.
    order = np.lexsort((interactions["timestamp"].to_numpy(), codes))
    codes = codes[order]
    users = interactions["user"].to_numpy()[order]
    items = interactions["item"].to_numpy()[order].tolist()
    times = interactions["timestamp"].to_numpy()[order]

    keep, histories, start = [], [], 0
    for i in range(len(items)):
        if i == 0 or codes[i] != codes[i - 1]:
            start = i  # first interaction of a user: history only, never a target
            continue
        keep.append(i)
        histories.append(items[max(start, i - history_len) : i])
    keep = np.array(keep, dtype=np.int64)
    return pd.DataFrame(
        {
            "user_id": users[keep].astype(str),
            "history": pd.Series(histories, dtype=object),
            "target": np.array(items, dtype=object)[keep].astype(str),
            "timestamp": times[keep],
        }
    )


# ---------------------------------------------------------------------------------- file reading
def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(path, "file not found")
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:  # not gzip, or cut short
        reason = "truncated" if isinstance(err, EOFError) else str(err).strip() or type(err).__name__
        raise DataError(path, f"not a readable gzip file ({reason})") from None


# A line ends at LF, CRLF or a CR alone (old Mac files), in every file the readers take, mixed or not.
_LINE_END = re.compile(r"\r\n?|\n")
_LINE_END_BYTES = re.compile(rb"\r\n?|\n")


def _count_lines(text: str) -> int:
    """Lines of ``text`` (a last line without a line end counts), with the line ends of :data:`_LINE_END`."""
    ends = text.count("\n") + text.count("\r") - text.count("\r\n")
    return ends + (bool(text) and not text.endswith(("\n", "\r")))


def _split_lines(text: str) -> list[str]:
    """``text`` split at its line ends (never at U+2028 and the other characters ``splitlines`` breaks on)."""
    return _LINE_END.split(text) if "\r" in text else text.split("\n")


def _decode(path: Path, data: bytes, is_csv: bool) -> str:
    """Decode UTF-8; on a bad byte name its line and, as far as the line's start tells, its field."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        ends = [m.end() for m in _LINE_END_BYTES.finditer(data, 0, err.start)]
        row = len(ends) + 1
        prefix = data[(ends[-1] if ends else 0) : err.start].decode("utf-8", errors="replace")
        if is_csv:
            header = _csv_fields(_LINE_END_BYTES.split(data, 1)[0].decode("utf-8", errors="replace"))
            column = max(len(_csv_fields(prefix)) - 1, 0)
            field = header[column] if row > 1 and column < len(header) else None
        else:
            keys = re.findall(r"""["'](\w+)["']\s*:""", prefix)
            field = keys[-1] if keys else None
        raise DataError(path, f"not UTF-8 (byte 0x{data[err.start]:02x})", row=row, field=field) from None
    return text.removeprefix("\ufeff")  # a BOM would otherwise become part of the first column name


def _csv_fields(line: str) -> list[str]:
    """The fields of one CSV line, as far as they can be told (a stray carriage return ends the line)."""
    try:
        return next(csv.reader([line.split("\r", 1)[0]]), [])
    except csv.Error:
        return []


def _record_starts(text: str) -> list[int]:
    """Line on which each non-blank CSV record starts (header included), following the same quoting
    rules as pandas, so that quoted newlines and blank lines do not shift row numbers."""
    starts, previous = [], 0
    # newline="": the csv module sees every line end (LF, CRLF, CR) as pandas does, and quoted ones verbatim.
    reader = csv.reader(io.StringIO(text, newline=""))
    for record in reader:
        if record and not (len(record) == 1 and not record[0].strip()):  # pandas skips blank lines
            starts.append(previous + 1)
        previous = reader.line_num
    return starts


_ID_ALIASES = {"user_id": "user", "item_id": "item"}  # other names the interactions format accepts for its columns


def _read_csv(path: Path, columns: tuple[str, ...], aliases: dict[str, str] | None = None) -> pd.DataFrame:
    """Read a CSV as strings (ids stay ids, empty cells stay "") plus a ``_line`` column; a column named by a key
    of ``aliases`` is renamed to its value unless the header has that column already."""
    text = _decode(path, _read_bytes(path), is_csv=True)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(path, "file is empty (expected a header line)", row=1) from None
    except pd.errors.ParserError as err:
        # pandas counts records, not lines: "Expected 2 fields in line 7, saw 3".
        detail = str(err).split("C error:")[-1].strip()
        match = re.search(r"line (\d+)", detail)
        starts = _record_starts(text)
        row = starts[int(match.group(1)) - 1] if match and int(match.group(1)) <= len(starts) else None
        raise DataError(path, f"malformed CSV: {detail}", row=row) from None
    frame = frame.rename(columns={a: c for a, c in (aliases or {}).items() if a in frame.columns and c not in frame.columns})
    for column in columns:
        if column not in frame.columns:
            raise DataError(path, f"missing column (header: {','.join(frame.columns)})", row=1, field=column)
    # Fast path: one line per record. Otherwise quoted newlines or blank lines: ask the csv module.
    if _count_lines(text) == len(frame) + 1:
        frame["_line"] = np.arange(2, len(frame) + 2)
    else:
        frame["_line"] = _record_starts(text)[1:]
    return frame


def _read_split(path: Path, known: pd.Index, items_name: str) -> pd.DataFrame:
    """Read a processed split into user_id, history, target, _line; refuse bad or unknown ids."""
    frame = _read_csv(path, ("user_id", "item_ids"))
    lines = frame["_line"].to_numpy()
    id_lists = []
    for raw, line in zip(frame["item_ids"].tolist(), lines):
        try:
            ids = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: a list nested thousands deep
            ids = None
        if not isinstance(ids, list):
            raise DataError(path, f"not a JSON list of item ids: {_short(raw)}", row=int(line), field="item_ids")
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


def _read_json_lines(path: Path, skip=None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for each non-blank line that is JSON or a Python dict literal
    (the 2014 Amazon metadata); ``skip(line)`` may pass over lines that are not needed."""
    text = _decode(path, _read_bytes(path), is_csv=False)
    # Not splitlines(): titles may hold U+2028 and other characters splitlines breaks on. A raw CR cannot be
    # inside a JSON or Python string literal, so it ends a line (CR-only and CRLF files).
    for number, line in enumerate(_split_lines(text), start=1):
        if not line.strip() or (skip is not None and skip(line)):
            continue
        try:
            record = json.loads(line)
        except RecursionError:
            raise DataError(path, "line is nested too deeply to be a record", row=number) from None
        except ValueError:
            try:
                record = ast.literal_eval(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise DataError(path, "line is neither JSON nor a Python dict literal", row=number) from None
        if not isinstance(record, dict):
            raise DataError(path, f"expected an object, got {type(record).__name__}", row=number)
        yield number, record


_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']*)["']""")


def _meta_asin(line: str) -> str | None:
    match = _ASIN.search(line)
    return match.group(1) if match else None


def _field(record: dict, name: str, path: Path, line: int):
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(path, "field is missing", row=line, field=name)
    return value


def _id_field(record: dict, name: str, path: Path, line: int) -> str:
    """An id: a non-empty string or an integer (never a bool, float, list or object)."""
    value = _field(record, name, path, line)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, f"expected a string id, got {type(value).__name__} {_short(value)}", row=line, field=name)
    return str(value)


def _unix_seconds(value, path: Path, line: int, name: str) -> int:
    """A Unix time in seconds: an integer (or a string of one) within +-MAX_UNIX_SECONDS."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,30}\s*", value):
        number = int(value)
    if number is None or abs(number) >= MAX_UNIX_SECONDS:
        hint = " (out of range; milliseconds? divide by 1000)" if number is not None else ""
        raise DataError(path, f"not a Unix time in seconds: {_short(value)}{hint}", row=line, field=name)
    return number


def _refuse_duplicate_ids(items: pd.DataFrame, field: str, path: Path) -> None:
    """Refuse empty and repeated item ids (``items`` has an ``item_id`` column; ``field`` is its name in the file)."""
    empty = items["item_id"].str.strip() == ""
    if empty.any():
        k = int(empty.to_numpy().argmax())
        raise DataError(path, "item id is empty", row=int(items["_line"].iat[k]), field=field)
    dup = items["item_id"].duplicated()
    if dup.any():
        k = int(dup.to_numpy().argmax())
        message = f"duplicate item id {items['item_id'].iat[k]!r}"
        raise DataError(path, message, row=int(items["_line"].iat[k]), field=field)


def _short(value: object, limit: int = 60) -> str:
    """repr of a value, cut so that an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
