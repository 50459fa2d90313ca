"""Load test of `bearrec serve` on loopback: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients,
with server-side batching on and off, in one run.

For each setting a `bearrec serve` process is started on 127.0.0.1 (a free port), warmed up, and loaded by
closed-loop clients (each sends its next request when the previous answer arrives) with histories of the
test split, cycled. Every load is bounded: a fixed number of requests per level, a timeout per request and
one for the whole level. A request that fails, times out or returns anything but 200 is counted and
reported; the script exits 1 if any did.

Usage (the quickstart's synthetic catalog, the tiny model trained for one epoch):
    python benchmarks/bench_serve.py
With a trained run folder:
    python benchmarks/bench_serve.py --run runs/office-bear --requests 256

The clients run in this process on the same machine as the server, so on a small machine they take CPU
from it: the numbers are the server's throughput with its load generator beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


async def _client(client: httpx.AsyncClient, bodies: list[dict], start: int, count: int, step: int,
                  timeout: float, latencies: list[float], errors: list[str]) -> None:
    for n in range(count):
        body = bodies[(start + n * step) % len(bodies)]
        began = time.perf_counter()
        try:
            response = await client.post("/recommend", json=body, timeout=timeout)
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                continue
            if len(response.json()["items"]) == 0:
                errors.append(f"no items for {body}")
                continue
        except (httpx.HTTPError, ValueError) as err:
            errors.append(f"{type(err).__name__}: {err}")
            continue
        latencies.append(time.perf_counter() - began)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _load(url: str, bodies: list[dict], clients: int, requests: int, timeout: float, total_timeout: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    per_client = [requests // clients + (c < requests % clients) for c in range(clients)]
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        began = time.perf_counter()
        tasks = [asyncio.create_task(_client(client, bodies, c, per_client[c], clients, timeout, latencies, errors))
                 for c in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=total_timeout)
        for task in pending:
            task.cancel()
        seconds = time.perf_counter() - began
    unanswered = requests - len(latencies) - len(errors)
    if unanswered:
        errors.append(f"{unanswered} requests unanswered after {total_timeout:g} s")
    return {"clients": clients, "requests": requests, "ok": len(latencies), "failed": requests - len(latencies),
            "seconds": seconds, "requests_per_s": len(latencies) / seconds,
            "p50_ms": 1000 * _percentile(latencies, 0.5) if latencies else None,
            "p99_ms": 1000 * _percentile(latencies, 0.99) if latencies else None, "errors": errors[:5]}


def load(url: str, bodies: list[dict], clients: int, requests: int, timeout: float = 60.0,
         total_timeout: float = 300.0) -> dict:
    """``requests`` POST /recommend requests from ``clients`` closed-loop clients (bodies cycled); counts,
    throughput and latency percentiles. Bounded by ``timeout`` per request and ``total_timeout`` in all."""
    return asyncio.run(_load(url, bodies, clients, requests, timeout, total_timeout))


def request_bodies(dataset, k: int = 10, decoder: str = "beam", split: str = "test", limit: int = 512) -> list[dict]:
    """Request bodies with the histories (item ids) of the first ``limit`` rows of a split."""
    rows = dataset.splits[split]["history"][:limit]
    return [{"history": [str(i) for i in history], "k": k, "decoder": decoder} for history in rows]


def start_server(run: Path, *args: str, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """`bearrec serve RUN --port 0 ARGS` in a new process; (process, base URL) once it answers /health."""
    command = [sys.executable, "-m", "bearrec.cli", "serve", str(run), "--port", "0", "--log-level", "warning", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    line = ""
    while "http://" not in line:  # the start-up line names the URL
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise RuntimeError(f"bearrec serve exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError("bearrec serve did not start in time")
    url = line[line.index("http://"):].split()[0]
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    stop_server(process)
    raise RuntimeError("bearrec serve does not answer /health")


def stop_server(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """Ctrl-C (SIGINT) and wait; killed if it does not stop within ``timeout``. Returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdout, process.stderr):
        stream.close()
    return process.returncode


def decode_only(run: Path, bodies: list[dict], sizes: tuple[int, ...] = (1, 8, 32), requests: int = 64) -> dict:
    """Milliseconds per request of :meth:`Recommender.recommend` in this process, no HTTP: the same requests
    decoded alone and in batches of each size (what batching can gain at most)."""
    from bearrec.serving.recommender import Query, Recommender

    recommender = Recommender.from_run(run)
    queries = [Query(recommender.resolve(b["history"]), b["k"], b["decoder"]) for b in bodies[:requests]]
    recommender.recommend(queries[:2])  # warm-up
    result = {}
    for size in sizes:
        began = time.perf_counter()
        for start in range(0, len(queries), size):
            recommender.recommend(queries[start : start + size])
        result[size] = 1000 * (time.perf_counter() - began) / len(queries)
    return result


def _default_run(tmp: Path) -> Path:
    from bearrec.config import ExperimentConfig, TrainConfig
    from bearrec.data.synthetic import generate_synthetic
    from bearrec.runs import train_run

    generate_synthetic().save(tmp / "data")
    train_run(ExperimentConfig(data=str(tmp / "data"), train=TrainConfig(epochs=1, valid_users=None,
                                                                          select_best=False)), tmp / "run")
    return tmp / "run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="trained run folder (default: tiny model on synthetic data, 1 epoch)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients per level, comma-separated")
    parser.add_argument("--requests", type=int, default=192, help="requests per level")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--decoder", default="beam")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    parser.add_argument("--decode-only", action="store_true",
                        help="time the decoder alone and in batches in this process (no server, no HTTP) and exit")
    args = parser.parse_args()

    from bearrec.runs import load_run

    run = args.run or _default_run(Path(tempfile.mkdtemp(prefix="bench-serve-")))
    dataset = load_run(run)[2]
    bodies = request_bodies(dataset, args.k, args.decoder)
    levels = [int(c) for c in args.clients.split(",")]
    if args.decode_only:
        times = decode_only(run, bodies, tuple(levels))
        print(f"{run}: {len(dataset.titles)} items, decoder {args.decoder}, k {args.k}; ms per request, no HTTP: "
              + ", ".join(f"batches of {size}: {ms:.1f}" for size, ms in times.items()))
        return
    results = []
    for batching in (True, False):
        flags = ["--batch-wait-ms", str(args.batch_wait_ms), "--max-batch", str(args.max_batch)] if batching \
            else ["--no-batching"]
        process, url = start_server(run, *flags)
        try:
            load(url, bodies, 2, 16, args.timeout)  # warm-up: first forwards, allocator, connections
            for clients in levels:
                before = httpx.get(url + "/health", timeout=10).json()["batching"]
                result = load(url, bodies, clients, args.requests, args.timeout)
                after = httpx.get(url + "/health", timeout=10).json()["batching"]
                batches = after["batches"] - before["batches"]
                result.update(batching=batching, mean_batch=(after["requests"] - before["requests"]) / max(batches, 1))
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            stop_server(process)
    print(f"\n{run}: {len(dataset.titles)} items, decoder {args.decoder}, k {args.k}, {args.requests} requests per "
          f"level; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print("| batching | clients | requests/s | p50 ms | p99 ms | mean batch | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        on = f"on ({args.batch_wait_ms:g} ms, max {args.max_batch})" if r["batching"] else "off"
        p50, p99 = (f"{r[key]:.0f}" if r[key] is not None else "-" for key in ("p50_ms", "p99_ms"))
        print(f"| {on} | {r['clients']} | {r['requests_per_s']:.1f} | {p50} | {p99} | {r['mean_batch']:.1f} | "
              f"{r['failed']} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    if any(r["failed"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
