"""`bearrec prepare` at scale: the out-of-core (duckdb) pipeline against the in-memory one it replaced.

Usage:
    nice -n 10 python benchmarks/bench_prepare.py --sizes 1000000 10000000 --old-up-to 10000000
    nice -n 10 python benchmarks/bench_prepare.py --sizes 10000000 --runs new-2018 old --work /work/bench/b --keep
    nice -n 10 python benchmarks/bench_prepare.py --sizes 100000000 --old-up-to 0 --gzip

Generates Amazon-Reviews-2023-shaped logs (``user_id``, ``parent_asin``, ``timestamp`` in ms, with the
rating, review title, text and the other fields of the dump; meta lines with ``parent_asin``, ``title`` and
the rest) with power-law users and items and product-like titles, and the same log in the 2018 shape
(``reviewerID``, ``asin``, ``unixReviewTime`` in seconds) for the old path, which reads only that. Each
measurement runs in a fresh process and reports wall time, peak RSS (VmHWM), interactions per second and the
load average while it ran:

* ``old``: ``read_amazon`` + ``RecDataset.save`` of the commit given by ``--old-ref`` (default: the last
  commit with the pandas pipeline), extracted with ``git archive`` into a scratch folder;
* ``new amazon``: the same 2018-shaped files through this repository's pipeline;
* ``new amazon2023``: the 2023-shaped files through this repository's pipeline.

The old path is skipped above ``--old-up-to`` interactions (it needs about 1.1 GB per 10^6), and so is the
2018-shaped copy (and its ``new amazon`` row) above ``--shape2018-up-to`` (default: ``--old-up-to``): 10^8
interactions are about 26 GB of 2023 lines (about 5 GB with ``--gzip``, as the dumps are shipped; prepare's scratch
space at 10^8 is about 20 GB beside them). ``--runs`` picks the measurements. Generated files go to ``--work``
(default a scratch folder under /tmp) and are removed at the end unless ``--keep``."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

OLD_REF = "e784016"  # the last commit whose raw-format pipeline is pandas + Python loops over whole files
REPO = Path(__file__).resolve().parents[1]

BRANDS = ("Acme Nova Swift Atlas Summit Orion Vertex Zenith Harbor Pilot Sharpie Avery Bic Staedtler Mead Fellowes "
          "Scotch Post-it Swingline Brother Epson Canon Logitech Anker Lodge Oxo Cuisinart Hamilton Philips").split()
ADJECTIVES = ("Heavy Duty|Premium|Ultra Fine|Retractable|Stainless Steel|Wireless|Compact|Ergonomic|Waterproof|"
              "Rechargeable|Adjustable|Portable|Classic|Professional|Eco-Friendly|Non-Stick|Magnetic").split("|")
NOUNS = ("Gel Pens|Stapler|Notebook|Desk Organizer|Label Maker|Paper Shredder|File Folders|Sticky Notes|"
         "Wireless Mouse|Keyboard|Water Bottle|Skillet|Blender|Electric Toothbrush|Backpack|Desk Lamp|"
         "Binder Clips|Highlighters|Calculator|Whiteboard").split("|")
DETAILS = ("Black|Blue|Assorted Colors|12 Count|24 Pack|0.5 mm|Letter Size|A4|Large|Small|2 Pack|"
           "with USB-C|for Home and Office|32 oz|10 inch|Refillable").split("|")
WORDS = tuple("great works fine love it cheap broke after a week perfect for my desk as described would buy again".split())
HEX = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def power_law(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """``size`` draws of 0..n-1 with P(i) proportional to (i + 1) ** -exponent (inverse CDF of the continuous law)."""
    u = rng.random(size)
    a = 1.0 - exponent
    x = ((n + 1.0) ** a - 1.0) * u + 1.0
    return np.minimum((x ** (1.0 / a)).astype(np.int64) - 1, n - 1)


# ---------------------------------------------------------------------------------- vectorised JSON lines
# The lines are built with pyarrow's string kernels from numpy draws, 10^6 at a time: byte for byte what json.dumps
# of each record wrote before (same seed, same draws in the same order), about 10x faster.
def hex_ids(prefix: str, values: np.ndarray, width: int, block: int = 1_000_000) -> pa.Array:
    """``f"{prefix}{v:0{width}X}"`` of each non-negative int64 ``v``, built in numpy (no Python string per id)."""
    lead = prefix.encode() + b"0" * max(width - 16, 0)
    shifts = (4 * np.arange(15, -1, -1)).astype(np.uint64)
    arrays = []
    for start in range(0, len(values), block):
        part = values[start : start + block]
        nibbles = (part.astype(np.uint64)[:, None] >> shifts) & np.uint64(15)  # [b, 16]
        digits = np.maximum(np.where(part == 0, 1, 16 - np.argmax(nibbles != 0, axis=1)), width)  # written digits
        chars = np.concatenate([np.tile(np.frombuffer(lead, np.uint8), (len(part), 1)), HEX[nibbles]], axis=1)
        keep = np.ones(chars.shape, dtype=bool)
        keep[:, len(lead) :] = np.arange(16) >= 16 - np.minimum(digits, 16)[:, None]
        offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
        arrays.append(pa.LargeStringArray.from_buffers(len(part), pa.py_buffer(offsets), pa.py_buffer(chars[keep])))
    return pa.concat_arrays(arrays)


def words(table: Sequence[str], index: np.ndarray) -> pa.Array:
    """``table[i]`` for each ``i`` of ``index``."""
    return pc.take(pa.array(table, pa.large_string()), pa.array(index))


def joined(*parts, separator: str = "") -> pa.Array:
    """The row-wise concatenation of string arrays and constants."""
    return pc.binary_join_element_wise(*map(large, parts), large(separator))


def large(part):
    """A constant as a large string scalar (arrays of ids and words are large strings)."""
    return pa.scalar(part, pa.large_string()) if isinstance(part, str) else part


def write_lines(handle, lines: pa.Array) -> None:
    """Write a string array's values back to back (each value is a line with its newline)."""
    lines = lines.cast(pa.large_string())
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset : lines.offset + len(lines) + 1]
    handle.write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])


def review_lines(shapes: tuple[str, ...], user: pa.Array, item: pa.Array, stamps: np.ndarray, ratings: np.ndarray,
                 picks: np.ndarray) -> dict[str, pa.Array]:
    """The lines of one chunk of reviews in each of ``shapes`` (2023, 2018)."""
    text = joined(*(words(WORDS, picks[:, k]) for k in range(picks.shape[1])), separator=" ")
    title = pc.utf8_slice_codeunits(text, 0, 20)
    rating = words(tuple(f"{r:.1f}" for r in range(6)), ratings)
    lines = {}
    if "2023" in shapes:
        lines["2023"] = joined(
            '{"rating": ', rating, ', "title": "', title, '", "text": "', text, '", "images": [], "asin": "', item,
            '", "parent_asin": "', item, '", "user_id": "', user, '", "timestamp": ',
            pc.cast(pa.array(stamps), pa.large_string()), ', "helpful_vote": ',
            words(tuple(map(str, range(len(WORDS)))), picks[:, 0]), ', "verified_purchase": true}\n')
    if "2018" in shapes:
        lines["2018"] = joined(
            '{"overall": ', rating, ', "verified": true, "reviewTime": "01 1, 2018", "reviewerID": "', user,
            '", "asin": "', item, '", "reviewText": "', text, '", "summary": "', title, '", "unixReviewTime": ',
            pc.cast(pa.array(stamps // 1000), pa.large_string()), "}\n")
    return lines


def meta_lines(shapes: tuple[str, ...], asin: pa.Array, draws: np.ndarray, empty: np.ndarray) -> dict[str, pa.Array]:
    """The metadata lines of products ``asin`` in each of ``shapes``: titles "Brand Adjective Noun, Detail, Model
    123" from ``draws [n, 5]`` (a few repeat), empty where ``empty`` (about 0.1 %, as in the dumps; the brand too)."""
    brand = words(BRANDS, draws[:, 0])
    title = joined(brand, " ", words(ADJECTIVES, draws[:, 1]), " ", words(NOUNS, draws[:, 2]), ", ",
                   words(DETAILS, draws[:, 3]), ", Model ", pc.cast(pa.array(draws[:, 4]), pa.large_string()))
    title, brand = (pc.if_else(pa.array(empty), large(""), column) for column in (title, brand))
    lines = {}
    if "2023" in shapes:
        lines["2023"] = joined(
            '{"main_category": "Office Products", "title": "', title, '", "average_rating": 4.5, "rating_number": 10, '
            '"features": ["Durable", "Easy to use"], "description": [], "price": 9.99, "images": [], "videos": [], '
            '"store": "', brand, '", "categories": [], "details": {"Brand": "', brand, '"}, "parent_asin": "', asin,
            '", "bought_together": null}\n')
    if "2018" in shapes:
        lines["2018"] = joined('{"category": ["Office Products"], "description": [], "title": "', title, '", "brand": "',
                               brand, '", "asin": "', asin, '", "price": "$9.99"}\n')
    return lines


def generate(folder: Path, n: int, shapes: tuple[str, ...] = ("2023", "2018"), seed: int = 0,
             chunk: int = 1_000_000, gz: bool = False) -> dict[str, Path]:
    """Write reviews and meta in ``shapes`` (2023, 2018) for ``n`` interactions, gzipped (level 1) with ``gz``;
    returns their paths. The draws do not depend on the shapes: the same seed gives the same log in each."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".jsonl.gz" if gz else ".jsonl"
    paths = {f"{kind}{shape}": folder / f"{kind}{shape}{suffix}" for kind in ("reviews", "meta") for shape in shapes}
    if all((folder / f"complete{shape}{suffix}").exists() for shape in shapes):  # generated before (--keep)
        return paths
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n // 6, 10), max(n // 15, 10)
    user_ids = hex_ids("A", rng.integers(0, 2**62, n_users), 27)
    item_ids = hex_ids("B0", rng.integers(0, 2**40, n_items), 8)
    handles = {name: gzip.open(path, "wb", compresslevel=1) if gz else path.open("wb") for name, path in paths.items()}
    try:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            users, items = power_law(rng, n_users, m, 1.1), power_law(rng, n_items, m, 1.05)
            stamps = rng.integers(946_684_800_000, 1_694_000_000_000, m)
            ratings = rng.integers(1, 6, m)
            picks = rng.integers(0, len(WORDS), (m, 6))
            order = pa.array(np.repeat(np.arange(m), 1 + (rng.random(m) < 0.001)))  # a few reviews repeat verbatim
            lines = review_lines(shapes, pc.take(user_ids, pa.array(users)), pc.take(item_ids, pa.array(items)),
                                 stamps, ratings, picks)
            for shape, shaped in lines.items():
                write_lines(handles[f"reviews{shape}"], pc.take(shaped, order))
        draws = np.stack([rng.integers(0, len(w), n_items) for w in (BRANDS, ADJECTIVES, NOUNS, DETAILS)]
                         + [rng.integers(100, 100_000, n_items)], axis=1)  # [items, 5]
        empty = rng.random(n_items) < 0.001
        for start in range(0, n_items, chunk):
            end = start + chunk
            for shape, shaped in meta_lines(shapes, item_ids[start:end], draws[start:end], empty[start:end]).items():
                write_lines(handles[f"meta{shape}"], shaped)
    finally:
        for handle in handles.values():
            handle.close()
    for shape in shapes:
        (folder / f"complete{shape}{suffix}").touch()
    return paths


# ---------------------------------------------------------------------------------- one measurement (child)
def measure(path: str, reviews: str, meta: str, fmt: str, out: str) -> None:
    """Run in a child process: prepare ``reviews`` + ``meta`` into ``out``; print one JSON line."""
    import warnings

    start, cpu_start = time.perf_counter(), time.process_time()  # CPU: all threads of this process
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path == "old":
            from bearrec.data.readers import read_amazon

            read_amazon(reviews, meta).save(out)
        else:
            from bearrec.data.config import PrepareConfig
            from bearrec.data.prepare import prepare_folder

            prepare_folder(PrepareConfig(fmt, (reviews, meta)).validated(), out)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    meta_json = json.loads((Path(out) / "dataset.json").read_text())
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_gb": peak_rss_gb(), "summary": meta_json["summary"],
                      "after_k_core": meta_json["source"]["interactions_after_k_core"]}))


def run_child(path: str, reviews: Path, meta: Path, fmt: str, out: Path, old_tree: Path | None) -> dict:
    """One measurement in a fresh process (this repository's bearrec, or the old tree's), with the machine's load
    average sampled every 5 s while it runs."""
    env = {**os.environ, "PYTHONPATH": str(old_tree if path == "old" else REPO)}
    command = [sys.executable, __file__, "--measure", path, str(reviews), str(meta), fmt, str(out)]
    loads, done_event = [], threading.Event()

    def sample() -> None:
        while not done_event.wait(5):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    done_event.set()
    sampler.join()
    shutil.rmtree(out, ignore_errors=True)
    loads = loads or [os.getloadavg()[0]]
    load = {"load_mean": sum(loads) / len(loads), "load_max": max(loads)}
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["killed"])[-1][:200], **load}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), **load}


RUNS = {"new-2023": ("new", "amazon2023", "2023"), "new-2018": ("new", "amazon", "2018"), "old": ("old", "amazon", "2018")}


def runs_of(n: int, paths: dict[str, Path], args: argparse.Namespace) -> list[tuple[str, str, Path, Path]]:
    """(path, format, reviews, meta) of each measurement of ``--runs`` at size ``n`` (the old path up to
    ``--old-up-to``; the 2018 shape where it was generated)."""
    runs = []
    for name in args.runs:
        path, fmt, shape = RUNS[name]
        if f"reviews{shape}" in paths and (path == "new" or n <= args.old_up_to):
            runs.append((path, fmt, paths[f"reviews{shape}"], paths[f"meta{shape}"]))
    return runs


def print_table(rows: list[dict]) -> None:
    print("\n| interactions | path | format | wall s | CPU s | peak RSS GB | interactions/s | load avg (mean, max) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        load = f"{r['load_mean']:.1f}, {r['load_max']:.1f}"
        if "error" in r:
            print(f"| {r['n']:,} | {r['path']} | {r['format']} | failed: {r['error']} | | | | {load} |")
        else:
            print(f"| {r['n']:,} | {r['path']} | {r['format']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                  f"{r['peak_rss_gb']:.2f} | {r['n'] / r['seconds']:,.0f} | {load} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--old-up-to", type=int, default=10_000_000, help="largest size the old path is run at")
    parser.add_argument("--shape2018-up-to", type=int, default=None,
                        help="largest size the 2018-shaped copy is generated (and prepared by the new path) at "
                             "[default: --old-up-to]; above, only the amazon2023 files")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS),
                        help="the measurements to make at each size, in this order")
    parser.add_argument("--gzip", action="store_true", help="generate .jsonl.gz files (gzip level 1)")
    parser.add_argument("--old-ref", default=OLD_REF)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--measure", nargs=5, metavar=("PATH", "REVIEWS", "META", "FORMAT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(*args.measure)
    shape2018_up_to = args.old_up_to if args.shape2018_up_to is None else max(args.shape2018_up_to, args.old_up_to)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    old_tree = work / "old-tree"
    if args.old_up_to and not old_tree.exists():
        old_tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old_ref, "bearrec"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
    rows = []
    try:
        for n in args.sizes:
            start = time.perf_counter()
            paths = generate(work / f"n{n}", n, ("2023", "2018") if n <= shape2018_up_to else ("2023",), gz=args.gzip)
            size_gb = paths["reviews2023"].stat().st_size / 2**30
            print(f"# {n:,} interactions generated in {time.perf_counter() - start:.0f} s "
                  f"(2023 reviews {size_gb:.2f} GB)", flush=True)
            for path, fmt, reviews, meta in runs_of(n, paths, args):
                result = run_child(path, reviews, meta, fmt, work / "out", old_tree)
                result.update(n=n, path=path, format=fmt)
                rows.append(result)
                print(json.dumps(result), flush=True)
            if not args.keep:
                shutil.rmtree(work / f"n{n}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)


if __name__ == "__main__":
    main()
