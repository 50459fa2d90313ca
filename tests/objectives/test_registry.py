"""One registry of objectives: an objective registered from outside (one config class, one entry) is a config
section, a `train --objective` choice, a `compare --objectives` entry, a `sweep --grid` key and a results row."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import yaml
from cli_helpers import SMALL, one_line_error, run_cli

from bearrec.checks import check, is_number
from bearrec.config import ExperimentConfig, load_config
from bearrec.objectives import registry, sft_loss
from bearrec.objectives.registry import Objective


@dataclass
class ToyConfig:
    """Cross-entropy times ``scale``: the smallest objective with a setting of its own."""

    scale: float = 1.0
    needs_search = False
    needs_candidates = False
    negatives = 0

    def loss(self, logits, labels, extra=None) -> tuple[torch.Tensor, torch.Tensor]:
        loss = self.scale * sft_loss(logits, labels)
        return loss, torch.zeros_like(loss)

    def validate(self, section: str) -> None:
        check(is_number(self.scale) and self.scale > 0, section, "scale", "> 0", self.scale)


@pytest.fixture
def toy():
    registry.register(Objective("toy", ToyConfig, "toy", "cross-entropy times toy.scale", lambda s: "masked"))
    yield
    registry.unregister("toy")
    assert "toy" not in ExperimentConfig().sections


@pytest.fixture(scope="module")
def syn(tiny_data):
    return tiny_data


def test_a_registered_objective_is_a_config_section(toy):
    config = load_config(None, ["train.objective=toy", "toy.scale=2"])
    assert config.toy.scale == 2.0 and isinstance(config.objective_config(), ToyConfig)
    assert config.scoring == "masked"  # its own default scoring
    assert config.to_dict()["toy"] == {"scale": 2.0}
    with pytest.raises(ValueError, match="toy.scale must be > 0"):
        load_config(None, ["train.objective=toy", "toy.scale=-1"])
    with pytest.raises(ValueError, match="unknown field 'shape'"):
        load_config(None, ["toy.shape=1"])


def test_registering_checks_names_and_sections():
    with pytest.raises(ValueError, match="letters, digits and dashes"):
        registry.register(Objective("to y", ToyConfig, "toy", ""))
    with pytest.raises(ValueError, match="section 'bear' already holds BEARConfig"):
        registry.register(Objective("toy", ToyConfig, "bear", ""))
    assert "toy" not in registry.names()


@pytest.mark.slow
def test_train_compare_and_sweep_find_it(toy, syn, tmp_path):
    result = run_cli("train", syn, "--objective", "toy", "--set", "toy.scale=2", "--out", tmp_path / "run",
                     "--epochs", 1, *SMALL)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["toy"] == {"scale": 2.0}
    one_line_error(run_cli("train", syn, "--objective", "toyy", "--out", tmp_path / "x"), "--objective", "toyy", "toy")

    result = run_cli("compare", "--data", syn, "--model", "tiny", "--objectives", "toy:scale=0.5", "--baselines", "none",
                     "--epochs", 1, "--max-eval-users", 8, "--no-pruning-rate", "--out", tmp_path / "cmp", *SMALL)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert "toy:scale=0.5" in json.dumps(rows) and "toy:scale=0.5" in (tmp_path / "cmp" / "results.md").read_text()

    result = run_cli("sweep", "--data", syn, "--model", "tiny", "--objective", "toy", "--grid", "scale=0.5,2",
                     "--epochs", 1, "--max-eval-users", 8, "--out", tmp_path / "sweep", *SMALL)
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "sweep" / "experiment.json").read_text())["runs"]
    overrides = [run["overrides"] for run in plan]
    assert {"train.objective": "toy", "toy.scale": 0.5} in overrides and {"train.objective": "toy", "toy.scale": 2} in overrides
    assert "scale=0.5" in (tmp_path / "sweep" / "results.md").read_text()
