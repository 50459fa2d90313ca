"""Cleaning a catalog: empty and duplicate titles fixed (or refused with ``strict``), items dropped from the
examples, titles that equal another item's id warned about; each fix one warning (:class:`FixLog`)."""

from __future__ import annotations

import html
import os
import warnings
from pathlib import Path

import pandas as pd

from bearrec.checks import short
from bearrec.data.dataset import DataError, normalize_title, untitled_name

PathLike = str | os.PathLike


class DataWarning(UserWarning):
    """A real-world quirk in the input that a reader fixed (see the module docstring)."""


# ---------------------------------------------------------------------------------- cleaning
class FixLog:
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


def clean_catalog(items: pd.DataFrame, path: Path, strict: bool, log: FixLog,
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
        items.loc[empty, "title"] = items.loc[empty, "item_id"].map(untitled_name)
    else:
        items = items[~empty].copy()

    # A disambiguated title could in theory equal another item's title, hence the loop.
    disambiguated = 0
    while (dup := items["title"].duplicated()).any():
        first_of = items.drop_duplicates("title").set_index("title")
        for item_id, title, line in zip(items.loc[dup, "item_id"], items.loc[dup, "title"], items.loc[dup, "_line"]):
            first_id, first_line = first_of.at[title, "item_id"], int(first_of.at[title, "_line"])
            message = f"title {short(title)} is also the title of item {first_id!r} (row {first_line})"
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


def warn_titles_equal_to_ids(items: pd.DataFrame, path: Path, log: FixLog) -> int:
    """Warn about every item whose (cleaned) title equals another item's id, as ``recommend`` and ``serve``
    would look that id up (exact title first, then id): there the id names the titled item, not its own.
    ``items`` is the final catalog (item_id, title, _line). Returns the count."""
    typed = items["item_id"].map(normalize_title)  # an id typed as a history entry, as the title lookup sees it
    owner = dict(zip(typed, items["item_id"]))
    title_of = dict(zip(items["item_id"], items["title"]))
    hit = items["title"].isin(owner.keys()) & (items["title"].map(owner) != items["item_id"])
    for item_id, title, line in zip(items.loc[hit, "item_id"], items.loc[hit, "title"], items.loc[hit, "_line"]):
        other = owner[title]
        message = (f"item {item_id!r} has the title {short(title)}, which is also the id of item {other!r}; "
                   f"recommend and serve read {short(title)} as this title (item {item_id!r}), so item {other!r} is "
                   f"found by its title {short(title_of[other])} only")
        log.warn("titles equal to another item's id", path, message, row=int(line), field="title")
    return int(hit.sum())


def drop_items_from_examples(
    splits: dict[str, pd.DataFrame], dropped: set[str], paths: dict[str, Path], log: FixLog
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


def refuse_duplicate_ids(items: pd.DataFrame, field: str, path: Path) -> None:
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
