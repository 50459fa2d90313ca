"""The one dataset contract that every reader produces and every model, trainer and metric consumes.

A :class:`RecDataset` is a catalog plus three splits of next-item examples:

* ``items``: a DataFrame with columns ``item_id`` (str) and ``title`` (str). Row order is the
  *catalog index* used everywhere else (trie, score matrices, metrics). Titles are non-empty and
  unique, so that a generated title names exactly one item.
* ``splits["train" | "valid" | "test"]``: DataFrames with columns ``user_id`` (str),
  ``history`` (list of item ids, oldest first, at least one) and ``target`` (item id).

On disk a dataset is a folder holding ``items.parquet``, ``train.parquet``, ``valid.parquet``,
``test.parquet`` and ``dataset.json`` (domain noun, source and cleaning statistics). Folders are
written to a temporary sibling and renamed into place, so a crash never leaves half a dataset.
A dataset loaded from a folder carries its *fingerprint*: a SHA-256 over those five files, which a run
records so that it is never resumed, evaluated or served on other data by mistake.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bearrec.checks import first_line
from bearrec.io import atomic_folder

SPLITS = ("train", "valid", "test")
FILES = ("items.parquet", *(f"{name}.parquet" for name in SPLITS), "dataset.json")  # what the fingerprint covers


def normalize_title(text: str) -> str:
    """A title as bearrec stores and looks it up: HTML entities unescaped (``&amp;`` -> ``&``), Unicode NFC,
    and whitespace runs (tabs, newlines, no-break spaces) collapsed to one space and stripped."""
    if "&" in text:
        text = html.unescape(text)
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


class DataError(ValueError):
    """Bad input data. ``str(err)`` is one line naming the file, the row and the field."""

    def __init__(self, path: str | os.PathLike, message: str, row: int | None = None, field: str | None = None):
        self.path, self.row, self.field, self.message = str(path), row, field, message
        where = self.path + (f", row {row}" if row is not None else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")


def untitled_name(item_id: str) -> str:
    """The title ``prepare`` gives an item without one when semantic IDs name it (``--semantic-ids``)."""
    return f"(untitled item {item_id})"


@dataclass
class RecDataset:
    items: pd.DataFrame
    splits: dict[str, pd.DataFrame]
    domain: str = "products"
    meta: dict = field(default_factory=dict)
    folder: str | None = field(default=None, compare=False)  # where it was loaded from (None: built in memory)
    file_digests: dict[str, str] = field(default_factory=dict, compare=False, repr=False)  # FILES' SHA-256s

    @property
    def fingerprint(self) -> str | None:
        """SHA-256 over the folder's files' names and digests (None for a dataset built in memory)."""
        if not self.file_digests:
            return None
        return hashlib.sha256(json.dumps(self.file_digests, sort_keys=True).encode()).hexdigest()

    def __post_init__(self) -> None:
        self.items = self.items.reset_index(drop=True)
        self._index = {item_id: i for i, item_id in enumerate(self.items["item_id"])}

    @property
    def titles(self) -> list[str]:
        return self.items["title"].tolist()

    @property
    def titled(self) -> list[bool]:
        """Per item, whether it has a title of its own (not the name ``prepare`` gives an untitled item)."""
        return [title != untitled_name(item) for item, title in zip(self.items["item_id"], self.items["title"])]

    @property
    def titled_indices(self) -> list[int]:
        """Catalog indices of the items with a title of their own (:attr:`titled`)."""
        return [i for i, has in enumerate(self.titled) if has]

    def item_index(self, item_id: str) -> int:
        """Catalog index of an item id (KeyError if the item is not in the catalog)."""
        return self._index[item_id]

    def examples(self, split: str, limit: int | None = None, seed: int = 0) -> tuple[list[list[int]], list[int]]:
        """(histories, targets) of a split as catalog indices; a seeded subsample of ``limit`` rows if given.

        Every model (LM or SASRec) evaluated with the same ``limit`` and ``seed`` sees the same rows.
        """
        frame = self.splits[split]
        if limit is not None and limit < len(frame):
            frame = frame.sample(n=limit, random_state=seed)
        histories = [[self.item_index(i) for i in h] for h in frame["history"]]
        return histories, [self.item_index(t) for t in frame["target"]]

    def validate(self, source: str = "dataset") -> None:
        """Check the contract; raise :class:`DataError` on the first violation.

        A dataset needs items and at least one training example; valid and test may be empty (training
        then runs without model selection, and evaluating an empty split is refused).
        """
        if len(self.items) == 0:
            raise DataError(source, "the catalog is empty: no item with a title is left")
        if len(self.splits.get("train", ())) == 0:
            raise DataError(source, "no training examples: the train split is empty")
        ids = self.items["item_id"].astype(str)
        if (ids.str.strip() == "").any():
            raise DataError(source, "item id is empty", row=int((ids.str.strip() == "").idxmax()), field="item_id")
        titles = self.items["title"]
        empty = titles.str.strip() == ""
        if empty.any():
            raise DataError(source, "title is empty", row=int(empty.idxmax()), field="title")
        dup = titles.duplicated()
        if dup.any():
            raise DataError(source, f"duplicate title {titles[dup.idxmax()]!r}", row=int(dup.idxmax()), field="title")
        if self.items["item_id"].duplicated().any():
            row = int(self.items["item_id"].duplicated().idxmax())
            raise DataError(source, "duplicate item id", row=row, field="item_id")
        for name, frame in self.splits.items():
            for row, (history, target) in enumerate(zip(frame["history"], frame["target"])):
                if len(history) == 0:
                    raise DataError(f"{source}/{name}", "history is empty", row=row, field="history")
                for item in (*history, target):
                    if item not in self._index:
                        raise DataError(f"{source}/{name}", f"unknown item id {item!r}", row=row, field="history")

    def summary(self) -> dict:
        return {"items": len(self.items), **{f"{k}_examples": len(v) for k, v in self.splits.items()}}

    # ------------------------------------------------------------------ disk format
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the dataset folder atomically (temporary sibling, then swap). Only an earlier bearrec
        dataset is replaced; the contract is checked first."""
        self.validate(str(folder))
        with atomic_folder(folder, "dataset") as tmp:
            self.items.to_parquet(tmp / "items.parquet", index=False)
            for name in SPLITS:
                frame = self.splits.get(name, _empty_split())
                frame = frame.assign(history=frame["history"].map(list))
                frame.to_parquet(tmp / f"{name}.parquet", index=False)
            meta = {"domain": self.domain, **self.meta, "summary": self.summary()}
            (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, default=str))
            digests = {name: _file_digest(tmp / name) for name in FILES}
        self.folder, self.file_digests = str(folder), digests  # this object is now that folder's content
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "RecDataset":
        folder = Path(folder)
        if not (folder / "dataset.json").is_file():
            raise DataError(folder, "not a bearrec dataset folder (no dataset.json); create one with `bearrec prepare`")
        try:
            meta = json.loads((folder / "dataset.json").read_text())
        except (OSError, ValueError, RecursionError) as err:
            raise DataError(folder / "dataset.json", f"unreadable ({err})") from None
        digests = {name: _file_digest(folder / name) for name in FILES}
        items = _read_parquet(folder / "items.parquet")
        splits = {}
        for name in SPLITS:
            frame = _read_parquet(folder / f"{name}.parquet")
            splits[name] = frame.assign(history=frame["history"].map(list))
        domain = meta.pop("domain", "products")
        meta.pop("summary", None)
        return cls(items=items, splits=splits, domain=domain, meta=meta, folder=str(folder), file_digests=digests)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as err:
        raise DataError(path, f"damaged or missing dataset file ({first_line(err)}); prepare the dataset again") from None
    return digest.hexdigest()


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow's errors: missing, truncated or not parquet at all
        reason = first_line(err).split(". ")[0][:120]
        raise DataError(path, f"damaged or missing dataset file ({reason}); prepare the dataset again") from None


def _empty_split() -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.Series([], dtype=str), "history": [], "target": pd.Series([], dtype=str)})
