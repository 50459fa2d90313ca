"""Reading the bytes of input files: gzip, UTF-8 (a line that is not names its row and field), LF, CRLF and
CR-only line ends, CSV with named columns, JSON lines (and Python-literal lines), ids and Unix times."""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from bearrec.checks import short
from bearrec.data.dataset import DataError

# Unix times in seconds fit comfortably inside +-1e11 (year 5138); larger values are milliseconds or garbage.
MAX_UNIX_SECONDS = 10**11


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


def read_csv(path: Path, columns: tuple[str, ...], aliases: dict[str, str] | None = None) -> pd.DataFrame:
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
    starts = None if _count_lines(text) == len(frame) + 1 else _record_starts(text)[1:]
    if starts is None or len(starts) != len(frame):
        # The csv module and pandas can disagree on what a record is in a few malformed files (hypothesis found
        # one); the line numbers, which only word error messages, then count records instead of lines.
        starts = np.arange(2, len(frame) + 2)
    frame["_line"] = starts
    return frame


def read_json_lines(path: Path, skip=None) -> Iterator[tuple[int, dict]]:
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
        raise DataError(path, f"expected a string id, got {type(value).__name__} {short(value)}", row=line, field=name)
    return str(value)


def _unix_seconds(value, path: Path, line: int, name: str) -> int:
    """A Unix time in seconds: an integer (or a string of one) within +-MAX_UNIX_SECONDS."""
    return _unix_time(value, path, line, name, limit=MAX_UNIX_SECONDS, unit="seconds",
                      hint=" (out of range; milliseconds? divide by 1000)")


def _unix_time(value, path: Path, line: int, name: str, *, limit: int, unit: str, hint: str = "") -> int:
    """An integer (or a string of one) within +-``limit``: a Unix time in ``unit``; ``hint`` follows an
    out-of-range number in the error."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,30}\s*", value):
        number = int(value)
    if number is None or abs(number) >= limit:
        raise DataError(path, f"not a Unix time in {unit}: {short(value)}{hint if number is not None else ''}",
                        row=line, field=name)
    return number
