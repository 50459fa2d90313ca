"""End to end on the real Amazon `office` data in ../shared/data (skipped when that folder is absent)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bearrec.cli import app

OFFICE = Path(__file__).resolve().parents[3] / "shared" / "data" / "office"
pytestmark = pytest.mark.skipif(not OFFICE.is_dir(), reason=f"real data not found at {OFFICE} (../shared/data/office)")


@pytest.mark.slow
def test_prepare_train_evaluate_office_subsample(tmp_path):
    runner = CliRunner()
    data, run = tmp_path / "office", tmp_path / "run"
    result = runner.invoke(app, ["prepare", "processed", str(OFFICE), "--out", str(data)])
    assert result.exit_code == 0, result.output
    meta = json.loads((data / "dataset.json").read_text())
    assert meta["summary"]["items"] == 2417 and meta["cleaning"]["duplicate_titles_disambiguated"] == 3
    result = runner.invoke(app, ["train", str(data), "--out", str(run), "--objective", "bear", "--epochs", "1",
                                 "--max-train-examples", "128", "--batch-size", "32",
                                 "--set", "train.valid_users=8"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(run), "--max-users", "6"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run / "eval_test.json").read_text())
    assert evaluation["users"] == 6 and evaluation["of_users"] == 4883
    assert all(0.0 <= v <= 1.0 for k, v in evaluation["metrics"].items() if not k.startswith("PR"))
