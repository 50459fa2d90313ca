"""Experiment trackers (``train.report_to``): the Trainer's own MLflow and Weights & Biases integrations log the
training, configured through their documented environment variables; this module sets their defaults, records
which tracker runs a training logged to, and adds a finished run's tags and final metrics to them (``compare`` and
``sweep``, after each run's evaluation). mlflow and wandb are optional: imported only where a run asks for them."""

from __future__ import annotations

import os
import re
from pathlib import Path

MLRUNS = "mlruns"  # MLflow's file store, in the working folder unless MLFLOW_TRACKING_URI says otherwise
PROJECT = "bearrec"  # the MLflow experiment and the W&B project, unless MLFLOW_EXPERIMENT_NAME / WANDB_PROJECT say


def tracker_environment(report_to: list[str]) -> None:
    """The defaults of the trackers in ``report_to`` where the environment sets none: MLflow logs to the file store
    ``./mlruns`` (made absolute, so that the processes of ``--jobs`` share it) in the experiment ``bearrec``; W&B
    runs offline (``wandb sync`` uploads later) unless ``WANDB_MODE`` or ``WANDB_API_KEY`` is set, in the project
    ``bearrec``, its files under ``WANDB_DIR`` (the working folder by default)."""
    if "mlflow" in report_to:
        if "MLFLOW_TRACKING_URI" not in os.environ:
            os.environ["MLFLOW_TRACKING_URI"] = Path(MLRUNS).resolve().as_uri()
            # mlflow 3.x refuses a file store unless told (mlflow-skinny has no SQL backend to offer instead)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", PROJECT)
    if "wandb" in report_to:
        if "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_PROJECT", PROJECT)


def tracker_runs(report_to: list[str]) -> dict[str, dict]:
    """The tracker runs that the training just ended in this process logged to, by tracker: MLflow's run id and
    store, the W&B run's id and project (none on the processes of a distributed run other than the first)."""
    runs: dict[str, dict] = {}
    if "mlflow" in report_to:
        import mlflow

        run = mlflow.last_active_run()
        if run is not None:
            runs["mlflow"] = {"run_id": run.info.run_id, "tracking_uri": mlflow.get_tracking_uri()}
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            runs["wandb"] = {"run_id": wandb.run.id, "project": wandb.run.project}
    return runs


def log_result(runs: dict[str, dict], tags: dict[str, str], metrics: dict[str, float]) -> None:
    """Add a finished run's ``tags`` (objective, seed, run name) and final ``metrics`` to the tracker ``runs`` its
    training logged to (:func:`tracker_runs`). Metric names are the ones MLflow accepts (``NDCG@10`` ->
    ``NDCG_10``), as the Trainer's MLflow integration writes its own."""
    metrics = {re.sub(r"[^0-9A-Za-z_\-. :/]", "_", name): float(value) for name, value in metrics.items()
               if value is not None}
    if "mlflow" in runs:
        _log_mlflow(runs["mlflow"], tags, metrics)
    if "wandb" in runs:
        _log_wandb(runs["wandb"], tags, metrics)


def _log_mlflow(run: dict, tags: dict[str, str], metrics: dict[str, float]) -> None:
    from mlflow import MlflowClient

    if run["tracking_uri"].startswith("file:"):  # the file store the training wrote (a sweep's test split: maybe in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a later process, without tracker_environment)
    client = MlflowClient(run["tracking_uri"])
    for name, value in tags.items():
        client.set_tag(run["run_id"], name, value)
    for name, value in metrics.items():
        client.log_metric(run["run_id"], name, value)


def _log_wandb(run: dict, tags: dict[str, str], metrics: dict[str, float]) -> None:
    """Into the W&B run the training left open in this process, else that run resumed; then it is finished, so
    that the next training of this process starts its own."""
    import wandb

    active = wandb.run if wandb.run is not None and wandb.run.id == run["run_id"] else \
        wandb.init(id=run["run_id"], project=run["project"], resume="allow")
    active.config.update(tags, allow_val_change=True)
    active.summary.update(metrics)
    active.finish()
