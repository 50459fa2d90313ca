"""Issue 32's keeping scripts (benchmarks/seeds/): harvest.sh keeps each finished run's result and per-epoch log, and
the experiment's own report only once every planned run is in; report.py reads a run's time per epoch as the median
of its kept epochs, so that an epoch that ran through a pause (SIGSTOP) does not swell it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "benchmarks" / "seeds"

PLAN = {"runs": [{"label": "sft", "seed": 0, "overrides": {"train.objective": "sft"}, "folder": "sft/seed0"},
                 {"label": "bear", "seed": 0, "overrides": {"train.objective": "bear"}, "folder": "bear/seed0"}]}
EPOCHS = [{"epoch": 1.0, "seconds": 40.0}, {"epoch": 2.0, "seconds": 900.0}, {"epoch": 3.0, "seconds": 44.0}]


def _finish(out: Path, folder: str, mean: float) -> None:
    """A run of the experiment folder `out` that has finished: its result (the mean the pinned code writes) and log."""
    run = out / "runs" / folder
    (run / "checkpoints").mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"label": folder.split("/")[0], "seed": 0, "seconds_per_epoch": mean}))
    (run / "checkpoints" / "epochs.json").write_text(json.dumps(EPOCHS))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with harvest.sh and an experiment of two planned runs, one finished, and a report written early."""
    (tmp_path / "benchmarks" / "seeds").mkdir(parents=True)
    shutil.copy(SEEDS / "harvest.sh", tmp_path / "benchmarks" / "seeds" / "harvest.sh")
    out = tmp_path / "runs" / "seeds" / "office-sid"
    out.mkdir(parents=True)
    (out / "experiment.json").write_text(json.dumps(PLAN))
    _finish(out, "sft/seed0", 328.0)
    (out / "results.md").write_text("1 of 2 runs (written when a compare stopped)\n")
    return tmp_path


def _harvest(repo: Path) -> str:
    return subprocess.run(["bash", str(repo / "benchmarks" / "seeds" / "harvest.sh")], check=True,
                          capture_output=True, text=True).stdout


def test_harvest_keeps_results_and_logs_and_the_report_only_when_complete(repo: Path) -> None:
    kept = repo / "docs" / "results" / "seeds" / "office-sid"
    assert "kept" in _harvest(repo)
    assert json.loads((kept / "runs" / "sft" / "seed0" / "result.json").read_text())["seconds_per_epoch"] == 328.0
    assert json.loads((kept / "runs" / "sft" / "seed0" / "epochs.json").read_text()) == EPOCHS
    assert (kept / "experiment.json").is_file()
    assert not (kept / "results.md").exists()  # 1 of 2 planned runs: the early report is not kept

    (kept / "runs" / "sft" / "seed0" / "result.json").write_text("{}")  # a kept result is never overwritten
    _finish(repo / "runs" / "seeds" / "office-sid", "bear/seed0", 328.0)
    assert "bear/seed0" in _harvest(repo)
    assert (kept / "runs" / "sft" / "seed0" / "result.json").read_text() == "{}"
    assert (kept / "results.md").read_text().startswith("1 of 2")  # every run in: the experiment's report is kept


def _report():
    spec = importlib.util.spec_from_file_location("seeds_report", SEEDS / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def test_report_reads_the_median_epoch_where_a_log_is_kept(tmp_path: Path) -> None:
    report = _report()
    (tmp_path / "experiment.json").write_text(json.dumps(PLAN))
    _finish(tmp_path, "sft/seed0", 328.0)
    _finish(tmp_path, "bear/seed0", 328.0)
    (tmp_path / "runs" / "bear" / "seed0" / "checkpoints" / "epochs.json").unlink()  # no log: the mean stays
    (tmp_path / "runs" / "sft" / "seed0" / "checkpoints" / "epochs.json").rename(
        tmp_path / "runs" / "sft" / "seed0" / "epochs.json")
    plan, results, planned = report.finished(tmp_path)
    assert planned == 2 and [r["label"] for r in results] == ["sft", "bear"]
    assert results[0]["seconds_per_epoch"] == 44.0  # median of 40, 900, 44; the mean would be 328
    assert results[1]["seconds_per_epoch"] == 328.0


def test_report_replaces_only_the_marked_table_of_its_data_set(tmp_path: Path) -> None:
    report = _report()
    page = tmp_path / "results.md"
    page.write_text("# Results\n<!-- seeds:office -->\n\n| old |\n\n<!-- /seeds:office -->\nreading\n"
                    "<!-- seeds:beauty -->\n| beauty's |\n<!-- /seeds:beauty -->\n")
    before, after = report.marked(page, "office")
    page.write_text(before + "| new |\n" + after)
    expected = ("# Results\n<!-- seeds:office -->\n\n| new |\n\n<!-- /seeds:office -->\nreading\n"
                "<!-- seeds:beauty -->\n| beauty's |\n<!-- /seeds:beauty -->\n")
    assert page.read_text() == expected
    before, after = report.marked(page, "office")  # a second report replaces the table it wrote, nothing else
    page.write_text(before + "| new |\n" + after)
    assert page.read_text() == expected
    page.write_text("<!-- /seeds:office -->\n| t |\n<!-- seeds:office -->\n")
    with pytest.raises(SystemExit, match="seeds:office"):
        report.marked(page, "office")
    with pytest.raises(SystemExit, match="no such page"):
        report.marked(tmp_path / "missing.md", "office")


def test_per_seed_table_tells_a_run_to_come_from_a_seed_not_planned() -> None:
    def result(label, seed):
        return {"label": label, "seed": seed, "metrics": {"HR@10": 0.05 + seed / 100, "NDCG@10": 0.02}}

    planned = [("sft", 0), ("sasrec", 0), ("sft", 1), ("sasrec", 1), ("sasrec", 2)]
    table = _report().per_seed_table([result("sft", 0), result("sasrec", 0), result("sasrec", 2)], planned)
    assert table.splitlines() == ["| Recall@10 / NDCG@10 | seed 0 | seed 1 | seed 2 |", "|---|---:|---:|---:|",
                                  "| sft | 0.0500 / 0.0200 | - |  |",
                                  "| sasrec | 0.0500 / 0.0200 | - | 0.0700 / 0.0200 |"]
