"""The Amazon review dumps: ``amazon`` (2014 and 2018 releases: ``reviewerID``, ``asin``, ``unixReviewTime`` in
seconds; metadata lines of JSON or, in 2014, Python dict literals with ``asin`` and ``title``) and ``amazon2023``
(McAuley Lab's Amazon Reviews 2023: ``user_id``, ``parent_asin``, ``timestamp`` in milliseconds; metadata with
``parent_asin`` and ``title``). Either file may be gzipped.

Each reader fills the table ``raw`` of :mod:`bearrec.data.pipeline` and returns the items of reviewed products
(``item_id, title, _line``). duckdb reads the files as a stream; a reviews file it cannot read plainly is read by
the Python reader, which words the error, and in one it reads, only the rows the checks below suspect are read
again in Python (:mod:`bearrec.data.streams`). A metadata file with a suspect id is read by the Python reader.
A metadata dump covers a whole category: only the lines of reviewed items are checked (in ``amazon`` the lines
whose ``asin`` a regex sees as unreviewed are not even parsed, as before).
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd

from bearrec.checks import short
from bearrec.data.dataset import DataError
from bearrec.data.engine import Steps, table_rows
from bearrec.data.parsing import _field, _id_field, _meta_asin, _unix_seconds, _unix_time, read_json_lines
from bearrec.data.streams import NONBLANK, chunks, differing, load_json_lines, raw_from_frame, rewrite_raw, sql_ident

MAX_UNIX_MILLIS = 10**14  # year 5138 in milliseconds; Amazon 2023 timestamps are about 1.6e12


# (user, item, time, time check) per format; the check is SQL over a JSON value ``v``
REVIEW_FIELDS = {
    "amazon": ("reviewerID", "asin", "unixReviewTime", 11),
    "amazon2023": ("user_id", "parent_asin", "timestamp", 14),
}
META_ID = {"amazon": "asin", "amazon2023": "parent_asin"}


def _id_ok(column: str) -> str:
    """SQL: the JSON value is an id the Python reader reads the same way (a non-blank string or a plain integer)."""
    return (f"((json_type({column}) = 'VARCHAR' AND regexp_matches({column} ->> '$', {NONBLANK})) OR "
            f"(json_type({column}) IN ('BIGINT', 'UBIGINT') AND regexp_full_match({column}::VARCHAR, '0|-?[1-9][0-9]*')))")


def _time_ok(column: str, digits: int) -> str:
    """SQL: an integer (or a string of one) of at most ``digits`` digits, below the format's bound."""
    pattern = f"'-?[0-9]{{1,{digits}}}'"
    return (f"((json_type({column}) IN ('BIGINT', 'UBIGINT') AND regexp_full_match({column}::VARCHAR, {pattern})) OR "
            f"(json_type({column}) = 'VARCHAR' AND regexp_full_match({column} ->> '$', {pattern})))")


def load(con: duckdb.DuckDBPyConnection, fmt: str, reviews: Path, meta: Path, steps: Steps) -> pd.DataFrame:
    """Fill ``raw`` from the reviews and return the reviewed items of the metadata (see the module docstring)."""
    with steps.step(f"reading {reviews.name}", con):
        if not _load_reviews(con, fmt, reviews):  # duckdb cannot read it plainly, or it is empty: the Python reader
            raw_from_frame(con, _python_reviews(fmt, reviews))  # reads it or words its error
    with steps.step(f"reading {meta.name}", con):
        items = _fast_meta(con, fmt, meta)
        if items is None:
            reviewed = {row[0] for row in con.execute("SELECT DISTINCT item FROM raw").fetchall()}
            items = _python_meta(fmt, meta, reviewed)
    return items


def _load_reviews(con: duckdb.DuckDBPyConnection, fmt: str, path: Path) -> bool:
    """``raw`` from the reviews as duckdb reads them, in one pass over the file; ``False`` (no table) when it cannot
    read them plainly. The rows the SQL checks suspect (an id or time the Python reader might refuse or read
    otherwise, such as a time written 1e9) are read again in Python from their JSON values, in file order and a
    chunk at a time: the first bad one raises its one-line error, and the values Python reads otherwise are
    rewritten in ``raw``."""
    *names, digits = REVIEW_FIELDS[fmt]
    user, item, stamp = map(sql_ident, names)
    # at most `digits` digits: below 1e11 s (amazon) and 1e14 ms (amazon2023), the Python readers' bounds
    suspect = f"NOT coalesce({_id_ok(user)} AND {_id_ok(item)} AND {_time_ok(stamp, digits)}, false)"
    kept = ", ".join(f"CASE WHEN {suspect} THEN {column}::VARCHAR END AS {name}_json"  # JSON text of suspects only
                     for column, name in ((user, "user"), (item, "item"), (stamp, "time")))
    select = (f"{user} ->> '$' AS user, {item} ->> '$' AS item, TRY_CAST({stamp} ->> '$' AS DOUBLE) AS ts, "
              f"{suspect} AS suspect, {kept}")
    if not load_json_lines(con, path, "reviews", tuple(names), select) or not table_rows(con, "reviews"):
        con.execute("DROP TABLE IF EXISTS reviews")
        return False
    con.execute("CREATE TABLE raw AS SELECT user, item, ts, rowid + 1 AS line FROM reviews")
    con.execute("CREATE TABLE suspects AS SELECT * EXCLUDE (suspect), rowid + 1 AS line FROM reviews WHERE suspect")
    con.execute("DROP TABLE reviews")
    fixes = []
    for chunk in chunks(con, "SELECT * FROM suspects ORDER BY line"):
        records = zip(*(chunk[f"{field}_json"].map(lambda v: None if pd.isna(v) else json.loads(v))
                        for field in ("user", "item", "time")))
        lines = chunk["line"].to_numpy()
        rows = [_review(fmt, dict(zip(names, values)), path, int(line)) for values, line in zip(records, lines)]
        fixes.append(differing(pd.DataFrame(rows, columns=["user", "item", "ts"]).assign(line=lines), chunk))
    con.execute("DROP TABLE suspects")
    rewrite_raw(con, fixes, path, names[2])
    return True


def _fast_meta(con: duckdb.DuckDBPyConnection, fmt: str, meta: Path) -> pd.DataFrame | None:
    """The reviewed items of the metadata read by duckdb, or ``None`` when the Python reader must read it."""
    key = META_ID[fmt]
    if not load_json_lines(con, meta, "meta_json", (key, "title")):
        return None
    k = sql_ident(key)
    # The lines the Python reader parses: those whose id is not a plain string (it words their error) and those
    # of reviewed items. In `amazon` a regex finds the asin in the raw line, so the id must read the same raw.
    plain = f"json_type({k}) = 'VARCHAR' AND regexp_full_match({k} ->> '$', '[^\"''\\\\]*')"
    if fmt == "amazon":
        plain += f" AND {k}::VARCHAR = '\"' || ({k} ->> '$') || '\"'"
    try:
        con.execute(f"""CREATE TABLE meta_rows AS SELECT {k} AS id, title, rowid + 1 AS line FROM meta_json
            WHERE NOT coalesce({plain}, false) OR ({k} ->> '$') IN (SELECT DISTINCT item FROM raw)""")
        bad, rows = con.execute(f"""SELECT count(*) FILTER (WHERE NOT coalesce({_id_ok('id')} AND
            (title IS NULL OR json_type(title) IN ('VARCHAR', 'NULL')), false)), count(*) FROM meta_rows""").fetchall()[0]
        if bad or not rows:
            return None
        return con.execute("""SELECT id ->> '$' AS item_id, coalesce(title ->> '$', '') AS title, line AS _line
            FROM meta_rows QUALIFY row_number() OVER (PARTITION BY id ->> '$' ORDER BY line) = 1
            ORDER BY line""").df().astype({"item_id": object, "title": object})
    finally:
        con.execute("DROP TABLE IF EXISTS meta_rows")
        con.execute("DROP TABLE IF EXISTS meta_json")


# ---------------------------------------------------------------------------------- the Python readers
def _python_reviews(fmt: str, path: Path) -> pd.DataFrame:
    """Reviews read line by line in Python: the reference, which words every error (file, row, field)."""
    users, items, times, lines = [], [], [], []
    for line, record in read_json_lines(path):
        user, item, time = _review(fmt, record, path, line)
        users.append(user)
        items.append(item)
        times.append(time)
        lines.append(line)
    if not users:
        raise DataError(path, "no reviews: the file holds no JSON line")
    return pd.DataFrame({"user": pd.Series(users, dtype=object), "item": pd.Series(items, dtype=object),
                         "ts": pd.Series(times, dtype="float64"), "line": pd.Series(lines, dtype="int64")})


def _review(fmt: str, record: dict, path: Path, line: int) -> tuple[str, str, int]:
    """(user, item, time) of one review record, or the one-line error of its first bad field."""
    user_key, item_key, stamp_key, _ = REVIEW_FIELDS[fmt]
    user, item = (_id_field(record, key, path, line) for key in (user_key, item_key))
    value = _field(record, stamp_key, path, line)
    time = _unix_seconds(value, path, line, stamp_key) if fmt == "amazon" else _unix_millis(value, path, line, stamp_key)
    return user, item, time


def _python_meta(fmt: str, path: Path, reviewed: set[str]) -> pd.DataFrame:
    """The reviewed items of a metadata file read in Python (2014's Python literals, or a file duckdb refused)."""
    key = META_ID[fmt]

    def unreviewed(text: str) -> bool:
        if fmt != "amazon":
            return False
        asin = _meta_asin(text)
        return asin is not None and asin not in reviewed

    ids, titles, lines = [], [], []
    for line, record in read_json_lines(path, skip=unreviewed):
        value = record.get(key)
        if fmt == "amazon2023" and isinstance(value, str) and value.strip() and value not in reviewed:
            continue
        ids.append(_id_field(record, key, path, line))
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(path, f"title must be a string, got {type(title).__name__} {short(title)}", row=line,
                            field="title")
        titles.append(title or "")
        lines.append(line)
    if not ids:
        raise DataError(path, "no metadata line for any reviewed item: no item has a title")
    # The metadata dumps repeat some lines; the first one wins.
    return pd.DataFrame({"item_id": pd.Series(ids, dtype=object), "title": pd.Series(titles, dtype=object),
                         "_line": lines}).drop_duplicates("item_id")


def _unix_millis(value, path: Path, line: int, name: str) -> int:
    """A Unix time in milliseconds: an integer (or a string of one) within +-MAX_UNIX_MILLIS."""
    return _unix_time(value, path, line, name, limit=MAX_UNIX_MILLIS, unit="milliseconds")
