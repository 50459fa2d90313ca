"""Readers: each format on hand-built files, catalog cleaning, strict mode, bad input, real data."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest

from bearrec.data.cleaning import DataWarning
from bearrec.data.dataset import DataError
from bearrec.data.readers import read_amazon, read_interactions, read_processed, read_source

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def assert_names(err: pytest.ExceptionInfo | Warning | str, file: str, row: int | None, field: str | None) -> None:
    """The message is one line naming the file, the row and the field."""
    text = str(err.value) if isinstance(err, pytest.ExceptionInfo) else str(err)
    assert "\n" not in text
    assert file in text
    if row is not None:
        assert f"row {row}," in text or f"row {row}:" in text, text
    if field is not None:
        assert f"field '{field}'" in text, text


def split_rows(dataset, name: str) -> list[tuple[str, list[str], str]]:
    frame = dataset.splits[name]
    return [(u, list(h), t) for u, h, t in zip(frame["user_id"], frame["history"], frame["target"])]


# ---------------------------------------------------------------------------------- processed
def write_processed(folder: Path, items: str, train: str, valid: str = "", test: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.csv").write_text("item_id,title\n" + items)
    header = "user_id,item_ids,timestamp\n"
    for name, body in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.csv").write_text(header + body)
    return folder


ITEMS = "1,Red Pen\n2,Blue Pen\n3,Stapler\n4,Paper\n5,Never Bought\n"


@pytest.fixture
def processed(tmp_path: Path) -> Path:
    return write_processed(
        tmp_path / "office",
        ITEMS,
        train='u1,"[1, 2]",100\nu1,"[1, 2, 3]",\nu2,"[4, 1]",7\n',
        valid='u1,"[1, 2, 3, 4]",\n',
        test='u2,"[""4"", ""1"", ""2""]",\n',  # ids may also be JSON strings
    )


def test_processed_happy_path(processed: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean input: no warning at all
        ds = read_processed(processed, domain="products")
    assert ds.items["item_id"].tolist() == ["1", "2", "3", "4", "5"]  # item 5 is in no split, stays
    assert ds.titles == ["Red Pen", "Blue Pen", "Stapler", "Paper", "Never Bought"]
    assert split_rows(ds, "train") == [("u1", ["1"], "2"), ("u1", ["1", "2"], "3"), ("u2", ["4"], "1")]
    assert split_rows(ds, "valid") == [("u1", ["1", "2", "3"], "4")]
    assert split_rows(ds, "test") == [("u2", ["4", "1"], "2")]
    assert ds.meta["source"] == {"format": "processed", "paths": [str(processed)]}
    assert ds.meta["cleaning"] == {
        "html_unescaped": 0,
        "empty_title_items_dropped": 0,
        "duplicate_titles_disambiguated": 0,
        "titles_equal_to_other_ids": 0,
        "examples_dropped": 0,
        "history_entries_removed": 0,
    }


def test_html_unescape_and_whitespace(tmp_path: Path) -> None:
    items = '1,AT&amp;T  Phone\n2,"Desk\n  Lamp "\n3,Caf&eacute; &lt;Mug&gt;\n4,Plain\n'
    folder = write_processed(tmp_path / "d", items, train='u,"[1, 2, 3, 4]",\n')
    ds = read_processed(folder)
    assert ds.titles == ["AT&T Phone", "Desk Lamp", "Café <Mug>", "Plain"]
    assert ds.meta["cleaning"]["html_unescaped"] == 2


def test_empty_title_dropped_with_its_examples(tmp_path: Path) -> None:
    # Item 3's title is blank after cleaning; a quoted newline in row 2 puts item 3 on line 4.
    items = '1,"Red\nPen"\n3,"   "\n2,Blue Pen\n4,Paper\n5,Never Bought\n'
    folder = write_processed(
        tmp_path / "d",
        items,
        train='u1,"[1, 3]",\nu1,"[3, 2]",\nu1,"[1, 3, 2]",\n',  # target gone; history emptied; entry removed
        valid='u2,"[1, 2]",\n',
        test='u2,"[3, 1, 2]",\n',
    )
    with pytest.warns(DataWarning) as caught:
        ds = read_processed(folder)
    assert "3" not in ds.items["item_id"].tolist()
    assert ds.items["item_id"].tolist() == ["1", "2", "4", "5"]
    assert split_rows(ds, "train") == [("u1", ["1"], "2")]
    assert split_rows(ds, "valid") == [("u2", ["1"], "2")]
    assert split_rows(ds, "test") == [("u2", ["1"], "2")]
    cleaning = ds.meta["cleaning"]
    assert cleaning["empty_title_items_dropped"] == 1
    assert cleaning["examples_dropped"] == 2
    assert cleaning["history_entries_removed"] == 3
    messages = [str(w.message) for w in caught]
    assert_names(messages[0], "items.csv", 4, "title")
    assert any("train.csv, row 2," in m and "field 'item_ids'" in m for m in messages)  # dropped example


def test_warnings_are_capped_per_kind(tmp_path: Path) -> None:
    items = "".join(f"{i},\n" for i in range(10, 18)) + "1,Red Pen\n2,Blue Pen\n"
    folder = write_processed(tmp_path / "d", items, train='u,"[1, 2]",\n')
    with pytest.warns(DataWarning) as caught:
        ds = read_processed(folder)
    assert len(caught) == 6
    assert "3 more empty-title items not shown (8 in all" in str(caught[-1].message)
    assert ds.meta["cleaning"]["empty_title_items_dropped"] == 8


def test_duplicate_titles_disambiguated(tmp_path: Path) -> None:
    items = "1,Pen\n2,Pen\n3,Pad\n4, Pen \n5,A &amp; B\n6,A & B\n"
    folder = write_processed(tmp_path / "d", items, train='u,"[1, 2, 3, 4, 5, 6]",\n')
    with pytest.warns(DataWarning) as caught:
        ds = read_processed(folder)
    assert ds.titles == ["Pen", "Pen (item 2)", "Pad", "Pen (item 4)", "A & B", "A & B (item 6)"]
    assert ds.meta["cleaning"]["duplicate_titles_disambiguated"] == 3
    assert_names(caught[0].message, "items.csv", 3, "title")
    assert "item '1' (row 2)" in str(caught[0].message)


@pytest.mark.parametrize(
    ("items", "row", "message"),
    [("1,Pen\n2,\n3,Pad\n", 3, "title is empty"), ("1,Pen\n2,Pad\n3,Pen\n", 4, "also the title of item '1'")],
)
def test_strict_refuses_empty_and_duplicate_titles(tmp_path: Path, items: str, row: int, message: str) -> None:
    folder = write_processed(tmp_path / "d", items, train='u,"[1, 3]",\n')
    with pytest.raises(DataError, match=message) as err:
        read_processed(folder, strict=True)
    assert_names(err, "items.csv", row, "title")


# ---------------------------------------------------------------------------------- processed: bad input
@pytest.mark.parametrize(
    ("train", "row", "message"),
    [
        ('u,"[1, 2]",\nu,"[1, 2",\n', 3, "not a JSON list"),
        ('u,"[1, 2]",\nu,"{""a"": 1}",\n', 3, "not a JSON list"),
        ('u,"[1, 2]",\nu,"[1, 2]",\nu,"[1, 99]",\n', 4, "unknown item id '99'"),
        ('u,"[1, 2]",\nu,"[2]",\n', 3, "history is empty"),
        ('u,"[1, 2]",\nu,"[]",\n', 3, "history is empty"),
        ('u,"[1, 2.0]",\n', 2, "unknown item id '2.0'"),
    ],
)
def test_processed_bad_item_ids(tmp_path: Path, train: str, row: int, message: str) -> None:
    folder = write_processed(tmp_path / "d", ITEMS, train=train)
    with pytest.raises(DataError, match=message) as err:
        read_processed(folder)
    assert_names(err, "train.csv", row, "item_ids")


def test_processed_unknown_id_row_counts_quoted_newlines(tmp_path: Path) -> None:
    folder = write_processed(tmp_path / "d", ITEMS, train='u,"[1,\n 2]",\nu,"[1, 7]",\n')
    with pytest.raises(DataError) as err:
        read_processed(folder)
    assert_names(err, "train.csv", 4, "item_ids")


def test_missing_folder_file_and_column(tmp_path: Path, processed: Path) -> None:
    with pytest.raises(DataError, match="folder not found"):
        read_processed(tmp_path / "nowhere")
    (processed / "valid.csv").unlink()
    with pytest.raises(DataError, match="file not found") as err:
        read_processed(processed)
    assert_names(err, "valid.csv", None, None)
    (processed / "valid.csv").write_text("user_id,ids,timestamp\nu,\"[1, 2]\",\n")
    with pytest.raises(DataError, match="missing column") as err:
        read_processed(processed)
    assert_names(err, "valid.csv", 1, "item_ids")


def test_malformed_csv_row(tmp_path: Path) -> None:
    folder = write_processed(tmp_path / "d", ITEMS, train='u,"[1, 2]",\nu,"[1, 2]",,extra\n')
    with pytest.raises(DataError, match="malformed CSV") as err:
        read_processed(folder)
    assert_names(err, "train.csv", 3, None)


def test_duplicate_item_id(tmp_path: Path) -> None:
    folder = write_processed(tmp_path / "d", "1,Pen\n2,Pad\n1,Ink\n", train='u,"[1, 2]",\n')
    with pytest.raises(DataError, match="duplicate item id '1'") as err:
        read_processed(folder)
    assert_names(err, "items.csv", 4, "item_id")


def test_non_utf8_names_line_and_field(tmp_path: Path, processed: Path) -> None:
    (processed / "items.csv").write_bytes(b"item_id,title\n1,Red Pen\n2,Blue \xff Pen\n3,Stapler\n4,Paper\n")
    with pytest.raises(DataError, match="not UTF-8") as err:
        read_processed(processed)
    assert_names(err, "items.csv", 3, "title")
    (processed / "items.csv").write_text("item_id,title\n" + ITEMS)
    (processed / "test.csv").write_bytes(b'user_id,item_ids,timestamp\nu,"[1, 2]",\nu\xe9,"[1, 2]",\n')
    with pytest.raises(DataError, match="not UTF-8") as err:
        read_processed(processed)
    assert_names(err, "test.csv", 3, "user_id")


# ---------------------------------------------------------------------------------- raw formats
# (user, item, time) in file order, deliberately not sorted by time. With min_interactions=2:
# u6 has one interaction and X one user, so both go in round one; that leaves u5 with one
# interaction, so u5 goes in round two. Z has metadata but no review.
REVIEWS = [
    ("u1", "C", 3), ("u1", "A", 1), ("u1", "B", 2), ("u1", "D", 4),
    ("u2", "B", 5), ("u2", "A", 6), ("u2", "C", 7),
    ("u3", "D", 8), ("u3", "C", 9), ("u3", "B", 10), ("u3", "A", 11),
    ("u4", "A", 12), ("u4", "D", 13), ("u4", "B", 14),
    ("u5", "X", 3), ("u5", "A", 15),
    ("u6", "C", 1),
]  # fmt: skip
TITLES = {"Z": "Unreviewed", "A": "Apple &amp; Pear", "B": "Banana", "C": "Cherry", "D": "Date", "X": "Xigua"}

# 10 examples from users u1..u4, sorted by target time: the oldest 8 train, then 1 valid, 1 test.
# history_len=2 cuts u1's [A, B, C] -> D and u3's [D, C, B] -> A to the last two items.
EXPECTED = {
    "train": [
        ("u1", ["A"], "B"), ("u1", ["A", "B"], "C"), ("u1", ["B", "C"], "D"), ("u2", ["B"], "A"),
        ("u2", ["B", "A"], "C"), ("u3", ["D"], "C"), ("u3", ["D", "C"], "B"), ("u3", ["C", "B"], "A"),
    ],
    "valid": [("u4", ["A"], "D")],
    "test": [("u4", ["A", "D"], "B")],
}  # fmt: skip


def write_amazon(folder: Path, reviews=REVIEWS, titles=TITLES) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    reviews_path, meta_path = folder / "reviews.json", folder / "meta.json"
    reviews_records = [{"reviewerID": u, "asin": item, "unixReviewTime": t, "overall": 5.0} for u, item, t in reviews]
    reviews_path.write_text("".join(json.dumps(record) + "\n" for record in reviews_records))
    # Alternate the 2014 (Python literal) and 2018 (JSON) metadata styles line by line.
    meta_records = [{"asin": asin, "title": title} for asin, title in titles.items()]
    lines = [repr(record) if n % 2 else json.dumps(record) for n, record in enumerate(meta_records)]
    meta_path.write_text("\n".join(lines) + "\n")
    return reviews_path, meta_path


def write_interactions(folder: Path, reviews=REVIEWS, titles=TITLES) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    inter, items = folder / "interactions.csv", folder / "items.csv"
    inter.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in reviews))
    items.write_text("item,title\n" + "".join(f"{a},{t}\n" for a, t in titles.items()))
    return inter, items


@pytest.mark.parametrize("fmt", ["amazon", "interactions"])
def test_raw_formats_k_core_window_and_split(tmp_path: Path, fmt: str) -> None:
    writer, reader = (write_amazon, read_amazon) if fmt == "amazon" else (write_interactions, read_interactions)
    paths = writer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = reader(*paths, domain="products", min_interactions=2, history_len=2)
    # Catalog: k-core survivors in items-file order (Z unreviewed, X filtered out).
    assert ds.items["item_id"].tolist() == ["A", "B", "C", "D"]
    assert ds.titles[0] == "Apple & Pear"
    for name in ("train", "valid", "test"):
        assert split_rows(ds, name) == EXPECTED[name], name
    source = ds.meta["source"]
    assert source["format"] == fmt and source["paths"] == [str(p) for p in paths]
    assert (source["interactions_read"], source["interactions_after_k_core"], source["users"]) == (17, 14, 4)
    assert ds.meta["cleaning"]["html_unescaped"] == 1


def test_raw_k_core_that_keeps_nobody_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:  # min_interactions=5: nobody has 5
        read_interactions(*write_interactions(tmp_path))
    assert_names(err, "interactions.csv", None, None)
    assert "5-core" in str(err.value) and "--min-interactions" in str(err.value)


def test_raw_ties_keep_file_order_and_default_history_len(tmp_path: Path) -> None:
    reviews = [("u", item, 7) for item in "ABCDEFGHIJKL"]  # all at once: file order decides
    titles = {item: f"Item {item}" for item in "ABCDEFGHIJKL"}
    ds = read_interactions(*write_interactions(tmp_path, reviews, titles), min_interactions=1)
    rows = [row for name in ("train", "valid", "test") for row in split_rows(ds, name)]
    assert [t for _, _, t in rows] == list("BCDEFGHIJKL")
    assert rows[-1][1] == list("BCDEFGHIJK")  # history_len=10
    assert [len(ds.splits[n]) for n in ("train", "valid", "test")] == [8, 1, 2]  # 11 examples: cuts at 8 and 9


def test_amazon_untitled_items_dropped_before_filtering(tmp_path: Path) -> None:
    # C has a metadata line without a title, Y has no metadata at all: both leave before the k-core.
    reviews = REVIEWS + [("u1", "Y", 0)]
    titles = {**TITLES, "C": ""}
    reviews_path, meta_path = write_amazon(tmp_path, reviews, titles)
    lines = meta_path.read_text().splitlines()
    lines[3] = json.dumps({"asin": "C", "price": 3.0})  # 2014 style: no title key at all
    meta_path.write_text("\n".join(lines) + "\n")
    with pytest.warns(DataWarning) as caught:
        ds = read_amazon(reviews_path, meta_path, min_interactions=2, history_len=2)
    assert_names(caught[0].message, "meta.json", 4, "title")
    assert ds.items["item_id"].tolist() == ["A", "B", "D"]
    assert ds.meta["cleaning"]["empty_title_items_dropped"] == 1
    assert ds.meta["source"]["interactions_without_titled_item"] == 5  # four C reviews and one Y
    with pytest.raises(DataError, match="title is empty") as err:
        read_amazon(reviews_path, meta_path, strict=True, min_interactions=2)
    assert_names(err, "meta.json", 4, "title")


def test_amazon_reads_gzip(tmp_path: Path) -> None:
    reviews_path, meta_path = write_amazon(tmp_path)
    gz = tmp_path / "reviews.json.gz"
    gz.write_bytes(gzip.compress(reviews_path.read_bytes()))
    ds = read_amazon(gz, meta_path, min_interactions=2, history_len=2)
    assert split_rows(ds, "test") == EXPECTED["test"]


@pytest.mark.parametrize(
    ("target", "line", "row", "field", "message"),
    [
        ("reviews", '{"reviewerID": "u9", "asin": "A"}', 3, "unixReviewTime", "field is missing"),
        ("reviews", '{"reviewerID": "u9", "asin": "A", "unixReviewTime": "x"}', 3, "unixReviewTime", "not a Unix time"),
        ("reviews", '{"reviewerID": "u9", "asin": ', 3, None, "neither JSON nor a Python dict"),
        ("meta", '{"title": "No asin"}', 3, "asin", "field is missing"),
        ("meta", '["asin", "A"]', 3, None, "expected an object"),
    ],
)
def test_amazon_bad_lines(tmp_path: Path, target: str, line: str, row: int, field: str | None, message: str) -> None:
    paths = dict(zip(("reviews", "meta"), write_amazon(tmp_path)))
    lines = paths[target].read_text().splitlines()
    lines.insert(row - 1, line)
    paths[target].write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as err:
        read_amazon(paths["reviews"], paths["meta"])
    assert_names(err, paths[target].name, row, field)


def test_amazon_non_utf8_names_json_field(tmp_path: Path) -> None:
    reviews_path, meta_path = write_amazon(tmp_path)
    meta_path.write_bytes(meta_path.read_bytes() + b'{"asin": "Q", "title": "Bad \xff byte"}\n')
    with pytest.raises(DataError, match="not UTF-8") as err:
        read_amazon(reviews_path, meta_path)
    assert_names(err, "meta.json", len(TITLES) + 1, "title")


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ("u9,A,", "timestamp", "timestamp is missing"),
        ("u9,A,2020-01-01", "timestamp", "not a Unix time"),
        ("u9,Q,5", "item", "unknown item id 'Q'"),
    ],
)
def test_interactions_bad_rows(tmp_path: Path, line: str, field: str, message: str) -> None:
    inter, items = write_interactions(tmp_path)
    rows = inter.read_text().splitlines()
    rows.insert(4, line)  # becomes line 5
    inter.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=message) as err:
        read_interactions(inter, items)
    assert_names(err, "interactions.csv", 5, field)


def test_interactions_missing_column(tmp_path: Path) -> None:
    inter, items = write_interactions(tmp_path)
    items.write_text("id,title\nA,Apple\n")
    with pytest.raises(DataError, match="missing column") as err:
        read_interactions(inter, items)
    assert_names(err, "items.csv", 1, "item")


# ---------------------------------------------------------------------------------- read_source
def test_read_source_dispatch_and_errors(tmp_path: Path, processed: Path) -> None:
    assert read_source("processed", [processed]).summary() == read_processed(processed).summary()
    paths = write_interactions(tmp_path / "raw")
    assert len(read_source("interactions", list(paths), min_interactions=2).splits["train"]) == 8
    paths = write_amazon(tmp_path / "amazon")
    assert len(read_source("amazon", list(paths), min_interactions=2).splits["train"]) == 8
    with pytest.raises(DataError, match="unknown format 'csv'") as err:
        read_source("csv", [processed])
    assert_names(err, str(processed), None, "format")
    with pytest.raises(DataError, match=r"takes 2 input\(s\) \(reviews, meta\), got 1") as err:
        read_source("amazon", [processed])
    assert_names(err, str(processed), None, "inputs")


# ---------------------------------------------------------------------------------- real data
@pytest.mark.skipif(not (SHARED_DATA / "office").is_dir(), reason=f"real data not found at {SHARED_DATA}/office")
def test_real_office_counts() -> None:
    with pytest.warns(DataWarning):
        ds = read_processed(SHARED_DATA / "office", domain="products")
    cleaning = ds.meta["cleaning"]
    # README: 2,420 items (3 empty titles, 3 shared titles, 190 with HTML entities),
    # 38,543 / 4,905 / 4,905 rows, the empty-title items being the targets of 22 test rows.
    assert cleaning["empty_title_items_dropped"] == 3
    assert cleaning["duplicate_titles_disambiguated"] == 3
    assert cleaning["html_unescaped"] == 190
    assert len(ds.items) == 2420 - 3
    assert len(ds.splits["test"]) == 4905 - 22
    assert sum(map(len, ds.splits.values())) == 38543 + 4905 + 4905 - cleaning["examples_dropped"]
    assert len(ds.splits["train"]) <= 38543 and len(ds.splits["valid"]) <= 4905
