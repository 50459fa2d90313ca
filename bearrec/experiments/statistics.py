"""An experiment's statistics: mean and spread over seeds, the seed-noise tests (Welch over seeds, and paired by
seed: runs of one seed share initial weights and batch order), the per-seed differences, the per-user paired
tests (bootstrap, sign flips) against the SFT baseline, and the verdict sentence of each comparison."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from bearrec.evaluation.report import METRIC_COLUMNS
from bearrec.experiments.plan import BASELINE


def summarize(results: list[dict], ks=(5, 10)) -> dict:
    """Per label: mean and std over seeds of every metric, seconds per epoch, pooled pruning counts; per
    label other than SFT: relative improvement over SFT and whether the NDCG@10 difference exceeds noise."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["label"], []).append(r)
    rows = {}
    for label, runs in groups.items():
        row = {"seeds": [r["seed"] for r in runs], "kind": runs[0]["kind"], "mean": {}, "std": {},
               "best_epochs": [r.get("best_epoch") for r in runs], "epochs_trained": [r.get("epochs_trained") for r in runs]}
        metrics = list(METRIC_COLUMNS) + sorted({m for r in runs for m in r["metrics"]} - set(METRIC_COLUMNS))
        for metric in metrics:
            values = [r["metrics"][metric] for r in runs if metric in r["metrics"]]
            values = [v for v in values if _number(v)]
            if values:
                row["mean"][metric] = float(np.mean(values))
                row["std"][metric] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        row["seconds_per_epoch"] = float(np.nanmean([r["seconds_per_epoch"] for r in runs]))
        row["users"] = runs[0]["users"]
        row["pruning"] = _pool_pruning([r["pruning"] for r in runs if r.get("pruning")], ks)
        rows[label] = row
    if BASELINE in groups:
        for label, row in rows.items():
            if label != BASELINE:
                row["vs_sft"] = _versus(groups[label], groups[BASELINE], row["mean"], rows[BASELINE]["mean"])
    return rows


def _pool_pruning(summaries: list[dict], ks) -> dict | None:
    """Pruning counts summed over seeds (PR@K of the pooled users)."""
    if not summaries:
        return None
    pooled: dict = {"pruning_step_histogram": {}, "ranked_users": sum(s.get("ranked_users", 0) for s in summaries),
                    "unranked_users": sum(s.get("unranked_users", 0) for s in summaries)}
    for k in ks:
        positives = sum(s[f"top{k}_positives"] for s in summaries)
        pruned = sum(s[f"pruned@{k}"] for s in summaries)
        violations = sum(round(s[f"pruned@{k}"] * s[f"violation_share@{k}"]) for s in summaries if s[f"pruned@{k}"])
        pooled.update({f"top{k}_positives": positives, f"pruned@{k}": pruned,
                       f"PR@{k}": pruned / positives if positives else math.nan,
                       f"violation_share@{k}": violations / pruned if pruned else math.nan})
    for s in summaries:
        for step, count in s["pruning_step_histogram"].items():
            pooled["pruning_step_histogram"][int(step)] = pooled["pruning_step_histogram"].get(int(step), 0) + count
    pooled["pruned_all_ranks"] = sum(s["pruned_all_ranks"] for s in summaries)
    return pooled


def _versus(runs: list[dict], baseline: list[dict], mean: dict, base_mean: dict) -> dict:
    """Relative improvement over SFT, the seed-noise tests (Welch; paired by seed, with the per-seed differences)
    and the paired tests over users (NDCG@10)."""
    relative = {m: (mean[m] - base_mean[m]) / base_mean[m] if base_mean.get(m) else None
                for m in METRIC_COLUMNS[:4] if m in mean and m in base_mean}
    ours = [r["metrics"]["NDCG@10"] for r in runs]
    theirs = [r["metrics"]["NDCG@10"] for r in baseline]
    out: dict = {"relative": relative, "ndcg10_difference": float(np.mean(ours) - np.mean(theirs))}
    if len(ours) > 1 and len(theirs) > 1:
        test = stats.ttest_ind(ours, theirs, equal_var=False)
        p = float(test.pvalue) if not math.isnan(test.pvalue) else 1.0
        out["seed_test"] = {"test": "Welch t-test over seeds", "p_value": p, "exceeds_seed_noise": p < 0.05}
    out.update(paired_seed_test(runs, baseline))
    # Users are the same rows in every run: resample them, with both sides averaged over their seeds.
    gain = _per_user_ndcg(runs) - _per_user_ndcg(baseline)
    rng = np.random.default_rng(0)
    boot = np.concatenate([gain[rng.integers(0, gain.size, (200, gain.size))].mean(axis=1) for _ in range(10)])
    low, high = np.percentile(boot, [2.5, 97.5])
    out["user_bootstrap"] = {"ci95": [float(low), float(high)], "excludes_zero": bool(low > 0 or high < 0)}
    out["paired_test"] = sign_flip_test(gain)
    return out


def paired_seed_test(runs: list[dict], baseline: list[dict], metric: str = "NDCG@10") -> dict:
    """The per-seed differences of ``metric`` (``runs``' minus ``baseline``'s run of the same seed, keyed by seed as
    a string for JSON) and, with at least 2 shared seeds, a paired t-test over them (scipy ``ttest_rel``: is the
    mean per-seed difference further from 0 than their spread makes it?). Two-sided. A seed whose metric is NaN on
    either side is left out. Equal differences on every seed leave the test undefined (t is 0/0 or infinite): p is
    then ``None`` and the difference is not called beyond the seed noise (2 seeds that agree prove nothing)."""
    ours = {r["seed"]: r["metrics"][metric] for r in runs if _number(r["metrics"].get(metric))}
    theirs = {r["seed"]: r["metrics"][metric] for r in baseline if _number(r["metrics"].get(metric))}
    seeds = sorted(set(ours) & set(theirs))
    out: dict = {"seed_differences": {str(seed): float(ours[seed] - theirs[seed]) for seed in seeds}}
    if len(seeds) > 1:
        diffs = np.array([ours[s] - theirs[s] for s in seeds])
        spread = np.ptp(diffs) > 1e-12 * max(1.0, float(np.abs(diffs).max()))  # else t is infinite, or 0/0
        p = float(stats.ttest_rel([ours[s] for s in seeds], [theirs[s] for s in seeds]).pvalue) if spread else None
        out["paired_seed_test"] = {"test": "paired t-test over seeds", "seeds": len(seeds), "metric": metric,
                                   "p_value": p, "exceeds_seed_noise": p is not None and p < 0.05}
    return out


def _number(value) -> bool:
    """A metric value that counts: a number, not NaN (nor None, absent)."""
    return isinstance(value, (int, float)) and not math.isnan(value)


EXACT_SIGN_FLIPS = 18  # users that differ: up to 2^18 sign patterns are enumerated, more are sampled
SIGN_FLIP_BATCH_ELEMENTS = 2_000_000  # sign patterns x users that scipy holds at once (about 64 bytes each)


def sign_flip_test(gain: np.ndarray, resamples: int = 100_000) -> dict:
    """Paired permutation test over users: is the mean per-user difference ``gain`` (``[users]``, one run's
    NDCG@10 minus the other's, each averaged over its seeds) further from 0 than random sign flips make it?

    Users with no difference carry no information and every sign pattern of theirs is the same, so only the
    users that differ are flipped: exactly (all ``2^n`` patterns) when ``n <= EXACT_SIGN_FLIPS``, otherwise
    with ``resamples`` random patterns. Two-sided; with no differing user, p = 1. The patterns are drawn in batches
    of ``SIGN_FLIP_BATCH_ELEMENTS / n``: scipy's default draws all of them at once, which for Beauty's 2,600 differing
    users x 100,000 patterns took 16 GB. The batch size does not change p (the same random patterns are drawn).
    """
    differ = gain[gain != 0]
    n = int(differ.size)
    out = {"test": "sign-flip permutation over users", "users": int(gain.size), "users_differ": n,
           "users_better": int((differ > 0).sum()), "users_worse": int((differ < 0).sum())}
    if n < 2:  # no user, or one whose two sign patterns tie: nothing can be told apart
        return {**out, "p_value": 1.0, "exact": True, "significant": False}
    exact = n <= EXACT_SIGN_FLIPS
    result = stats.permutation_test(
        (differ,), lambda d, axis: np.mean(d, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=np.inf if exact else resamples, alternative="two-sided", rng=np.random.default_rng(0),
        batch=max(1, SIGN_FLIP_BATCH_ELEMENTS // n))
    p = float(min(1.0, result.pvalue))
    return {**out, "p_value": p, "exact": exact, "significant": p < 0.05}


def _per_user_ndcg(runs: list[dict]) -> np.ndarray:
    """NDCG@10 per user (metrics.py's definition), averaged over the runs (seeds)."""
    ranks = np.array([r["retrieved_rank"] for r in runs], dtype=float)
    with np.errstate(divide="ignore"):
        return np.where((ranks >= 1) & (ranks <= 10), 1 / np.log2(ranks + 1), 0.0).mean(axis=0)


def p_text(p: float | None) -> str:
    """A p-value as a report prints it: three decimals, or "< 0.001" (a sampled test's p is never 0); ``None``
    (a test left undefined by data without spread) as "undefined"."""
    if p is None:
        return "undefined (no spread)"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def seed_noise_text(vs: dict, seeds: int) -> str:
    """Whether a difference is beyond the seed noise, plainly, by both tests (Welch over seeds; paired by seed)."""
    welch, paired = vs.get("seed_test"), vs.get("paired_seed_test")
    if not welch and not paired:
        return "one seed only, so the seed noise is unknown (use --seeds 3)"
    verdicts = [t["exceeds_seed_noise"] for t in (welch, paired) if t]
    plain = ("beyond the seed noise" if all(verdicts) else "within the seed noise" if not any(verdicts)
             else "beyond the seed noise by one test only")
    tests = []
    if paired:
        tests.append(f"paired t-test over {paired['seeds']} seeds p {p_text(paired['p_value'])}")
    if welch:
        tests.append(f"Welch t-test over {seeds} seeds, p {p_text(welch['p_value'])}")
    return f"{plain} ({'; '.join(tests)})"


def seed_differences_text(vs: dict) -> str:
    """The per-seed differences: ``seed 0 +0.0050, seed 1 -0.0010``."""
    return ", ".join(f"seed {seed} {diff:+.4f}" for seed, diff in vs.get("seed_differences", {}).items())


def verdict(label: str, row: dict) -> str:
    """One sentence on whether ``label`` beats SFT beyond the noise: the seed noise (both tests, the per-seed
    differences) and the users (bootstrap interval, sign flips)."""
    vs = row["vs_sft"]
    diff = vs["ndcg10_difference"]
    if diff == 0:
        parts = [f"{label}: the same NDCG@10 as SFT"]
    else:
        parts = [f"{label}: NDCG@10 {abs(diff):.4f} {'higher' if diff > 0 else 'lower'} than SFT"]
    parts.append(seed_noise_text(vs, len(row["seeds"])))
    if len(vs.get("seed_differences", {})) > 1:
        parts.append(f"per-seed differences {seed_differences_text(vs)}")
    low, high = vs["user_bootstrap"]["ci95"]
    parts.append(f"95% user-bootstrap interval of the difference [{low:+.4f}, {high:+.4f}]"
                 + (" excludes 0" if vs["user_bootstrap"]["excludes_zero"] else " includes 0"))
    paired = vs.get("paired_test")
    if paired:
        parts.append(f"{paired['users_differ']} of {paired['users']} users differ ({paired['users_better']} better, "
                     f"{paired['users_worse']} worse); {'exact' if paired['exact'] else 'sampled'} sign-flip test "
                     f"p {p_text(paired['p_value'])}")
    return "; ".join(parts) + "."
