"""`bearrec prepare` at scale: the out-of-core (duckdb) pipeline against the in-memory one it replaced.

Usage:
    nice -n 10 python benchmarks/bench_prepare.py --sizes 1000000 10000000 --old-up-to 10000000
    nice -n 10 python benchmarks/bench_prepare.py --sizes 100000000 --old-up-to 0 --keep-going

Generates Amazon-Reviews-2023-shaped logs (``user_id``, ``parent_asin``, ``timestamp`` in ms, with the
rating, review title, text and the other fields of the dump; meta lines with ``parent_asin``, ``title`` and
the rest) with power-law users and items and product-like titles, and the same log in the 2018 shape
(``reviewerID``, ``asin``, ``unixReviewTime`` in seconds) for the old path, which reads only that. Each
measurement runs in a fresh process and reports wall time, peak RSS (VmHWM) and interactions per second:

* ``old``: ``read_amazon`` + ``RecDataset.save`` of the commit given by ``--old-ref`` (default: the last
  commit with the pandas pipeline), extracted with ``git archive`` into a scratch folder;
* ``new amazon``: the same 2018-shaped files through today's pipeline;
* ``new amazon2023``: the 2023-shaped files through today's pipeline.

The old path is skipped above ``--old-up-to`` interactions (it needs about 1.1 GB per 10^6). Generated files
go to ``--work`` (default a scratch folder under /tmp) and are removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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
WORDS = "great works fine love it cheap broke after a week perfect for my desk as described would buy again".split()


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


def titles(rng: np.random.Generator, n: int) -> list[str]:
    """Product-like titles ("Brand Adjective Noun, Detail"); a few repeat and about 0.1 % are empty, as in the dumps."""
    b, a, o, d = (rng.integers(0, len(w), n) for w in (BRANDS, ADJECTIVES, NOUNS, DETAILS))
    model = rng.integers(100, 100_000, n)
    out = [f"{BRANDS[i]} {ADJECTIVES[j]} {NOUNS[k]}, {DETAILS[m]}, Model {x}" for i, j, k, m, x in zip(b, a, o, d, model)]
    for i in np.flatnonzero(rng.random(n) < 0.001):
        out[i] = ""
    return out


def generate(folder: Path, n: int, seed: int = 0, chunk: int = 1_000_000) -> dict[str, Path]:
    """Write reviews and meta in the 2023 and 2018 shapes for ``n`` interactions; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.jsonl" for name in ("reviews2023", "meta2023", "reviews2018", "meta2018")}
    if (folder / "complete").exists():  # generated before (--keep): the same seed gives the same files
        return paths
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n // 6, 10), max(n // 15, 10)
    user_ids = [f"A{h:027X}" for h in rng.integers(0, 2**62, n_users)]
    item_ids = [f"B0{h:08X}" for h in rng.integers(0, 2**40, n_items)]
    with paths["reviews2023"].open("w") as r23, paths["reviews2018"].open("w") as r18:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            users, items = power_law(rng, n_users, m, 1.1), power_law(rng, n_items, m, 1.05)
            stamps = rng.integers(946_684_800_000, 1_694_000_000_000, m)
            ratings = rng.integers(1, 6, m)
            words = rng.integers(0, len(WORDS), (m, 6))
            dup = rng.random(m) < 0.001  # the dumps repeat a few reviews verbatim
            lines23, lines18 = [], []
            for u, i, t, r, w, d in zip(users, items, stamps, ratings, words, dup):
                text = " ".join(WORDS[k] for k in w)
                lines23.append(json.dumps({"rating": float(r), "title": text[:20], "text": text, "images": [],
                                           "asin": item_ids[i], "parent_asin": item_ids[i], "user_id": user_ids[u],
                                           "timestamp": int(t), "helpful_vote": int(w[0]), "verified_purchase": True})
                               + "\n")
                lines18.append(json.dumps({"overall": float(r), "verified": True, "reviewTime": "01 1, 2018",
                                           "reviewerID": user_ids[u], "asin": item_ids[i], "reviewText": text,
                                           "summary": text[:20], "unixReviewTime": int(t // 1000)}) + "\n")
                if d:
                    lines23.append(lines23[-1])
                    lines18.append(lines18[-1])
            r23.writelines(lines23)
            r18.writelines(lines18)
    names = titles(rng, n_items)
    with paths["meta2023"].open("w") as m23, paths["meta2018"].open("w") as m18:
        for asin, title in zip(item_ids, names):
            m23.write(json.dumps({"main_category": "Office Products", "title": title, "average_rating": 4.5,
                                  "rating_number": 10, "features": ["Durable", "Easy to use"], "description": [],
                                  "price": 9.99, "images": [], "videos": [], "store": title.split(" ")[0],
                                  "categories": [], "details": {"Brand": title.split(" ")[0]},
                                  "parent_asin": asin, "bought_together": None}) + "\n")
            m18.write(json.dumps({"category": ["Office Products"], "description": [], "title": title,
                                  "brand": title.split(" ")[0], "asin": asin, "price": "$9.99"}) + "\n")
    (folder / "complete").touch()
    return paths


# ---------------------------------------------------------------------------------- one measurement (child)
def measure(path: str, reviews: str, meta: str, fmt: str, out: str) -> None:
    """Run in a child process: prepare ``reviews`` + ``meta`` into ``out``; print one JSON line."""
    import warnings

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path == "old":
            from bearrec.data.readers import read_amazon

            read_amazon(reviews, meta).save(out)
        else:
            from bearrec.data.config import PrepareConfig
            from bearrec.data.prepare import prepare_folder

            prepare_folder(PrepareConfig(fmt, (reviews, meta)).validated(), out)
    seconds = time.perf_counter() - start
    meta_json = json.loads((Path(out) / "dataset.json").read_text())
    print(json.dumps({"seconds": seconds, "peak_rss_gb": peak_rss_gb(), "summary": meta_json["summary"],
                      "after_k_core": meta_json["source"]["interactions_after_k_core"]}))


def run_child(path: str, reviews: Path, meta: Path, fmt: str, out: Path, old_tree: Path | None) -> dict:
    env = dict(os.environ)
    if path == "old":
        env["PYTHONPATH"] = str(old_tree)
    command = [sys.executable, __file__, "--measure", path, str(reviews), str(meta), fmt, str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["killed"])[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--old-up-to", type=int, default=10_000_000, help="largest size the old path is run at")
    parser.add_argument("--old-ref", default=OLD_REF)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--measure", nargs=5, metavar=("PATH", "REVIEWS", "META", "FORMAT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(*args.measure)

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
            paths = generate(work / f"n{n}", n)
            size_gb = paths["reviews2023"].stat().st_size / 2**30
            print(f"# {n:,} interactions generated in {time.perf_counter() - start:.0f} s "
                  f"(2023 reviews {size_gb:.2f} GB)", flush=True)
            runs = [("new", "amazon2023", paths["reviews2023"], paths["meta2023"]),
                    ("new", "amazon", paths["reviews2018"], paths["meta2018"])]
            if n <= args.old_up_to:
                runs.append(("old", "amazon", paths["reviews2018"], paths["meta2018"]))
            for path, fmt, reviews, meta in runs:
                result = run_child(path, reviews, meta, fmt, work / "out", old_tree)
                result.update(n=n, path=path, format=fmt)
                rows.append(result)
                print(json.dumps(result), flush=True)
            if not args.keep:
                shutil.rmtree(work / f"n{n}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| interactions | path | format | wall s | peak RSS GB | interactions/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['n']:,} | {r['path']} | {r['format']} | failed: {r['error']} | | |")
        else:
            print(f"| {r['n']:,} | {r['path']} | {r['format']} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | "
                  f"{r['n'] / r['seconds']:,.0f} |")


if __name__ == "__main__":
    main()
