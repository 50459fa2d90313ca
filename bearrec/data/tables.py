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
from bearrec.data.engine import table_rows
from bearrec.data.parsing import MAX_UNIX_SECONDS, _decode, _read_bytes, _split_lines, read_csv
from bearrec.data.streams import (
    NONBLANK,
    chunks,
    differing,
    header_fields,
    load_delimited,
    load_parquet,
    raw_from_frame,
    rewrite_raw,
    sql_ident,
)


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
    if not fast or not table_rows(con, "inter_text"):  # the Python reader words the error of an empty file
        con.execute("DROP TABLE IF EXISTS inter_text")
        return _load_python(con, path, layout, items_path)
    line = f"rowid + {1 if layout.names else 2}"
    time = sql_ident(layout.time) if layout.time and layout.time in names else None
    ts = f"TRY_CAST({time} AS DOUBLE)" if time else f"({line})::DOUBLE"
    columns = f"{sql_ident(layout.user)} AS user, {sql_ident(layout.item)} AS item, {ts} AS ts, {line} AS line"
    # a plain number of at most 15 + 17 digits is read alike by duckdb and pandas; any other time is a suspect
    plain = f"regexp_full_match(time, '-?[0-9]{{1,15}}(\\.[0-9]{{1,17}})?') AND abs(ts) < {layout.max_time}"
    _raw_and_suspects(con, "inter_text", columns, time or "''", f"NOT ({plain})" if time else "false")
    rewrite_raw(con, _checked_suspects(con, path, layout, items_path), path, layout.time or "")
    return time is not None


def _raw_and_suspects(con: duckdb.DuckDBPyConnection, table: str, columns: str, time: str, bad_time: str) -> None:
    """Tables ``raw`` (``columns`` of ``table``: user, item, ts, line) and ``suspects`` (its rows a Python check
    may refuse, with ``time``, the time's text, and ``bad_time``, an SQL test over ``ts`` and ``time``); drops
    ``table``."""
    con.execute(f"""CREATE TABLE suspects AS SELECT * FROM (SELECT *, {bad_time} AS bad_time
        FROM (SELECT {columns}, {time} AS time FROM {table})) WHERE {_SUSPECT}""")
    con.execute(f"CREATE TABLE raw AS SELECT {columns} FROM {table}")
    con.execute(f"DROP TABLE {table}")


# A row of `suspects` that a Python check may refuse: a blank id, a time flagged by its format, an unknown item
_SUSPECT = (f"NOT regexp_matches(user, {NONBLANK}) OR NOT regexp_matches(item, {NONBLANK}) OR bad_time OR "
            "item NOT IN (SELECT item_id FROM catalog_ids)")


def _checked_suspects(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout, items_path: Path) -> list[pd.DataFrame]:
    """Check the rows of the table ``suspects`` (``user, item, ts, line``, the ``time`` as text and ``bad_time``)
    as :func:`_checked` checks a whole file, in its order (blank users, then blank items, then times, then unknown
    items; each the first in the file), chunk by chunk; drop the table. Returns the rows whose time pandas reads
    otherwise than duckdb (:func:`differing`)."""
    for column in ("user", "item"):
        query = f"SELECT {column}, line FROM suspects WHERE NOT regexp_matches({column}, {NONBLANK}) ORDER BY line"
        for chunk in chunks(con, query):
            _refuse_blank(chunk[column], chunk["line"], path, layout, column)
    fixes = []
    for chunk in chunks(con, "SELECT user, item, time, ts, line FROM suspects WHERE bad_time ORDER BY line"):
        text = chunk["time"].where(chunk["time"].notna(), chunk["ts"].map(lambda t: repr(float(t))))  # parquet
        fixes.append(differing(chunk.assign(ts=_times(text, chunk["line"], path, layout)), chunk))
    unknown = con.execute("SELECT item, line FROM suspects WHERE item NOT IN (SELECT item_id FROM catalog_ids) "
                          "ORDER BY line LIMIT 1").fetchall()
    con.execute("DROP TABLE suspects")
    if unknown:
        raise DataError(path, f"unknown item id {unknown[0][0]!r} (not in {items_path.name})", row=int(unknown[0][1]),
                        field=layout.item)
    return fixes


def _load_python(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout, items_path: Path) -> bool:
    """``raw`` from the reference reader (the whole file in Python); whether the file has times."""
    table = _python_table(path, layout)
    raw_from_frame(con, _checked(table, path, layout, items_path, con))
    return bool(layout.time) and layout.time in table.columns


def _has_columns(names: list[str], layout: Layout) -> bool:
    return all(name in names for name in layout.required())


def _load_parquet(con: duckdb.DuckDBPyConnection, path: Path, layout: Layout, items_path: Path) -> bool:
    """Parquet: columns of any type (ids as their text, times as numbers, dates and timestamps as Unix seconds);
    errors name the row (1-based)."""
    types = load_parquet(con, path, "inter_parquet")
    source = dict(zip(layout.column_names(list(types)), types))  # the format's name -> the file's column
    require_columns(source, layout.required(), path, f"columns: {','.join(types)}")
    if not table_rows(con, "inter_parquet"):
        raise DataError(path, "no interactions: the file has no rows")
    time = sql_ident(source[layout.time]) if layout.time in source else None
    if time is None:
        ts = "(rowid + 1)::DOUBLE"
    elif types[source[layout.time]] == "DATE" or "TIMESTAMP" in types[source[layout.time]]:
        ts = f"epoch({time})"
    else:
        ts = f"TRY_CAST({time} AS DOUBLE)"
    columns = (f"coalesce({sql_ident(source[layout.user])}::VARCHAR, '') AS user, "
               f"coalesce({sql_ident(source[layout.item])}::VARCHAR, '') AS item, {ts} AS ts, rowid + 1 AS line")
    # a time duckdb cannot read as a number: its own text in the error ('' when missing), otherwise the number's
    text = f"CASE WHEN {ts} IS NULL THEN coalesce({time}::VARCHAR, '') END" if time else "''"
    bad = f"ts IS NULL OR NOT isfinite(ts) OR abs(ts) >= {layout.max_time}" if time else "false"
    _raw_and_suspects(con, "inter_parquet", columns, text, bad)
    _checked_suspects(con, path, layout, items_path)  # no fixes: the numbers are duckdb's
    return time is not None


def require_columns(columns, required, path: Path, listing: str, row: int | None = None) -> None:
    """A one-line error naming the first of ``required`` missing from ``columns`` (``listing`` says what the file
    has)."""
    for column in required:
        if column not in columns:
            raise DataError(path, f"missing column ({listing})", row=row, field=column)


def _python_table(path: Path, layout: Layout) -> pd.DataFrame:
    """The whole file read in Python as strings with ``_line``: the reference reader, for files duckdb cannot read
    plainly (quoted line ends, blank lines, CR line ends, bad bytes)."""
    if layout.delimiter == ",":
        frame = read_csv(path, (), None)
    else:
        frame = read_plain(path, layout.names, layout.delimiter, layout.encoding)
    frame = frame.rename(columns=dict(zip(frame.columns, layout.column_names(list(frame.columns)))))
    header = ",".join(c for c in frame.columns if c != "_line")
    require_columns(frame.columns, layout.required(), path, f"header: {header}", row=1)
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
    for column in ("user", "item"):
        _refuse_blank(frame[getattr(layout, column)], frame["_line"], path, layout, column)
    if layout.time and layout.time in frame.columns:
        times = _times(frame[layout.time], frame["_line"], path, layout)
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


def _refuse_blank(ids: pd.Series, lines: pd.Series, path: Path, layout: Layout, column: str) -> None:
    """The one-line error of the first blank id (``column``: "user" or "item"), if any."""
    empty = ids.astype(str).str.strip() == ""
    if empty.any():
        k = int(empty.to_numpy().argmax())
        raise DataError(path, f"{column} id is empty", row=int(lines.iat[k]), field=getattr(layout, column))


def _times(text: pd.Series, lines: pd.Series, path: Path, layout: Layout) -> pd.Series:
    """The times of ``text`` as pandas reads them; the one-line error of the first that is not a number within the
    format's bound."""
    times = pd.to_numeric(text, errors="coerce")
    bad = times.isna() | ~np.isfinite(times) | (times.abs() >= layout.max_time)
    if bad.any():
        k = int(bad.to_numpy().argmax())
        raw = str(text.iat[k])
        message = "timestamp is missing" if not raw.strip() or raw == "nan" else f"not {layout.time_unit}: {short(raw)}"
        if np.isfinite(times.iat[k]) and abs(times.iat[k]) >= layout.max_time:
            message += " (out of range; milliseconds? divide by 1000)"
        raise DataError(path, message, row=int(lines.iat[k]), field=layout.time)
    return times.astype("float64")
