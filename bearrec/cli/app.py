"""The typer app, its two consoles, the error contract (one line on stderr, exit 2; Ctrl-C: one line, exit 130)
and the options several commands share. The commands live beside it, one module per group."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape as rich_escape

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Fine-tune language models as sequential recommenders with beam-search-aware objectives "
    "(BEAR, arXiv 2601.22925). Start with `bearrec quickstart`.",
)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # piped or logged: wide enough for the result tables


def _error(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True)


def _cli_errors(func):
    """Turn expected failures (bad data, missing or unwritable files, bad options) into one line on stderr
    and exit 2; Ctrl-C into a one-line note and exit 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from bearrec.data.dataset import DataError

        try:
            return func(*args, **kwargs)
        except (DataError, ValueError, KeyError, OSError) as err:
            from bearrec.checks import first_line

            text = first_line(err)
            if isinstance(err, OSError) and err.filename and err.strerror:  # e.g. permission denied on --out
                text = f"{err.filename}: {err.strerror.lower()}"
            _error(rich_escape(text))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]: finished work is kept (train: --resume; compare, sweep: "
                          "run the same command again)", soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


def _show_warnings(message, category, filename, lineno, file=None, line=None):
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def _flag_sets(flags: dict) -> list[str]:
    """Command-line flags as ``section.field=value`` overrides (unset flags, None, are left out); ``--set``
    entries come after them and win."""
    return [f"{key}={value}" for key, value in flags.items() if value is not None]


@app.callback()
def _setup() -> None:
    """Warnings as one yellow line each; our own progress bars instead of transformers' load/save bars (which
    also turns off the Hugging Face Hub's), and transformers' errors only. Where transformers is not imported
    yet, through the environment variables it reads when it is (so that ``bearrec train --help`` does not import
    it: 0.9 s); else through its logging functions."""
    warnings.showwarning = _show_warnings
    if "transformers" in sys.modules:
        import transformers

        transformers.logging.disable_progress_bar()
        transformers.logging.set_verbosity_error()
    else:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"


# The run and its data, as `evaluate`, `recommend` and `serve` take them.
RunFolder = Annotated[Path, typer.Argument(help="run folder from `bearrec train`")]
RunData = Annotated[Optional[Path], typer.Option(help="dataset folder [default: the one the run was trained on]")]
# Decoder options shared by `evaluate`, `recommend` and `serve` (unset: the run's decoding section).
DecoderNodeBudget = Annotated[Optional[int], typer.Option("--node-budget", help="--decoder exact: trie nodes expanded per user (history); a list not proven exact within it is the best found so far, reported uncertified [default: the run's, no limit]")]
LatentVariant = Annotated[Optional[str], typer.Option("--latent-variant", help="--decoder latent: global (each item = mean of its training states) or local (mean of the --latent-neighbors states nearest the user) [default: the run's, global]")]
LatentSimilarity = Annotated[Optional[str], typer.Option("--latent-similarity", help="--decoder latent: l2 (the paper's inverse L2 distance) or cosine [default: the run's, l2]")]
LatentNeighbors = Annotated[Optional[int], typer.Option("--latent-neighbors", help="--decoder latent --latent-variant local: M, training states per item nearest the user [default: the run's, 5]")]
AllowOtherData = Annotated[bool, typer.Option("--allow-other-data", help="with --data: use a dataset whose content differs from the one the run was trained on (its catalog is named in a warning); without it, bearrec refuses other data")]
JOBS_HELP = ("runs trained at once, each in its own process with an equal share of the CPU threads (small models "
             "on a multi-core CPU; on one GPU keep 1)")
DECODER_FLAGS = {"beam_width": "--beam-width", "node_budget": "--node-budget", "latent_variant": "--latent-variant",
                 "latent_similarity": "--latent-similarity", "latent_neighbors": "--latent-neighbors"}


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def main() -> None:
    """The `bearrec` command: like ``app()``, but a usage error (unknown flag, a value of the wrong type) is
    one line on stderr and exit 2, as every other error."""
    # Typer raises click's exception classes, or those of the click copy it vendors (typer >= 0.25).
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = app(standalone_mode=False)
    except click_exception as err:
        ctx = getattr(err, "ctx", None)
        name = ctx.command.name if ctx is not None and ctx.command is not None else None
        hint = f" (see `bearrec {name} --help`)" if name and ctx.parent is not None else ""
        _error(rich_escape(" ".join(err.format_message().split())) + hint)
        sys.exit(err.exit_code)
    except typer.Abort:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
