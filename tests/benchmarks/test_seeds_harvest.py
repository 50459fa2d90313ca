"""Issue 32's keeping scripts (benchmarks/seeds/): harvest.sh keeps each finished run's result and per-epoch log, and
the experiment's own report only once every planned run is in; report.py reads a run's time per epoch as the median
of its kept epochs, so that an epoch that ran through a pause (SIGSTOP) does not swell it; pruning.sh ranks every
test user of a finished run exactly in a copy of it, and report.py --pruning pools those counts and tests them."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    before, after = report.marked(page, "seeds:office")
    page.write_text(before + "| new |\n" + after)
    expected = ("# Results\n<!-- seeds:office -->\n\n| new |\n\n<!-- /seeds:office -->\nreading\n"
                "<!-- seeds:beauty -->\n| beauty's |\n<!-- /seeds:beauty -->\n")
    assert page.read_text() == expected
    before, after = report.marked(page, "seeds:office")  # a second report replaces the table it wrote, nothing else
    page.write_text(before + "| new |\n" + after)
    assert page.read_text() == expected
    page.write_text("<!-- /seeds:office -->\n| t |\n<!-- seeds:office -->\n")
    with pytest.raises(SystemExit, match="seeds:office"):
        report.marked(page, "seeds:office")
    with pytest.raises(SystemExit, match="no such page"):
        report.marked(tmp_path / "missing.md", "seeds:office")


def test_report_names_the_unprepared_dataset_in_one_line(tmp_path: Path, monkeypatch) -> None:
    """On a new machine the kept runs are there but runs/data/<data>-sid is not: one line says which and what makes it."""
    report = _report()
    kept = ROOT / "docs" / "results" / "seeds" / "office-sid"
    mine = tmp_path / "docs" / "results" / "seeds" / "office-sid"
    (mine / "runs" / "sft" / "seed0").mkdir(parents=True)
    shutil.copy(kept / "experiment.json", mine / "experiment.json")
    shutil.copy(kept / "runs" / "sft" / "seed0" / "result.json", mine / "runs" / "sft" / "seed0" / "result.json")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    with pytest.raises(SystemExit, match=r"runs/data/office-sid: not a bearrec dataset folder .*run\.sh office prepares"):
        report.main(["office"])
    assert sorted(p.name for p in mine.iterdir()) == ["experiment.json", "runs"]  # nothing written


def test_per_seed_table_tells_a_run_to_come_from_a_seed_not_planned() -> None:
    def result(label, seed):
        return {"label": label, "seed": seed, "metrics": {"HR@10": 0.05 + seed / 100, "NDCG@10": 0.02}}

    planned = [("sft", 0), ("sasrec", 0), ("sft", 1), ("sasrec", 1), ("sasrec", 2)]
    table = _report().per_seed_table([result("sft", 0), result("sasrec", 0), result("sasrec", 2)], planned)
    assert table.splitlines() == ["| Recall@10 / NDCG@10 | seed 0 | seed 1 | seed 2 |", "|---|---:|---:|---:|",
                                  "| sft | 0.0500 / 0.0200 | - |  |",
                                  "| sasrec | 0.0500 / 0.0200 | - | 0.0700 / 0.0200 |"]


def _pruning(top: dict[int, int], pruned: dict[int, int], users: int) -> dict:
    """A run's pruning summary, as evaluate writes it, with these top-K positives and pruned counts (K = 5, 10, 20)."""
    summary = {"ranked_users": users, "unranked_users": 0, "pruning_users": users, "node_budget": None,
               "pruning_step_histogram": {"1": 3}, "pruned_all_ranks": 3, "violation_share_all_ranks": 1.0}
    for k in (5, 10, 20):
        summary.update({f"top{k}_positives": top[k], f"pruned@{k}": pruned[k],
                        f"PR@{k}": pruned[k] / top[k] if top[k] else math.nan,
                        f"violation_share@{k}": 1.0 if pruned[k] else math.nan})
    return summary


def _fisher_brute_force(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher exact p of [[a, b], [c, d]] by enumerating every table with its margins: the summed
    hypergeometric probability of the tables no more probable than the observed one."""
    row, col, n = a + b, a + c, a + b + c + d
    prob = {x: math.comb(col, x) * math.comb(n - col, row - x) / math.comb(n, row)
            for x in range(max(0, row + col - n), min(row, col) + 1)}
    return sum(p for p in prob.values() if p <= prob[a] * (1 + 1e-7))


def test_pruning_report_pools_the_counts_over_seeds_and_tests_each_label_against_ce() -> None:
    rng = np.random.default_rng(0)
    results = []
    for label, counts in (("sft", [(12, 1), (9, 0)]), ("bear", [(15, 3), (11, 4)])):
        for seed, (top10, pruned10) in enumerate(counts):
            metrics = {"NDCG@10": 0.02 + seed / 1000, "HR@10": 0.04, "PR@10": pruned10 / top10,
                       "exact_NDCG@10": 0.021, "gap_NDCG@10": 0.001}
            results.append({"label": label, "seed": seed, "kind": "lm", "users": 40, "seconds_per_epoch": 10.0,
                            "metrics": metrics, "retrieved_rank": rng.integers(0, 12, 40).tolist(),
                            "pruning": _pruning({5: 4, 10: top10, 20: 2 * top10}, {5: 0, 10: pruned10, 20: pruned10},
                                                40)})
    text = _report().pruning_report(results)
    assert "sft seeds 0, 1; bear seeds 0, 1" in text
    assert "| bear | 10 | 26 | 7 | 0.2692 |" in text  # 15 + 11 positives, 3 + 4 pruned
    assert "| sft | 20 | 42 | 1 |" in text
    fisher = [line for line in text.splitlines() if line.startswith("- bear")]
    assert fisher[0].startswith("- bear: PR@10 0.269 (7 of 26) against sft's 0.048 (1 of 21), Fisher exact p = ")
    assert float(fisher[0].rsplit("= ", 1)[1]) == pytest.approx(_fisher_brute_force(7, 19, 1, 20), abs=5e-4)


@pytest.mark.slow
def test_pruning_sh_ranks_every_user_in_a_copy_and_the_report_checks_it_against_the_run(tiny_run, tmp_path: Path) -> None:
    from bearrec.evaluation.evaluate import EvalSettings
    from bearrec.runs import evaluate_run

    (tmp_path / "benchmarks" / "seeds").mkdir(parents=True)
    shutil.copy(SEEDS / "pruning.sh", tmp_path / "benchmarks" / "seeds" / "pruning.sh")
    own = evaluate_run(tiny_run, EvalSettings(split="test", beam_width=20, pruning_users=3))  # as compare does
    run = tmp_path / "runs" / "seeds" / "office-sid" / "runs" / "sft" / "seed0"
    shutil.copytree(tiny_run, run)
    result = {"label": "sft", "seed": 0, "kind": "lm", "seconds_per_epoch": 1.0, **own}
    (run / "result.json").write_text(json.dumps(result))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def pruning_sh() -> str:
        return subprocess.run(["bash", str(tmp_path / "benchmarks" / "seeds" / "pruning.sh"), "office"], check=True,
                              capture_output=True, text=True, env=env, cwd=tmp_path).stdout

    assert "kept docs/results/seeds/office-sid/pruning/sft/seed0/eval_test.json" in pruning_sh()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # the run's own files untouched
    kept = tmp_path / "docs" / "results" / "seeds" / "office-sid"
    full = json.loads((kept / "pruning" / "sft" / "seed0" / "eval_test.json").read_text())
    assert "retrieved_rank" not in full and full["pruning"]["ranked_users"] == full["users"] == own["users"] > 3
    assert own["pruning"]["ranked_users"] == 3
    assert "kept" not in pruning_sh()  # a kept evaluation is not made again

    with pytest.raises(SystemExit, match="harvest.sh"):  # the run's own result not kept yet
        _report().with_all_users(kept)
    (kept / "runs" / "sft" / "seed0").mkdir(parents=True)
    (kept / "runs" / "sft" / "seed0" / "result.json").write_text(json.dumps(result))
    [merged] = _report().with_all_users(kept)
    assert merged["pruning"] == full["pruning"] and merged["retrieved_rank"] == own["retrieved_rank"]
    result["metrics"]["NDCG@10"] += 0.01  # another model's result: refused, naming the metric
    (kept / "runs" / "sft" / "seed0" / "result.json").write_text(json.dumps(result))
    with pytest.raises(SystemExit, match="NDCG@10"):
        _report().with_all_users(kept)
