"""The LC-Rec / APAO JSON layout: ``NAME.inter.json`` (user -> item ids, oldest first), ``NAME.item.json`` (item ->
``{"title": ..., "description": ..., ...}``) and optionally ``NAME.index.json`` (item -> codes such as
``["<a_159>", "<b_42>", "<c_1>", "<d_0>"]``, taken as semantic IDs). The files are single JSON objects, read whole
(the public ones are a few MB); errors name the file and the key path as the field. There are no timestamps: a
user's order is the list's order, so the sliding windows and splits follow it (ties cannot occur)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pandas as pd

from bearrec.checks import short
from bearrec.data.dataset import DataError
from bearrec.data.parsing import _decode, _read_bytes
from bearrec.data.streams import raw_from_frame

_CODE = re.compile(r"<([a-z])_(\d{1,9})>")


def _load(path: Path) -> dict:
    try:
        value = json.loads(_decode(path, _read_bytes(path), is_csv=False))
    except RecursionError:
        raise DataError(path, "nested too deeply to be an LC-Rec file") from None
    except ValueError as err:
        raise DataError(path, f"not JSON ({err})") from None
    if not isinstance(value, dict):
        raise DataError(path, f"expected a JSON object (key -> value), got {type(value).__name__}")
    return value


def _id(value, path: Path, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise DataError(path, f"expected an item id (a string or an integer), got {short(value)}", field=field)
    return str(value)


def read_items(path: Path) -> pd.DataFrame:
    """``item_id, title, _line`` (``_line``: the item's place in the file, 1-based) from ``NAME.item.json``."""
    ids, titles = [], []
    for key, record in _load(path).items():
        if not isinstance(record, dict):
            raise DataError(path, f"expected an object with a title, got {type(record).__name__}", field=key)
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(path, f"title must be a string, got {type(title).__name__} {short(title)}",
                            field=f"{key}.title")
        ids.append(key)
        titles.append(title or "")
    return pd.DataFrame({"item_id": pd.Series(ids, dtype=object), "title": pd.Series(titles, dtype=object),
                         "_line": range(1, len(ids) + 1)})


def load_interactions(con: duckdb.DuckDBPyConnection, path: Path, known: set[str], items_path: Path) -> None:
    """Fill ``raw`` from ``NAME.inter.json``: ``ts`` is the position in the user's list, ``line`` a running number
    (users in file order)."""
    users, items = [], []
    for user, sequence in _load(path).items():
        if not isinstance(sequence, list):
            raise DataError(path, f"expected a list of item ids, got {type(sequence).__name__}", field=user)
        for position, value in enumerate(sequence):
            item = _id(value, path, f"{user}[{position}]")
            if item not in known:
                raise DataError(path, f"unknown item id {item!r} (not in {items_path.name})", field=f"{user}[{position}]")
            users.append(user)
            items.append(item)
    if not users:
        raise DataError(path, "no interactions: no user has an item")
    frame = pd.DataFrame({"user": pd.Series(users, dtype=object), "item": pd.Series(items, dtype=object)})
    frame["line"] = range(1, len(frame) + 1)
    raw_from_frame(con, frame.assign(ts=frame["line"].astype("float64")))


def read_index(path: Path) -> dict[str, list[int]]:
    """``NAME.index.json``: item -> its codes as integers (``<a_159>`` is 159 at level a); levels in order a, b, c..."""
    codes = {}
    for key, value in _load(path).items():
        if not isinstance(value, list) or not value:
            raise DataError(path, f"expected a list of codes such as ['<a_12>', '<b_3>'], got {short(value)}", field=key)
        row = []
        for level, token in enumerate(value):
            match = _CODE.fullmatch(token) if isinstance(token, str) else None
            if match is None or ord(match.group(1)) - ord("a") != level:
                raise DataError(path, f"code {level + 1} must look like <{chr(ord('a') + level)}_N>, got "
                                      f"{short(token)}", field=key)
            row.append(int(match.group(2)))
        codes[key] = row
    return codes


def index_as_codes_csv(path: Path, folder: Path) -> Path:
    """``NAME.index.json`` written as the ``item_id,codes`` CSV that ``--semantic-ids FILE`` reads, in ``folder``."""
    rows = [f'"{item.replace(chr(34), chr(34) * 2)}","{codes}"' for item, codes in read_index(path).items()]
    written = folder / "codes.csv"
    written.write_text("\n".join(["item_id,codes", *rows]) + "\n")
    return written
