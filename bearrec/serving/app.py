"""`bearrec serve`: a trained run behind HTTP (FastAPI on uvicorn), with server-side request batching.

The server only orchestrates; what a recommendation is lives in :mod:`bearrec.serving.recommender`, and the
JSON it reads and answers (the OpenAPI spec's schemas) in :mod:`bearrec.serving.schemas`.

* ``POST /recommend`` ``{"history": [...], "k": 10, "decoder": "beam", "exclude_history": true}``: the ranked
  items with ids, titles and scores. History entries (item ids or exact titles) are resolved in the request
  handler, so a bad request is answered at once and never joins a batch.
* ``GET /items?query=&limit=``: catalog search; ``GET /health``: the run, its settings and batching counters;
  ``GET /``: a small page to try it; ``GET /openapi.json`` and ``/docs``: the OpenAPI spec.
* Errors are 4xx answers with one ``detail`` line: 422 for an unknown item, an empty history, k out of range or
  a malformed body; 413 for a body over ``--max-body-bytes``; 415 for a body not sent as ``application/json``.

**Batching.** Handlers put their query on an asyncio queue. One task takes the first query, waits up to
``batch_wait_ms`` for more (or until ``max_batch`` are queued), and hands the batch to one worker thread, where
:meth:`Recommender.recommend` decodes it (queries with the same decoder and search width share forward passes).
Requests that arrive while the worker is busy form the next batch. With batching off every request is decoded
alone, still one at a time on the same worker: the model is never run by two threads at once.
"""

import asyncio
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Iterator

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bearrec.checks import check
from bearrec.serving.page import PAGE
from bearrec.serving.recommender import Query, Recommendation, Recommender
from bearrec.serving.schemas import (
    BatchingStats,
    Error,
    Health,
    Item,
    Recommendations,
    RecommendedItem,
    SearchResult,
    explain,
    recommend_request,
)


@dataclass
class ServeSettings:
    """How the server batches and what it accepts."""

    batching: bool = True  # False: every request is decoded alone
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_batch: int = 32  # requests per batch at most
    exclude_history: bool = True  # the default of a request's exclude_history
    max_history: int = 200  # history entries per request at most
    max_body_bytes: int = 256 * 1024  # request bodies larger than this are refused (413)

    def validate(self, section: str = "serve", flags: dict[str, str] | None = None) -> None:
        flags = flags or {}

        def rule(name: str, text: str) -> str:
            return f"{text} ({flags[name]})" if name in flags else text

        check(0 <= self.batch_wait_ms <= 10_000, section, "batch_wait_ms", rule("batch_wait_ms", "between 0 and 10000"),
              self.batch_wait_ms)
        check(self.max_batch >= 1, section, "max_batch", rule("max_batch", "at least 1"), self.max_batch)
        check(self.max_history >= 1, section, "max_history", rule("max_history", "at least 1"), self.max_history)
        check(self.max_body_bytes >= 1024, section, "max_body_bytes", rule("max_body_bytes", "at least 1024"),
              self.max_body_bytes)


# ---------------------------------------------------------------------------------------------- batching
class Batcher:
    """Gathers queries into batches on the event loop and decodes each batch in one worker thread."""

    def __init__(self, recommender: Recommender, settings: ServeSettings):
        self.recommender = recommender
        self.wait = settings.batch_wait_ms / 1000 if settings.batching else 0.0
        self.max_batch = settings.max_batch if settings.batching else 1
        self.batch_sizes: Counter = Counter()  # requests per batch -> batches
        self.call_sizes: Counter = Counter()  # requests per decoder call -> calls
        self.queue: asyncio.Queue | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.full = asyncio.Event()  # set when max_batch queries wait: stop waiting for more
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bearrec-decode")
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        while not self.queue.empty():
            _, future = self.queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the server is shutting down"))
        self.executor.shutdown(wait=True)

    async def submit(self, query: Query) -> Recommendation:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((query, future))
        if self.queue.qsize() >= self.max_batch - 1:  # with the query the batch task holds, a full batch
            self.full.set()
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            if self.wait > 0 and self.queue.qsize() < self.max_batch - 1:
                self.full.clear()
                try:
                    await asyncio.wait_for(self.full.wait(), self.wait)
                except asyncio.TimeoutError:
                    pass
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            batch = [(query, future) for query, future in batch if not future.done()]  # cancelled: client gone
            if batch:
                await self._decode(batch)

    async def _decode(self, batch: list) -> None:
        """Decode one batch in the worker and answer its futures; an error goes to every request of the batch
        (500, or 422 for a ValueError) and the loop goes on, so that no request is left waiting."""
        queries = [query for query, _ in batch]
        try:
            self.batch_sizes[len(batch)] += 1
            self.call_sizes.update(len(members) for members in self.recommender.groups(queries).values())
            answers = await asyncio.get_running_loop().run_in_executor(self.executor, self.recommender.recommend,
                                                                       queries)
        except Exception as err:
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future), answer in zip(batch, answers):
            if not future.done():
                future.set_result(answer)

    def stats(self) -> dict:
        calls = self.call_sizes
        return {"enabled": self.max_batch > 1, "wait_ms": self.wait * 1000, "max_batch": self.max_batch,
                "requests": sum(n * c for n, c in self.batch_sizes.items()), "batches": sum(self.batch_sizes.values()),
                "largest_batch": max(self.batch_sizes, default=0),
                "batch_sizes": {str(n): c for n, c in sorted(self.batch_sizes.items())},
                "decoder_calls": {str(n): c for n, c in sorted(calls.items())}}


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before the app parses it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        body, more = bytearray(), True
        while more:  # read the body here, so that a chunked body without a length is bounded too
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await self._refuse(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = JSONResponse({"detail": f"request body too large: more than {self.limit} bytes "
                                           "(the server's --max-body-bytes)"}, status_code=413)
        await response(scope, receive, send)


# ---------------------------------------------------------------------------------------------- the API
async def _require_json(request: Request) -> None:
    """415 for a body not sent as JSON: FastAPI parses only ``application/json`` (and ``application/*+json``)
    bodies, and would hand any other one to validation as bytes, to be refused for a reason that hides the cause.
    (No body at all is left to validation: 422, the body is required.)"""
    received = request.headers.get("content-type")
    kind, _, sub = (received or "").split(";")[0].strip().lower().partition("/")
    as_json = kind == "application" and "/" not in sub and (sub == "json" or sub.endswith("+json"))
    if not as_json and await request.body():
        got = f"Content-Type {received[:100]!r}" if received else "no Content-Type header"
        raise HTTPException(415, f"body: must be sent as JSON with Content-Type: application/json, got {got}")


def create_app(recommender: Recommender, settings: ServeSettings | None = None, name: str = "run") -> FastAPI:
    """The FastAPI app serving ``recommender`` (named ``name`` on the page and in ``/health``)."""
    settings = settings or ServeSettings()
    settings.validate()
    batcher = Batcher(recommender, settings)
    decoders = recommender.decoders
    width = recommender.settings.beam_width
    RecommendRequest = recommend_request(decoders, recommender.default_decoder, width, settings.max_history,
                                         settings.exclude_history, recommender.item_ids[:2])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="bearrec", version="1", lifespan=lifespan,
                  description=f"Recommendations of the bearrec run `{name}` ({len(recommender.titles)} items).")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.state.batcher = batcher
    _answer_errors_in_one_line(app, width, settings.max_history)
    refused = {422: {"model": Error, "description": "the request is invalid; `detail` says why"}}

    @app.post("/recommend", response_model=Recommendations, dependencies=[Depends(_require_json)],
              responses={**refused, 400: {"model": Error, "description": "the body cannot be parsed (not UTF-8 text)"},
                         413: {"model": Error, "description": "the request body is too large"},
                         415: {"model": Error, "description": "the body is not sent as application/json"}})
    async def recommend(request: RecommendRequest) -> Recommendations:
        """The top-k items for a history (ids or exact titles, oldest first)."""
        try:
            history = recommender.resolve(request.history)
            query = Query(history, request.k, request.decoder, request.exclude_history)
            recommender.check_query(query)
            answer = await batcher.submit(query)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        ids, titles = recommender.item_ids, recommender.titles
        return Recommendations(
            items=[RecommendedItem(rank=r, id=ids[i], title=titles[i], score=s)
                   for r, (i, s) in enumerate(zip(answer.items, answer.scores), 1)],
            k=request.k, decoder=request.decoder, score=recommender.describe_scores(request.decoder),
            scoring=recommender.scoring, exclude_history=request.exclude_history, history=[ids[i] for i in history],
            history_used=answer.history_used, certified=answer.certified, warnings=answer.warnings)

    @app.get("/items", response_model=SearchResult, responses=refused)
    def items(query: Annotated[str, QueryParam(max_length=500, description="text in the title, or an item id")] = "",
              limit: Annotated[int, QueryParam(ge=1, le=100)] = 20) -> SearchResult:
        """Catalog search: the item with that id, then titles starting with the query, then titles holding it."""
        found = recommender.search(query, limit)
        return SearchResult(items=[Item(id=recommender.item_ids[i], title=recommender.titles[i]) for i in found])

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness, the served run's settings and the batching counters."""
        return Health(status="ok", run=name, items=len(recommender.titles), decoders=list(decoders), beam_width=width,
                      scoring=recommender.scoring, length_penalty=recommender.decoding.length_penalty,
                      exclude_history=settings.exclude_history, max_history=settings.max_history,
                      latent_memory=recommender.memory_info, batching=BatchingStats(**batcher.stats()))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE

    return app


def _answer_errors_in_one_line(app: FastAPI, beam_width: int, max_history: int) -> None:
    """Answer invalid requests (422) and FastAPI's own HTTP errors with one ``detail`` line."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        text = "; ".join(explain(e, beam_width, max_history) for e in err.errors())
        return JSONResponse({"detail": text}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err: StarletteHTTPException):
        detail = err.detail
        if err.status_code == 400 and detail == "There was an error parsing the body":  # FastAPI's words for bytes
            detail = "body: cannot be parsed; send a JSON object in UTF-8"  # that are not text, e.g. bad UTF-8
        return JSONResponse({"detail": detail}, status_code=err.status_code, headers=err.headers)


# ---------------------------------------------------------------------------------------------- running it
def listen(host: str, port: int) -> socket.socket:
    """A bound socket for ``host:port`` (port 0: any free port; :func:`url_of` tells which), or a one-line
    ``ValueError`` naming ``--host`` or ``--port``."""
    check(0 <= port <= 65535, "serve", "port", "between 0 and 65535 (--port; 0: any free port)", port)
    check(host.strip() != "" and host.isprintable(), "serve", "host",
          "an address or a host name (--host; 0.0.0.0: every interface)", host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio then sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, TypeError) as err:  # TypeError: a host name IDNA cannot encode
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({(getattr(err, 'strerror', None) or str(err)).lower()}); "
                         "choose another --port or --host") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server(app: FastAPI, log_level: str = "warning") -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
            timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` in a background thread while the block runs; yields its base URL (tests, benchmarks)."""
    sock = listen(host, port)
    instance = server(app, log_level)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not instance.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield url_of(sock)
    finally:
        instance.should_exit = True
        thread.join(timeout)
        sock.close()
