"""Property tests: every reader survives arbitrary input; each case either reads or is one documented error.

A documented error is :class:`DataError` (one line naming the file, and the row and field where it can) or,
for bad options, ``ValueError``. Anything else (a traceback) fails the test.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bearrec.data.dataset import DataError, normalize_title
from bearrec.data.readers import read_amazon, read_interactions, read_processed
from bearrec.items.semantic_ids import read_semantic_ids

# The readers warn of what they clean (duplicates dropped, empty titles named): part of reading, not a failure.
pytestmark = pytest.mark.filterwarnings("ignore::bearrec.data.cleaning.DataWarning")

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

titles = st.one_of(
    st.text(max_size=40),  # any unicode, control characters and newlines included
    st.sampled_from(["", " ", "\t", "A&amp;B", "Caf\u00e9", "Cafe\u0301", "a\u2028b", "x" * 3000, "Pen", "Pen Blue"]),
)
ids = st.text(alphabet="abcxyz019-_ ", min_size=0, max_size=4)
timestamps = st.one_of(
    st.integers(min_value=-(10**31), max_value=10**31),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "abc", "1e300", "1e400", "true", "0x10", " 17 "]),
)


line_ends = st.sampled_from(["\n", "\r", "\r\n"])  # LF, CR alone (old Mac files), CRLF


def _csv(rows: list[list], header: list[str], end: str = "\r\n") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=end)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _check(dataset) -> None:
    """What a successful read promises: clean, unique titles, and examples over the catalog only."""
    items = dataset.items
    assert len(items) > 0 and len(dataset.splits["train"]) > 0
    assert items["title"].is_unique and (items["title"] != "").all()
    assert all(normalize_title(t) == t for t in items["title"])
    known = set(items["item_id"])
    for frame in dataset.splits.values():
        for history, target in zip(frame["history"], frame["target"]):
            assert len(history) > 0 and target in known and set(history) <= known


def _one_line(err: Exception, file: str) -> None:
    assert "\n" not in str(err) and file in str(err), str(err)


def _expect(read, file: str):
    try:
        _check(read())
    except DataError as err:
        _one_line(err, file)


@FUZZ
@given(items=st.lists(st.tuples(ids, titles), max_size=8),
       examples=st.lists(st.lists(ids, max_size=5), max_size=8), end=line_ends)
def test_processed_reader_on_arbitrary_catalogs_and_examples(items, examples, end):
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "items.csv").write_bytes(_csv([list(i) for i in items], ["item_id", "title"], end).encode())
        for n, split in enumerate(("train", "valid", "test")):
            rows = [["u", json.dumps(e), ""] for e in examples[n::3]]
            (folder / f"{split}.csv").write_bytes(_csv(rows, ["user_id", "item_ids", "timestamp"], end).encode())
        _expect(lambda: read_processed(folder), tmp)


@FUZZ
@given(blob=st.binary(max_size=300), which=st.sampled_from(["items.csv", "train.csv", "valid.csv", "test.csv"]))
def test_processed_reader_on_arbitrary_bytes(blob, which):
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "items.csv").write_text("item_id,title\na,Alpha\nb,Beta\n")
        for split in ("train", "valid", "test"):
            (folder / f"{split}.csv").write_text('user_id,item_ids,timestamp\nu,"[""a"", ""b""]",\n')
        (folder / which).write_bytes(blob)
        _expect(lambda: read_processed(folder), which)


@FUZZ
@given(rows=st.lists(st.tuples(ids, ids, timestamps), max_size=20), catalog=st.lists(st.tuples(ids, titles), max_size=6),
       k=st.integers(min_value=1, max_value=3), repeat=st.integers(min_value=0, max_value=3), end=line_ends)
def test_interactions_reader_on_arbitrary_rows(rows, catalog, k, repeat, end):
    rows = rows + rows[:repeat]  # exact duplicate lines, which the reader drops
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        interactions = _csv([list(r) for r in rows], ["user", "item", "timestamp"], end)
        (folder / "interactions.csv").write_bytes(interactions.encode())
        (folder / "items.csv").write_bytes(_csv([list(c) for c in catalog], ["item", "title"], end).encode())
        _expect(lambda: read_interactions(folder / "interactions.csv", folder / "items.csv", min_interactions=k), tmp)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**31), max_value=10**31), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)


@FUZZ
@given(reviews=st.lists(st.fixed_dictionaries({"reviewerID": st.one_of(ids, json_values),
                                               "asin": st.one_of(st.sampled_from(["a", "b", "c"]), json_values),
                                               "unixReviewTime": st.one_of(timestamps.filter(lambda t: t == t), json_values)}),
                        max_size=12),
       titles_of=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.one_of(titles, json_values), max_size=3),
       compress=st.sampled_from(["plain", "gzip", "truncated", "fake"]))
def test_amazon_reader_on_arbitrary_records(reviews, titles_of, compress):
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text = "\n".join(json.dumps(r, default=str) for r in reviews).encode()
        meta = "\n".join(json.dumps({"asin": a, "title": t}, default=str) for a, t in titles_of.items()).encode()
        name = "reviews.json"
        if compress != "plain":
            name += ".gz"
            text = {"gzip": gzip.compress(text), "truncated": gzip.compress(text)[:-7], "fake": text}[compress]
        (folder / name).write_bytes(text)
        (folder / "meta.json").write_bytes(meta)
        _expect(lambda: read_amazon(folder / name, folder / "meta.json", min_interactions=1), tmp)


@FUZZ
@given(codes=st.lists(st.one_of(json_values, st.integers(min_value=-(2**70), max_value=2**70)), max_size=4),
       raw=st.one_of(st.none(), st.text(max_size=12)), end=line_ends)
def test_semantic_ids_reader_on_arbitrary_codes(codes, raw, end):
    """Codes are read as a [items, levels] array of integers in 0 .. 2**31 - 1, or refused on row 3, field 'codes'."""
    text = json.dumps(codes, default=str) if raw is None else raw
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "sid.csv"
        path.write_bytes(_csv([["a", "[1, 2]"], ["b", text]], ["item_id", "codes"], end).encode())
        try:
            got = read_semantic_ids(path, ["a", "b"])
        except DataError as err:
            _one_line(err, "sid.csv")
            assert "row 3," in str(err) and ("field 'codes'" in str(err) or "field 'item_id'" in str(err)), str(err)
        else:
            assert got.shape == (2, 2) and 0 <= got.min() and got.max() <= 2**31 - 1


@pytest.mark.parametrize("line", ["[" * 100_000, "{\"a\":" * 50_000, "\x00\x01", "null", "[1, 2]"])
def test_amazon_reader_on_pathological_lines(tmp_path, line):
    (tmp_path / "reviews.json").write_text(line + "\n")
    (tmp_path / "meta.json").write_text('{"asin": "a", "title": "Alpha"}\n')
    with pytest.raises(DataError) as err:
        read_amazon(tmp_path / "reviews.json", tmp_path / "meta.json")
    _one_line(err.value, "reviews.json")
    assert "row 1" in str(err.value)
