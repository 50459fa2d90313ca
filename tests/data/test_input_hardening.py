"""Input hardening of `prepare`: duplicate interactions, CR / CRLF / mixed line ends, semantic-ID codes out of
range, titles equal to another item's id, and synthetic seeds out of range."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from bearrec.data.cleaning import DataWarning
from bearrec.data.dataset import DataError, RecDataset
from bearrec.data.readers import read_amazon, read_interactions, read_processed
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.items.semantic_ids import read_semantic_ids, with_semantic_ids

MAX_CODE = 2**31 - 1  # codes must fit int32


def assert_names(text: str, file: str, row: int | None, field: str | None) -> None:
    """One line naming the file, the row and the field (the readers' error and warning contract)."""
    assert "\n" not in text and file in text, text
    if row is not None:
        assert f"row {row}," in text or f"row {row}:" in text, text
    if field is not None:
        assert f"field '{field}'" in text, text


def rows_of(dataset) -> dict[str, list[tuple[str, list[str], str]]]:
    return {name: [(u, list(h), t) for u, h, t in zip(f["user_id"], f["history"], f["target"])]
            for name, f in dataset.splits.items()}


def data_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


# Three users, each buying p0, p1, p2, p3 in turn (u2 buys p0 again later: a repeat purchase, not a duplicate).
LOG = [(f"u{u}", f"p{(u + k) % 4}", 100 * u + k) for u in range(3) for k in range(4)] + [("u2", "p0", 299)]
TITLES = {f"p{i}": f"Product {i}" for i in range(4)}


def write_interactions(folder: Path, log=LOG, titles=TITLES, end: str = "\n") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    inter, items = folder / "interactions.csv", folder / "items.csv"
    inter.write_bytes(("user,item,timestamp" + end + "".join(f"{u},{i},{t}{end}" for u, i, t in log)).encode())
    items.write_bytes(("item,title" + end + "".join(f"{i},{t}{end}" for i, t in titles.items())).encode())
    return inter, items


def write_amazon(folder: Path, log=LOG, titles=TITLES, end: str = "\n") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    reviews, meta = folder / "reviews.json", folder / "meta.json"
    records = [json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t}) for u, i, t in log]
    reviews.write_bytes((end.join(records) + end).encode())
    meta.write_bytes((end.join(repr({"asin": a, "title": t}) for a, t in titles.items()) + end).encode())
    return reviews, meta


# ---------------------------------------------------------------------------------- duplicate interactions
@pytest.mark.parametrize("fmt", ["interactions", "amazon"])
def test_duplicate_interactions_are_dropped_counted_and_warned(tmp_path: Path, fmt: str) -> None:
    writer, reader = (write_interactions, read_interactions) if fmt == "interactions" else (write_amazon, read_amazon)
    clean = reader(*writer(tmp_path / "clean"), min_interactions=2)
    # Every line of u0 twice (the second copies at the end, lines 15..18), u1's first line three times.
    log = LOG + LOG[:4] + [LOG[4], LOG[4]]
    with pytest.warns(DataWarning) as caught:
        ds = reader(*writer(tmp_path / "dup", log), min_interactions=2)
    name = "interactions.csv" if fmt == "interactions" else "reviews.json"
    first_copy = len(LOG) + 1 + (fmt == "interactions")  # the header is line 1 of the CSV
    messages = [m for m in data_warnings(caught) if "duplicate interaction" in m]
    assert len(messages) == 1
    assert_names(messages[0], name, first_copy, None)
    assert "6 duplicate interaction(s) dropped" in messages[0] and "user 'u0', item 'p0'" in messages[0]
    assert ds.meta["cleaning"]["duplicate_interactions_dropped"] == 6
    assert clean.meta["cleaning"]["duplicate_interactions_dropped"] == 0
    assert rows_of(ds) == rows_of(clean)  # the duplicates change nothing else
    assert ds.meta["source"]["interactions_read"] == len(log)
    assert ds.meta["source"]["interactions_after_k_core"] == clean.meta["source"]["interactions_after_k_core"]
    ds.save(tmp_path / "out")  # what `prepare` writes
    saved = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert saved["cleaning"]["duplicate_interactions_dropped"] == 6


def test_no_example_repeats_a_duplicate_but_a_repeat_purchase_stays(tmp_path: Path) -> None:
    # The reported case: each line twice gave examples such as history [p0] -> target p0.
    with pytest.warns(DataWarning, match="13 duplicate"):
        ds = read_interactions(*write_interactions(tmp_path, [row for row in LOG for _ in (0, 1)]), min_interactions=1)
    examples = [row for rows in rows_of(ds).values() for row in rows]
    assert len(examples) == len(LOG) - 3  # one example per interaction after each user's first
    assert not any(history[-1] == target for _, history, target in examples)
    # u2 bought p0 at 202 and again at 299: a repeat purchase (other time), kept as its last example.
    assert ("u2", ["p2", "p3", "p0", "p1"], "p0") in examples


def test_duplicates_do_not_count_towards_the_k_core(tmp_path: Path) -> None:
    # u9 has one interaction, written three times: not a 2-core user, so p0..p3 keep exactly the clean data.
    log = LOG + [("u9", "p1", 50)] * 3
    with pytest.warns(DataWarning, match="2 duplicate"):
        ds = read_interactions(*write_interactions(tmp_path, log), min_interactions=2)
    assert "u9" not in set(ds.splits["train"]["user_id"]) | set(ds.splits["valid"]["user_id"]) | set(
        ds.splits["test"]["user_id"])
    assert ds.meta["source"]["users"] == 3


def test_equal_timestamps_spelled_differently_are_duplicates(tmp_path: Path) -> None:
    inter, items = write_interactions(tmp_path)
    inter.write_text(inter.read_text() + "u0,p0,0.0\nu0,p0,1\n")  # 0.0 repeats line 2; time 1 is a repeat purchase
    with pytest.warns(DataWarning) as caught:
        ds = read_interactions(inter, items, min_interactions=1)
    assert ds.meta["cleaning"]["duplicate_interactions_dropped"] == 1
    assert_names(next(m for m in data_warnings(caught) if "duplicate" in m), "interactions.csv", len(LOG) + 2, None)


def test_processed_format_has_no_interactions_to_deduplicate(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "items.csv").write_text("item_id,title\n1,Pen\n2,Pad\n")
    for name in ("train", "valid", "test"):
        (folder / f"{name}.csv").write_text('user_id,item_ids\nu,"[1, 2]"\nu,"[1, 2]"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = read_processed(folder)
    assert "duplicate_interactions_dropped" not in ds.meta["cleaning"]


# ---------------------------------------------------------------------------------- line ends
ENDS = {"lf": "\n", "cr": "\r", "crlf": "\r\n"}


def _mixed(text: str) -> str:
    """Line ends rotated LF, CR, CRLF, line by line (an edited-on-three-systems file)."""
    lines = text.split("\n")
    ends = ["\n", "\r", "\r\n"]
    return "".join(line + ends[k % 3] for k, line in enumerate(lines[:-1])) + lines[-1]


@pytest.mark.parametrize("end", ["cr", "crlf", "mixed"])
def test_interactions_and_items_with_any_line_ends(tmp_path: Path, end: str) -> None:
    want = read_interactions(*write_interactions(tmp_path / "lf"), min_interactions=2)
    inter, items = write_interactions(tmp_path / end, end=ENDS.get(end, "\n"))
    if end == "mixed":
        for path in (inter, items):
            path.write_bytes(_mixed(path.read_text()).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = read_interactions(inter, items, min_interactions=2)
    assert rows_of(got) == rows_of(want) and got.titles == want.titles


@pytest.mark.parametrize("end", ["cr", "crlf"])
def test_amazon_json_lines_with_cr_line_ends(tmp_path: Path, end: str) -> None:
    want = read_amazon(*write_amazon(tmp_path / "lf"), min_interactions=2)
    got = read_amazon(*write_amazon(tmp_path / end, end=ENDS[end]), min_interactions=2)
    assert rows_of(got) == rows_of(want) and got.titles == want.titles


@pytest.mark.parametrize("end", ["cr", "crlf", "mixed"])
def test_processed_folder_with_any_line_ends(tmp_path: Path, end: str) -> None:
    texts = {
        "items.csv": 'item_id,title\n1,"Red\nPen"\n2,Blue Pen\n3,Pad\n',  # a quoted line end stays in the title
        "train.csv": 'user_id,item_ids\nu1,"[1, 2]"\nu1,"[1, 2, 3]"\n',
        "valid.csv": 'user_id,item_ids\nu2,"[3, 1]"\n',
        "test.csv": 'user_id,item_ids\nu2,"[3, 1, 2]"\n',
    }
    folders = {}
    for name, convert in (("lf", str), (end, _mixed if end == "mixed" else lambda t: t.replace("\n", ENDS[end]))):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for file, text in texts.items():
            (folders[name] / file).write_bytes(convert(text).encode())
    want, got = read_processed(folders["lf"]), read_processed(folders[end])
    assert got.titles == want.titles == ["Red Pen", "Blue Pen", "Pad"]
    assert rows_of(got) == rows_of(want)


@pytest.mark.parametrize("end", ["cr", "crlf"])
def test_row_numbers_count_cr_line_ends(tmp_path: Path, end: str) -> None:
    e = ENDS[end]
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "items.csv").write_bytes(f'item_id,title{e}1,"Red{e}Pen"{e}2,Pad{e}'.encode())
    for name in ("valid", "test"):
        (folder / f"{name}.csv").write_bytes(f'user_id,item_ids{e}u,"[1, 2]"{e}'.encode())
    # Line 3 holds an unknown id; the quoted line end of items.csv does not shift train.csv's rows.
    (folder / "train.csv").write_bytes(f'user_id,item_ids{e}u,"[1, 2]"{e}u,"[1, 9]"{e}'.encode())
    with pytest.raises(DataError, match="unknown item id '9'") as err:
        read_processed(folder)
    assert_names(str(err.value), "train.csv", 3, "item_ids")
    (folder / "train.csv").write_bytes(f'user_id,item_ids{e}u,"[1, 2]"{e}u,"[1, 2]",extra{e}'.encode())
    with pytest.raises(DataError, match="malformed CSV") as err:
        read_processed(folder)
    assert_names(str(err.value), "train.csv", 3, None)
    (folder / "train.csv").write_bytes(f'user_id,item_ids{e}u,"[1, 2]"{e}'.encode())
    (folder / "items.csv").write_bytes(f'item_id,title{e}1,"Red{e}Pen"{e}2,P\xffd{e}'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8") as err:
        read_processed(folder)
    assert_names(str(err.value), "items.csv", 4, "title")  # the quoted title spans lines 2 and 3


@pytest.mark.parametrize("end", ["cr", "crlf", "mixed"])
def test_semantic_id_csv_with_any_line_ends(tmp_path: Path, end: str) -> None:
    text = 'item_id,codes\na,"[1, 2]"\nb,"[3, 0]"\nc,"[3, 1]"\n'
    path = tmp_path / "sid.csv"
    path.write_bytes((_mixed(text) if end == "mixed" else text.replace("\n", ENDS[end])).encode())
    assert read_semantic_ids(path, ["c", "a", "b"]).tolist() == [[3, 1], [1, 2], [3, 0]]
    text = 'item_id,codes\na,"[1, 2]"\nb,"[3, 0]"\nb,"[3, 1]"\n'  # b twice: the error names line 4 however lines end
    path.write_bytes(text.replace("\n", ENDS.get(end, "\r")).encode())
    with pytest.raises(DataError) as err:
        read_semantic_ids(path, ["a", "b"])
    assert_names(str(err.value), "sid.csv", 4, "item_id")


# ---------------------------------------------------------------------------------- semantic-ID codes
@pytest.mark.parametrize(
    "codes",
    ["[1, 9223372036854775808]", "[1, 18446744073709551616]", f"[1, {MAX_CODE + 1}]", "[-1, 2]", "[1.5, 2]",
     "[1.0, 2]", "[true, 2]", '[""a"", 2]', "[null, 2]", "[[1], 2]", "[NaN, 2]", "[]", "7", "[" * 5000],
)
def test_bad_codes_are_one_line_errors(tmp_path: Path, codes: str) -> None:
    path = tmp_path / "sid.csv"
    path.write_text(f'item_id,codes\na,"[0, 0]"\nb,"{codes}"\n')
    with pytest.raises(DataError) as err:  # never OverflowError or RecursionError
        read_semantic_ids(path, ["a", "b"])
    assert_names(str(err.value), "sid.csv", 3, "codes")


def test_largest_code_is_accepted_and_fits_int32(tmp_path: Path) -> None:
    path = tmp_path / "sid.csv"
    path.write_text(f'item_id,codes\na,"[0, {MAX_CODE}]"\nb,"[{MAX_CODE}, 0]"\n')
    codes = read_semantic_ids(path, ["a", "b"])
    assert codes.tolist() == [[0, MAX_CODE], [MAX_CODE, 0]]
    assert MAX_CODE == np.iinfo(np.int32).max


# ---------------------------------------------------------------------------------- titles equal to ids
TITLE_IS_ID = {"p0": "p1", "p1": "Product 1", "p2": "Product 2", "p3": "p3"}  # p0 is titled p1; p3 its own id


@pytest.mark.parametrize("fmt", ["interactions", "amazon", "processed"])
def test_title_equal_to_another_items_id_is_warned(tmp_path: Path, fmt: str) -> None:
    if fmt == "processed":
        folder = tmp_path / "p"
        folder.mkdir()
        (folder / "items.csv").write_text("item_id,title\n" + "".join(f"{i},{t}\n" for i, t in TITLE_IS_ID.items()))
        for name in ("train", "valid", "test"):
            (folder / f"{name}.csv").write_text('user_id,item_ids\nu,"[""p0"", ""p1"", ""p2""]"\n')
        read = lambda: read_processed(folder)  # noqa: E731
        file, row = "items.csv", 2
    else:
        writer, reader = {"interactions": (write_interactions, read_interactions),
                          "amazon": (write_amazon, read_amazon)}[fmt]
        paths = writer(tmp_path, titles=TITLE_IS_ID)
        read = lambda: reader(*paths, min_interactions=2)  # noqa: E731
        file, row = paths[1].name, 2 if fmt == "interactions" else 1
    with pytest.warns(DataWarning) as caught:
        ds = read()
    messages = [m for m in data_warnings(caught) if "also the id of" in m]
    assert len(messages) == 1  # p3 titled 'p3' names itself: no warning
    assert_names(messages[0], file, row, "title")
    assert "item 'p0' has the title 'p1'" in messages[0] and "item 'p1'" in messages[0]
    assert "'Product 1'" in messages[0]  # how item p1 can still be named
    assert ds.meta["cleaning"]["titles_equal_to_other_ids"] == 1


def test_title_equal_to_an_id_the_k_core_removed_is_not_warned(tmp_path: Path) -> None:
    titles = {**TITLES, "p0": "p9", "p9": "Gone"}
    log = LOG + [("u7", "p9", 1)]  # p9 has one interaction: not in the 2-core catalog
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = read_interactions(*write_interactions(tmp_path, log, titles), min_interactions=2)
    assert "p9" not in set(ds.items["item_id"]) and ds.meta["cleaning"]["titles_equal_to_other_ids"] == 0


def test_title_matching_an_id_after_normalisation_is_warned(tmp_path: Path) -> None:
    # recommend normalises a typed entry like a title: the id 'p1' typed as 'p1' finds the title ' p1 ' (-> 'p1').
    titles = {**TITLES, "p0": "  p1 "}
    with pytest.warns(DataWarning, match="item 'p0' has the title 'p1', which is also the id of item 'p1'"):
        read_interactions(*write_interactions(tmp_path, titles=titles), min_interactions=2)


# ---------------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", [2**32, 2**63, 2**64, 10**40, -1, 1.5, True, "3", None])
def test_synthetic_seed_out_of_range_is_refused(seed) -> None:
    with pytest.raises(ValueError, match=r"synthetic\.seed must be an integer in \[0, 4294967295\] \(--seed\)"):
        generate_synthetic(SyntheticConfig(seed=seed, num_users=3))


def test_synthetic_largest_seed_works() -> None:
    ds = generate_synthetic(SyntheticConfig(seed=2**32 - 1, num_users=3, num_categories=1, items_per_category=4))
    assert len(ds.splits["test"]) == 3


@pytest.mark.parametrize("seed", [2**32, 2**63, -1])
def test_rq_kmeans_seed_refused_before_embedding(seed) -> None:
    ds = generate_synthetic(SyntheticConfig(num_users=3, num_categories=1, items_per_category=4))
    with pytest.raises(ValueError, match=r"--seed"):
        with_semantic_ids(ds, "build", embedding_model="/nonexistent", seed=seed)


def test_prepare_synthetic_seed_is_a_one_line_error(tmp_path: Path) -> None:
    from cli_helpers import one_line_error, run_cli

    result = run_cli("prepare", "synthetic", "--users", "3", "--seed", 2**63, "--out", tmp_path / "d")
    one_line_error(result, "synthetic.seed", "--seed", str(2**63))
    assert not (tmp_path / "d").exists()


def test_prepare_writes_the_duplicate_count_and_warns_once(tmp_path: Path) -> None:
    from cli_helpers import run_cli

    inter, items = write_interactions(tmp_path / "raw", LOG + LOG[:2])
    result = run_cli("prepare", "interactions", inter, items, "--min-interactions", "2", "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "duplicate interaction" in line]
    assert len(warned) == 1 and warned[0].startswith("warning:") and "interactions.csv" in warned[0]
    assert RecDataset.load(tmp_path / "d").meta["cleaning"]["duplicate_interactions_dropped"] == 2
