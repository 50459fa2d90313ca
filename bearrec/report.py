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
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")  # matplotlib picks the format from the suffix
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
