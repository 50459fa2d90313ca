"""Trie scale benchmark: build the CSR trie (and its lookup tables) for a million synthetic titles.

Usage:
    python benchmarks/bench_trie.py --titles 1000000
Reports seconds to generate, tokenise and build, the trie size, and the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from bearrec.catalog import ItemTrie, tokenize_titles
from bearrec.models import train_tokenizer

WORDS = ("Acme Nova Swift Atlas Summit Orion Vertex Zenith Harbor Classic Stapler Notebook Marker Binder Envelope "
         "Calculator Folder Pencil Eraser Scissors Ruler Clipboard Planner Highlighter Tape Labeler Mini Plus Pro Max "
         "Lite Eco Duo Prime Flex Ultra Basic Neo Slim Grand Smart Pocket Studio Metro Solo Compact Black Blue Red "
         "Green Pack of 12 24 Refill Set Large Small Letter Legal Size Heavy Duty").split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--titles", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    lengths = rng.integers(3, 9, size=args.titles)
    words = rng.integers(len(WORDS), size=(args.titles, 8))
    titles = sorted({" ".join(WORDS[w] for w in row[:n]) + f" #{i}" for i, (row, n) in enumerate(zip(words, lengths))})
    t1 = time.perf_counter()
    tokenizer = train_tokenizer(titles[:20000], vocab_size=4096)
    sequences = tokenize_titles(tokenizer, titles)
    t2 = time.perf_counter()
    trie = ItemTrie.from_sequences(sequences, tokenizer.eos_token_id)
    t3 = time.perf_counter()
    order = trie.preorder()
    t4 = time.perf_counter()
    for i in range(0, len(sequences), max(1, len(sequences) // 20)):  # spot-check lookups
        assert int(trie.node_item[trie.node_of(sequences[i])]) == i
    result = {
        "titles": len(titles),
        "mean_tokens_per_title": float(trie.lengths.float().mean()),
        "trie_nodes": trie.num_nodes,
        "generate_s": round(t1 - t0, 2),
        "tokenize_s": round(t2 - t1, 2),
        "trie_build_s": round(t3 - t2, 2),
        "preorder_s": round(t4 - t3, 2),
        "trie_tables_mb": round(sum(getattr(trie, f).numel() * 8 for f in ItemTrie._TABLES) / 2**20, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
