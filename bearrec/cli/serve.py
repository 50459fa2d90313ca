"""`bearrec serve`: a run over HTTP."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from bearrec.cli.app import (
    DECODER_FLAGS,
    AllowOtherData,
    DecoderNodeBudget,
    LatentNeighbors,
    LatentSimilarity,
    LatentVariant,
    RunData,
    RunFolder,
    _cli_errors,
    _progress,
    app,
    console,
    out,
)


@app.command()
@_cli_errors
def serve(
    run: RunFolder,
    data: RunData = None,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port, printed at start-up)")] = 8000,
    beam_width: Annotated[int, typer.Option(help="beam width B of the beam decoder, and the largest k a request may ask (paper: 10)")] = 10,
    decoders: Annotated[str, typer.Option(help="decoders requests may choose, comma-separated: beam, exact, latent (latent loads or builds its item memory at start-up)")] = "beam,exact,latent",
    exclude_history: Annotated[bool, typer.Option("--exclude-history/--include-history", help="default of a request's exclude_history: never recommend an item of its history")] = True,
    batching: Annotated[bool, typer.Option("--batching/--no-batching", help="decode concurrent requests together (--no-batching: one request per forward pass)")] = True,
    batch_wait_ms: Annotated[float, typer.Option(help="how long a request waits for others to share its batch, in milliseconds")] = 5.0,
    max_batch: Annotated[int, typer.Option(help="requests per batch at most")] = 32,
    max_history: Annotated[int, typer.Option(help="history entries per request at most")] = 200,
    max_body_bytes: Annotated[int, typer.Option(help="larger request bodies are refused (413)")] = 256 * 1024,
    threads: Annotated[Optional[int], typer.Option(help="torch threads of the decoding worker [default: torch's, which follows OMP_NUM_THREADS]")] = None,
    node_budget: DecoderNodeBudget = None,
    latent_variant: LatentVariant = None,
    latent_similarity: LatentSimilarity = None,
    latent_neighbors: LatentNeighbors = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level: critical, error, warning, info, debug, trace")] = "info",
    allow_other_data: AllowOtherData = False,
):
    """Serve a run over HTTP: POST /recommend, GET /items?query=, GET /health, a page at / and the OpenAPI spec at /docs.

    Concurrent requests are batched: each waits up to --batch-wait-ms for others, and requests with the same
    decoder and search width share forward passes. The run is loaded (and checked) before the server starts.
    """
    import torch

    from bearrec.decoding.config import DecodingOverrides
    from bearrec.serving.recommender import Recommender, RecommenderSettings

    try:
        from bearrec.serving.app import ServeSettings, create_app, listen, server, url_of
    except ImportError as err:
        raise ValueError(f"bearrec serve needs FastAPI and uvicorn ({err}): pip install 'bearrec[serve]'") from None

    overrides = DecodingOverrides(node_budget=node_budget, latent_variant=latent_variant,
                                  latent_similarity=latent_similarity, latent_neighbors=latent_neighbors)
    settings = RecommenderSettings(beam_width, tuple(d.strip() for d in decoders.split(",") if d.strip()), overrides)
    settings.validate("serve", {"decoders": "--decoders", **DECODER_FLAGS})
    serving = ServeSettings(batching=batching, batch_wait_ms=batch_wait_ms, max_batch=max_batch,
                            exclude_history=exclude_history, max_history=max_history, max_body_bytes=max_body_bytes)
    serving.validate("serve", {"batch_wait_ms": "--batch-wait-ms", "max_batch": "--max-batch",
                               "max_history": "--max-history", "max_body_bytes": "--max-body-bytes"})
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise ValueError(f"--log-level must be one of critical, error, warning, info, debug, trace, got {log_level!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    with listen(host, port) as sock:  # a taken port is refused before the run is loaded
        with _progress() as progress:
            recommender = Recommender.from_run(run, data, settings, progress, allow_other_data)
        app = create_app(recommender, serving, run.resolve().name)
        out.print(f"serving {run} ({len(recommender.titles)} items; decoders {', '.join(recommender.decoders)}; batching "
                  + (f"up to {max_batch} requests, {batch_wait_ms:g} ms" if batching else "off")
                  + f") at {url_of(sock)}  (page: /, API docs: /docs; Ctrl-C stops)", soft_wrap=True)
        sys.stdout.flush()
        try:
            server(app, log_level).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: the normal way to stop
            console.print("stopped")
