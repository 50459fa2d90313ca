"""A synthetic catalog and user histories, deterministic from a seed, built so that beam search hurts.

Why it looks like this:

* Titles are ``"<Brand> <Noun> <Series>"``. Most items share a handful of common brands (the first
  words), a minority have a rare brand of their own. At the first decoding step a common brand
  collects the probability of every item it starts, a rare brand only that of its one item, so beam
  search prunes rare-brand items even when their full title is among the most probable: the
  training-inference gap of the BEAR paper (Figure 1), which shows up as PR@K > 0.
* Users are learnable: each user stays mostly in one category (the noun), and within it walks a
  fixed ring of items: the next item is the ring successor of the last one with probability
  ``p_successor``, otherwise a popularity-weighted (Zipf) item of the category.

Splits are leave-one-out per user (as the ``office`` data): last item test, second-to-last valid,
every earlier position a training target, each with up to ``history_len`` previous items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bearrec.checks import check
from bearrec.data.dataset import RecDataset

_NOUNS = [
    "Stapler", "Notebook", "Marker", "Binder", "Envelope", "Calculator", "Folder", "Pencil",
    "Eraser", "Scissors", "Ruler", "Clipboard", "Planner", "Highlighter", "Tape", "Labeler",
]
_COMMON_BRANDS = [
    "Acme", "Office Pro", "Paper Mate", "Swift", "Nova", "Classic", "Atlas", "Summit", "Orion", "Vertex",
    "Zenith", "Harbor",
]
_SERIES = [
    "Mini", "Plus", "Pro", "Max", "Lite", "Eco", "Duo", "Prime", "Flex", "Ultra", "Basic", "Neo",
    "Slim", "Grand", "Smart", "Pocket", "Studio", "Metro", "Solo", "Compact",
]
_SYLLABLES = ["zor", "vik", "quel", "lan", "bri", "tox", "mar", "quin", "dex", "ul", "fen", "rho", "kai", "sep"]


@dataclass
class SyntheticConfig:
    """Size and structure of the synthetic data (defaults: the quickstart, a few minutes on 2 cores)."""

    seed: int = 0
    num_categories: int = 6
    items_per_category: int = 80
    rare_brand_share: float = 0.35  # share of items whose first word is their own
    num_users: int = 800
    min_sequence: int = 6  # interactions per user, inclusive range
    max_sequence: int = 10
    history_len: int = 5
    p_successor: float = 0.3  # chance that the next item is the ring successor of the last one
    p_other_category: float = 0.1  # chance of a random item from another category
    zipf_exponent: float = 0.8

    def validate(self, section: str = "synthetic") -> None:
        check(self.seed >= 0, section, "seed", "at least 0 (--seed)", self.seed)
        check(self.num_users >= 1, section, "num_users", "at least 1 (--users)", self.num_users)
        check(1 <= self.num_categories <= len(_NOUNS), section, "num_categories", f"in [1, {len(_NOUNS)}]",
              self.num_categories)
        check(self.items_per_category >= 2, section, "items_per_category", "at least 2", self.items_per_category)
        check(3 <= self.min_sequence <= self.max_sequence, section, "min_sequence",
              "at least 3 (a train, a valid and a test target) and at most max_sequence", self.min_sequence)
        check(self.history_len >= 1, section, "history_len", "at least 1", self.history_len)
        for name in ("rare_brand_share", "p_successor", "p_other_category"):
            check(0 <= getattr(self, name) <= 1, section, name, "in [0, 1]", getattr(self, name))
        check(self.zipf_exponent >= 0, section, "zipf_exponent", "at least 0", self.zipf_exponent)


def generate_synthetic(config: SyntheticConfig | None = None) -> RecDataset:
    """Generate a :class:`RecDataset` from ``config`` (same seed, same data)."""
    cfg = config or SyntheticConfig()
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)

    titles: list[str] = []
    category_of: list[int] = []
    seen: set[str] = set()
    rare_words: set[str] = set()
    for c in range(cfg.num_categories):
        for _ in range(cfg.items_per_category):
            while True:
                if rng.random() < cfg.rare_brand_share:
                    brand = _rare_word(rng, rare_words)
                else:
                    brand = _COMMON_BRANDS[rng.integers(len(_COMMON_BRANDS))]
                title = f"{brand} {_NOUNS[c]} {_SERIES[rng.integers(len(_SERIES))]}"
                if title not in seen:
                    break
            seen.add(title)
            titles.append(title)
            category_of.append(c)
    n_items = len(titles)
    items = pd.DataFrame({"item_id": [f"i{k:05d}" for k in range(n_items)], "title": titles})

    # Per category: a random ring order (successor structure) and Zipf popularity.
    members = [np.flatnonzero(np.asarray(category_of) == c) for c in range(cfg.num_categories)]
    rings = [rng.permutation(m) for m in members]
    successor = np.empty(n_items, dtype=np.int64)
    for ring in rings:
        successor[ring] = np.roll(ring, -1)
    popularity = [_zipf(len(m), cfg.zipf_exponent, rng) for m in members]

    rows = {"train": [], "valid": [], "test": []}
    for u in range(cfg.num_users):
        home = int(rng.integers(cfg.num_categories))
        length = int(rng.integers(cfg.min_sequence, cfg.max_sequence + 1))
        seq = [int(rng.choice(members[home], p=popularity[home]))]
        while len(seq) < length:
            r = rng.random()
            if r < cfg.p_other_category:
                other = int(rng.integers(cfg.num_categories))
                nxt = int(rng.choice(members[other], p=popularity[other]))
            elif r < cfg.p_other_category + cfg.p_successor and category_of[seq[-1]] == home:
                nxt = int(successor[seq[-1]])
            else:
                nxt = int(rng.choice(members[home], p=popularity[home]))
            if nxt != seq[-1]:
                seq.append(nxt)
        ids = items["item_id"].to_numpy()[seq]
        user = f"u{u:05d}"
        for pos in range(1, len(ids)):
            split = "test" if pos == len(ids) - 1 else "valid" if pos == len(ids) - 2 else "train"
            history = list(ids[max(0, pos - cfg.history_len) : pos])
            rows[split].append((user, history, ids[pos]))
    splits = {k: pd.DataFrame(v, columns=["user_id", "history", "target"]) for k, v in rows.items()}
    return RecDataset(items=items, splits=splits, domain="products", meta={"source": {"format": "synthetic", **vars(cfg)}})


def _rare_word(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        word = "".join(_SYLLABLES[i] for i in rng.integers(len(_SYLLABLES), size=2)).capitalize()
        if word not in used:
            used.add(word)
            return word


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    weights = weights[rng.permutation(n)]
    return weights / weights.sum()
