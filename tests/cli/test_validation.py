"""Every bad option, config field or artefact is one line on stderr, exit 2, and leaves nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_helpers import SMALL, one_line_error, run_cli


@pytest.fixture(scope="module")
def syn(tiny_data) -> Path:
    return tiny_data


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run


# ---------------------------------------------------------------------------------- train: checked before writing
@pytest.mark.parametrize("args,needle", [
    (["--epochs", 0], "train.epochs"),
    (["--epochs", -1], "train.epochs"),
    (["--batch-size", 0], "train.batch_size"),
    (["--lr", -1], "train.lr"),
    (["--max-train-examples", 0], "train.max_train_examples"),
    (["--max-train-examples", -1], "train.max_train_examples"),
    (["--max-prompt-tokens", 0], "train.max_prompt_tokens"),
    (["--objective", "bear", "--beam-width", 0], "beam_width"),
    (["--objective", "bear", "--temperature", 0], "temperature"),
    (["--objective", "bear", "--weight", -5], "weight"),
    (["--set", "train.valid_users=-1"], "train.valid_users"),
    (["--set", "train.grad_accum_steps=0"], "train.grad_accum_steps"),
    (["--set", "train.bf16=maybe"], "train.bf16"),
    (["--set", "tiny.num_attention_heads=3"], "tiny.hidden_size"),
    (["--set", "tiny.hidden_size=0"], "tiny.hidden_size"),
    (["--set", "lora_settings.rank=0"], "lora_settings.rank"),
    (["--set", "train.epochs=["], "--set"),
    (["--set", "train.epochs=!!python/object/apply:os.system [echo]"], "--set"),
    (["--set", "train.epochs=2.5"], "epochs must be an integer"),
    (["--set", "train.lr=.nan"], "finite"),
    (["--set", "data.x=1"], "not a section"),
    (["--set", "nosuch.field=1"], "unknown field"),
    (["--set", "train"], "section.field=value"),
])
def test_bad_train_options(syn, tmp_path, args, needle):
    out = tmp_path / "run"
    one_line_error(run_cli("train", syn, "--out", out, *SMALL, *args), needle)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_no_data_with_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(run_cli("train", "--set", "data.x=1", "--out", "r"), "data")
    one_line_error(run_cli("train", "--out", "r"), "no dataset")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text,needle", [
    ("train: [unclosed\n", "row 2"),
    ("just a string\n", "mapping"),
    ("train: {epochs: !!python/object/apply:os.system [echo]}\n", "not valid YAML"),
    ("train: 3\n", "expected a mapping"),
    (b"train:\n  epochs: \xff\n", "UTF-8"),
])
@pytest.mark.parametrize("command", ["train", "compare", "sweep"])
def test_bad_config_files(syn, tmp_path, text, needle, command):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    if command == "train":
        args = ["train", syn, "--config", path, "--out", tmp_path / "out"]
    else:
        args = [command, path, "--data", syn, "--out", tmp_path / "out"] + (["--grid", "weight=1"] if command == "sweep" else [])
    one_line_error(run_cli(*args), "bad.yaml", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_long_title_is_refused_before_training(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    long_title = " ".join(f"w{i}x{i * 7}" for i in range(2000))  # thousands of tokens
    (src / "items.csv").write_text(f"item_id,title\na,Alpha\nb,{long_title}\nc,Gamma\n")
    for split in ("train", "valid", "test"):
        (src / f"{split}.csv").write_text('user_id,item_ids,timestamp\nu,"[""a"", ""b"", ""c""]",\n')
    assert run_cli("prepare", "processed", src, "--out", tmp_path / "data").exit_code == 0
    one_line_error(run_cli("train", tmp_path / "data", "--out", tmp_path / "run", *SMALL), "item 'b'", "positions")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- prepare, evaluate, recommend, compare
@pytest.mark.parametrize("args,needle", [
    (["synthetic", "--users", 0], "num_users"),
    (["synthetic", "--users", -1], "num_users"),
    (["interactions", "i.csv", "t.csv", "--min-interactions", -3], "min_interactions"),
])
def test_bad_prepare_options(tmp_path, args, needle):
    (tmp_path / "i.csv").write_text("user,item,timestamp\nu,a,1\n")
    (tmp_path / "t.csv").write_text("item,title\na,Alpha\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    one_line_error(run_cli("prepare", *[tmp_path / a if str(a).endswith(".csv") else a for a in args],
                         "--out", tmp_path / "out"), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("args,needle", [
    (["--pruning-users", -1], "pruning_users"),
    (["--pruning-users", 0], "pruning_users"),
    (["--beam-width", 0], "beam_width"),
    (["--max-users", 0], "max_users"),
    (["--max-users", -1], "max_users"),
    (["--split", "bogus"], "split"),
])
@pytest.mark.slow
def test_bad_evaluate_options(run, args, needle):
    before = sorted(p.name for p in run.iterdir())
    one_line_error(run_cli("evaluate", run, *args), needle)
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.parametrize("args,needle", [
    (["--top-k", 0], "--top-k"),
    (["--top-k", -1], "--top-k"),
    (["--top-k", 11], "--beam-width"),
])
@pytest.mark.slow
def test_bad_recommend_options(run, syn, args, needle):
    from bearrec.data.dataset import RecDataset

    first = RecDataset.load(syn).items["item_id"].iat[0]
    one_line_error(run_cli("recommend", run, first, *args), needle)


@pytest.mark.parametrize("args,needle", [
    (["--seeds", 0], "--seeds"),
    (["--baseline-seeds", 0], "--baseline-seeds"),
    (["--max-eval-users", 0], "max_users"),
    (["--pruning-users", -1], "pruning_users"),
    (["--objectives", "sft,nope"], "nope"),
])
def test_bad_compare_options(syn, tmp_path, args, needle):
    one_line_error(run_cli("compare", "--data", syn, "--model", "tiny", "--out", tmp_path / "cmp", *args), needle)
    assert not (tmp_path / "cmp").exists()


# ---------------------------------------------------------------------------------- recommend: titles, windows, history
@pytest.mark.slow
def test_recommend_normalises_titles_windows_history_and_excludes_it(run, syn):
    from bearrec.data.dataset import RecDataset

    dataset = RecDataset.load(syn)
    titles = dataset.titles
    spaced = titles[0].replace(" ", "\t  ", 1)  # tabs and runs of spaces: the same title after normalisation
    result = run_cli("recommend", run, spaced, titles[1], "--top-k", 5)
    assert result.exit_code == 0, result.output
    assert len([line for line in result.stdout.splitlines() if line.strip()]) == 5
    long = [titles[i % len(titles)] for i in range(50)]
    result = run_cli("recommend", run, *long, "--top-k", 3)
    assert result.exit_code == 0 and "trained on at most" in result.stderr
    history = titles[:8]
    result = run_cli("recommend", run, *history, "--top-k", 10, "--exclude-history")
    shown = [line.split(". ", 1)[1].rsplit("  (item", 1)[0] for line in result.stdout.splitlines() if ". " in line]
    assert result.exit_code == 0 and len(shown) == 10 and not set(shown) & set(history)


@pytest.mark.slow
def test_recommend_matches_decomposed_unicode(tmp_path):
    import unicodedata

    src = tmp_path / "src"
    src.mkdir()
    (src / "items.csv").write_text("item_id,title\na,Caf\u00e9 Mug\nb,Beta Pen\nc,Gamma Ink\n")
    for split in ("train", "valid", "test"):
        (src / f"{split}.csv").write_text('user_id,item_ids,timestamp\nu,"[""a"", ""b"", ""c""]",\n')
    assert run_cli("prepare", "processed", src, "--out", tmp_path / "data").exit_code == 0
    run_dir = tmp_path / "run"
    assert run_cli("train", tmp_path / "data", "--out", run_dir, "--epochs", 1, *SMALL).exit_code == 0
    decomposed = unicodedata.normalize("NFD", "Caf\u00e9 Mug")
    assert decomposed != "Caf\u00e9 Mug"
    assert run_cli("recommend", run_dir, decomposed, "--top-k", 2).exit_code == 0


# ---------------------------------------------------------------------------------- damaged artefacts
@pytest.mark.slow
def test_truncated_weights_are_one_clear_error(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = copy / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    one_line_error(run_cli("evaluate", copy), "damaged")
    one_line_error(run_cli("recommend", copy, "x"), "damaged")


@pytest.mark.slow
def test_tampered_checkpoints_are_set_aside_unread_on_resume(run, tmp_path):
    """A checkpoint whose optimizer state is a pickle that would run code is never unpickled: it is moved aside
    with a warning naming the file, and with no intact checkpoint left the run starts again from the beginning."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    checkpoints = sorted((copy / "checkpoints").glob("checkpoint-*"))
    assert checkpoints
    canary = tmp_path / "PWNED"
    for checkpoint in checkpoints:  # a pickle that runs code
        (checkpoint / "optimizer.pt").write_bytes(f"\x80\x04cos\nsystem\n(S'touch {canary}'\ntR.".encode())
    result = run_cli("train", "--resume", "--out", copy)
    assert result.exit_code == 0, result.output
    for checkpoint in checkpoints:
        assert f"{checkpoint}: damaged (optimizer.pt holds more than tensors" in result.stderr
        assert (checkpoint.parent / f"damaged-{checkpoint.name}" / "optimizer.pt").is_file()
    assert "from the start (no complete checkpoint yet)" in " ".join(result.stderr.split())
    assert not canary.exists() and (copy / "model").is_dir()


def test_resume_needs_a_run_folder(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.yaml").write_text("train: {}\n")
    one_line_error(run_cli("train", "--resume", "--out", tmp_path / "notes"), "no run to resume")


def test_usage_errors_of_the_command_are_one_line(tmp_path):
    """The installed command (``bearrec.cli:main``) turns click's usage errors into one line too."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    for args, needle in ((["train", "--epochs", "abc"], "--epochs"), (["trian"], "No such command"),
                         (["prepare", "bogus"], "bogus")):
        done = subprocess.run([sys.executable, "-m", "bearrec.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, env={**__import__("os").environ, "PYTHONPATH": str(root)}, timeout=120)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []
