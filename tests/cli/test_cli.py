"""The command line end to end: prepare, train, evaluate, recommend, quickstart, and one-line errors."""

import json

import pytest
from typer.testing import CliRunner

from bearrec.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _processed(folder, items="item_id,title\na,Alpha\nb,Beta\nc,Gamma\n",
               train='user_id,item_ids,timestamp\nu1,"[""a"", ""b""]",1\n'):
    folder.mkdir()
    _write(folder / "items.csv", items)
    _write(folder / "train.csv", train)
    _write(folder / "valid.csv", 'user_id,item_ids,timestamp\nu1,"[""a"", ""c""]",2\n')
    _write(folder / "test.csv", 'user_id,item_ids,timestamp\nu1,"[""b"", ""c""]",3\n')
    return folder


@pytest.mark.parametrize("items,train,strict,needles", [
    ("item_id,name\na,Alpha\n", None, False, ["items.csv", "title"]),  # missing column
    (None, 'user_id,item_ids,timestamp\nu1,"[""a"", ""zz""]",1\n', False, ["train.csv", "row 2", "zz"]),  # unknown id
    (None, 'user_id,item_ids,timestamp\nu1,"[""a""]",1\n', False, ["train.csv", "row 2", "item_ids"]),  # empty history
    (b"item_id,title\na,Alpha\nb,B\xff\xfeta\nc,Gamma\n", None, False, ["items.csv", "row 3"]),  # not UTF-8
    ("item_id,title\na,Alpha\nb,\nc,Gamma\n", None, True, ["items.csv", "row 3", "title"]),  # empty title, strict
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, items, train, strict, needles):
    kwargs = {k: v for k, v in (("items", items), ("train", train)) if v is not None}
    src = _processed(tmp_path / "src", **kwargs)
    out = tmp_path / "out"
    result = _run("prepare", "processed", src, "--out", out, *(["--strict"] if strict else []))
    assert result.exit_code == 2
    error = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error) == 1 and error[0].startswith("error:")
    for needle in needles:
        assert needle in error[0]
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


def test_missing_input_folder(tmp_path):
    result = _run("prepare", "processed", tmp_path / "nope", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "nope" in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_evaluate_recommend_on_synthetic(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    assert _run("prepare", "synthetic", "--out", data, "--users", 60).exit_code == 0
    result = _run("train", data, "--out", run, "--objective", "bear", "--epochs", 1, "--batch-size", 16)
    assert result.exit_code == 0, result.output
    assert (run / "model" / "model.safetensors").is_file() and (run / "run.json").is_file()
    log = json.loads((run / "train_log.json").read_text())
    assert "objective: bear" in (run / "config.yaml").read_text() and len(log["epochs"]) == 1
    again = _run("train", data, "--out", run)
    assert again.exit_code == 2 and "--resume" in again.stderr
    result = _run("evaluate", run, "--split", "valid", "--max-users", 20)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "eval_valid.json").read_text())["metrics"]
    assert set(metrics) == {f"{name}@{k}" for k in (5, 10) for name in (
        "NDCG", "HR", "MRR", "PR", "ItemCoverage", "GiniIndex", "TailPercentage",
        "exact_NDCG", "exact_HR", "gap_NDCG", "lost_NDCG", "gained_NDCG", "reordered_NDCG")}
    assert "NDCG@10" in result.stdout and "beam search against the exact ranking" in result.stdout
    for decoder, extra in [("exact", ["--node-budget", 50]), ("latent", ["--latent-variant", "local"])]:
        result = _run("evaluate", run, "--split", "valid", "--max-users", 20, "--decoder", decoder, *extra)
        assert result.exit_code == 0, result.output
        saved = json.loads((run / f"eval_valid_{decoder}.json").read_text())
        assert saved["decoder"] == decoder and set(saved["metrics"]) == {f"{name}@{k}" for k in (5, 10) for name in (
                "NDCG", "HR", "MRR", "ItemCoverage", "GiniIndex", "TailPercentage")}
    assert (run / "latent_memory.safetensors").is_file() and "memory loaded" not in result.stdout
    result = _run("evaluate", run, "--split", "valid", "--max-users", 20, "--decoder", "latent")
    assert result.exit_code == 0 and "memory loaded" in result.stdout
    assert json.loads((run / "eval_valid.json").read_text())["decoder"] == "beam"  # not overwritten
    bad = _run("evaluate", run, "--decoder", "greedy")
    assert bad.exit_code == 2 and "decoder" in bad.stderr
    result = _run("evaluate", run, "--split", "valid", "--max-users", 8, "--scoring", "masked", "--length-penalty", 1,
                  "--pruning-node-budget", 3)
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "eval_valid.json").read_text())
    assert (saved["scoring"], saved["length_penalty"], saved["pruning"]["node_budget"]) == ("masked", 1.0, 3)
    assert f"{saved['pruning']['unranked_users']} left undecided by the node budget" in result.stdout
    bad = _run("evaluate", run, "--scoring", "vocab")
    assert bad.exit_code == 2 and "scoring" in bad.stderr
    result = _run("recommend", run, "i00000", "i00001", "--top-k", 3)
    assert result.exit_code == 0, result.output
    assert [line.split(".")[0].strip() for line in result.stdout.splitlines()] == ["1", "2", "3"]
    bad = _run("recommend", run, "no-such-item")
    assert bad.exit_code == 2 and "no-such-item" in bad.stderr
    assert _run("evaluate", tmp_path / "missing-run").exit_code == 2


def test_train_objective_flags_reach_the_objective_the_config_names(tmp_path, monkeypatch):
    """`--weight` and `--beam-width` set the section of the objective trained, also when --config names it; a
    flag the objective has no setting for is refused."""
    import bearrec.runs

    seen = {}

    def fake_train(cfg, out_dir, **kwargs):
        seen.update(cfg=cfg)
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(bearrec.runs, "train_run", fake_train)
    config = _write(tmp_path / "exp.yaml", "train:\n  objective: beam-sim\n")
    assert _run("train", tmp_path, "--config", config, "--weight", 2, "--beam-width", 20, "--out", tmp_path / "r").exit_code == 130
    cfg = seen["cfg"]
    assert (cfg.train.objective, cfg.beam_sim.weight, cfg.beam_sim.beam_width) == ("beam-sim", 2.0, 20)
    assert (cfg.bear.weight, cfg.bear.beam_width) == (0.25, 10)  # untouched
    assert _run("train", tmp_path, "--objective", "apao-pairwise", "--negatives", 7, "--beta", 0.3, "--out", tmp_path / "r").exit_code == 130
    assert (seen["cfg"].apao.num_negatives, seen["cfg"].apao.beta) == (7, 0.3)
    refused = _run("train", tmp_path, "--weight", 2, "--out", tmp_path / "r2")
    assert refused.exit_code == 2 and "--weight: objective sft has no such setting" in refused.stderr
    refused = _run("train", tmp_path, "--objective", "bear", "--negatives", 3, "--out", tmp_path / "r2")
    assert refused.exit_code == 2 and "--negatives: objective bear has no such setting" in refused.stderr
    assert not (tmp_path / "r2").exists()


@pytest.mark.slow
def test_quickstart_small(tmp_path):
    out = tmp_path / "qs"
    result = _run("quickstart", "--out", out, "--users", 60, "--epochs", 1)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"sft", "msl", "bear"}
    assert {name: run["scoring"] for name, run in results["runs"].items()} == {"sft": "full", "msl": "masked",
                                                                                "bear": "masked"}
    for run in results["runs"].values():
        assert run["users"] == 60 and run["seconds_per_epoch"] > 0
        assert 0 <= run["metrics"]["HR@10"] <= 1 and 0 <= run["metrics"]["exact_HR@10"] <= 1
    table = (out / "results.md").read_text()
    assert "| sft |" in table and "| msl |" in table and "| bear |" in table and "PR@10" in table
    assert "exact N@10" in table and "gap N@10" in table
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "N@10" in result.stdout and "bear" in result.stdout
    # a second quickstart replaces the first (its msl run included), but not a folder holding a user's file
    again = _run("quickstart", "--out", out, "--users", 60, "--epochs", 1, "--objectives", "sft,apao-pointwise")
    assert again.exit_code == 0, again.output
    assert set(json.loads((out / "results.json").read_text())["runs"]) == {"sft", "apao-pointwise"}
    (out / "notes.txt").write_text("mine")
    refused = _run("quickstart", "--out", out, "--users", 60, "--epochs", 1, "--objectives", "sft")
    assert refused.exit_code != 0 and "notes.txt" in refused.output and (out / "notes.txt").read_text() == "mine"
