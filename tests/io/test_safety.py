"""No user data is ever lost: --out replaces only bearrec's own folders of the same kind, atomically.

Each test plants files that bearrec did not write and checks, byte for byte, that they survive.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from cli_helpers import SMALL, one_line_error, run_cli, small_synthetic

from bearrec import io
from bearrec.data.dataset import RecDataset
from bearrec.io import atomic


def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` (hidden ones included), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}




@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("syn") / "syn"
    return small_synthetic(folder)


@pytest.fixture
def mydocs(tmp_path) -> Path:
    folder = tmp_path / "mydocs"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years of work")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return folder


# ---------------------------------------------------------------------------------- the CLI never deletes user files
@pytest.mark.parametrize("command", [
    lambda out, syn: ["prepare", "synthetic", "--out", out, "--users", 20],
    lambda out, syn: ["train", syn, "--out", out, "--epochs", 1, *SMALL],
    lambda out, syn: ["compare", "--data", syn, "--model", "tiny", "--objectives", "sft", "--baselines", "none",
                      "--overwrite", "--out", out],
    lambda out, syn: ["sweep", "--data", syn, "--grid", "weight=0.5", "--overwrite", "--out", out],
    lambda out, syn: ["quickstart", "--out", out, "--users", 20, "--epochs", 1],
], ids=["prepare", "train", "compare", "sweep", "quickstart"])
def test_out_on_a_user_folder_is_refused_and_nothing_changes(command, mydocs, syn, tmp_path):
    before, syn_before = _snapshot(mydocs), _snapshot(syn)
    one_line_error(run_cli(*command(mydocs, syn)), str(mydocs), "not a folder bearrec wrote")
    assert _snapshot(mydocs) == before and _snapshot(syn) == syn_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydocs"]  # no temporary folder either


def test_input_folder_and_dataset_are_never_outputs(tmp_path, syn):
    src = tmp_path / "src"
    src.mkdir()
    (src / "items.csv").write_text("item_id,title\na,Alpha\nb,Beta\n")
    for split in ("train", "valid", "test"):
        (src / f"{split}.csv").write_text('user_id,item_ids,timestamp\nu,"[""a"", ""b""]",\n')
    before, syn_before = _snapshot(src), _snapshot(syn)
    one_line_error(run_cli("prepare", "processed", src, "--out", src), str(src))
    one_line_error(run_cli("prepare", "processed", src / "items.csv", "--out", src), str(src))
    one_line_error(run_cli("train", syn, "--out", syn, *SMALL), str(syn), "dataset")
    one_line_error(run_cli("train", syn, "--out", syn / "run", *SMALL), "inside the dataset folder")
    assert _snapshot(src) == before and _snapshot(syn) == syn_before


@pytest.mark.parametrize("out", [".", ".."])
def test_working_directory_is_never_an_output(tmp_path, monkeypatch, syn, out):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.md").write_text("keep me")
    monkeypatch.chdir(work)
    for command in (["prepare", "synthetic", "--out", out, "--users", 20], ["train", syn, "--out", out, *SMALL]):
        one_line_error(run_cli(*command), "working directory")
    assert (work / "notes.md").read_text() == "keep me" and sorted(p.name for p in work.iterdir()) == ["notes.md"]


def test_out_that_is_a_file(tmp_path, syn):
    target = tmp_path / "results.txt"
    target.write_text("x")
    one_line_error(run_cli("prepare", "synthetic", "--out", target, "--users", 20), "not a folder")
    one_line_error(run_cli("train", syn, "--out", target, *SMALL), "not a folder")
    assert target.read_text() == "x"


def test_a_bearrec_folder_with_a_foreign_file_is_not_replaced(tmp_path):
    data = tmp_path / "data"
    assert run_cli("prepare", "synthetic", "--out", data, "--users", 20).exit_code == 0
    (data / "my_notes.txt").write_text("mine")
    one_line_error(run_cli("prepare", "synthetic", "--out", data, "--users", 25), "my_notes.txt")
    assert (data / "my_notes.txt").read_text() == "mine"
    assert RecDataset.load(data).summary()["test_examples"] == 20  # the old dataset, untouched


def test_an_earlier_dataset_is_replaced_and_stale_temporaries_are_cleaned(tmp_path):
    data = tmp_path / "data"
    assert run_cli("prepare", "synthetic", "--out", data, "--users", 20).exit_code == 0
    dead = 2**22 + 12345  # above the default pid_max: never a live process
    stale = [tmp_path / f".data.bearrec-tmp-{dead}-x1", tmp_path / f".data.bearrec-old-{dead}-x2"]
    for folder in stale:
        folder.mkdir()
        (folder / "items.parquet").write_text("half")
    unrelated = tmp_path / ".data.backup"
    unrelated.mkdir()
    assert run_cli("prepare", "synthetic", "--out", data, "--users", 25).exit_code == 0
    assert RecDataset.load(data).summary()["test_examples"] == 25
    assert not any(p.exists() for p in stale) and unrelated.is_dir()
    assert json.loads((data / io.MARKER).read_text()) == {"kind": "dataset"}


# ---------------------------------------------------------------------------------- atomic replacement
def _fill(folder: Path, text: str) -> None:
    (folder / "dataset.json").write_text(text)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_swap_replaces_whole_folders(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "d"
    with io.atomic_folder(target, "dataset") as tmp:
        _fill(tmp, "one")
    with io.atomic_folder(target, "dataset") as tmp:
        _fill(tmp, "two")
    assert (target / "dataset.json").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_kill_between_the_two_renames_is_recovered(tmp_path, monkeypatch):
    """The fallback renames the old folder aside, then the new one into place; die in between, and the next
    call puts the old folder back before anything else."""
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "d"
    with io.atomic_folder(target, "dataset") as tmp:
        _fill(tmp, "old")
    real_replace, calls = os.replace, []

    def dying_replace(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the new folder's move into place
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", dying_replace)
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda *a, **k: None)  # a SIGKILL runs no cleanup
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_folder(target, "dataset") as tmp:
            _fill(tmp, "new")
    monkeypatch.undo()
    assert not target.exists() and any(".bearrec-old-" in p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(atomic, "_alive", lambda pid: False)  # the "killed" writer was this very process
    io.recover(target)
    assert (target / "dataset.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_failed_block_leaves_the_old_folder(tmp_path):
    target = tmp_path / "d"
    with io.atomic_folder(target, "dataset") as tmp:
        _fill(tmp, "old")
    with pytest.raises(RuntimeError):
        with io.atomic_folder(target, "dataset") as tmp:
            _fill(tmp, "half")
            raise RuntimeError("crash while writing")
    assert (target / "dataset.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_folder_kinds(tmp_path):
    legacy = tmp_path / "legacy"  # a dataset written before markers existed
    legacy.mkdir()
    (legacy / "dataset.json").write_text("{}")
    (legacy / "items.parquet").write_text("")
    assert io.folder_kind(legacy) == "dataset"
    (legacy / "thesis.txt").write_text("")
    assert io.folder_kind(legacy) is None
    with pytest.raises(FileExistsError, match="not a folder bearrec wrote"):
        io.check_replaceable(legacy, "dataset")
    run = tmp_path / "run"
    run.mkdir()
    io.mark(run, "run")
    with pytest.raises(FileExistsError, match="bearrec run folder, not a dataset"):
        io.check_replaceable(run, "dataset")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert io.check_replaceable(empty, "dataset") == empty
