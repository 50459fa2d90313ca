"""Experiments: plans, summaries against hand-computed numbers, and compare / sweep end to end (restart included)."""

import json
import math
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from bearrec.cli import app
from bearrec.experiments.plan import compare_plan, objective_variant, parse_baselines, parse_grid, sweep_plan
from bearrec.experiments.runner import EvalSettings, evaluate_chosen_on_test
from bearrec.experiments.statistics import sign_flip_test, summarize, verdict

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_compare_plan_is_seed_major_with_sft_first():
    specs = compare_plan(["bear", "beam-sim"], seeds=2, base_seed=5)
    assert [(s.label, s.seed) for s in specs] == [
        ("sft", 5), ("bear", 5), ("beam-sim", 5), ("sasrec", 5), ("bert4rec", 5),
        ("sft", 6), ("bear", 6), ("beam-sim", 6), ("sasrec", 6), ("bert4rec", 6)]
    assert specs[1].overrides == {"train.objective": "bear"} and specs[1].folder == "bear/seed5"
    assert [s.label for s in compare_plan(["bear"], 1, baselines=parse_baselines("none"))] == ["sft", "bear"]


def test_compare_plan_gives_the_baselines_their_own_seeds_after_every_lm_run():
    specs = compare_plan(["bear"], seeds=2, base_seed=3, baselines=("sasrec",), baseline_seeds=4)
    assert [(s.label, s.seed) for s in specs] == [
        ("sft", 3), ("bear", 3), ("sasrec", 3), ("sft", 4), ("bear", 4), ("sasrec", 4), ("sasrec", 5), ("sasrec", 6)]
    fewer = compare_plan(["bear"], seeds=2, baselines=("sasrec",), baseline_seeds=1)
    assert [(s.label, s.seed) for s in fewer] == [("sft", 0), ("bear", 0), ("sasrec", 0), ("sft", 1), ("bear", 1)]
    assert compare_plan(["bear"], 2, baselines=(), baseline_seeds=0) == compare_plan(["bear"], 2, baselines=())
    with pytest.raises(ValueError, match="--baseline-seeds 0"):
        compare_plan(["bear"], 2, baselines=("sasrec",), baseline_seeds=0)
    with pytest.raises(ValueError, match="--seeds 0"):  # never the baselines alone: SFT is what they are tested against
        compare_plan(["bear"], 0, baselines=("sasrec",), baseline_seeds=3)


def test_baselines_with_more_seeds_than_the_lms_are_tested_on_the_seeds_they_share():
    sft = [_result("sft", s, v, [1, 0, 0, 0]) for s, v in enumerate([0.10, 0.12])]
    sasrec = [_result("sasrec", s, v, [1, 1, 0, 0]) | {"kind": "sasrec"} for s, v in enumerate([0.20, 0.23, 0.21])]
    rows = summarize(sft + sasrec)
    assert rows["sasrec"]["seeds"] == [0, 1, 2] and rows["sasrec"]["mean"]["NDCG@10"] == pytest.approx(0.64 / 3)
    vs = rows["sasrec"]["vs_sft"]
    assert vs["seed_differences"] == {"0": pytest.approx(0.10), "1": pytest.approx(0.11)}  # seed 2 has no sft run
    assert vs["paired_seed_test"]["seeds"] == 2


def test_parse_baselines():
    assert parse_baselines("sasrec,bert4rec") == ("sasrec", "bert4rec")
    assert parse_baselines(" BERT4Rec ") == ("bert4rec",) and parse_baselines("none") == parse_baselines("") == ()
    with pytest.raises(ValueError, match="unknown baseline.*gru4rec"):
        parse_baselines("sasrec,gru4rec")


def test_parse_grid_and_sweep_plan():
    grid = parse_grid(["weight=0.1,1", "temperature=3e-1,2", "train.lr=1e-4"], "bear")
    assert grid == {"bear.weight": [0.1, 1], "bear.temperature": [0.3, 2], "train.lr": [1e-4]}
    specs = sweep_plan("bear", grid, seeds=1)
    assert len(specs) == 1 + 2 * 2 * 1 and specs[0].label == "sft"
    assert specs[1].overrides == {"train.objective": "bear", "bear.weight": 0.1, "bear.temperature": 0.3, "train.lr": 1e-4}
    assert specs[1].label == "bear weight=0.1 temperature=0.3 lr=0.0001"
    with pytest.raises(ValueError, match="section.field"):
        parse_grid(["lr=0.1"], "bear")
    with pytest.raises(ValueError, match="name=v1,v2"):
        parse_grid(["weight"], "bear")


def _result(label, seed, ndcg10, ranks, pruned=1):
    return {"label": label, "seed": seed, "kind": "lm", "users": len(ranks), "seconds_per_epoch": 2.0,
            "metrics": {"NDCG@5": ndcg10 / 2, "NDCG@10": ndcg10, "HR@5": 0.1, "HR@10": 0.2, "PR@5": 0.5, "PR@10": 0.25},
            "retrieved_rank": ranks,
            "pruning": {"top5_positives": 2, "pruned@5": 1, "violation_share@5": 1.0, "top10_positives": 4,
                        "pruned@10": pruned, "violation_share@10": 0.0, "pruning_step_histogram": {"1": pruned},
                        "pruned_all_ranks": pruned}}


def test_summary_statistics_by_hand():
    sft = [_result("sft", s, v, [1, 0, 0, 0]) for s, v in enumerate([0.10, 0.12, 0.11])]
    bear = [_result("bear", s, v, [1, 1, 1, 0], pruned=3) for s, v in enumerate([0.20, 0.22, 0.21])]
    rows = summarize(sft + bear)
    assert rows["sft"]["mean"]["NDCG@10"] == pytest.approx(0.11)
    assert rows["sft"]["std"]["NDCG@10"] == pytest.approx(0.01)  # sample std over seeds
    vs = rows["bear"]["vs_sft"]
    assert vs["relative"]["NDCG@10"] == pytest.approx(0.21 / 0.11 - 1)
    assert vs["relative"]["HR@10"] == pytest.approx(0.0)
    # Welch t-test by hand: t = 0.1 / sqrt(2 * 0.01^2 / 3), df = 4
    from scipy import stats

    t = 0.1 / math.sqrt(2 * 0.01**2 / 3)
    assert vs["seed_test"]["p_value"] == pytest.approx(2 * stats.t.sf(t, 4))
    assert vs["seed_test"]["exceeds_seed_noise"]
    # per user: bear gains NDCG@10 = 1 on users 1 and 2, nothing elsewhere (mean gain 0.5)
    low, high = vs["user_bootstrap"]["ci95"]
    assert 0 <= low < 0.5 < high <= 1 and vs["user_bootstrap"]["excludes_zero"] == (low > 0)
    sentence = verdict("bear", rows["bear"])
    assert vs["seed_test"]["p_value"] < 0.001 and "seeds, p < 0.001)" in sentence  # not "p = 0.000"
    assert "exact sign-flip test p = 0.500." in sentence  # 2 users differ: 2 of the 4 sign patterns are as extreme
    pooled = rows["bear"]["pruning"]
    assert pooled["top10_positives"] == 12 and pooled["pruned@10"] == 9 and pooled["PR@10"] == pytest.approx(0.75)
    assert pooled["pruning_step_histogram"] == {1: 9}


def test_report_tables_at_k_equal_b_and_training_epochs():
    from bearrec.evaluation.report import summary_markdown, training_markdown

    runs = []
    for seed, (n20, best, trained) in enumerate([(0.30, 4, 7), (0.34, 6, 9)]):
        r = _result("sft", seed, 0.1, [1, 0])
        r["metrics"].update({"NDCG@20": n20, "HR@20": 0.5, "PR@20": 0.1})
        runs.append(r | {"best_epoch": best, "epochs_trained": trained})
    rows = summarize(runs)
    assert rows["sft"]["mean"]["NDCG@20"] == pytest.approx(0.32) and rows["sft"]["std"]["NDCG@20"] == pytest.approx(0.02 * 2 ** 0.5)
    table = summary_markdown(rows, ks=(20,))
    assert ("| | N@20 | H@20 | MRR@20 | exact N@20 | exact H@20 | gap N@20 | lost N@20 | gained N@20 | reordered N@20 "
            "| PR@20 | Cov@20 | Gini@20 | Tail@20 | seeds | train s/epoch |") in table
    assert ("| sft | 0.3200 ± 0.0283 | 0.5000 ± 0.0000 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | 0.1000 ± 0.0000 "
            "| n/a | n/a | n/a | 2 | 2.0 |") in table  # metrics these results predate show as n/a
    assert "| sft | 0, 1 | 4, 6 | 7, 9 | 2.0 |" in training_markdown(rows)


def test_one_seed_has_no_seed_test_but_a_user_bootstrap():
    rows = summarize([_result("sft", 0, 0.1, [1, 0, 2, 0]), _result("bear", 0, 0.1, [1, 0, 2, 0])])
    vs = rows["bear"]["vs_sft"]
    assert "seed_test" not in vs and vs["user_bootstrap"]["ci95"] == [0.0, 0.0]
    assert not vs["user_bootstrap"]["excludes_zero"]
    assert np.isclose(vs["ndcg10_difference"], 0.0)


@pytest.mark.slow
def test_compare_end_to_end_then_restart_skips_finished_runs(tmp_path):
    data, out = tmp_path / "data", tmp_path / "cmp"
    assert _run("prepare", "synthetic", "--out", data, "--users", 60).exit_code == 0
    args = ["compare", "--data", data, "--model", "tiny", "--objectives", "sft,bear", "--seeds", 2, "--epochs", 1,
            "--max-eval-users", 12, "--set", "train.batch_size=32", "--set", "train.valid_users=8",
            "--set", "sasrec.epochs=2", "--set", "bert4rec.epochs=2", "--pruning-users", 8, "--out", out]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    for name in ("results.json", "results.md", "pr_at_k.png", "pruning.png", "efficiency.png", "beam_vs_exact.png",
                 "experiment.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "results.json").read_text())
    assert set(report["summary"]) == {"sft", "bear", "sasrec", "bert4rec"} and len(report["runs"]) == 8
    assert report["environment"]["versions"]["torch"] and report["base_config"]["model"] == "tiny"
    assert all(r["users"] == 12 for r in report["runs"])
    for name in ("sasrec", "bert4rec"):  # no beam search, no pruning rate; every run on the same users
        assert report["summary"][name]["mean"].get("PR@10") is None and report["summary"][name]["users"] == 12
    assert report["summary"]["bear"]["pruning"]["ranked_users"] == 2 * 8  # two seeds, 8 of 12 users ranked
    md = (out / "results.md").read_text()
    assert "| bear vs sft |" in md and "Welch t-test over 2 seeds" in md and "seeds" in md
    assert "paired t-test over 2 seeds" in md and "| | seed 0 | seed 1 | mean | paired t-test | Welch t-test | |" in md
    for r in report["runs"]:  # the LM runs and the baselines report the same metrics (one contract)
        assert {"MRR@10", "ItemCoverage@10", "GiniIndex@10", "TailPercentage@10"} <= set(r["metrics"]), r["label"]
    assert set(report["summary"]["bear"]["vs_sft"]["seed_differences"]) == {"0", "1"}
    assert "## Training" in md and "| bear | 0, 1 | 1, 1 | 1, 1 |" in md  # one epoch: best = trained = 1

    # Another machine that has only what benchmarks/seeds keeps in the repository (the plan and each finished run's
    # result.json, no run folder): every run is kept, and the report is the same.
    moved = tmp_path / "kept"
    for kept_file in [out / "experiment.json", *out.glob("runs/*/*/result.json")]:
        (moved / kept_file.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kept_file, moved / kept_file.relative_to(out))
    elsewhere = _run(*args[:-2], "--out", moved)
    assert elsewhere.exit_code == 0 and elsewhere.stderr.count("finished earlier, kept") == 8, elsewhere.output
    assert json.loads((moved / "results.json").read_text())["summary"] == report["summary"]

    # Simulate Ctrl-C during the last run: its result is missing, its training half done.
    last = out / "runs" / "bear" / "seed1"
    (last / "result.json").unlink()
    kept = (out / "runs" / "sft" / "seed0" / "result.json").stat().st_mtime_ns
    again = _run(*args)
    assert again.exit_code == 0
    assert again.stderr.count("finished earlier, kept") == 7
    assert (last / "result.json").is_file()
    assert (out / "runs" / "sft" / "seed0" / "result.json").stat().st_mtime_ns == kept

    other = _run(*args[:-2], "--set", "train.lr=0.01", "--out", out)
    assert other.exit_code == 2 and "different experiment" in other.stderr

    # Written by an older bearrec, before two fields existed: it resumes, each missing field being its default.
    recorded = json.loads((out / "experiment.json").read_text())
    del recorded["base_config"]["train"]["flush_denormal"], recorded["eval"]["exclude_history"]
    (out / "experiment.json").write_text(json.dumps(recorded))
    older = _run(*args)
    assert older.exit_code == 0 and older.stderr.count("finished earlier, kept") == 8
    recorded["base_config"]["train"]["retired_field"] = 1  # a field bearrec no longer has
    (out / "experiment.json").write_text(json.dumps(recorded))
    assert "different experiment" in _run(*args).stderr


@pytest.mark.slow
def test_compare_jobs_runs_in_parallel_processes_with_the_sequential_results(tmp_path):
    import torch

    data = tmp_path / "data"
    assert _run("prepare", "synthetic", "--out", data, "--users", 40).exit_code == 0
    args = ["compare", "--data", data, "--model", "tiny", "--objectives", "sft,bear", "--epochs", 1, "--baselines", "sasrec",
            "--beam-width", 20, "--max-eval-users", 10, "--set", "train.batch_size=32", "--set", "train.valid_users=6",
            "--set", "sasrec.epochs=2", "--pruning-users", 4]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the thread count each of the 2 parallel runs below gets
        assert _run(*args, "--out", tmp_path / "seq").exit_code == 0
        torch.set_num_threads(2)
        parallel = _run(*args, "--jobs", 2, "--out", tmp_path / "par")
    finally:
        torch.set_num_threads(threads)
    assert parallel.exit_code == 0, parallel.output
    assert "3 runs, 2 at a time, 1 CPU thread(s) each" in parallel.stderr
    seq, par = (json.loads((tmp_path / f / "results.json").read_text()) for f in ("seq", "par"))
    assert [(r["label"], r["seed"]) for r in par["runs"]] == [(r["label"], r["seed"]) for r in seq["runs"]]
    for a, b in zip(seq["runs"], par["runs"]):
        assert a["metrics"] == b["metrics"] and a["users"] == b["users"], a["label"]
    assert all("HR@20" in r["metrics"] for r in par["runs"])  # at K = B for the LMs and SASRec alike
    assert "## At K = 20" in (tmp_path / "par" / "results.md").read_text()
    assert _run(*args, "--jobs", 2, "--out", tmp_path / "par").stderr.count("finished earlier, kept") == 3
    bad = _run(*args, "--jobs", 0, "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "jobs 0" in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_sweep_end_to_end(tmp_path, monkeypatch):
    from bearrec.data.dataset import RecDataset

    data, out = tmp_path / "data", tmp_path / "sweep"
    assert _run("prepare", "synthetic", "--out", data, "--users", 40).exit_code == 0
    args = ["sweep", "--data", data, "--grid", "weight=0.1,1", "temperature=1", "--epochs", 1, "--max-eval-users", 8,
            "--set", "train.valid_users=0", "--out", out]
    loads = []
    load = RecDataset.load.__func__
    monkeypatch.setattr(RecDataset, "load", classmethod(lambda cls, *a, **k: loads.append(a) or load(cls, *a, **k)))
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert len(loads) == 1  # once for the runs, the test evaluation and the report
    monkeypatch.undo()
    report = json.loads((out / "results.json").read_text())
    assert set(report["summary"]) == {"sft", "bear weight=0.1 temperature=1", "bear weight=1 temperature=1"}
    assert report["grid"] == {"bear.weight": [0.1, 1], "bear.temperature": [1]}
    assert (out / "sweep.png").is_file()
    # Selection on validation: the grid is judged on the valid split, and only the chosen point and SFT see test.
    assert report["eval"]["split"] == "valid"
    chosen = report["selection"]["chosen"]
    valid = {label: row["mean"]["NDCG@10"] for label, row in report["summary"].items() if label != "sft"}
    assert valid[chosen] == max(valid.values())
    tested = sorted(p.parent.parent.name for p in (out / "runs").rglob("eval_test.json"))
    assert tested == sorted({"sft", next(r["folder"].split("/")[0] for r in report["runs"] if r["label"] == chosen)})
    assert set(report["selection"]["test"]) == {"sft", chosen}
    assert "Chosen on validation, reported on test" in (out / "results.md").read_text()
    assert _run(*args).stderr.count("finished earlier, kept") == 3
    bad = _run("sweep", "--data", data, "--grid", "lr=1", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "section.field" in bad.stderr


def test_compare_defaults_to_smollm2_with_a_cpu_budget(tmp_path, monkeypatch):
    import bearrec.experiments.runner

    seen = {}

    def fake_run(base, specs, out_dir, settings, kind, console=None, jobs=1, dataset=None):
        seen.update(base=base, specs=specs, settings=settings)
        raise KeyboardInterrupt  # stop before any training; also exercises the Ctrl-C message

    monkeypatch.setattr(bearrec.experiments.runner, "run_experiment", fake_run)
    monkeypatch.setattr("bearrec.cli.experiments.torch_cuda", lambda: False)
    data = tmp_path / "data"
    assert _run("prepare", "synthetic", "--out", data, "--users", 20).exit_code == 0
    result = _run("compare", "--data", data, "--objectives", "bear", "--out", tmp_path / "cmp")
    assert result.exit_code == 130 and "run the same command again" in result.stderr
    assert seen["base"].model == "smollm2-135m" and seen["base"].train.max_train_examples == 512
    assert seen["base"].train.epochs == 1 and seen["base"].train.valid_users == 0 and seen["base"].train.lr == 3e-4
    assert seen["settings"].max_users == 100 and seen["settings"].pruning_users == 30 and [s.label for s in seen["specs"]] == ["sft", "bear", "sasrec", "bert4rec"]
    result = _run("compare", "--data", data, "--model", "tiny", "--objectives", "bear,nope", "--out", tmp_path / "c2")
    assert result.exit_code == 2 and "nope" in result.stderr
    result = _run("compare", "--data", data, "--baselines", "sasrec,gru4rec", "--out", tmp_path / "c3")
    assert result.exit_code == 2 and "gru4rec" in result.stderr

def test_cpu_budget_applies_only_to_an_untouched_smollm2_run_on_a_cpu():
    """The rule of plan.cpu_budget, field by field; the caller's config is never changed."""
    from bearrec.config import ExperimentConfig, with_overrides
    from bearrec.experiments.plan import CPU_BUDGET_TRAIN_FIELDS, cpu_budget

    base = with_overrides(ExperimentConfig(), {"model": "smollm2-135m"})
    budget = cpu_budget(base, gpu=False, max_eval_users=None, pruning_users=None, pruning_node_budget=None)
    assert (budget.max_eval_users, budget.pruning_users, budget.pruning_node_budget) == (100, 30, 512)
    assert (budget.config.train.epochs, budget.config.train.max_train_examples, budget.config.train.valid_users) == (1, 512, 0)
    assert budget.config.train.batch_size <= 8 and "512 training examples" in budget.note
    assert base.train.max_train_examples != 512  # a copy
    kept = cpu_budget(base, gpu=False, max_eval_users=None, pruning_users=7, pruning_node_budget=64)
    assert (kept.pruning_users, kept.pruning_node_budget) == (7, 64)
    assert cpu_budget(base, gpu=True, max_eval_users=None, pruning_users=None, pruning_node_budget=None) is None
    assert cpu_budget(base, gpu=False, max_eval_users=50, pruning_users=None, pruning_node_budget=None) is None
    tiny = with_overrides(base, {"model": "tiny"})
    assert cpu_budget(tiny, gpu=False, max_eval_users=None, pruning_users=None, pruning_node_budget=None) is None
    changed = {"epochs": 5, "max_train_examples": 64, "valid_users": 5, "batch_size": 4, "lr": 1e-3}
    assert set(changed) == set(CPU_BUDGET_TRAIN_FIELDS)
    for name, value in changed.items():
        touched = with_overrides(base, {f"train.{name}": value})
        assert cpu_budget(touched, gpu=False, max_eval_users=None, pruning_users=None, pruning_node_budget=None) is None, name



def test_compare_beam_width_comes_from_the_config_unless_given(tmp_path, monkeypatch):
    """Without --beam-width the config's B holds (configs/office-semantic-ids.yaml validates with B = 20); with it,
    every B follows: decoding, validation and each objective's (sdpo-bear's when it is planned)."""
    import bearrec.experiments.runner

    seen = {}

    def fake_run(base, specs, out_dir, settings, kind, console=None, jobs=1, dataset=None):
        seen.update(base=base, settings=settings)
        raise KeyboardInterrupt

    monkeypatch.setattr(bearrec.experiments.runner, "run_experiment", fake_run)
    data = tmp_path / "data"
    assert _run("prepare", "synthetic", "--out", data, "--users", 20).exit_code == 0
    common = ["--data", data, "--model", "tiny", "--baselines", "none", "--out", tmp_path / "c"]
    assert _run("compare", "--set", "train.valid_beam_width=20", "--set", "bear.beam_width=7", *common).exit_code == 130
    assert seen["settings"].beam_width == seen["base"].train.valid_beam_width == 20 and seen["base"].bear.beam_width == 7
    assert _run("compare", "--beam-width", 5, *common).exit_code == 130
    widths = (seen["settings"].beam_width, seen["base"].train.valid_beam_width, seen["base"].bear.beam_width,
              seen["base"].beam_sim.beam_width)
    assert widths == (5,) * 4 and seen["base"].sdpo.beam_width == 10  # sdpo's only where sdpo-bear is planned
    assert _run("compare", "--beam-width", 5, "--objectives", "sft,sdpo-bear", *common).exit_code == 130
    assert seen["base"].sdpo.beam_width == 5


def test_compare_refuses_a_bad_baseline_setting_before_training(tmp_path):
    data = tmp_path / "data"
    assert _run("prepare", "synthetic", "--out", data, "--users", 20).exit_code == 0
    result = _run("compare", "--data", data, "--model", "tiny", "--set", "bert4rec.dropout=1", "--out", tmp_path / "c")
    assert result.exit_code == 2 and "bert4rec.dropout must be in [0, 1): got 1" in result.stderr
    assert not (tmp_path / "c" / "runs").exists()


def test_bad_grid_values_fail_before_training(tmp_path):
    data = tmp_path / "data"
    assert _run("prepare", "synthetic", "--out", data, "--users", 20).exit_code == 0
    result = _run("sweep", "--data", data, "--grid", "temperature=0.5,two", "--out", tmp_path / "s")
    assert result.exit_code == 2 and "temperature must be a number" in result.stderr
    result = _run("sweep", "--data", data, "--grid", "weight=0.1,1e-1", "--out", tmp_path / "s2")
    assert result.exit_code == 2 and "share a folder" in result.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "s2").exists()  # nothing written


def test_sign_flip_test_equals_enumeration_and_counts_users():
    import itertools

    rng = np.random.default_rng(3)
    gain = np.zeros(40)
    gain[rng.choice(40, 9, replace=False)] = rng.normal(0.05, 0.2, 9)
    result = sign_flip_test(gain)
    differ = gain[gain != 0]
    observed = abs(differ.mean())
    flips = [abs((differ * np.array(s)).mean()) >= observed - 1e-12 for s in itertools.product((1, -1), repeat=9)]
    assert result["exact"] and result["p_value"] == pytest.approx(np.mean(flips))
    assert (result["users"], result["users_differ"]) == (40, 9)
    assert result["users_better"] + result["users_worse"] == 9
    sampled = sign_flip_test(np.concatenate([gain, rng.normal(0, 0.2, 30)]))  # 39 differ: sampled, not enumerated
    assert not sampled["exact"] and 0 < sampled["p_value"] <= 1
    assert sign_flip_test(np.zeros(5))["p_value"] == 1.0 and sign_flip_test(np.array([0.0, 0.3]))["p_value"] == 1.0
    assert sign_flip_test(np.full(12, 0.1))["p_value"] == pytest.approx(2 / 2**12)  # all better: only +/- all match


def test_sign_flip_test_memory_stays_bounded_for_many_users():
    """Beauty's reports compare about 2,600 differing users over 100,000 sign patterns; drawn all at once (scipy's
    default) that took 16 GB and the report was killed. Drawn in batches the peak stays small and p is unchanged."""
    import tracemalloc

    from scipy import stats

    gain = np.random.default_rng(5).normal(0.001, 0.05, 3000)
    tracemalloc.start()
    try:
        result = sign_flip_test(gain, resamples=20_000)  # all at once: about 20,000 x 3,000 x 64 B = 3.8 GB
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 500e6, f"sign_flip_test held {peak / 1e6:.0f} MB at its peak"
    small = gain[:200]
    reference = stats.permutation_test((small,), lambda d, axis: np.mean(d, axis=axis), permutation_type="samples",
                                       vectorized=True, n_resamples=20_000, rng=np.random.default_rng(0))
    assert sign_flip_test(small, resamples=20_000)["p_value"] == pytest.approx(reference.pvalue)
    assert not result["exact"] and 0 < result["p_value"] <= 1


def test_objective_variants():
    assert objective_variant("bear") == {"train.objective": "bear"}
    assert objective_variant("bear:formulation=paper:weight=1") == {
        "train.objective": "bear", "bear.formulation": "paper", "bear.weight": 1}
    assert objective_variant("msl:tau=4.5:train.lr=0.002") == {"train.objective": "msl", "msl.tau": 4.5, "train.lr": 0.002}
    with pytest.raises(ValueError, match="name:field=value"):
        objective_variant("bear:formulation")
    specs = compare_plan(["sft", "bear:formulation=paper"], seeds=1, baselines=())
    assert [s.label for s in specs] == ["sft", "bear:formulation=paper"]


def test_chosen_point_is_never_picked_on_test(tmp_path):
    with pytest.raises(ValueError, match="valid split"):
        evaluate_chosen_on_test(tmp_path, [], None, EvalSettings(split="test"))
