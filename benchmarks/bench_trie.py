"""Trie scale benchmark: build the CSR trie (and its lookup tables) for a million synthetic titles.

Usage:
    python benchmarks/bench_trie.py --titles 1000000
Reports seconds to generate, tokenise and build, the trie size, and the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bearrec.items.trie import ItemTrie, tokenize_titles
from bearrec.lm.models import train_tokenizer

WORDS = ("Acme Nova Swift Atlas Summit Orion Vertex Zenith Harbor Classic Stapler Notebook Marker Binder Envelope "
         "Calculator Folder Pencil Eraser Scissors Ruler Clipboard Planner Highlighter Tape Labeler Mini Plus Pro Max "
         "Lite Eco Duo Prime Flex Ultra Basic Neo Slim Grand Smart Pocket Studio Metro Solo Compact Black Blue Red "
         "Green Pack of 12 24 Refill Set Large Small Letter Legal Size Heavy Duty").split()


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build_only(path: Path, eos: int) -> None:
    """Load padded token ids, build the trie and its preorder, spot-check lookups, print time and peak RSS."""
    padded = np.load(path)
    rss_loaded = peak_rss_gb()
    start = time.perf_counter()
    trie = ItemTrie.from_sequences(padded, eos)
    built = time.perf_counter()
    trie.preorder()
    done = time.perf_counter()
    for i in range(0, len(padded), max(1, len(padded) // 20)):
        assert int(trie.node_item[trie.node_of(padded[i][padded[i] >= 0].tolist())]) == i
    print(json.dumps({
        "trie_nodes": trie.num_nodes,
        "mean_tokens_per_title": round(float(trie.lengths.float().mean()), 2),
        "trie_build_s": round(built - start, 2),
        "preorder_s": round(done - built, 2),
        "trie_tables_mb": round(sum(getattr(trie, f).numel() * 8 for f in ItemTrie._TABLES) / 2**20, 1),
        "build_process_peak_rss_gb": round(peak_rss_gb(), 2),
        "rss_after_loading_ids_gb": round(rss_loaded, 2),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--titles", type=int, default=1_000_000)
    parser.add_argument("--build", type=Path, help="internal: build the trie from this .npy and report")
    parser.add_argument("--eos", type=int)
    args = parser.parse_args()
    if args.build:
        build_only(args.build, args.eos)
        return
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    lengths = rng.integers(3, 9, size=args.titles)
    words = rng.integers(len(WORDS), size=(args.titles, 8))
    titles = sorted({" ".join(WORDS[w] for w in row[:n]) + f" #{i}" for i, (row, n) in enumerate(zip(words, lengths))})
    t1 = time.perf_counter()
    tokenizer = train_tokenizer(titles[:20000], vocab_size=4096)
    sequences = tokenize_titles(tokenizer, titles)
    t2 = time.perf_counter()
    width = max(map(len, sequences))
    padded = np.full((len(sequences), width), -1, dtype=np.int32)
    for i, seq in enumerate(sequences):
        padded[i, : len(seq)] = seq
    with tempfile.TemporaryDirectory() as tmp:  # build in a fresh process: its peak memory is the trie's own
        np.save(Path(tmp) / "seqs.npy", padded)
        build = subprocess.run([sys.executable, __file__, "--build", str(Path(tmp) / "seqs.npy"),
                                "--eos", str(tokenizer.eos_token_id)], check=True, capture_output=True, text=True)
    built = json.loads(build.stdout.strip().splitlines()[-1])
    result = {
        "titles": len(titles),
        "generate_s": round(t1 - t0, 2),
        "tokenize_s": round(t2 - t1, 2),
        **built,
        "generate_and_tokenize_peak_rss_gb": round(peak_rss_gb(), 2),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
