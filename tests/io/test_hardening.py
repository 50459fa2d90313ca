"""No run is ever silently lost: one writer per folder, runs bound to the data they were trained on, damaged
checkpoints set aside, and full disks or read-only folders as one line naming the path (issue 28)."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import SMALL, one_line_error, run_cli

from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.io import LOCK, folder_lock
from bearrec.training.checkpoints import last_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def cli(*args, cwd=None, limit_bytes: int | None = None, **popen) -> subprocess.Popen:
    """``bearrec ARGS`` in a process of its own; ``limit_bytes`` caps the size of any file it writes (RLIMIT_FSIZE:
    a write past it fails with EFBIG, as a full disk fails with ENOSPC)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-m", "bearrec.cli", *map(str, args)], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=limit if limit_bytes else None, **popen)


def error_line(process: subprocess.Popen, timeout: float = 300) -> str:
    """The one ``error:`` line of a process that must fail with exit 2."""
    _, stderr = process.communicate(timeout=timeout)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert process.returncode == 2 and len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


@pytest.fixture(scope="module")
def syn(tiny_data) -> Path:
    return tiny_data


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    """A finished run with two checkpoints (one per epoch)."""
    return tiny_run


@pytest.fixture
def run_copy(run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


# ------------------------------------------------------------------------------------------ one writer per folder
@pytest.mark.slow
def test_two_writers_at_once_and_a_killed_writer(syn, tmp_path):
    """A second writer of a folder another process writes is refused, naming that process; once the first
    is killed, its lock is taken over (with a warning) instead of blocking the folder for ever."""
    out = tmp_path / "r"
    first = cli("train", syn, "--out", out, "--epochs", 500, "--set", "train.select_best=false", *SMALL)  # no early stop
    try:
        deadline = time.monotonic() + 120
        while f'"pid": {first.pid}' not in ((out / LOCK).read_text() if (out / LOCK).is_file() else "") \
                or not (out / "config.yaml").is_file():
            assert first.poll() is None and time.monotonic() < deadline, "the first writer never started its run"
            time.sleep(0.2)
        second = cli("train", syn, "--out", out, "--epochs", 1, *SMALL)
        line = error_line(second)
        assert f"{out}: in use by process {first.pid}" in line and "train" in line, line
        for args in (["evaluate", out], ["train", "--resume", "--out", out]):
            assert f"process {first.pid}" in one_line_error(run_cli(*args), str(out))
    finally:
        first.kill()
        first.wait()
    with pytest.warns(UserWarning, match=f"taking over the lock of process {first.pid}"):
        with folder_lock(out, "run"):
            pass
    assert (out / "config.yaml").is_file()  # the killed writer's run is still there, to resume


def test_the_lock_moves_with_an_atomic_swap(tmp_path):
    """A writer that replaces its folder in one swap (a dataset, a model) keeps it locked throughout: the
    folder at the path is locked before and after the swap, and nobody else gets in."""
    out = tmp_path / "data"
    probe = ("import sys\nfrom bearrec.io import FolderInUse, folder_lock\ntry:\n    with folder_lock(sys.argv[1], "
             "'dataset'):\n        print('got it')\nexcept FolderInUse as err:\n    print(err)")
    dataset = generate_synthetic(SyntheticConfig(num_users=30, num_categories=2, items_per_category=10))
    with folder_lock(out, "dataset"):
        dataset.save(out)  # fills a temporary sibling, then swaps it in
        dataset.save(out)  # and once more, replacing its own earlier folder
        answer = subprocess.run([sys.executable, "-c", probe, out], env=ENV, capture_output=True, text=True).stdout
        assert f"in use by process {os.getpid()}" in answer, answer
    answer = subprocess.run([sys.executable, "-c", probe, out], env=ENV, capture_output=True, text=True).stdout
    assert answer.strip() == "got it"
    assert (out / LOCK).read_text() == ""  # released: no owner left in it


def test_a_lock_file_that_is_a_symlink_is_never_written_through(tmp_path):
    """A planted ``.bearrec.lock`` pointing at a user's file: refused, and the file keeps its content."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".bearrec").write_text('{"kind": "run"}\n')
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("four years")
    (out / LOCK).symlink_to(thesis)
    with pytest.raises(OSError, match="symbolic link"), folder_lock(out, "run"):
        pass
    assert thesis.read_text() == "four years"


def test_another_kind_of_folder_is_not_locked(syn):
    """``train DATA --out DATA``: the command refuses the dataset with its own message; the lock never touches it."""
    before = {p.name: p.read_bytes() for p in syn.iterdir() if p.is_file()}
    with folder_lock(syn, "run"):
        assert {p.name: p.read_bytes() for p in syn.iterdir() if p.is_file()} == before
    assert {p.name: p.read_bytes() for p in syn.iterdir() if p.is_file()} == before


def test_a_refused_folder_gets_no_lock_file(tmp_path):
    """Locking a folder the command then refuses (a user's folder, a dataset as a run's --out) leaves nothing in it,
    and folders made only to hold the lock are removed."""
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "thesis.txt").write_text("four years")
    with pytest.raises(ValueError), folder_lock(mine, "run"):
        raise ValueError("refused")
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
    with folder_lock(tmp_path / "a" / "b", "run"):
        assert (tmp_path / "a" / "b" / LOCK).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydocs"]


def test_the_same_process_may_nest_locks(tmp_path):
    """compare locks its folder, and run_experiment inside it locks it again: one process, one lock."""
    with folder_lock(tmp_path / "x", "experiment"), folder_lock(tmp_path / "x", "experiment"):
        assert (tmp_path / "x" / LOCK).is_file()
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------- runs bound to their data
@pytest.mark.slow
def test_resume_evaluate_recommend_refuse_changed_data(run_copy, syn, tmp_path):
    """Re-preparing the dataset folder with other content, or editing its titles, makes every command that
    reads the run refuse it, naming the folder and both fingerprints."""
    data = tmp_path / "syn"
    shutil.copytree(syn, data)
    meta = json.loads((run_copy / "run.json").read_text())
    meta["dataset_dir"] = str(data)  # the run's own copy of its dataset, to change
    (run_copy / "run.json").write_text(json.dumps(meta))
    config = (run_copy / "config.yaml").read_text()
    (run_copy / "config.yaml").write_text(config.replace(f"data: {syn}", f"data: {data}"))
    recorded = meta["dataset_fingerprint"][:12]
    assert run_cli("recommend", run_copy, "--top-k", 2, *_first_item(data)).exit_code == 0  # same content: fine

    import pandas as pd

    items = pd.read_parquet(data / "items.parquet")
    items["title"] = items["title"] + " (edited)"
    items.to_parquet(data / "items.parquet", index=False)
    for args in (["train", "--resume", "--out", run_copy], ["evaluate", run_copy, "--max-users", 2],
                 ["recommend", run_copy, *_first_item(syn)], ["serve", run_copy, "--port", 0]):
        line = one_line_error(run_cli(*args), str(data), "items.parquet", recorded)
        assert "changed since" in line, line


def _first_item(data: Path) -> list[str]:
    import pandas as pd

    return [str(pd.read_parquet(data / "items.parquet")["item_id"].iat[0])]


@pytest.mark.slow
def test_other_data_needs_allow_other_data(run, syn, tmp_path):
    """--data with other content is refused without --allow-other-data, and named in a warning with it; the
    same content in another folder is the same data."""
    other = tmp_path / "other"
    generate_synthetic(SyntheticConfig(seed=5, num_users=30, num_categories=2, items_per_category=10)).save(other)
    item = _first_item(other)
    for command in (["recommend", run, *item, "--top-k", 2], ["evaluate", run, "--max-users", 2]):
        line = one_line_error(run_cli(*command, "--data", other), str(other), str(syn), "--allow-other-data")
        assert "not the data" in line
    copy = tmp_path / "copy"
    shutil.copytree(syn, copy)
    assert run_cli("recommend", run, *_first_item(syn), "--top-k", 2, "--data", copy).exit_code == 0
    result = run_cli("recommend", run, *item, "--top-k", 2, "--data", other, "--allow-other-data")
    assert result.exit_code == 0, result.output
    warning = " ".join(result.stderr.split())
    assert f"warning: --allow-other-data: {other}: not the data {run} was trained on" in warning, warning
    assert "using its catalog" in warning


# ------------------------------------------------------------------------------------- damaged checkpoints
@pytest.mark.slow
def test_a_damaged_checkpoint_is_moved_aside_and_the_one_before_resumed(run_copy):
    """A damaged side file (trainer_state.json emptied, truncated, or with a global step that is not a number)
    sets its checkpoint aside with a warning; the run resumes from the newest intact one. Nothing is deleted."""
    checkpoints = sorted((run_copy / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 2
    newest, older = checkpoints[1], checkpoints[0]
    state = json.loads((newest / "trainer_state.json").read_text())
    for damage, needle in (("", "trainer_state.json"), ('{"global_step": 1', "trainer_state.json"),
                           (json.dumps({**state, "global_step": "ten"}), "global_step is 'ten'"),
                           (json.dumps({**state, "global_step": 10**30}), "global_step is 1000"),
                           ("[" * 100_000, "trainer_state.json"),  # nested deeper than the JSON reader recurses
                           (json.dumps(state), "no weights file")):  # intact state, weights deleted below
        (newest / "trainer_state.json").write_text(damage)
        weights = {p.name: p.read_bytes() for p in newest.iterdir() if p.suffix == ".safetensors"}
        if needle == "no weights file":
            (newest / "model.safetensors").rename(newest / "model.safetensors.kept")
        with pytest.warns(UserWarning, match=needle) as caught:
            assert last_checkpoint(run_copy / "checkpoints") == str(older)
        aside = run_copy / "checkpoints" / f"damaged-{newest.name}"
        assert any(aside.name in str(w.message) for w in caught)
        if needle == "no weights file":
            (aside / "model.safetensors.kept").rename(aside / "model.safetensors")
        assert {p.name: p.read_bytes() for p in aside.iterdir() if p.suffix == ".safetensors"} == weights
        aside.rename(newest)  # put back for the next kind of damage


@pytest.mark.slow
def test_resume_after_damage_continues_from_the_intact_checkpoint(run_copy):
    """Through the command: a truncated epochs.json and a checkpoint whose global step is 'ten' give warnings,
    not tracebacks, and the run resumes from the checkpoint before (nothing of the user's is deleted)."""
    checkpoints = sorted((run_copy / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = checkpoints[1] / "trainer_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "global_step": "ten"}))
    log = run_copy / "checkpoints" / "epochs.json"
    log.write_text(log.read_text()[:40])
    shutil.rmtree(run_copy / "model")
    result = run_cli("train", "--resume", "--out", run_copy)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:") and "damaged" in line]
    assert any(f"{checkpoints[1]}: damaged (trainer_state.json: global_step is 'ten')" in w for w in warnings), warnings
    assert any(f"{log}: damaged" in w and "damaged-epochs.json" in w for w in warnings), warnings
    assert (run_copy / "checkpoints" / f"damaged-{checkpoints[1].name}").is_dir()
    assert (run_copy / "checkpoints" / "damaged-epochs.json").is_file() and (run_copy / "model").is_dir()


@pytest.mark.slow
def test_resume_names_what_is_missing(run_copy, tmp_path):
    (run_copy / "config.yaml").unlink()
    one_line_error(run_cli("train", "--resume", "--out", run_copy), str(run_copy / "config.yaml"), "missing")
    one_line_error(run_cli("train", "--resume", "--out", tmp_path / "nothing"), "no such folder")
    assert not (tmp_path / "nothing").exists()


# ------------------------------------------------------------------------------- full disks, read-only folders
@pytest.mark.slow  # trains an epoch in a subprocess
def test_a_failed_checkpoint_save_leaves_no_half_checkpoint(syn, tmp_path):
    """A write that fails mid-checkpoint (here a file size limit: the kernel refuses the write, EFBIG, as a full
    disk refuses it with ENOSPC) is one line naming the checkpoint; a new run with nothing to resume is gone."""
    out = tmp_path / "run"
    line = error_line(cli("train", syn, "--out", out, "--epochs", 1, *SMALL, limit_bytes=100_000))
    assert f"{out}/checkpoints/checkpoint-" in line and "file too large" in line, line
    assert "Traceback" not in line and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_prepare_on_a_full_disk_names_the_folder(tmp_path):
    out = tmp_path / "data"
    line = error_line(cli("prepare", "synthetic", "--users", 40, "--out", out, limit_bytes=2_000))
    assert f"error: {out}: file too large" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow  # trains in a subprocess
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root")
def test_a_full_tmpfs_is_one_line(syn, tmp_path):
    """The real thing where the machine allows it: a 3 MB tmpfs."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", disk], capture_output=True).returncode:
        pytest.skip("this machine does not let the tests mount a tmpfs")
    try:
        filler = disk / "filler"  # 200 KB left: the tokenizer fits, a checkpoint (700 KB) or a dataset does not
        filler.write_bytes(bytes(shutil.disk_usage(disk).free - 200_000))
        line = error_line(cli("train", syn, "--out", disk / "run", "--epochs", 1, *SMALL))
        assert f"{disk}/run" in line and "no space left on device" in line, line
        assert not (disk / "run").exists()
        line = error_line(cli("prepare", "synthetic", "--users", 3000, "--out", disk / "data"))
        assert f"{disk}/data" in line and "no space left on device" in line, line
        assert list(disk.iterdir()) == [filler]
    finally:
        subprocess.run(["umount", disk], check=False)


@pytest.mark.slow
def test_evaluate_prints_its_metrics_when_it_cannot_write_them(run, monkeypatch):
    """A read-only run folder: the metrics are shown, then one line names the file that could not be written."""
    import bearrec.runs

    def read_only(path, payload):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(bearrec.runs, "write_json", read_only)
    before = sorted(p.name for p in run.iterdir())
    result = run_cli("evaluate", run, "--max-users", 4, "--no-pruning-rate")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == f"error: {run / 'eval_test.json'}: read-only file system"
    assert "N@10" in result.stdout and "0." in result.stdout, result.stdout
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_symlink_loop_as_out_is_one_line(syn, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    one_line_error(run_cli("train", syn, "--out", loop, *SMALL), str(loop))
    one_line_error(run_cli("prepare", "synthetic", "--out", loop / "x"), str(loop))


@pytest.mark.slow
def test_a_piped_config_is_read_once(syn, tmp_path):
    """``--config <(printf ...)``: a pipe can be read only once, and train (without --objective) and compare used to
    read it twice, silently training with the defaults the second time."""
    import threading

    import yaml

    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("train:\n  epochs: 1\n  batch_size: 16\n"))
    writer.start()
    result = run_cli("train", syn, "--config", fifo, "--out", tmp_path / "run", *SMALL)
    writer.join()
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["train"]["batch_size"] == 16


@pytest.mark.slow  # a compare in a subprocess (5 s: torch, transformers and the plan)
def test_a_new_experiment_that_cannot_write_leaves_nothing(syn, tmp_path):
    """compare on a full disk before any run finished: one line naming the file, and no experiment folder."""
    out = tmp_path / "cmp"
    line = error_line(cli("compare", "--data", syn, "--model", "tiny", "--objectives", "sft", "--baselines", "none",
                          "--epochs", 1, "--out", out, *SMALL, limit_bytes=3_000))
    assert f"{out}/experiment.json: file too large" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []
