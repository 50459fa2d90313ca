"""Result tables (terminal and Markdown) and the bar chart of a comparison between objectives."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

METRIC_COLUMNS = ("NDCG@5", "NDCG@10", "HR@5", "HR@10", "PR@5", "PR@10")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table_rows(runs: dict[str, dict]) -> list[list[str]]:
    """One row per objective: the six metrics and training seconds per epoch."""
    return [
        [name] + [_fmt(r["metrics"].get(m)) for m in METRIC_COLUMNS] + [_fmt(r.get("seconds_per_epoch"), 1)]
        for name, r in runs.items()
    ]


def header() -> list[str]:
    return ["objective", *METRIC_COLUMNS, "train s/epoch"]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(len(runs), 1)
    for i, (name, r) in enumerate(runs.items()):
        values = [r["metrics"].get(m, math.nan) for m in METRIC_COLUMNS]
        xs = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(METRIC_COLUMNS))]
        bars = ax.bar(xs, values, width=width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(range(len(METRIC_COLUMNS)), [m + (" (lower is better)" if m.startswith("PR") else "") for m in METRIC_COLUMNS],
                  fontsize=8)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"K={k}" for k in ks]
    kept = [summary[f"top{k}_positives"] - summary[f"pruned@{k}"] for k in ks]
    violation = [round(summary[f"pruned@{k}"] * _zero_if_nan(summary[f"violation_share@{k}"])) for k in ks]
    other = [summary[f"pruned@{k}"] - v for k, v in zip(ks, violation)]
    left.bar(labels, kept, color="#4c78a8", label="retrieved")
    left.bar(labels, violation, bottom=kept, color="#e45756", label="pruned: token outside top-B (eq. 3.2)")
    left.bar(labels, other, bottom=[a + b for a, b in zip(kept, violation)], color="#9d9d9d", label="pruned: prefix-level")
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


def _save(fig, path: Path) -> None:
    """Write a figure atomically (matplotlib picks the format from the suffix, hence .tmp.png)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value
