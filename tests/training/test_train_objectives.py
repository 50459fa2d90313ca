"""End to end through `bearrec train`: msl, bear (official) and S-DPO against a reference SFT run, a few steps each."""

import json

import pytest
import torch
from typer.testing import CliRunner

from bearrec.cli import app
from bearrec.config import _set, from_dict, load_config
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.experiments.plan import parse_grid
from bearrec.items.trie import ItemTrie
from bearrec.training.collators import Collator
from bearrec.yamlfiles import parse_value

runner = CliRunner()
SMALL = ["--epochs", "1", "--batch-size", "16", "--max-train-examples", "48", "--set", "train.valid_users=8",
         "--set", "train.logging_steps=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "synthetic"
    generate_synthetic(SyntheticConfig(num_users=40, num_categories=3, items_per_category=12)).save(folder)
    return folder


def _train(data_dir, out, *flags):
    result = runner.invoke(app, ["train", str(data_dir), "--out", str(out), *SMALL, *flags])
    assert result.exit_code == 0, result.output
    return json.loads((out / "train_log.json").read_text())


@pytest.mark.slow
def test_msl_bear_and_sdpo_train_from_the_cli(data_dir, tmp_path):
    msl = _train(data_dir, tmp_path / "msl", "--objective", "msl", "--tau", "4.5")
    assert load_config(tmp_path / "msl" / "config.yaml").msl.tau == 4.5
    bear = _train(data_dir, tmp_path / "bear", "--objective", "bear")  # official, the authors' defaults
    config = load_config(tmp_path / "bear" / "config.yaml")
    assert (config.bear.formulation, config.bear.weight, config.bear.temperature) == ("official", 0.25, 2.75)
    for log in (msl, bear):
        losses = [h["loss"] for h in log["log_history"]]
        assert losses and all(torch.isfinite(torch.tensor(losses)))
        assert all("violated_token_share" in h for h in log["log_history"])  # diagnostics on logging steps
    _train(data_dir, tmp_path / "paper", "--objective", "bear", "--set", "bear.formulation=paper",
           "--set", "bear.candidates=trie")
    _train(data_dir, tmp_path / "sft", "--objective", "sft")
    sdpo = _train(data_dir, tmp_path / "sdpo", "--objective", "sdpo-bear", "--reference", str(tmp_path / "sft"),
                  "--negatives", "2")
    assert sdpo["global_step"] == 3 and all(torch.isfinite(torch.tensor([h["loss"] for h in sdpo["log_history"]])))
    result = runner.invoke(app, ["train", str(data_dir), "--out", str(tmp_path / "bad"), *SMALL,
                                 "--objective", "sdpo", "--reference", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "sdpo.reference" in result.output


def test_collator_adds_negatives_and_sparse_candidates():
    answers = [[5, 1, 9], [5, 2, 9], [7, 9], [6, 9]]
    trie = ItemTrie.from_sequences(answers, 9)
    collate = Collator(0, trie=trie, negatives=2, answers=answers, seed=3)
    batch = collate([{"prompt": [3, 4], "answer": answers[1], "item": 1}, {"prompt": [3], "answer": answers[2], "item": 2}])
    labels = batch["labels"]
    assert labels.shape == (6, 3) and batch["candidates"].shape[:2] == (6, 3)
    rows = [[int(x) for x in row if x != -100] for row in labels]
    assert rows[0] == answers[1] and rows[3] == answers[2]
    assert all(r in answers for r in rows) and rows[0] not in rows[1:3] and rows[3] not in rows[4:6]
    assert torch.equal(batch["candidates"], trie.label_candidates(labels))


def test_every_option_is_a_sweep_key_and_bad_values_name_the_field():
    grid = parse_grid(["weight=0.1,1", "temperature=0.25,3", "formulation=official,paper", "candidates=trie", "tau=1,2"], "bear")
    assert set(grid) == {"bear.weight", "bear.temperature", "bear.formulation", "bear.candidates", "bear.tau"}
    assert set(parse_grid(["tau=1,4.5", "ats=true"], "msl")) == {"msl.tau", "msl.ats"}
    assert set(parse_grid(["beta=0.5,1", "negatives=3", "weight=0.25"], "sdpo-bear")) == {"sdpo.beta", "sdpo.negatives", "sdpo.weight"}
    config = load_config(None, ["bear.formulation=paper", "bear.candidates=trie"])
    config.bear.validate("bear")
    for override, message in [("bear.weight=-1", "bear.weight must be >= 0"), ("bear.temperature=0", "bear.temperature must be > 0"),
                              ("bear.beam_width=0", "bear.beam_width must be an integer >= 1"),
                              ("bear.formulation=printed", "bear.formulation must be official or paper"),
                              ("bear.candidates=all", "bear.candidates must be vocab or trie"),
                              ("msl.tau=0", "msl.tau must be > 0"), ("sdpo.negatives=0", "sdpo.negatives must be an integer >= 1"),
                              ("sdpo.beta=-1", "sdpo.beta must be > 0"), ("msl.ats_alpha=2", "msl.ats_alpha must be in")]:
        section = override.split(".")[0]
        key, value = override.split("=")
        raw = {}
        _set(raw, key, parse_value(value))
        with pytest.raises(ValueError, match=message):
            getattr(from_dict(raw), section).validate(section)
