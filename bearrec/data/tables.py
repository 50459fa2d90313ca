"""Delimited and parquet interaction files: ``interactions`` (our ``user,item,timestamp`` CSV), ``movielens``
(ml-1m/ml-10m ``ratings.dat``, ``::``-separated latin-1; ml-latest/ml-25m ``ratings.csv``) and ``recbole`` (RecBole
atomic ``.inter`` files, tab-separated, typed headers such as ``user_id:token``), each also as parquet.

:func:`load_interactions` fills the table ``raw`` of :mod:`bearrec.data.pipeline`. duckdb reads the file as a
stream; SQL checks mark the rows a Python check could refuse (blank-looking ids, a time that is not a plain
number, an item missing from the catalog). Those rows alone are then checked in Python, which raises the one-line
error of the first bad one (file, row, field); a file duckdb cannot read plainly is read whole by the Python
reader, which words its error or gives the same rows (:mod:`bearrec.data.streams`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from bearrec.checks import short
from bearrec.data.dataset import DataError
from bearrec.data.parsing import MAX_UNIX_SECONDS, _decode, _read_bytes, _split_lines, read_csv
from bearrec.data.streams import VISIBLE, header_fields, load_delimited, load_parquet


@dataclass(frozen=True)
class Layout:
    """How a format lays out an interactions file: its columns (``None``: no header, these names in order), the
    other names a column may have, the delimiter, quoting and encoding, and the bound on its times."""

    user: str
    item: str
    time: str | None  # None: the format has no time; the order of the file is the order of each user's items
    aliases: dict[str, str]
    names: tuple[str, ...] | None = None  # the columns of a header-less file
    delimiter: str = ","
    quote: str = '"'
    encoding: str = "utf-8"
    max_time: float = float(MAX_UNIX_SECONDS)
    time_unit: str = "a Unix time in seconds"
    time_required: bool = True  # False: a file without the time column is read in file order

    def required(self) -> tuple[str, ...]:
        return (self.user, self.item, *((self.time,) if self.time and self.time_required else ()))

    def column_names(self, header: list[str]) -> list[str]:
        """The header's names with the format's aliases applied (RecBole's ``name:type`` becomes ``name``)."""
        names = [_recbole_name(h) if self.delimiter == "\t" else h for h in header]
        renamed = {a: c for a, c in self.aliases.items() if a in names and c not in names}
        return [renamed.get(n, n) for n in names]


INTERACTIONS = Layout("user", "item", "timestamp", {"user_id": "user", "item_id": "item"})
MOVIELENS_DAT = Layout("user", "item", "timestamp", {}, names=("user", "item", "rating", "timestamp"),
                       delimiter="::", quote="", encoding="latin-1")
MOVIELENS_CSV = Layout("user", "item", "timestamp", {"userId": "user", "movieId": "item"})
RECBOLE = Layout("user", "item", "timestamp", {"user_id": "user", "item_id": "item"}, delimiter="\t", quote="",
                 max_time=1e18, time_unit="a number", time_required=False)


def _recbole_name(field: str) -> str:
    """``user_id:token`` -> ``user_id`` (RecBole's typed header)."""
    return field.rsplit(":", 1)[0] if ":" in field else field


def load_interactions(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout, items_path: Path) -> bool:
    """Fill ``raw`` from ``path``; every item must be in the table ``catalog_ids(item_id)`` (read from
    ``items_path``, named in the error). Returns whether the file has times (a RecBole file may have none: its
    order is then each user's order, and ``ts`` the row number)."""
    if path.suffix == ".parquet":
        return _load_parquet(con, path, layout, items_path)
    header = None if layout.names else header_fields(path, layout.delimiter, layout.encoding)
    names = list(layout.names) if layout.names else (layout.column_names(header) if header else None)
    fast = names is not None and _has_columns(names, layout) and load_delimited(
        con, path, "inter_text", names, header=layout.names is None, delimiter=layout.delimiter, quote=layout.quote,
        encoding=layout.encoding)
    if not fast:
        return _load_python(con, path, layout, items_path)
    offset = 1 if layout.names else 2
    user, item = _q(layout.user), _q(layout.item)
    time = _q(layout.time) if layout.time and layout.time in names else None
    suspect = [f"NOT regexp_matches({user}, '{VISIBLE}')", f"NOT regexp_matches({item}, '{VISIBLE}')",
               f"{item} NOT IN (SELECT item_id FROM catalog_ids)"]
    if time:
        suspect += [f"NOT regexp_full_match({time}, '-?[0-9]{{1,15}}(\\.[0-9]{{1,17}})?')",
                    f"abs(TRY_CAST({time} AS DOUBLE)) >= {layout.max_time}"]
    bad = con.execute(f"SELECT *, rowid + {offset} AS _line FROM inter_text WHERE {' OR '.join(suspect)} "
                      "ORDER BY rowid LIMIT 1000").df()
    if len(bad) or not con.execute("SELECT count(*) FROM inter_text").fetchall()[0][0]:
        if len(bad) < 1000:  # all the suspects: the first error among them is the file's first error
            _checked(bad.astype(str), path, layout, items_path, con)
        con.execute("DROP TABLE inter_text")  # a row the SQL suspected but Python accepts: Python reads it all
        return _load_python(con, path, layout, items_path)
    ts = f"CAST({time} AS DOUBLE)" if time else f"(rowid + {offset})::DOUBLE"
    con.execute(f"CREATE TABLE raw AS SELECT {user} AS user, {item} AS item, {ts} AS ts, rowid + {offset} AS line "
                "FROM inter_text")
    con.execute("DROP TABLE inter_text")
    return time is not None


def _load_python(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout, items_path: Path) -> bool:
    """``raw`` from the reference reader (the whole file in Python); whether the file has times."""
    table = _python_table(path, layout)
    timed = bool(layout.time) and layout.time in table.columns
    frame = _checked(table, path, layout, items_path, con)
    con.register("raw_frame", frame)
    con.execute("CREATE TABLE raw AS SELECT user, item, ts::DOUBLE AS ts, line FROM raw_frame")
    con.unregister("raw_frame")
    return timed


def _has_columns(names: list[str], layout: Layout) -> bool:
    return all(name in names for name in layout.required())


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _load_parquet(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout, items_path: Path) -> bool:
    """Parquet: columns of any type (ids as their text, times as numbers); errors name the row (1-based)."""
    columns = load_parquet(con, path, "inter_parquet")
    names = layout.column_names(columns)
    if names != columns:
        for old, new in zip(columns, names):
            if old != new:
                con.execute(f"ALTER TABLE inter_parquet RENAME COLUMN {_q(old)} TO {_q(new)}")
    for column in layout.required():
        if column not in names:
            raise DataError(path, f"missing column (columns: {','.join(columns)})", field=column)
    time = layout.time if layout.time and layout.time in names else None
    if time:
        kind = con.execute(f"SELECT typeof({_q(time)}) FROM inter_parquet LIMIT 1").fetchall()
        cast = f"epoch({_q(time)})" if kind and "TIMESTAMP" in kind[0][0] else f"TRY_CAST({_q(time)} AS DOUBLE)"
    else:
        cast = "line::DOUBLE"
    con.execute(f"""CREATE TABLE raw AS SELECT coalesce({_q(layout.user)}::VARCHAR, '') AS user,
        coalesce({_q(layout.item)}::VARCHAR, '') AS item, {cast} AS ts, line FROM inter_parquet""")
    con.execute("DROP TABLE inter_parquet")
    bad = con.execute(f"""SELECT user, item, ts, line FROM raw WHERE NOT regexp_matches(user, '{VISIBLE}')
        OR NOT regexp_matches(item, '{VISIBLE}') OR item NOT IN (SELECT item_id FROM catalog_ids)
        OR ts IS NULL OR NOT isfinite(ts) OR abs(ts) >= {layout.max_time} ORDER BY line LIMIT 1000""").df()
    if not con.execute("SELECT count(*) FROM raw").fetchall()[0][0]:
        raise DataError(path, "no interactions: the file has no rows")
    if len(bad):
        frame = pd.DataFrame({layout.user: bad["user"], layout.item: bad["item"],
                              **({layout.time: bad["ts"].map(lambda t: "" if pd.isna(t) else repr(float(t)))}
                                 if time else {}), "_line": bad["line"]})
        _checked(frame, path, layout, items_path, con)  # raises the first bad row's error; suspects may be fine
    return time is not None


def _python_table(path: Path, layout: Layout) -> pd.DataFrame:
    """The whole file read in Python as strings with ``_line``: the reference reader, for files duckdb cannot read
    plainly (quoted line ends, blank lines, CR line ends, bad bytes) or whose rows it suspects."""
    if layout.delimiter == ",":
        frame = read_csv(path, (), None)
        frame = frame.rename(columns=dict(zip(frame.columns, layout.column_names(list(frame.columns)))))
    else:
        frame = read_plain(path, layout.names, layout.delimiter, layout.encoding)
        frame = frame.rename(columns=dict(zip(frame.columns, layout.column_names(list(frame.columns)))))
    for column in layout.required():
        if column not in frame.columns:
            header = ",".join(c for c in frame.columns if c != "_line")
            raise DataError(path, f"missing column (header: {header})", row=1, field=column)
    if frame.empty:
        raise DataError(path, "no interactions: the file has a header but no rows", row=1)
    return frame


def read_plain(path: Path, names: tuple[str, ...] | None, delimiter: str, encoding: str) -> pd.DataFrame:
    """A file of ``delimiter``-separated fields without quoting (RecBole, MovieLens ``.dat``) as strings with
    ``_line``; ``names`` for a file without a header. Blank lines are skipped; a row with another number of fields
    than the header is an error naming it."""
    data = _read_bytes(path)
    text = _decode(path, data, is_csv=False) if encoding == "utf-8" else data.decode(encoding)
    lines = _split_lines(text)
    rows, numbers = [], []
    header = list(names) if names else None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split(delimiter)
        if header is None:
            header = fields
            continue
        if len(fields) != len(header):
            raise DataError(path, f"expected {len(header)} fields separated by {delimiter!r}, got {len(fields)}",
                            row=number)
        rows.append(fields)
        numbers.append(number)
    if header is None:
        raise DataError(path, "file is empty (expected a header line)", row=1)
    frame = pd.DataFrame(rows, columns=header, dtype=object) if rows else pd.DataFrame(columns=header, dtype=object)
    frame["_line"] = np.array(numbers, dtype=np.int64)
    return frame


def _checked(frame: pd.DataFrame, path: Path, layout: Layout, items_path: Path,
             con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Check ids, times and items in Python (the wording of every error) and return ``user, item, ts, line``."""
    for column in (layout.user, layout.item):
        empty = frame[column].astype(str).str.strip() == ""
        if empty.any():
            k = int(empty.to_numpy().argmax())
            name = "user" if column == layout.user else "item"
            raise DataError(path, f"{name} id is empty", row=int(frame["_line"].iat[k]), field=column)
    if layout.time and layout.time in frame.columns:
        times = pd.to_numeric(frame[layout.time], errors="coerce")
        bad = times.isna() | ~np.isfinite(times) | (times.abs() >= layout.max_time)
        if bad.any():
            k = int(bad.to_numpy().argmax())
            raw = str(frame[layout.time].iat[k])
            message = ("timestamp is missing" if not raw.strip() or raw == "nan"
                       else f"not {layout.time_unit}: {short(raw)}")
            if np.isfinite(times.iat[k]) and abs(times.iat[k]) >= layout.max_time:
                message += " (out of range; milliseconds? divide by 1000)"
            raise DataError(path, message, row=int(frame["_line"].iat[k]), field=layout.time)
    else:
        times = frame["_line"].astype("float64")
    known = {row[0] for row in con.execute(
        "SELECT item_id FROM catalog_ids WHERE item_id IN (SELECT UNNEST($1::VARCHAR[]))",
        [frame[layout.item].astype(str).unique().tolist()]).fetchall()}
    unknown = ~frame[layout.item].astype(str).isin(known)
    if unknown.any():
        k = int(unknown.to_numpy().argmax())
        raise DataError(path, f"unknown item id {frame[layout.item].iat[k]!r} (not in {items_path.name})",
                        row=int(frame["_line"].iat[k]), field=layout.item)
    return pd.DataFrame({"user": frame[layout.user].astype(object), "item": frame[layout.item].astype(object),
                         "ts": times.astype("float64").to_numpy(), "line": frame["_line"].astype("int64").to_numpy()})
