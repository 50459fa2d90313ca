"""`bearrec sids report FILE`: the quality of any semantic-ID codes file (``item_id,codes``), the same report
`bearrec prepare --semantic-ids` prints and keeps in dataset.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from bearrec.cli.app import _cli_errors, app, out

sids = typer.Typer(no_args_is_help=True, help="Semantic IDs: the quality of a codes file.")
app.add_typer(sids, name="sids")


def quality_table(report: dict, title: str) -> Table:
    """The per-level table of a quality report (:func:`bearrec.items.sid_quality.sid_quality`), its totals in
    the caption."""
    table = Table(title=title, caption=(
        f"{report['items']} items, {report['distinct_codes']} distinct code tuples; "
        f"{report['items_sharing_codes']} items ({100 * report['shared_share']:.2f} %) share all codes with "
        f"another, at most {report['largest_group']} on one"))
    for name in ("level", "codebook", "codes used", "utilisation", "entropy (bits)", "entropy / log2 K",
                 "most items on one code"):
        table.add_column(name, justify="right")
    for level, row in enumerate(report["per_level"], 1):
        table.add_row(str(level), str(row["codebook_size"]), str(row["codes_used"]), f"{100 * row['utilisation']:.1f} %",
                      f"{row['entropy_bits']:.2f}", f"{row['normalised_entropy']:.3f}", str(row["max_items_per_code"]))
    return table


@sids.command("report")
@_cli_errors
def report(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="an item_id,codes CSV (codes a JSON list of ints per item), as `prepare --semantic-ids` reads")],
    codebook_size: Annotated[Optional[int], typer.Option(help="codes per level, for utilisation and entropy / log2 K [default: each level's largest code + 1]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON instead of a table")] = False,
):
    """Items sharing all codes, and per level the codebook's utilisation, entropy and most items on one code."""
    import numpy as np

    from bearrec.items.semantic_ids import read_code_rows
    from bearrec.items.sid_quality import sid_quality

    if codebook_size is not None and codebook_size < 2:  # as SemanticIdConfig: one code per level tells nothing apart
        raise ValueError(f"--codebook-size must be at least 2, got {codebook_size}")
    rows = read_code_rows(path)
    if not rows:
        raise ValueError(f"{path}: no rows of codes")
    codes = np.array(list(rows.values()), dtype=np.int64)  # [items, levels]
    if codebook_size is not None and codes.max() >= codebook_size:
        raise ValueError(f"--codebook-size {codebook_size}: {path} holds code {int(codes.max())}")
    result = sid_quality(codes, codebook_size)
    if as_json:
        typer.echo(json.dumps({"file": str(path), **result}, indent=2))
    else:
        out.print(quality_table(result, f"semantic IDs of {path}"))
