"""Reading big input files into duckdb tables as a stream (duckdb's read_csv / read_json / read_parquet, gzip
included), with the checks that decide whether duckdb's reading can be trusted to equal the Python readers'.

duckdb reads a well-formed file; the Python readers of :mod:`bearrec.data.parsing` remain the reference for
everything else. A loader here returns ``False`` (and leaves no table) whenever its file is not plainly
well-formed: duckdb refuses it, a record spans several lines or a line is blank (then a record's number is not
its line), a line ends in a lone CR, or a check of the format finds a value the Python reader might word an
error about. The caller then reads that file with the Python reader, which either raises the one-line error
(file, row, field) or gives the same rows. So every error keeps its exact wording, and a clean file of any size
never enters Python.
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import duckdb

from bearrec.data.dataset import DataError

CHUNK = 1 << 24

# Checks written in SQL over VARCHAR values; "suspect" values send the file to the Python reader.
VISIBLE = "[!-~]"  # an id with one printable ASCII character is not blank whatever str.strip() removes


def sql_string(text: str | Path) -> str:
    """``text`` as a SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


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
            cr += chunk.count(b"\r")
            crlf += chunk.count(b"\r\n") + (last == b"\r" and chunk[:1] == b"\n")
            last, size = chunk[-1:], size + len(chunk)
    return lf + cr - crlf + (size > 0 and last not in (b"\n", b"\r")), cr != crlf


@contextmanager
def in_file_order(con: duckdb.DuckDBPyConnection, path: Path) -> Iterator[Future]:
    """Read a file into a table (in its order: the connection preserves insertion order, so ``rowid`` is the
    record's number), then count the file's lines; yields the count's future (:func:`scan_lines`)."""
    future: Future = Future()
    yield future
    try:
        future.set_result(scan_lines(path))
    except (OSError, EOFError, zlib.error) as err:
        future.set_exception(err)


def one_record_per_line(con: duckdb.DuckDBPyConnection, table: str, scan: Future, header_lines: int) -> bool:
    """Whether record k of ``table`` (insertion order) sits on line k + header_lines of the scanned file."""
    try:
        lines, lone_cr = scan.result()
    except (OSError, EOFError, zlib.error):
        return False
    records = int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
    return not lone_cr and lines == records + header_lines


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
    select = ", ".join(f"coalesce(c{i}, '') AS {_ident(name)}" for i, name in enumerate(names))
    with in_file_order(con, path) as scan:
        try:
            con.execute(f"""CREATE TABLE {table} AS SELECT {select} FROM read_csv({file_literal(con, path)},
                header = {str(header).lower()}, auto_detect = false, columns = {columns},
                delim = {sql_string(delimiter)}, {quoting}, strict_mode = true, null_padding = false,
                encoding = {sql_string(encoding)})""")
        except duckdb.Error:
            con.execute(f"DROP TABLE IF EXISTS {table}")
            return False
    if not one_record_per_line(con, table, scan, int(header)):
        con.execute(f"DROP TABLE {table}")
        return False
    return True


def load_json_lines(con: duckdb.DuckDBPyConnection, path: Path, table: str, fields: tuple[str, ...]) -> bool:
    """Table ``table`` with ``fields`` as duckdb JSON values (NULL when absent), in file order (``rowid`` r is line
    r + 1); ``False`` (no table) when duckdb cannot read the file as JSON lines or a record is not on its own
    line."""
    if not path.is_file():
        return False
    columns = "{" + ", ".join(f"{sql_string(name)}: 'JSON'" for name in fields) + "}"
    select = ", ".join(_ident(name) for name in fields)
    with in_file_order(con, path) as scan:
        try:
            # duckdb's default maximum_object_size (16 MB a line): 256 MB took the peak RSS at 10^7 reviews from
            # 2.0 GB to 8.3 GB; a longer line makes duckdb refuse the file, and the Python reader reads it
            con.execute(f"""CREATE TABLE {table} AS SELECT {select} FROM read_json({file_literal(con, path)},
                format = 'newline_delimited', columns = {columns})""")
        except duckdb.Error:
            con.execute(f"DROP TABLE IF EXISTS {table}")
            return False
    if not one_record_per_line(con, table, scan, 0):
        con.execute(f"DROP TABLE {table}")
        return False
    return True


def load_parquet(con: duckdb.DuckDBPyConnection, path: Path, table: str) -> list[str]:
    """Table ``table`` with every column of a parquet file and ``line`` (its row, 1-based); returns the column
    names. Parquet has no lines: errors name the row."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        con.execute(f"CREATE TABLE {table} AS SELECT *, file_row_number + 1 AS line "
                    f"FROM read_parquet({file_literal(con, path)}, file_row_number = true)")
    except duckdb.Error as err:
        reason = str(err).strip().splitlines()[0][:160]
        raise DataError(path, f"not a readable parquet file ({reason})") from None
    columns = [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
    return [c for c in columns if c not in ("line", "file_row_number")]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
