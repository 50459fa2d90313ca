"""Result tables (terminal and Markdown) and the bar chart of a comparison between objectives."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from bearrec.io import disk_errors

# Beam search's NDCG/HR/MRR@K, the exact ranking's (nothing pruned) and the gap between them on the same users with
# its parts (gap = lost - gained - reordered: positives pruned, positives lifted above pruned negatives, the list's
# length-normalised order; metrics.gap_parts), PR@K, and the beyond-accuracy metrics (RecBole's ItemCoverage,
# GiniIndex, TailPercentage). Short names are the table headers; a metric a result lacks (one evaluated before it
# existed) shows as n/a.
METRIC_COLUMNS = ("NDCG@5", "NDCG@10", "HR@5", "HR@10", "MRR@10", "exact_NDCG@10", "exact_HR@10", "gap_NDCG@10",
                  "lost_NDCG@10", "gained_NDCG@10", "reordered_NDCG@10", "PR@5", "PR@10", "ItemCoverage@10",
                  "GiniIndex@10", "TailPercentage@10")
_PREFIXES = {"NDCG": "N", "HR": "H", "MRR": "MRR", "exact_NDCG": "exact N", "exact_HR": "exact H", "gap_NDCG": "gap N",
             "lost_NDCG": "lost N", "gained_NDCG": "gained N", "reordered_NDCG": "reordered N", "PR": "PR",
             "ItemCoverage": "Cov", "GiniIndex": "Gini", "TailPercentage": "Tail"}
_LOWER_IS_BETTER = ("PR", "gap", "lost", "GiniIndex")


def _plt():
    """pyplot on the file-only Agg backend, imported with the first figure: matplotlib (+0.4 s) stays out of what
    only prints tables (`bearrec evaluate` without `--report`, the statistics of `compare` and `sweep`)."""
    import matplotlib  # heavy, figures only: the one place it is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy, figures only

    return plt


def short_name(metric: str) -> str:
    """A metric's table header: ``NDCG@10`` -> ``N@10``, ``exact_HR@20`` -> ``exact H@20``."""
    name, k = metric.split("@")
    return f"{_PREFIXES[name]}@{k}"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table_rows(runs: dict[str, dict]) -> list[list[str]]:
    """One row per objective: the metrics of :data:`METRIC_COLUMNS` (n/a where a result lacks one) and training
    seconds per epoch."""
    return [
        [name] + [_fmt(r["metrics"].get(m)) for m in METRIC_COLUMNS] + [_fmt(r.get("seconds_per_epoch"), 1)]
        for name, r in runs.items()
    ]


def header() -> list[str]:
    return ["objective", *(short_name(m) for m in METRIC_COLUMNS), "train s/epoch"]


def rich_table(runs: dict[str, dict], title: str) -> Table:
    table = Table(title=title)
    for i, col in enumerate(header()):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in table_rows(runs):
        table.add_row(*row)
    return table


def markdown_table(runs: dict[str, dict]) -> str:
    cols = header()
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(runs)]
    return "\n".join(lines) + "\n"


def pruning_markdown(runs: dict[str, dict], ks=(5, 10)) -> str:
    """Paper Figure 4 in numbers: top-K positives, how many beam search pruned, and the violation share."""
    lines = ["| objective | K | top-K positives | pruned | PR@K | of which eq. 3.2 violations |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        summary = r.get("pruning")
        if summary:
            lines += [f"| {name} | {k} | {summary[f'top{k}_positives']} | {summary[f'pruned@{k}']} | "
                      f"{_fmt(summary[f'PR@{k}'])} | {_fmt(summary[f'violation_share@{k}'], 3)} |" for k in ks]
    return "\n".join(lines) + "\n"


def bar_chart(runs: dict[str, dict], path: Path, title: str) -> None:
    """Grouped bars: one group per metric, one bar per objective (PR@K: lower is better)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.9 * len(METRIC_COLUMNS) + 2, 4.2))
    width = 0.8 / max(len(runs), 1)
    for i, (name, r) in enumerate(runs.items()):
        values = [r["metrics"].get(m, math.nan) for m in METRIC_COLUMNS]
        xs = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(METRIC_COLUMNS))]
        bars = ax.bar(xs, values, width=width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(range(len(METRIC_COLUMNS)), [short_name(m) + ("\n(lower is better)" if m.startswith(_LOWER_IS_BETTER) else "")
                                               for m in METRIC_COLUMNS], fontsize=8)
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.legend()
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)


def pruning_table(summary: dict, ks=(5, 10)) -> Table:
    """Paper Figure 4 as a table: pruned top-K positives and the share caused by necessary-condition violations."""
    table = Table(title="Pruning attribution (positives in the top K by exact probability)")
    for col in ("K", "top-K positives", "pruned by beam search", "PR@K", "of which violations (eq. 3.2)"):
        table.add_column(col, justify="right")
    for k in ks:
        table.add_row(str(k), str(summary[f"top{k}_positives"]), str(summary[f"pruned@{k}"]), _fmt(summary[f"PR@{k}"]),
                      _fmt(summary[f"violation_share@{k}"], 3))
    return table


def pruning_figure(summary: dict, path: Path, title: str, ks=(5, 10)) -> None:
    """Left: Figure 4-style bars (pruned top-K positives, violation vs other); right: pruning-step histogram."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"K={k}" for k in ks]
    _attribution_bars(left, labels, [(summary, k) for k in ks])
    left.set_ylabel("positives in the top K by exact probability")
    left.legend(fontsize=8)
    hist = summary["pruning_step_histogram"]
    right.bar([int(s) for s in hist], list(hist.values()), color="#e45756")
    right.set_xlabel("decoding step at which the positive was pruned")
    right.set_ylabel("users (all ranks)")
    for ax in (left, right):
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title)
    _save(fig, path)


def _attribution_bars(ax, labels: list[str], bars: list[tuple[dict, int]]) -> None:
    """One stacked bar per (pruning summary, K): top-K positives retrieved, pruned by an eq. 3.2
    violation, pruned at prefix level."""
    kept = [s[f"top{k}_positives"] - s[f"pruned@{k}"] for s, k in bars]
    violation = [round(s[f"pruned@{k}"] * _zero_if_nan(s[f"violation_share@{k}"])) for s, k in bars]
    other = [s[f"pruned@{k}"] - v for (s, k), v in zip(bars, violation)]
    ax.bar(labels, kept, color="#4c78a8", label="retrieved")
    ax.bar(labels, violation, bottom=kept, color="#e45756", label="pruned: token outside top-B (eq. 3.2)")
    ax.bar(labels, other, bottom=[a + b for a, b in zip(kept, violation)], color="#9d9d9d", label="pruned: prefix-level")


def _save(fig, path: Path) -> None:
    """Write a figure atomically (matplotlib picks the format from the suffix, hence .tmp.png); a full or read-only
    disk is one ``OSError`` naming ``path``, and nothing is left behind."""
    plt = _plt()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        with disk_errors(path):
            fig.savefig(tmp, dpi=120)
            tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


# --- experiments (bearrec compare / sweep) ----------------------------------------------------------------

def _cell(row: dict, metric: str) -> str:
    mean, std = row["mean"].get(metric), row["std"].get(metric)
    if mean is None:
        return "n/a"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def summary_markdown(rows: dict[str, dict], baseline: str = "sft", ks: tuple[int, ...] | None = None) -> str:
    """Paper Table 2 layout: mean (± std over seeds) per label, then each label's change over SFT in %.

    ``ks``: instead of the default columns, NDCG, HR, exact NDCG, gap and PR at these K (e.g. K = B = 20)."""
    columns = list(METRIC_COLUMNS) if ks is None else [
        f"{m}@{k}" for k in ks for m in _PREFIXES]
    lines = ["| | " + " | ".join(short_name(m) for m in columns) + " | seeds | train s/epoch |",
             "|---|" + "---:|" * (len(columns) + 2)]
    for label, row in rows.items():
        cells = [_cell(row, m) for m in columns] + [str(len(row["seeds"])), _fmt(row["seconds_per_epoch"], 1)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if ks is None:
        for label, row in rows.items():
            if "vs_sft" in row:
                rel = row["vs_sft"]["relative"]
                cells = [f"{rel[m]:+.1%}" if rel.get(m) is not None else "n/a" for m in METRIC_COLUMNS[:4]]
                lines.append(f"| {label} vs {baseline} | " + " | ".join(cells) + " |" * (len(METRIC_COLUMNS) - 2))
    return "\n".join(lines) + "\n"


def training_markdown(rows: dict[str, dict]) -> str:
    """Per label: each seed's best validation epoch and epochs trained (early stopping), and seconds per epoch."""
    def seeds(values: list) -> str:
        return ", ".join("n/a" if v is None else str(v) for v in values)

    lines = ["| | seeds | best validation epoch (per seed) | epochs trained (per seed) | train s/epoch |",
             "|---|---|---|---|---:|"]
    lines += [f"| {label} | {seeds(row['seeds'])} | {seeds(row.get('best_epochs', []))} | "
              f"{seeds(row.get('epochs_trained', []))} | {_fmt(row['seconds_per_epoch'], 1)} |" for label, row in rows.items()]
    return "\n".join(lines) + "\n"


def summary_runs(rows: dict[str, dict]) -> dict[str, dict]:
    """Rows as the ``runs`` mapping of :func:`rich_table` / :func:`pruning_markdown` (means only)."""
    return {label: {"metrics": row["mean"], "seconds_per_epoch": row["seconds_per_epoch"], "pruning": row["pruning"]}
            for label, row in rows.items()}


def pr_figure(rows: dict[str, dict], path: Path, title: str, ks=(5, 10)) -> None:
    """Paper Figure 6: PR@K per objective (mean over seeds, std as error bars); lower is better."""
    plt = _plt()
    labels = [label for label, row in rows.items() if row["pruning"]]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        row = rows[label]
        values = [row["mean"].get(f"PR@{k}", math.nan) for k in ks]
        errors = [row["std"].get(f"PR@{k}") or 0.0 for k in ks]
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(ks))]
        bars = ax.bar(xs, values, width=width, yerr=errors, capsize=3, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(range(len(ks)), [f"PR@{k}" for k in ks])
    ax.set_ylabel("pruned share of top-K positives (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)


def pruning_comparison_figure(rows: dict[str, dict], path: Path, title: str, ks=(5, 10)) -> None:
    """Paper Figure 4 per objective: top-K positives retrieved, pruned by a token outside the top B
    (eq. 3.2 violation), or pruned with every token inside the top B (prefix-level loss)."""
    plt = _plt()
    labels = [label for label, row in rows.items() if row["pruning"]]
    fig, axes = plt.subplots(1, len(ks), figsize=(4.5 * len(ks), 4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        _attribution_bars(ax, labels, [(rows[label]["pruning"], k) for label in labels])
        ax.set_title(f"positives in the top {k} by exact probability", fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_ylabel("users (all seeds)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


EXACT_FIGURE = "beam_vs_exact.png"  # named ceiling.png before: older experiment folders keep that file and link it


def beam_vs_exact_figure(rows: dict[str, dict], path: Path, title: str) -> None:
    """Beam search against the exact ranking, per objective: beam search's NDCG@10 beside the exact ranking's
    (every item ranked by log P, nothing pruned; no ceiling: pruning also lifts positives above the negatives it
    drops), mean over seeds with std error bars."""
    plt = _plt()
    labels = [label for label, row in rows.items() if "exact_NDCG@10" in row["mean"]]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(labels) + 2), 4))
    for offset, (metric, name) in zip((-0.2, 0.2), (("NDCG@10", "beam search"), ("exact_NDCG@10", "exact ranking"))):
        values = [rows[label]["mean"][metric] for label in labels]
        errors = [rows[label]["std"].get(metric) or 0.0 for label in labels]
        bars = ax.bar([i + offset for i in range(len(labels))], values, width=0.4, yerr=errors, capsize=3, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("NDCG@10")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)


def efficiency_figure(rows: dict[str, dict], path: Path, title: str) -> None:
    """Paper Figure 9: training seconds per epoch against NDCG@10."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, row in rows.items():
        ax.errorbar(row["seconds_per_epoch"], row["mean"]["NDCG@10"], yerr=row["std"].get("NDCG@10") or 0.0,
                    fmt="o", capsize=3)
        ax.annotate(label, (row["seconds_per_epoch"], row["mean"]["NDCG@10"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training seconds per epoch (log scale)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)


def sweep_figure(rows: dict[str, dict], points: dict[str, dict], path: Path, title: str, baseline: str = "sft") -> None:
    """Paper Figure 8: NDCG@10 against each swept hyperparameter, one line per setting of the others,
    the best point starred and SFT dashed. ``points`` maps each label to its hyperparameter values."""
    plt = _plt()
    names = list(next(iter(points.values())))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    best_label = max(points, key=lambda label: rows[label]["mean"]["NDCG@10"])
    for ax, name in zip(axes[0], names):
        others = [n for n in names if n != name]
        lines: dict[tuple, list] = {}
        for label, values in points.items():
            lines.setdefault(tuple(values[o] for o in others), []).append((values[name], rows[label]["mean"]["NDCG@10"], label))
        numeric = all(isinstance(v[name], (int, float)) and not isinstance(v[name], bool) for v in points.values())
        for key, line in lines.items():
            line.sort(key=lambda t: t[0] if numeric else str(t[0]))
            legend = ", ".join(f"{o.split('.')[-1]}={v}" for o, v in zip(others, key)) or "NDCG@10"
            ax.plot([t[0] if numeric else str(t[0]) for t in line], [t[1] for t in line], marker="o", label=legend)
            for x, y, label in line:
                if label == best_label:
                    ax.plot([x if numeric else str(x)], [y], marker="*", markersize=16, color="gold", markeredgecolor="black", zorder=5)
        if baseline in rows:
            ax.axhline(rows[baseline]["mean"]["NDCG@10"], linestyle="--", color="gray", label=f"{baseline} baseline")
        log = numeric and all(v[name] > 0 for v in points.values())
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(name.split(".")[-1] + (" (log scale)" if log else ""))
        ax.set_ylabel("NDCG@10")
        ax.legend(fontsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
