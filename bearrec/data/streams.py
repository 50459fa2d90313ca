"""Reading big input files into duckdb tables as a stream (duckdb's read_csv / read_json / read_parquet, gzip
included), with the checks that decide whether duckdb's reading can be trusted to equal the Python readers'.

duckdb reads a well-formed file; the Python readers of :mod:`bearrec.data.parsing` remain the reference for
everything else. A loader here returns ``False`` (and leaves no table) whenever its file is not plainly
well-formed: duckdb refuses it, a record spans several lines or a line is blank (then a record's number is not
its line), or a line ends in a lone CR. The caller then reads that file with the Python reader, which either
raises the one-line error (file, row, field) or gives the same rows.

In a well-formed file, SQL checks of each format mark the rows whose values the Python reader might refuse or
read otherwise (a time written 1e9, an integer id in JSON that is not plain). Only those rows reach Python
(:func:`chunks`, a chunk at a time): the first bad one raises the Python reader's error, and a value Python reads
otherwise is rewritten in ``raw`` (:func:`differing`, :func:`rewrite_raw`). So every error keeps its exact
wording, and a file of any size with valid rows, in any script, never enters Python whole.
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd

from bearrec.data.dataset import DataError

CHUNK = 1 << 24
SUSPECT_VECTORS = 32  # suspect rows reach Python 32 x 2,048 at a time: a file of suspects stays out of memory

# The characters str.strip() removes (str.isspace(); pandas' .str.strip() removes the same ones, and a test checks
# both against every code point). An id with any other character is not blank: an SQL check of ids exactly as the
# Python readers' "id is empty", for ids in any script.
WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + \
    "\u2028\u2029\u202f\u205f\u3000"
NONBLANK = "'[^" + "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE) + "]'"  # SQL: an RE2 class, \x{9} ...


def sql_string(text: str | Path) -> str:
    """``text`` as a SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """``name`` as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


GLOB = frozenset("*?[]{}")  # characters duckdb's readers take as a file pattern, not as part of a name


def file_literal(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """``path`` as the SQL string duckdb's readers take. A name with a glob character would be read as a pattern
    (``inter[1].parquet`` matches ``inter1.parquet``): such a file is linked under a plain name in the scratch
    folder first, its suffixes (``.jsonl.gz``) kept."""
    if not GLOB & set(str(path)):
        return sql_string(path)
    scratch = Path(con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0]).parent / "inputs"
    scratch.mkdir(exist_ok=True)
    suffixes = "".join(s for s in path.suffixes if not GLOB & set(s))
    link = scratch / f"input{sum(1 for _ in scratch.iterdir())}{suffixes}"
    link.symlink_to(path.resolve())
    return sql_string(link)


def scan_lines(path: Path) -> tuple[int, bool]:
    """(lines, has a lone CR) of a text file, gzip or not, read in chunks: lines end at LF, CRLF or CR, and a last
    line without an end counts. Raises ``OSError``/``EOFError``/``zlib.error`` on an unreadable gzip file."""
    opener = gzip.open if path.suffix == ".gz" else open
    lf = cr = crlf = 0
    last, size = b"", 0
    with opener(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            lf += chunk.count(b"\n")
            crs = chunk.count(b"\r")  # most files have none: then no CRLF to count either
            cr += crs
            crlf += (crs and chunk.count(b"\r\n")) + (last == b"\r" and chunk[:1] == b"\n")
            last, size = chunk[-1:], size + len(chunk)
    return lf + cr - crlf + (size > 0 and last not in (b"\n", b"\r")), cr != crlf


def one_record_per_line(con: duckdb.DuckDBPyConnection, table: str, path: Path, header_lines: int) -> bool:
    """Whether record k of ``table`` (insertion order: ``rowid`` is the record's number) sits on line
    k + header_lines of ``path`` (:func:`scan_lines`; an unreadable gzip file is not)."""
    try:
        lines, lone_cr = scan_lines(path)
    except (OSError, EOFError, zlib.error):
        return False
    records = int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
    return not lone_cr and lines == records + header_lines


def _load_in_order(con: duckdb.DuckDBPyConnection, table: str, select: str, path: Path, header_lines: int) -> bool:
    """``CREATE TABLE table AS select``, kept when duckdb reads ``path`` as one record per line (``False``, no
    table, otherwise)."""
    try:
        con.execute(f"CREATE TABLE {table} AS {select}")
    except duckdb.Error:
        con.execute(f"DROP TABLE IF EXISTS {table}")
        return False
    if not one_record_per_line(con, table, path, header_lines):
        con.execute(f"DROP TABLE {table}")
        return False
    return True


def header_fields(path: Path, delimiter: str = ",", encoding: str = "utf-8") -> list[str] | None:
    """The header of a delimited file (first line), or ``None`` when it is not plain (BOM, undecodable)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            first = handle.readline(1 << 20)
        text = first.decode(encoding)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError):
        return None
    if text.startswith("\ufeff") or "\r" in text.rstrip("\r\n"):
        return None
    text = text.rstrip("\r\n")
    if delimiter == ",":
        return next(csv.reader([text]), None)
    return text.split(delimiter)


def load_delimited(con: duckdb.DuckDBPyConnection, path: Path, table: str, names: list[str], header: bool,
                   delimiter: str = ",", quote: str = '"', encoding: str = "utf-8") -> bool:
    """Table ``table`` with the file's columns as VARCHAR named ``names`` (empty cells ""), in file order: the
    record of ``rowid`` r is on line r + 1 + header. ``False`` (no table) when the file is not plainly one record
    per line."""
    if not path.is_file() or len(set(names)) != len(names):
        return False
    columns = "{" + ", ".join(f"{sql_string(f'c{i}')}: 'VARCHAR'" for i in range(len(names))) + "}"
    quoting = f"quote = {sql_string(quote)}, escape = {sql_string(quote)}" if quote else "quote = ''"
    select = ", ".join(f"coalesce(c{i}, '') AS {sql_ident(name)}" for i, name in enumerate(names))
    return _load_in_order(con, table, f"""SELECT {select} FROM read_csv({file_literal(con, path)},
        header = {str(header).lower()}, auto_detect = false, columns = {columns}, delim = {sql_string(delimiter)},
        {quoting}, strict_mode = true, null_padding = false, encoding = {sql_string(encoding)})""", path, int(header))


def load_json_lines(con: duckdb.DuckDBPyConnection, path: Path, table: str, fields: tuple[str, ...],
                    select: str | None = None) -> bool:
    """Table ``table`` of ``select`` (SQL over ``fields`` as duckdb JSON values, NULL when absent; default: the
    fields themselves), in file order (``rowid`` r is line r + 1); ``False`` (no table) when duckdb cannot read the
    file as JSON lines or a record is not on its own line."""
    if not path.is_file():
        return False
    columns = "{" + ", ".join(f"{sql_string(name)}: 'JSON'" for name in fields) + "}"
    select = select or ", ".join(sql_ident(name) for name in fields)
    # duckdb's default maximum_object_size (16 MB a line): 256 MB took the peak RSS at 10^7 reviews from 2.0 GB to
    # 8.3 GB; a longer line makes duckdb refuse the file, and the Python reader reads it
    return _load_in_order(con, table, f"""SELECT {select} FROM read_json({file_literal(con, path)},
        format = 'newline_delimited', columns = {columns})""", path, 0)


def load_parquet(con: duckdb.DuckDBPyConnection, path: Path, table: str) -> dict[str, str]:
    """Table ``table`` with every column of a parquet file, in file order (``rowid + 1`` is the row, 1-based:
    parquet has no lines, so errors name the row); returns the columns' names and duckdb types. No column is
    added, so a file's own ``line`` or ``file_row_number`` stays one of its columns."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_parquet({file_literal(con, path)})")
    except duckdb.Error as err:
        reason = str(err).strip().splitlines()[0][:160]
        raise DataError(path, f"not a readable parquet file ({reason})") from None
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE {table}").fetchall()}


# ---------------------------------------------------------------------------------- the table raw
def raw_from_frame(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> None:
    """Table ``raw(user, item, ts, line)`` of :mod:`bearrec.data.pipeline` from a Python reader's frame."""
    con.register("raw_frame", frame)
    con.execute("CREATE TABLE raw AS SELECT user, item, ts::DOUBLE AS ts, line::BIGINT AS line FROM raw_frame")
    con.unregister("raw_frame")


def chunks(con: duckdb.DuckDBPyConnection, query: str) -> Iterator[pd.DataFrame]:
    """The rows of ``query`` as pandas frames of at most :data:`SUSPECT_VECTORS` x 2,048 rows, in its order."""
    result = con.execute(query)
    while len(frame := result.fetch_df_chunk(SUSPECT_VECTORS)):
        yield frame


def differing(python: pd.DataFrame, sql: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``python`` (``user, item, ts, line``: a Python reader's reading of suspect rows) that differ
    from ``sql`` (duckdb's reading of the same rows, in the same order)."""
    same = ((python["user"].to_numpy() == sql["user"].to_numpy()) & (python["item"].to_numpy() == sql["item"].to_numpy())
            & (python["ts"].to_numpy(dtype="float64") == sql["ts"].to_numpy(dtype="float64", na_value=float("nan"))))
    return python.loc[~same, ["user", "item", "ts", "line"]]


def rewrite_raw(con: duckdb.DuckDBPyConnection, fixes: list[pd.DataFrame], path: Path, time: str) -> None:
    """Give the rows of ``raw`` in ``fixes`` (:func:`differing`) the Python reader's values, then make sure every
    ``ts`` was read (the suspects' checks vouch for that; ``time`` names the field if not)."""
    fixes = [frame for frame in fixes if len(frame)]
    if fixes:
        con.register("fixes_frame", pd.concat(fixes, ignore_index=True).astype({"user": object, "item": object}))
        con.execute("UPDATE raw SET user = f.user, item = f.item, ts = f.ts::DOUBLE FROM fixes_frame f "
                    "WHERE raw.line = f.line")
        con.unregister("fixes_frame")
    unread = con.execute("SELECT min(line) FROM raw WHERE ts IS NULL").fetchall()[0][0]
    if unread is not None:
        raise DataError(path, "timestamp could not be read as a number", row=int(unread), field=time)
