"""Experiment tracking (``train.report_to``): the field's one-line errors, the trackers' environment defaults, and
MLflow end to end: a tiny compare logs its training through the Trainer's integration into ``./mlruns``, then each
run's objective, seed, name and test metrics; read back through MLflow's client."""

from __future__ import annotations

import importlib.util
import json

import pytest
from cli_helpers import SMALL, one_line_error, run_cli

from bearrec.config import load_config
from bearrec.training.tracking import log_result, tracker_environment

TRACKER_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE",
                     "WANDB_API_KEY", "WANDB_PROJECT")


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    """No tracker variable set, the working folder ``tmp_path``; both restored afterwards (a variable set by the
    code under test included)."""
    for name in TRACKER_VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.mark.parametrize("value,needle", [
    ("[mlfow]", "train.report_to must be a list of tensorboard, mlflow, wandb, none, got ['mlfow']"),
    ("[]", "train.report_to must be a list of tensorboard, mlflow, wandb, none, got []"),
    ("[none, tensorboard]", "train.report_to must be [none] alone or a list without none"),
    ("[mlflow, mlflow]", "train.report_to must be a list without repeats, got ['mlflow', 'mlflow']"),
    ("tensorboard", "train: report_to must be a list of names, got 'tensorboard'"),
])
def test_report_to_is_checked(value, needle):
    with pytest.raises(ValueError, match="report_to") as err:
        load_config(None, [f"train.report_to={value}"])
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name,package", [("mlflow", "mlflow-skinny"), ("wandb", "wandb")])
def test_a_tracker_not_installed_names_its_package(monkeypatch, tmp_path, name, package):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == name else find_spec(module, *a))
    one_line_error(run_cli("train", tmp_path / "data", "--set", f"train.report_to=[tensorboard, {name}]"),
                   f"train.report_to: {name} is not installed; pip install {package}")


def test_none_and_the_default_pass():
    assert load_config(None).train.report_to == ["tensorboard"]
    assert load_config(None, ["train.report_to=[none]"]).train.report_to == ["none"]


def test_tracker_defaults_yield_to_the_environment(clean_environment, tmp_path):
    import os

    tracker_environment(["tensorboard"])
    assert not {name for name in TRACKER_VARIABLES if name in os.environ}
    tracker_environment(["mlflow", "wandb"])
    assert os.environ["MLFLOW_TRACKING_URI"] == (tmp_path / "mlruns").as_uri()
    assert os.environ["MLFLOW_EXPERIMENT_NAME"] == os.environ["WANDB_PROJECT"] == "bearrec"
    assert os.environ["WANDB_MODE"] == "offline"
    for name in TRACKER_VARIABLES:
        clean_environment.delenv(name, raising=False)
    clean_environment.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    clean_environment.setenv("WANDB_API_KEY", "key")
    tracker_environment(["mlflow", "wandb"])
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://tracking:5000" and "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    assert "WANDB_MODE" not in os.environ  # online, with the user's key


def test_log_result_tags_and_metrics_an_mlflow_run(clean_environment, tmp_path):
    from mlflow import MlflowClient

    clean_environment.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "store").as_uri()
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("x"))
    clean_environment.delenv("MLFLOW_ALLOW_FILE_STORE")  # a later process: it reopens the file store itself
    log_result({"mlflow": {"run_id": run.info.run_id, "tracking_uri": uri}}, {"objective": "bear", "seed": "1"},
               {"test/NDCG@10": 0.25, "test/PR@10": None})
    data = client.get_run(run.info.run_id).data
    assert data.metrics == {"test/NDCG_10": 0.25}
    assert {"objective": "bear", "seed": "1"}.items() <= data.tags.items()


@pytest.mark.slow
def test_compare_logs_training_and_results_to_mlflow(clean_environment, tiny_data, tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "cmp"
    result = run_cli("compare", "--data", tiny_data, "--model", "tiny", "--objectives", "sft", "--seeds", 1,
                     "--epochs", 1, "--baselines", "none", "--max-eval-users", 8, "--pruning-users", 4, *SMALL,
                     "--set", "train.logging_steps=1", "--set", "train.report_to=[mlflow]", "--out", out)
    assert result.exit_code == 0, result.output
    client = MlflowClient((tmp_path / "mlruns").as_uri())  # the default store: ./mlruns
    runs = client.search_runs([client.get_experiment_by_name("bearrec").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    recorded = json.loads((out / "runs" / "sft" / "seed0" / "result.json").read_text())
    assert recorded["trackers"]["mlflow"]["run_id"] == run.info.run_id
    assert run.info.run_name == str(out / "runs" / "sft" / "seed0")
    # the Trainer's integration: its arguments as params, the training logs as metrics
    assert run.data.params["num_train_epochs"] == "1" and run.data.params["seed"] == "0"
    assert {"loss", "loss_sft", "eval_NDCG_10"} <= set(run.data.metrics)
    # the experiment's: objective, seed and run as tags, the test metrics
    assert {"objective": "sft", "seed": "0", "run": "sft"}.items() <= run.data.tags.items()
    assert run.data.metrics["test/NDCG_10"] == pytest.approx(recorded["metrics"]["NDCG@10"])
    assert not (tmp_path / "cmp" / "runs" / "sft" / "seed0" / "checkpoints" / "runs").exists()  # no TensorBoard


@pytest.mark.slow
def test_sweep_logs_the_grid_on_valid_and_the_chosen_point_on_test(clean_environment, tiny_data, tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "sweep"
    result = run_cli("sweep", "--data", tiny_data, "--grid", "weight=0.5", "--epochs", 1, "--max-eval-users", 8, *SMALL,
                     "--set", "train.report_to=[mlflow]", "--out", out)
    assert result.exit_code == 0, result.output
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    runs = {r.data.tags["run"]: r for r in client.search_runs([client.get_experiment_by_name("bearrec").experiment_id])}
    assert set(runs) == {"sft", "bear weight=0.5"}
    assert runs["bear weight=0.5"].data.tags["objective"] == "bear"
    for run in runs.values():  # the only grid point is the chosen one: both runs are evaluated on test as well
        assert {"valid/NDCG_10", "test/NDCG_10"} <= set(run.data.metrics)
