"""The duckdb pipeline gives exactly what the pandas pipeline it replaced gave: the same rows in the same order and the
same dataset.json counts and warnings, on the test fixtures (frozen digests below, taken from the old pipeline) and,
when the old commit is in the repository's history, against that code itself."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_input_hardening import LOG
from test_input_hardening import write_interactions as write_log
from test_readers import REVIEWS, write_amazon, write_interactions

from bearrec.data.readers import read_amazon, read_interactions

OLD_REF = "e784016"  # the last commit with the pandas pipeline (bearrec/data/pipeline.py of pandas and loops)
REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"

# (writer, reader, options) -> the digest of the old pipeline's output
CASES = {
    "amazon-time-h2": ("amazon", {"min_interactions": 2, "history_len": 2}),
    "amazon-loo": ("amazon", {"min_interactions": 2, "split": "leave-one-out"}),
    "interactions-time-k1": ("interactions", {"min_interactions": 1}),
    "interactions-loo-h1": ("interactions", {"min_interactions": 2, "history_len": 1, "split": "leave-one-out"}),
    "duplicates-k1": ("duplicates", {"min_interactions": 1}),
    "duplicates-loo": ("duplicates", {"min_interactions": 2, "split": "leave-one-out"}),
}
FROZEN = {
    "amazon-time-h2": "2bfba2c420232e04",
    "amazon-loo": "f7b6a56f256809f0",
    "interactions-time-k1": "4fd9f650e3efb34d",
    "interactions-loo-h1": "d4a7343196b3876c",
    "duplicates-k1": "1d23d53ac0d5fe20",
    "duplicates-loo": "32c8d900f71fb58a",
}

DIGEST = '''
def digest(ds, caught):
    import hashlib, json
    parts = {"items": [ds.items["item_id"].tolist(), ds.items["title"].tolist()], "meta": ds.meta,
             "warnings": [str(w.message).split(": ", 1)[-1] for w in caught]}
    for name, frame in ds.splits.items():
        parts[name] = [frame["user_id"].astype(str).tolist(), [list(map(str, h)) for h in frame["history"]],
                       frame["target"].astype(str).tolist()]
    text = json.dumps(parts, sort_keys=True, default=str)
    for path in ds.meta["source"]["paths"]:
        text = text.replace(path.rsplit("/", 1)[0], "FOLDER")
    return hashlib.sha256(text.encode()).hexdigest()[:16]
'''
namespace: dict = {}
exec(DIGEST, namespace)
digest = namespace["digest"]


def write_case(folder: Path, case: str) -> tuple[str, list[Path]]:
    kind, _ = CASES[case]
    if kind == "amazon":
        return "amazon", list(write_amazon(folder))
    if kind == "interactions":
        return "interactions", list(write_interactions(folder, REVIEWS + [("u7", "A", 1), ("u7", "B", 1)]))
    return "interactions", list(write_log(folder, LOG + LOG[:3]))


def run_new(folder: Path, case: str) -> str:
    fmt, paths = write_case(folder, case)
    reader = read_amazon if fmt == "amazon" else read_interactions
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = reader(*paths, **CASES[case][1])
    return digest(ds, caught)


@pytest.mark.parametrize("case", list(CASES))
def test_fixtures_match_the_frozen_output_of_the_old_pipeline(tmp_path: Path, case: str) -> None:
    assert run_new(tmp_path, case) == FROZEN[case]


def _old_tree(tmp: Path) -> Path | None:
    """The old commit's package, extracted with git archive (None when the history does not have it)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_REF, "bearrec"], capture_output=True)
    if archive.returncode:
        return None
    tmp.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    return tmp


def test_old_pipeline_itself_gives_the_same_output(tmp_path: Path) -> None:
    """Runs the old commit's readers in a subprocess on every fixture case and compares digests."""
    tree = _old_tree(tmp_path / "old")
    if tree is None:
        pytest.skip(f"commit {OLD_REF} (the old pipeline) is not in this checkout's history")
    script = DIGEST + '''
import json, sys, warnings
from pathlib import Path
from bearrec.data.readers import read_amazon, read_interactions
out = {}
for case, fmt, paths, options in json.loads(sys.argv[1]):
    reader = read_amazon if fmt == "amazon" else read_interactions
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out[case] = digest(reader(*paths, **options), caught)
print(json.dumps(out))
'''
    jobs = []
    for case in CASES:
        fmt, paths = write_case(tmp_path / case, case)
        jobs.append((case, fmt, [str(p) for p in paths], CASES[case][1]))
    done = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, check=True)
    old = json.loads(done.stdout.strip().splitlines()[-1])
    new = {case: run_new(tmp_path / f"new-{case}", case) for case in CASES}
    assert new == old == FROZEN


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "office").is_dir(), reason=f"real data not found at {SHARED_DATA}")
@pytest.mark.parametrize("name", ["office", "beauty"])
def test_shared_interactions_match_the_old_pipeline(tmp_path: Path, name: str) -> None:
    """Every ../shared/data source of the raw path, both splits and two history lengths, old against new."""
    tree = _old_tree(tmp_path / "old")
    if tree is None:
        pytest.skip(f"commit {OLD_REF} (the old pipeline) is not in this checkout's history")
    paths = [str(SHARED_DATA / name / "interactions.csv"), str(SHARED_DATA / name / "items.csv")]
    options = [{"split": split, "history_len": h, "keep_untitled": name == "beauty"}
               for split in ("time", "leave-one-out") for h in (10, 20)]
    script = DIGEST + '''
import json, sys, warnings
from bearrec.data.readers import read_interactions
paths, options = json.loads(sys.argv[1])
out = []
for option in options:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out.append(digest(read_interactions(*paths, **option), caught))
print(json.dumps(out))
'''
    args = json.dumps([paths, options])
    old = subprocess.run([sys.executable, "-c", script, args], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    new = subprocess.run([sys.executable, "-c", script, args], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert json.loads(new.stdout.strip().splitlines()[-1]) == json.loads(old.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["amazon-loo", "duplicates-k1"])
def test_the_folder_written_from_duckdb_is_the_dataset_in_memory(tmp_path: Path, case: str) -> None:
    """`bearrec prepare` writes the splits straight from duckdb: the folder loads as the in-memory dataset."""
    from bearrec.data.config import PrepareConfig
    from bearrec.data.dataset import RecDataset
    from bearrec.data.prepare import prepare_folder, read_raw

    fmt, paths = write_case(tmp_path / "in", case)
    config = PrepareConfig(fmt, tuple(paths), **CASES[case][1]).validated()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = prepare_folder(config, tmp_path / "out")
        memory = read_raw(config)
    loaded = RecDataset.load(tmp_path / "out")
    assert written["summary"] == memory.summary() == loaded.summary()
    assert loaded.meta == memory.meta and loaded.items.values.tolist() == memory.items.values.tolist()
    for name in ("train", "valid", "test"):
        got, want = loaded.splits[name], memory.splits[name]
        assert [list(h) for h in got["history"]] == [list(h) for h in want["history"]]
        assert got["user_id"].tolist() == want["user_id"].tolist() and got["target"].tolist() == want["target"].tolist()


def test_long_histories_use_a_framed_window_with_the_same_result(tmp_path: Path) -> None:
    """Past 64 items the history is a framed list() window instead of lag()s: the same examples."""
    from test_readers import split_rows

    reviews = [("u", f"I{k:03d}", k) for k in range(80)] + [("v", f"I{k:03d}", k) for k in range(80)]
    titles = {f"I{k:03d}": f"Item {k}" for k in range(80)}
    paths = write_interactions(tmp_path, reviews, titles)
    framed = read_interactions(*paths, min_interactions=1, history_len=70, split="leave-one-out")
    lagged = read_interactions(*paths, min_interactions=1, history_len=64, split="leave-one-out")
    assert len(split_rows(framed, "test")[0][1]) == 70 and len(split_rows(lagged, "test")[0][1]) == 64
    assert [h[-64:] for _, h, _ in split_rows(framed, "train")] == [h for _, h, _ in split_rows(lagged, "train")]
    assert split_rows(framed, "train")[5] == ("u", [f"I{k:03d}" for k in range(6)], "I006")
