"""The paired-by-seed test beside Welch's, the per-seed differences, the verdict and the report's seed table; and
results evaluated before MRR and the beyond-accuracy metrics existed still make tables."""

import math

import pytest
from scipy import stats

from bearrec.evaluation.report import METRIC_COLUMNS, markdown_table, rich_table, summary_markdown
from bearrec.experiments.report import _seed_lines
from bearrec.experiments.statistics import paired_seed_test, summarize, verdict

SFT = [0.05, 0.15, 0.10]  # seeds that spread widely
GAIN = [0.010, 0.012, 0.011]  # and an objective that beats each of them by about the same


def _run(label, seed, ndcg10, ranks=(1, 0, 2, 0)):
    return {"label": label, "seed": seed, "kind": "lm", "users": len(ranks), "seconds_per_epoch": 1.0,
            "metrics": {"NDCG@5": ndcg10, "NDCG@10": ndcg10, "HR@5": 0.1, "HR@10": 0.2}, "retrieved_rank": list(ranks),
            "pruning": None}


def _rows():
    runs = [_run("sft", s, v) for s, v in enumerate(SFT)] + [_run("bear", s, v + g) for s, (v, g) in enumerate(zip(SFT, GAIN))]
    return summarize(runs)


def test_paired_t_test_over_seeds_by_hand():
    vs = _rows()["bear"]["vs_sft"]
    assert vs["seed_differences"] == pytest.approx({"0": 0.010, "1": 0.012, "2": 0.011})
    mean, sd = 0.011, 0.001  # of the differences; t = mean / (sd / sqrt(3)), 2 degrees of freedom
    assert vs["paired_seed_test"]["p_value"] == pytest.approx(2 * stats.t.sf(mean / (sd / math.sqrt(3)), 2))
    assert vs["paired_seed_test"]["exceeds_seed_noise"] and vs["paired_seed_test"]["seeds"] == 3
    assert not vs["seed_test"]["exceeds_seed_noise"]  # Welch sees the seeds' spread, not their pairing


def test_verdict_says_plainly_which_test_finds_the_difference_and_gives_each_seed():
    sentence = verdict("bear", _rows()["bear"])
    p_paired = 2 * stats.t.sf(0.011 / (0.001 / math.sqrt(3)), 2)
    assert ("bear: NDCG@10 0.0110 higher than SFT; beyond the seed noise by one test only "
            f"(paired t-test over 3 seeds p = {p_paired:.3f}; Welch t-test over 3 seeds, p = ") in sentence
    assert "per-seed differences seed 0 +0.0100, seed 1 +0.0120, seed 2 +0.0110" in sentence
    runs = [_run("sft", s, v) for s, v in enumerate(SFT)] + [_run("bear", s, v + g) for s, (v, g) in
                                                             enumerate(zip(SFT, [0.01, -0.01, 0.0]))]
    assert "; within the seed noise (paired t-test over 3 seeds p = 1.000; Welch" in verdict("bear", summarize(runs)["bear"])


def test_only_shared_seeds_are_paired():
    out = paired_seed_test([_run("bear", s, 0.2) for s in (0, 1, 2)], [_run("sft", s, 0.1) for s in (1, 2, 5)])
    assert out["seed_differences"] == pytest.approx({"1": 0.1, "2": 0.1}) and out["paired_seed_test"]["seeds"] == 2
    # the same difference on every seed: the t-test is undefined (0 spread), and 2 agreeing seeds prove nothing
    assert out["paired_seed_test"]["p_value"] is None and not out["paired_seed_test"]["exceeds_seed_noise"]
    assert "paired_seed_test" not in paired_seed_test([_run("bear", 0, 0.2)], [_run("sft", 0, 0.1)])


def test_report_tables_each_seed_and_both_tests():
    lines = _seed_lines(_rows())
    assert lines[4] == "| | seed 0 | seed 1 | seed 2 | mean | paired t-test | Welch t-test | |"
    row = lines[6]
    assert row.startswith("| bear | +0.0100 | +0.0120 | +0.0110 | +0.0110 | p = ")
    assert row.endswith(" | beyond the seed noise by one test only |")


def test_results_from_before_the_new_metrics_still_make_tables():
    """A run evaluated before MRR, the beyond-accuracy metrics and the gap's parts existed (and a summary row from
    before the paired test): tables show those as n/a, nothing fails."""
    old = {"metrics": {"NDCG@5": 0.1, "NDCG@10": 0.2, "HR@5": 0.3, "HR@10": 0.4, "exact_NDCG@10": 0.25,
                       "gap_NDCG@10": 0.05, "PR@5": 0.5, "PR@10": 0.6}, "seconds_per_epoch": 3.0}
    table = markdown_table({"sft": old})
    cells = table.splitlines()[2].strip("| ").split(" | ")
    assert dict(zip(["objective", *METRIC_COLUMNS], cells))["MRR@10"] == "n/a"
    assert cells.count("n/a") == len(METRIC_COLUMNS) - len(old["metrics"])
    rich_table({"sft": old}, "old")
    rows = _rows()
    for key in ("paired_seed_test", "seed_differences"):
        del rows["bear"]["vs_sft"][key]
    assert "per-seed" not in verdict("bear", rows["bear"]) and "(Welch t-test over 3 seeds" in verdict("bear", rows["bear"])
    assert "| bear |" in summary_markdown(rows)


def test_a_seed_with_a_nan_metric_is_left_out_of_the_pairs():
    nan = float("nan")
    out = paired_seed_test([_run("bear", s, v) for s, v in enumerate([0.2, nan, 0.25, 0.22])],
                           [_run("sft", s, v) for s, v in enumerate([0.1, 0.1, nan, 0.15])])
    assert out["seed_differences"] == pytest.approx({"0": 0.1, "3": 0.07})
    assert out["paired_seed_test"]["seeds"] == 2 and math.isfinite(out["paired_seed_test"]["p_value"])
