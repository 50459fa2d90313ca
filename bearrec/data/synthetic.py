"""A synthetic catalog and user histories, deterministic from a seed, with a knob for how much beam search hurts.

Titles are ``"<Brand> <Noun> <Series>"``; the noun is the item's category. Two kinds of item:

* *niche* items start with a word of their own (a made-up brand), so their first token carries only
  their own probability;
* *mainstream* items start with one of a dozen common brands, so a common first token collects the
  probability of every item it starts.

A user lives in one home category. The next item, given the visible history window (the last
``history_len`` items, exactly what a model sees), is drawn from a mixture:

* *personal* items, total probability ``p_successor``: the next ``personal_items`` niche items on a fixed
  ring of the home category's niche items, after the place of the most recent home item of the window
  (uniform among them; a mainstream item has a fixed random place on the ring; without a home item in the
  window this mass goes to the spread part);
* the *spread* part: a popularity-weighted (Zipf) mainstream item of the home category (any home item
  while the category has no mainstream item);
* with probability ``p_other_category``: a popularity-weighted item of a random category;

never the last item again (its probability is set to 0 and the rest renormalised).

``pruning_pressure`` (π in [0, 1]) is the knob: it sets how strongly titles share first tokens and how
the preference mass spreads over many similar items. With π = 0 every title starts with its own word and
the personal item takes half of the mass: a beam of width B ranks first tokens exactly as it ranks items,
and pruning is rare. As π grows, mainstream items take over the catalog (a share of ``0.75 π``), the
personal mass shrinks and spreads over more niche items (``p_successor = 0.16 + 0.34 (1 - π)^2``,
``personal_items = 1 + round(5 π)``, halves rounded up) and popularity flattens (Zipf exponent
``0.8 (1 - π)``). Then a
user's most probable items are niche items of a few percent each, while each common brand collects more
than that from many mainstream items of under one percent: the niche items are the top-K positives, and
beam search prunes them at the first token. That is the paper's pathology (Figure 1, PR@K up to 88 %).
:func:`oracle_pruning` measures it on the generator's own distribution, with no model.

Splits are leave-one-out per user (as the ``office`` data): last item test, second-to-last valid,
every earlier position a training target, each with up to ``history_len`` previous items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bearrec.checks import MAX_SEED, check
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
    num_users: int = 800
    min_sequence: int = 6  # interactions per user, inclusive range
    max_sequence: int = 10
    history_len: int = 5
    pruning_pressure: float = 0.9  # π: shared first tokens and spread preferences (module docstring)
    p_successor: float | None = None  # total probability of the personal items (None: from the pressure)
    p_other_category: float = 0.1  # chance of an item of a random category

    def validate(self, section: str = "synthetic") -> None:
        # numpy's Generator takes any entropy >= 0, but the same --seed also seeds RQ-KMeans (scikit-learn,
        # numpy's RandomState) and, in the quickstart, torch: the range all of them take.
        check(isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= MAX_SEED, section,
              "seed", f"an integer in [0, {MAX_SEED}] (--seed)", self.seed)
        check(self.num_users >= 1, section, "num_users", "at least 1 (--users)", self.num_users)
        check(1 <= self.num_categories <= len(_NOUNS), section, "num_categories", f"in [1, {len(_NOUNS)}]",
              self.num_categories)
        check(self.items_per_category >= 2, section, "items_per_category", "at least 2", self.items_per_category)
        check(3 <= self.min_sequence <= self.max_sequence, section, "min_sequence",
              "at least 3 (a train, a valid and a test target) and at most max_sequence", self.min_sequence)
        check(self.history_len >= 1, section, "history_len", "at least 1", self.history_len)
        check(0 <= self.pruning_pressure <= 1, section, "pruning_pressure", "in [0, 1] (--pruning-pressure)",
              self.pruning_pressure)
        for name in ("p_successor", "p_other_category"):
            value = getattr(self, name)
            check(value is None or 0 <= value <= 1, section, name, "in [0, 1]", value)
        check(self.successor_mass + self.p_other_category <= 1, section, "p_successor",
              "at most 1 - p_other_category", self.successor_mass)

    # What pruning_pressure sets (module docstring).
    @property
    def mainstream_share(self) -> float:
        return 0.75 * self.pruning_pressure

    @property
    def successor_mass(self) -> float:
        return 0.16 + 0.34 * (1 - self.pruning_pressure) ** 2 if self.p_successor is None else self.p_successor

    @property
    def personal_items(self) -> int:
        return 1 + int(0.5 + 5 * self.pruning_pressure)

    @property
    def zipf_exponent(self) -> float:
        return 0.8 * (1 - self.pruning_pressure)


class _World:
    """The catalog and the fixed structures (rings, popularity) that users' choices are drawn from."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator):
        self.cfg = cfg
        titles, self.category, self.niche = [], [], []
        seen: set[str] = set()
        rare_words: set[str] = set()
        for c in range(cfg.num_categories):
            # The niche/mainstream split of a category is exact (not sampled), at least one niche item.
            mainstream = min(round(cfg.mainstream_share * cfg.items_per_category), cfg.items_per_category - 1)
            kinds = rng.permutation([False] * mainstream + [True] * (cfg.items_per_category - mainstream))
            for niche in kinds:
                while True:
                    brand = _rare_word(rng, rare_words) if niche else _COMMON_BRANDS[rng.integers(len(_COMMON_BRANDS))]
                    title = f"{brand} {_NOUNS[c]} {_SERIES[rng.integers(len(_SERIES))]}"
                    if title not in seen:
                        break
                seen.add(title)
                titles.append(title)
                self.category.append(c)
                self.niche.append(bool(niche))
        self.titles = titles
        self.category = np.asarray(self.category)
        self.niche = np.asarray(self.niche)
        n = len(titles)
        self.members = [np.flatnonzero(self.category == c) for c in range(cfg.num_categories)]
        # Ring of each category's niche items; position of each niche item on its ring.
        self.rings = [rng.permutation(m[self.niche[m]]) for m in self.members]
        self.ring_pos = np.zeros(n, dtype=np.int64)  # a mainstream item sits at a random place of its ring
        for m, ring in zip(self.members, self.rings):
            self.ring_pos[m] = rng.integers(len(ring), size=len(m))
            self.ring_pos[ring] = np.arange(len(ring))
        # Popularity of the whole category (first items, other categories) and of its spread pool.
        self.popularity = np.zeros(n)
        self.spread = []
        for m in self.members:
            self.popularity[m] = _zipf(len(m), cfg.zipf_exponent, rng)
            pool = m[~self.niche[m]] if (~self.niche[m]).any() else m
            weights = np.zeros(n)
            weights[pool] = _zipf(len(pool), cfg.zipf_exponent, rng)
            self.spread.append(weights)
        self.other = self.popularity / cfg.num_categories  # a random category, then a popular item of it

    def next_distribution(self, window: list[int], home: int) -> np.ndarray:
        """P(next item | the visible history window, home category): ``[items]``, sums to 1."""
        cfg = self.cfg
        p = cfg.p_other_category * self.other
        anchor = next((i for i in reversed(window) if self.category[i] == home), None)
        personal = 0.0
        if anchor is not None:
            ring = self.rings[home]
            count = min(cfg.personal_items, max(len(ring) - 1, 1))
            chosen = ring[(self.ring_pos[anchor] + 1 + np.arange(count)) % len(ring)]
            personal = cfg.successor_mass
            np.add.at(p, chosen, personal / count)
        p = p + (1 - cfg.p_other_category - personal) * self.spread[home]
        if window:
            p[window[-1]] = 0.0  # never the same item twice in a row
        return p / p.sum()


def generate_synthetic(config: SyntheticConfig | None = None) -> RecDataset:
    """Generate a :class:`RecDataset` from ``config`` (same seed, same data)."""
    return _generate(config or SyntheticConfig())[0]


def _generate(cfg: SyntheticConfig) -> tuple[RecDataset, _World, dict[str, list[int]]]:
    """The dataset, the world it was drawn from, and each split row's home category."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    world = _World(cfg, rng)
    items = pd.DataFrame({"item_id": [f"i{k:05d}" for k in range(len(world.titles))], "title": world.titles})
    ids = items["item_id"].to_numpy()
    rows: dict[str, list] = {"train": [], "valid": [], "test": []}
    homes: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    for u in range(cfg.num_users):
        home = int(rng.integers(cfg.num_categories))
        length = int(rng.integers(cfg.min_sequence, cfg.max_sequence + 1))
        seq = [int(rng.choice(world.members[home], p=world.popularity[world.members[home]]))]
        while len(seq) < length:
            p = world.next_distribution(seq[-cfg.history_len:], home)
            seq.append(int(rng.choice(len(p), p=p)))
        user = f"u{u:05d}"
        for pos in range(1, len(seq)):
            split = "test" if pos == len(seq) - 1 else "valid" if pos == len(seq) - 2 else "train"
            rows[split].append((user, list(ids[seq[max(0, pos - cfg.history_len):pos]]), ids[seq[pos]]))
            homes[split].append(home)
    splits = {k: pd.DataFrame(v, columns=["user_id", "history", "target"]) for k, v in rows.items()}
    meta = {"source": {"format": "synthetic", **vars(cfg), "mainstream_share": cfg.mainstream_share,
                       "successor_mass": cfg.successor_mass, "personal_items": cfg.personal_items,
                       "zipf_exponent": cfg.zipf_exponent}}
    return RecDataset(items=items, splits=splits, domain="products", meta=meta), world, homes


def oracle_pruning(config: SyntheticConfig | None = None, split: str = "test", beam_width: int = 10,
                   ks: tuple[int, ...] = (5, 10)) -> dict:
    """PR@K of a model that knows the generator's distribution exactly, decoded word by word.

    For every example of ``split``, the true next-item distribution (:meth:`_World.next_distribution`) is
    put on a trie of title words; beam search of width ``beam_width`` keeps the B most probable prefixes at
    each step (a prefix's probability is the sum over the items it starts, which is what step scores
    telescope to), and a finished title leaves the beam. Returns ``PR@K`` (pruned share of the positives
    that are in the top K by probability), those counts, and the oracle's NDCG@10 with and without beam
    search. Words stand in for tokens here: a tokenizer that splits a niche word into common pieces only
    adds shared prefixes.
    """
    dataset, world, homes = _generate(config or SyntheticConfig())
    words = [tuple(t.split()) + ("</s>",) for t in world.titles]
    index = {item_id: i for i, item_id in enumerate(dataset.items["item_id"])}
    counts = {f"top{k}_positives": 0 for k in ks} | {f"pruned@{k}": 0 for k in ks}
    ndcg_beam = ndcg_exact = 0.0
    frame = dataset.splits[split]
    for history, target, home in zip(frame["history"], frame["target"], homes[split]):
        p = world.next_distribution([index[h] for h in history], home)
        t = index[target]
        rank = int((p > p[t]).sum()) + ((p == p[t]).sum() + 1) / 2  # mid-rank among ties
        found = _word_beam_search(p, words, beam_width)
        for k in ks:
            if rank <= k:
                counts[f"top{k}_positives"] += 1
                counts[f"pruned@{k}"] += t not in found
        if rank <= 10:
            ndcg_exact += 1 / math.log2(rank + 1)
        if t in found[:10]:
            ndcg_beam += 1 / math.log2(found.index(t) + 2)
    users = len(frame)
    out = {"users": users, "pruning_pressure": world.cfg.pruning_pressure, "beam_width": beam_width, **counts,
           "NDCG@10": ndcg_beam / users, "exact_NDCG@10": ndcg_exact / users}
    for k in ks:
        positives = counts[f"top{k}_positives"]
        out[f"PR@{k}"] = counts[f"pruned@{k}"] / positives if positives else math.nan
    return out


def _word_beam_search(p: np.ndarray, words: list[tuple[str, ...]], beam_width: int) -> list[int]:
    """Items found by beam search over title words (each ending in ``"</s>"``) under the exact item
    distribution ``p``, best first. Every step keeps the ``beam_width`` most probable extensions of the live
    prefixes; an extension by ``"</s>"`` is a finished title, which takes its slot and leaves the beam."""
    item_of = {w: i for i, w in enumerate(words)}
    candidates = np.flatnonzero(p > 0)
    beams: set[tuple[str, ...]] = {()}
    finished: list[tuple[float, int]] = []
    depth = 0
    while beams:
        mass: dict[tuple[str, ...], float] = {}
        for i in candidates:
            if words[i][:depth] in beams:
                prefix = words[i][: depth + 1]
                mass[prefix] = mass.get(prefix, 0.0) + p[i]
        kept = sorted(mass, key=mass.__getitem__, reverse=True)[:beam_width]
        finished += [(mass[w], item_of[w]) for w in kept if w[-1] == "</s>"]
        beams = {w for w in kept if w[-1] != "</s>"}
        depth += 1
    return [i for _, i in sorted(finished, reverse=True)]


def _rare_word(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        size = 2 if len(used) < len(_SYLLABLES) ** 2 // 2 else 3  # 3 syllables once 2 grow scarce
        word = "".join(_SYLLABLES[i] for i in rng.integers(len(_SYLLABLES), size=size)).capitalize()
        if word not in used:
            used.add(word)
            return word


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    weights = weights[rng.permutation(n)]
    return weights / weights.sum()
