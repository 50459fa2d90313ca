"""Shared helpers of the command-line tests: run `bearrec` in-process, check the one-line error contract."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bearrec.cli import app
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic

runner = CliRunner()
# A tiny model that trains in seconds, for commands that must get as far as training.
SMALL = ["--set", "tiny.hidden_size=32", "--set", "tiny.num_hidden_layers=1", "--set", "train.valid_users=8"]


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *needles) -> str:
    """Exit 2 and exactly one non-empty stderr line, starting with ``error:`` and naming every needle."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def small_synthetic(folder: Path) -> Path:
    generate_synthetic(SyntheticConfig(num_users=30, num_categories=2, items_per_category=10)).save(folder)
    return folder
