"""The field's formats (amazon2023, movielens, recbole, lcrec) and parquet input, on small files written as each
format's public documentation shows them: the same log in every format gives the same dataset, and bad input is a
one-line error naming file, row and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from test_readers import EXPECTED, REVIEWS, TITLES, assert_names, split_rows, write_interactions

from bearrec.data.config import PrepareConfig
from bearrec.data.dataset import DataError, RecDataset
from bearrec.data.readers import read_source

MS = 1_600_000_000_000  # Amazon 2023 times are milliseconds; the log's small integers are offsets in seconds


def write_amazon2023(folder: Path, reviews=REVIEWS, titles=TITLES, gz: bool = False) -> tuple[Path, Path]:
    """McAuley Lab's Amazon Reviews 2023 layout (README of the dump): one review object a line, one meta object a
    line, with the fields the dump has beside the ones bearrec reads."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"rating": 5.0, "title": "Great", "text": "Works as described.", "images": [], "asin": f"{i}1",
                         "parent_asin": i, "user_id": u, "timestamp": MS + 1000 * t, "helpful_vote": 0,
                         "verified_purchase": True}) for u, i, t in reviews]
    meta = [json.dumps({"main_category": "Office Products", "title": title, "average_rating": 4.5, "rating_number": 3,
                        "features": [], "description": [], "price": None, "images": [], "videos": [], "store": "Acme",
                        "categories": [], "details": {}, "parent_asin": item, "bought_together": None})
            for item, title in titles.items()]
    reviews_path = folder / ("Office_Products.jsonl.gz" if gz else "Office_Products.jsonl")
    text = "\n".join(lines) + "\n"
    reviews_path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    (folder / "meta_Office_Products.jsonl").write_text("\n".join(meta) + "\n")
    return reviews_path, folder / "meta_Office_Products.jsonl"


def write_movielens_dat(folder: Path, reviews=REVIEWS, titles=TITLES) -> tuple[Path, Path]:
    """ml-1m / ml-10m: ratings.dat ``UserID::MovieID::Rating::Timestamp``, movies.dat ``MovieID::Title::Genres``,
    latin-1 (titles keep their year)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_bytes("".join(f"{u}::{i}::4::{t}\n" for u, i, t in reviews).encode("latin-1"))
    movies = "".join(f"{i}::{t}::Comedy|Drama\n" for i, t in titles.items())
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    return folder / "ratings.dat", folder / "movies.dat"


def write_movielens_csv(folder: Path, reviews=REVIEWS, titles=TITLES) -> tuple[Path, Path]:
    """ml-latest / ml-25m: ratings.csv ``userId,movieId,rating,timestamp``, movies.csv ``movieId,title,genres``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                        + "".join(f"{u},{i},4.0,{t}\n" for u, i, t in reviews))
    movies = "".join(f'{i},"{t}",Comedy|Drama\n' for i, t in titles.items())
    (folder / "movies.csv").write_text("movieId,title,genres\n" + movies)
    return folder / "ratings.csv", folder / "movies.csv"


def write_recbole(folder: Path, reviews=REVIEWS, titles=TITLES) -> tuple[Path, Path]:
    """RecBole atomic files (docs: "Atomic Files"): tab-separated, typed headers ``name:type``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "office.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                         + "".join(f"{u}\t{i}\t5\t{t}.0\n" for u, i, t in reviews))
    (folder / "office.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\n"
                                        + "".join(f"{i}\t{t}\t1995\n" for i, t in titles.items()))
    return folder / "office.inter", folder / "office.item"


def write_lcrec(folder: Path, reviews=REVIEWS, titles=TITLES, index: bool = False) -> list[Path]:
    """The LC-Rec / APAO layout: NAME.inter.json user -> items (oldest first), NAME.item.json item -> {title, ...},
    NAME.index.json item -> codes."""
    folder.mkdir(parents=True, exist_ok=True)
    sequences: dict[str, list[str]] = {}
    for u, i, _ in sorted(reviews, key=lambda r: (r[0], r[2])):
        sequences.setdefault(u, []).append(i)
    (folder / "Office.inter.json").write_text(json.dumps(sequences, indent=4))
    items = {i: {"title": t, "description": "", "brand": "Acme", "categories": "Office"} for i, t in titles.items()}
    (folder / "Office.item.json").write_text(json.dumps(items, indent=4))
    paths = [folder / "Office.inter.json", folder / "Office.item.json"]
    if index:
        codes = {i: [f"<a_{n % 3}>", f"<b_{n}>"] for n, i in enumerate(titles)}
        (folder / "Office.index.json").write_text(json.dumps(codes))
        paths.append(folder / "Office.index.json")
    return paths


def to_parquet(path: Path, header_columns: dict | None = None) -> Path:
    """The same table as parquet (ids as written, numbers as numbers)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if header_columns:
        frame = frame.rename(columns=header_columns)
    for column in ("timestamp", "rating"):
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column])
    out = path.with_suffix(".parquet")
    frame.to_parquet(out, index=False)
    return out


WRITERS = {
    "amazon2023": write_amazon2023,
    "movielens-dat": write_movielens_dat,
    "movielens-csv": write_movielens_csv,
    "recbole": write_recbole,
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_gives_the_interactions_dataset(tmp_path: Path, name: str) -> None:
    fmt = name.split("-")[0]
    paths = WRITERS[name](tmp_path)
    ds = read_source(fmt, paths, min_interactions=2, history_len=2)
    for split in ("train", "valid", "test"):
        assert split_rows(ds, split) == EXPECTED[split], (name, split)
    assert ds.items["item_id"].tolist() == ["A", "B", "C", "D"] and ds.titles[0] == "Apple & Pear"
    assert ds.domain == ("movies" if fmt == "movielens" else "products")
    assert (ds.meta["source"]["format"], ds.meta["source"]["interactions_after_k_core"]) == (fmt, 14)


def test_amazon2023_gzip_and_leave_one_out(tmp_path: Path) -> None:
    paths = write_amazon2023(tmp_path, gz=True)
    got = read_source("amazon2023", paths, min_interactions=2, split="leave-one-out")
    want = read_source("interactions", write_interactions(tmp_path / "csv"), min_interactions=2, split="leave-one-out")
    assert all(split_rows(got, s) == split_rows(want, s) for s in ("train", "valid", "test"))


def test_parquet_wherever_csv(tmp_path: Path) -> None:
    want = read_source("interactions", write_interactions(tmp_path / "csv"), min_interactions=2, history_len=2)
    inter, items = write_interactions(tmp_path / "pq")
    for paths, fmt in (((to_parquet(inter), to_parquet(items)), "interactions"),
                       ((to_parquet(inter), items), "interactions"),
                       (tuple(to_parquet(p) for p in write_movielens_csv(tmp_path / "ml")), "movielens")):
        got = read_source(fmt, paths, min_interactions=2, history_len=2)
        assert all(split_rows(got, s) == split_rows(want, s) for s in ("train", "valid", "test")), paths


def test_lcrec_follows_the_lists_order(tmp_path: Path) -> None:
    got = read_source("lcrec", write_lcrec(tmp_path), min_interactions=2, history_len=2, split="leave-one-out")
    want = read_source("interactions", write_interactions(tmp_path / "csv"), min_interactions=2, history_len=2,
                       split="leave-one-out")
    # users in the order of the file (sorted here), each user's items in time order: the same examples
    for split in ("train", "valid", "test"):
        assert sorted(split_rows(got, split)) == sorted(split_rows(want, split)), split


def test_movielens_latin1_titles_keep_their_year(tmp_path: Path) -> None:
    reviews = [("1", "10", 978300760), ("1", "11", 978302109), ("2", "10", 978301968), ("2", "11", 978300275)]
    titles = {"10": "Cité des enfants perdus, La (1995)", "11": "Toy Story (1995)"}
    ds = read_source("movielens", write_movielens_dat(tmp_path, reviews, titles), min_interactions=1)
    assert ds.titles == ["Cité des enfants perdus, La (1995)", "Toy Story (1995)"]


@pytest.mark.parametrize(
    ("name", "target", "line", "row", "field", "message"),
    [
        ("amazon2023", 0, '{"user_id": "u9", "parent_asin": "A", "timestamp": 1700000000}', 3, "timestamp", None),
        ("amazon2023", 0, '{"user_id": "u9", "parent_asin": "A", "timestamp": "soon"}', 3, "timestamp",
         "not a Unix time in milliseconds"),
        ("amazon2023", 0, '{"user_id": "", "parent_asin": "A", "timestamp": 1}', 3, "user_id", "field is missing"),
        ("amazon2023", 1, '{"parent_asin": "A", "title": ["Apple"]}', 1, "title", "title must be a string"),
        ("movielens-dat", 0, "9::A::4", 3, None, "expected 4 fields"),
        ("movielens-dat", 0, "9::Q::4::5", 3, "item", "unknown item id 'Q'"),
        ("movielens-csv", 0, "9,A,4.0,yesterday", 3, "timestamp", "not a Unix time in seconds"),
        ("recbole", 0, "9\tA\t5\t", 3, "timestamp", "timestamp is missing"),
        ("recbole", 0, "\tA\t5\t1.0", 3, "user", "user id is empty"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path: Path, name: str, target: int, line: str, row: int,
                                          field: str | None, message: str | None) -> None:
    paths = WRITERS[name](tmp_path)
    lines = paths[target].read_text(encoding="latin-1").splitlines()
    lines.insert(row - 1, line)
    paths[target].write_text("\n".join(lines) + "\n", encoding="latin-1")
    if name == "amazon2023" and field == "timestamp" and message is None:
        # seconds where milliseconds are expected are not an error, but they sort the user's items by value
        read_source("amazon2023", paths, min_interactions=2)
        return
    with pytest.raises(DataError, match=message) as err:
        read_source(name.split("-")[0], paths, min_interactions=2)
    assert_names(err, paths[target].name, row, field)


def test_lcrec_errors_name_the_key(tmp_path: Path) -> None:
    inter, items = write_lcrec(tmp_path)
    inter.write_text(json.dumps({"u1": ["A", "B"], "u2": ["A", "Q"]}))
    with pytest.raises(DataError, match="unknown item id 'Q'") as err:
        read_source("lcrec", [inter, items], min_interactions=1)
    assert_names(err, "Office.inter.json", None, "u2[1]")
    (tmp_path / "bad.index.json").write_text(json.dumps({"A": ["<b_1>"]}))
    from bearrec.data.lcrec import read_index

    with pytest.raises(DataError, match="<a_N>") as err:
        read_index(tmp_path / "bad.index.json")
    assert_names(err, "bad.index.json", None, "A")


def test_recbole_missing_title_column_and_parquet_missing_column(tmp_path: Path) -> None:
    inter, item = write_recbole(tmp_path)
    item.write_text("item_id:token\tgenre:token\nA\tx\n")
    with pytest.raises(DataError, match="missing column") as err:
        read_source("recbole", [inter, item])
    assert_names(err, "office.item", 1, "title")
    frame = pd.DataFrame({"user": ["u"], "timestamp": [1]})
    frame.to_parquet(tmp_path / "i.parquet")
    with pytest.raises(DataError, match="missing column") as err:
        read_source("interactions", [tmp_path / "i.parquet", write_interactions(tmp_path / "c")[1]])
    assert_names(err, "i.parquet", None, "item")


def test_config_is_checked_once(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"takes 2 or 3 input\(s\)") as err:
        PrepareConfig("lcrec", (tmp_path,)).validated()
    assert_names(err, str(tmp_path), None, "inputs")
    config = PrepareConfig("movielens", ("r", "m")).validated()
    assert (config.domain, config.history_len, config.split) == ("movies", 10, "time")
    with pytest.raises(ValueError, match="--split"):
        PrepareConfig("recbole", ("a", "b"), split="random").validated()


def test_cli_prepares_each_format(tmp_path: Path) -> None:
    from cli_helpers import run_cli

    commands = {
        "amazon2023": write_amazon2023(tmp_path / "a"),
        "movielens": write_movielens_dat(tmp_path / "m"),
        "recbole": write_recbole(tmp_path / "r"),
        "lcrec": write_lcrec(tmp_path / "l", index=True),
    }
    for fmt, paths in commands.items():
        out = tmp_path / f"out-{fmt}"
        result = run_cli("prepare", fmt, *paths, "--min-interactions", 2, "--max-history", 2, "--out", out)
        assert result.exit_code == 0, result.output
        ds = RecDataset.load(out)
        assert ds.summary()["items"] == 4, fmt
        if fmt != "lcrec":
            assert [list(h) for h in ds.splits["test"]["history"]] == [EXPECTED["test"][0][1]], fmt
    codes = RecDataset.load(tmp_path / "out-lcrec").items["codes"].map(list).tolist()
    assert codes == [[1, 1], [2, 2], [0, 3], [1, 4]]  # A B C D: <a_n%3>, <b_n>, n their place in TITLES
    both = run_cli("prepare", "lcrec", *commands["lcrec"], "--semantic-ids", "build", "--out", tmp_path / "both")
    assert both.exit_code == 2 and "Office.index.json: lcrec's index file is the semantic IDs" in both.output
    assert not (tmp_path / "both").exists()


def test_files_without_times_split_leave_one_out(tmp_path: Path) -> None:
    """LC-Rec's lists and a RecBole file without a time column have an order but no times: a time split would put
    the first users of the file in train and the last ones in test. lcrec defaults to leave-one-out; an explicit
    time split (or RecBole's default one on such a file) is one line naming the file."""
    lcrec = write_lcrec(tmp_path / "lcrec")
    default = read_source("lcrec", lcrec, min_interactions=2, history_len=2)
    loo = read_source("lcrec", lcrec, min_interactions=2, history_len=2, split="leave-one-out")
    assert all(split_rows(default, s) == split_rows(loo, s) for s in ("train", "valid", "test"))
    assert {row[0] for row in split_rows(default, "test")} == {row[0] for row in split_rows(default, "valid")}
    with pytest.raises(DataError, match="no times.*--split leave-one-out") as err:
        read_source("lcrec", lcrec, min_interactions=2, split="time")
    assert_names(err, lcrec[0].name, None, "split")
    inter, item = write_recbole(tmp_path / "recbole")
    rows = [line.split("\t") for line in inter.read_text().splitlines()]
    inter.write_text("\n".join("\t".join(r[:2]) for r in rows) + "\n")  # user and item only, in time order
    with pytest.raises(DataError, match="no times") as err:
        read_source("recbole", (inter, item), min_interactions=2)
    assert_names(err, inter.name, None, "split")
    read_source("recbole", (inter, item), min_interactions=2, split="leave-one-out")


def test_names_with_glob_characters_and_quotes_read_that_file(tmp_path: Path, monkeypatch) -> None:
    """duckdb reads ``inter[1].parquet`` as a pattern (it would match a sibling ``inter1.parquet``); a quote in the
    scratch folder's path must not break its SQL either."""
    inter, items = write_interactions(tmp_path / "csv")
    want = read_source("interactions", (inter, items), min_interactions=2, history_len=2)
    odd = tmp_path / "odd"  # (a folder with brackets too makes duckdb take the name literally)
    odd.mkdir()
    wanted = to_parquet(inter).rename(odd / "inter[1].parquet")
    decoy = pd.read_parquet(wanted).iloc[:3]  # fewer rows: another dataset if it were read
    decoy.to_parquet(odd / "inter1.parquet")
    (odd / "items.csv").write_bytes(items.read_bytes())
    scratch = tmp_path / "tmp'dir"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    got = read_source("interactions", (wanted, odd / "items.csv"), min_interactions=2, history_len=2)
    assert all(split_rows(got, s) == split_rows(want, s) for s in ("train", "valid", "test"))
    assert list(scratch.iterdir()) == []  # the scratch database and the link are gone


def test_a_bad_memory_cap_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BEARREC_PREPARE_MEMORY", "lots")
    with pytest.raises(ValueError, match="BEARREC_PREPARE_MEMORY must be a size such as 800MB or 4GB, got 'lots'"):
        read_source("interactions", write_interactions(tmp_path), min_interactions=2)


def test_a_duckdb_failure_is_one_line_naming_the_step(tmp_path: Path, monkeypatch) -> None:
    """Out of memory (here a 1 KB cap), a full scratch disk: duckdb's error as one line naming the step, and the
    scratch folder is gone."""
    inter, items = write_interactions(tmp_path / "data")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    monkeypatch.setenv("BEARREC_PREPARE_MEMORY", "1KB")
    with pytest.raises(ValueError, match=r"^prepare failed while .*: \w+Exception: ") as err:
        read_source("interactions", (inter, items), min_interactions=2)
    assert "\n" not in str(err.value) and list(scratch.iterdir()) == []
