"""Which rows duckdb reads and which the Python readers read: valid rows the SQL checks only suspect (ids in any
script, times such as 1e9) stay in the streamed table, each suspect checked in Python a chunk at a time, and only a
bad row is an error, the one the Python reader gives; parquet's own columns never take over the row number."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from test_formats import to_parquet, write_amazon2023
from test_readers import REVIEWS, assert_names, split_rows, write_interactions

from bearrec.data.dataset import DataError
from bearrec.data.readers import read_source
from bearrec.data.streams import NONBLANK, WHITESPACE, differing, rewrite_raw

SPLITS = ("train", "valid", "test")
CJK = {"u1": "张三", "u3": "\u3000李四"}  # an ideographic space first: Python's strip() removes it, not the name
OPTIONS = {"min_interactions": 2, "history_len": 2}


def rows(dataset) -> dict:
    return {name: split_rows(dataset, name) for name in SPLITS}


@contextmanager
def python_only():
    """Every interactions file read whole by the Python reader (the reference)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("bearrec.data.tables.load_delimited", lambda *a, **k: False)
        patch.setattr("bearrec.data.amazon.load_json_lines", lambda *a, **k: False)
        yield


@contextmanager
def streamed_only():
    """Reading a file whole in Python fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("read whole in Python")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("bearrec.data.tables._load_python", refuse)
        patch.setattr("bearrec.data.amazon._python_reviews", refuse)
        yield


def outcome(fmt: str, paths, **options) -> dict | str:
    try:
        return rows(read_source(fmt, paths, **{**OPTIONS, **options}))
    except DataError as err:
        return str(err)


def both(fmt: str, paths, **options) -> tuple[dict | str, dict | str]:
    """(the streamed reading, the Python reader's) of the same files: rows, or the error's line."""
    with streamed_only():
        streamed = outcome(fmt, paths, **options)
    with python_only():
        return streamed, outcome(fmt, paths, **options)


def test_whitespace_is_what_python_and_pandas_strip() -> None:
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000]
    assert set(WHITESPACE) == {c for c in chars if not c.strip()}
    stripped = pd.Series(chars).astype(str).str.strip()
    assert set(WHITESPACE) == {c for c, s in zip(chars, stripped) if not s}
    con = duckdb.connect()
    assert con.execute(
        f"SELECT regexp_matches('张三', {NONBLANK}), regexp_matches(' \u3000\u2028\t', {NONBLANK})"
    ).fetchall() == [(True, False)]


def test_csv_with_cjk_ids_and_exponent_times_is_streamed(tmp_path: Path) -> None:
    plain = rows(read_source("interactions", write_interactions(tmp_path / "plain"), **OPTIONS))
    odd = [(CJK.get(u, u), i, f"{t}e0" if t % 2 else f"{t / 10}E1") for u, i, t in REVIEWS]
    streamed, python = both("interactions", write_interactions(tmp_path / "odd", odd))
    assert streamed == python
    renamed = {name: [(CJK.get(u, u), h, t) for u, h, t in split] for name, split in plain.items()}
    assert streamed == renamed


def test_amazon2023_with_cjk_ids_and_float_times_is_streamed(tmp_path: Path) -> None:
    reviews, meta = write_amazon2023(tmp_path / "odd", [(CJK.get(u, u), i, t) for u, i, t in REVIEWS])
    records = [json.loads(line) for line in reviews.read_text().splitlines()]
    for n, record in enumerate(records):  # 1.600000003e12 and "1600000003000 " are the same milliseconds
        record["timestamp"] = float(record["timestamp"]) if n % 2 else f" {record['timestamp']} "
    reviews.write_text("".join(json.dumps(r) + "\n" for r in records))
    streamed, python = both("amazon2023", (reviews, meta))
    assert streamed == python
    plain = rows(read_source("amazon2023", write_amazon2023(tmp_path / "plain"), **OPTIONS))
    assert streamed == {name: [(CJK.get(u, u), h, t) for u, h, t in split] for name, split in plain.items()}


@pytest.mark.parametrize("case", ["bad time late", "blank user after a bad time", "unknown item", "bad id type"])
def test_a_bad_row_among_many_suspects_is_the_python_readers_error(tmp_path: Path, case: str) -> None:
    """70,000 suspect rows (more than one chunk): the error is the one the Python reader gives, which checks blank
    users, then blank items, then times, then unknown items, each the first in the file."""
    log = [(f"u{n % 5000}", "ABCD"[n % 4], f"{n + 1}e0") for n in range(70_000)]
    if case == "bad time late":
        log[69_000] = (log[69_000][0], "A", "12:30")
    elif case == "blank user after a bad time":
        log[5], log[68_000] = (log[5][0], "A", "soon"), ("\u3000", "A", "1e0")
    elif case == "unknown item":
        log[67_000] = (log[67_000][0], "Q", "1e0")
    if case == "bad id type":
        reviews, meta = write_amazon2023(tmp_path, [(u, i, n) for n, (u, i, _) in enumerate(log[:70])])
        lines = reviews.read_text().splitlines()
        lines[60] = lines[60].replace('"user_id": "u60"', '"user_id": 1e3')
        reviews.write_text("\n".join(lines) + "\n")
        streamed, python = both("amazon2023", (reviews, meta))
        assert_names(streamed, reviews.name, 61, "user_id")
    else:
        streamed, python = both("interactions", write_interactions(tmp_path, log))
        row, field = {
            "bad time late": (69_002, "timestamp"),
            "blank user after a bad time": (68_002, "user"),
            "unknown item": (67_002, "item"),
        }[case]
        assert_names(streamed, "interactions.csv", row, field)
    assert streamed == python


def test_rows_duckdb_and_python_read_otherwise_are_rewritten(tmp_path: Path) -> None:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE raw AS SELECT * FROM (VALUES ('a', 'x', 1.0, 2), ('b', 'y', NULL, 3)) t(user, item, ts, line)"
    )
    sql = con.execute("SELECT * FROM raw ORDER BY line").df()
    python = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "ts": [1.0, 7.0], "line": [2, 3]})
    fixes = differing(python, sql)
    assert fixes["line"].tolist() == [3]
    rewrite_raw(con, [fixes], tmp_path / "f.csv", "timestamp")
    assert con.execute("SELECT ts FROM raw ORDER BY line").fetchall() == [(1.0,), (7.0,)]
    con.execute("UPDATE raw SET ts = NULL WHERE line = 2")
    with pytest.raises(DataError) as err:
        rewrite_raw(con, [], tmp_path / "f.csv", "timestamp")
    assert_names(err, "f.csv", 2, "timestamp")


def test_parquet_columns_named_line_or_file_row_number_stay_columns(tmp_path: Path) -> None:
    inter, items = write_interactions(tmp_path)
    want = rows(read_source("interactions", (inter, items), **OPTIONS))
    frame = pd.read_parquet(to_parquet(inter))
    n = len(frame)
    frame.assign(line=range(n, 0, -1), file_row_number=0, _bearrec_line=5).to_parquet(tmp_path / "inter.parquet")
    catalog = pd.read_parquet(to_parquet(items))
    catalog.assign(line=0, _line=9, file_row_number=3).to_parquet(tmp_path / "items.parquet")
    paths = (tmp_path / "inter.parquet", tmp_path / "items.parquet")
    assert rows(read_source("interactions", paths, **OPTIONS)) == want
    frame.loc[2, "user"] = " "
    frame.assign(line=100, file_row_number=100).to_parquet(paths[0])
    with pytest.raises(DataError, match="user id is empty") as err:
        read_source("interactions", paths, **OPTIONS)
    assert_names(err, "inter.parquet", 3, "user")


def test_parquet_dates_are_unix_seconds(tmp_path: Path) -> None:
    days = [(u, i, t * 86_400) for u, i, t in REVIEWS]
    inter, items = write_interactions(tmp_path, days)
    want = rows(read_source("interactions", (inter, items), **OPTIONS))
    frame = pd.read_parquet(to_parquet(inter))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s").dt.date  # a parquet DATE column
    frame.to_parquet(tmp_path / "dates.parquet")
    assert rows(read_source("interactions", (tmp_path / "dates.parquet", items), **OPTIONS)) == want
