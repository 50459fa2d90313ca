"""Recommendations for users' histories from a trained run: what `bearrec recommend` prints and `bearrec serve`
answers, for one history or a batch of them.

A :class:`Recommender` holds a loaded run (model, item space: tokenizer, catalog trie and prompt encoder, dataset, config and,
for the latent decoder, the item memory). It resolves history entries (item ids or titles, after the same
normalisation as ``prepare``) to catalog indices, searches the catalog, and decodes a batch of
:class:`Query` objects with one of the three decoders of :func:`bearrec.decoding.decode`, set up as the run's
``decoding`` section says unless :class:`RecommenderSettings` overrides it:

* ``beam``: trie-constrained beam search of width B (``settings.beam_width``), the paper's decoding;
* ``exact``: the k most probable items (:func:`~bearrec.decoding.exact_top_k`; nothing pruned);
* ``latent``: L2D latent-space matching (:mod:`bearrec.decoding.latent`), the item memory built once per run
  and kept in the run folder as ``latent_memory.safetensors`` (a read-only run folder is served all the same:
  the memory is built at each start, with a warning).

With ``exclude_history`` the items of the history are never recommended: the search is widened by the
number of distinct history items (beam width ``B + h``, exact/latent ``k + h``) and they are dropped from
its list, so that k items remain. A query's answer depends only on the query: queries of one batch share a
decoder call when they have the same decoder and search width, and a call decodes exactly what the query
would decode alone (the latent decoder scores users independently, so its queries always share a call).
(``evaluate --exclude-history`` decodes each user the same way.)
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.progress import Progress

from bearrec.checks import check
from bearrec.data.dataset import normalize_title
from bearrec.decoding import DECODERS, decode
from bearrec.decoding.config import DecodingOverrides
from bearrec.decoding.latent import MEMORY_FILE
from bearrec.evaluation.evaluate import timed_item_memory
from bearrec.evaluation.history import search_width, without_history
from bearrec.items.space import ItemSpace
from bearrec.runs import item_space, load_run


@dataclass
class RecommenderSettings:
    """How a :class:`Recommender` decodes: B (``beam_width``; 10 is the paper's), the decoders it offers, and what
    it changes in the run's ``decoding`` section (``overrides``; nothing by default, as ``evaluate``)."""

    beam_width: int = 10  # B of beam search, and the largest k a query may ask
    decoders: tuple[str, ...] | None = None  # decoders to offer (latent builds an item memory); None: the run's
    overrides: DecodingOverrides = field(default_factory=DecodingOverrides)

    def validate(self, section: str = "recommend", flags: dict[str, str] | None = None) -> None:
        """Check every field that is set; ``flags`` names a field's command-line flag in the message."""
        flags = flags or {}

        def rule(name: str, text: str) -> str:
            return f"{text} ({flags[name]})" if name in flags else text

        check(self.beam_width >= 1, section, "beam_width", rule("beam_width", "at least 1"), self.beam_width)
        check(self.decoders is None or (len(self.decoders) > 0 and set(self.decoders) <= set(DECODERS)), section,
              "decoders", rule("decoders", f"one or more of {', '.join(DECODERS)}"), self.decoders)
        self.overrides.validate(section, flags)


@dataclass
class Query:
    """One request: a ``history`` of catalog indices (oldest first, from :meth:`Recommender.resolve`)."""

    history: list[int]
    k: int = 10
    decoder: str = "beam"
    exclude_history: bool = True


@dataclass
class Recommendation:
    """``items`` (catalog indices, best first; fewer than k when the catalog, or for ``latent`` the items
    with a representation, runs out) and their ``scores``: log P(title + EOS) for ``exact``, beam search's
    (length-normalised with a length penalty other than 0) for ``beam``, the latent similarity for ``latent``.
    ``history_used``: the most recent history items the prompt holds; ``certified`` (``exact`` only): False
    when the node budget ran out before the list was proven exact; ``warnings``: what the caller should show."""

    items: list[int]
    scores: list[float]
    history_used: int
    certified: bool | None = None
    warnings: list[str] = field(default_factory=list)


class Recommender:
    """A loaded run, ready to recommend. Build it with :meth:`from_run` (the validated loading path of
    ``evaluate``) or from objects already in memory."""

    def __init__(self, model, space: ItemSpace, dataset, config, settings: RecommenderSettings | None = None,
                 latent_memory: str | os.PathLike | None = None, progress: Progress | None = None):
        """``space``: the run's item space (:func:`~bearrec.runs.item_space`); ``settings`` arrive checked
        (:meth:`RecommenderSettings.validate`). ``latent_memory``: where the latent decoder's item memory is kept
        (loaded when it matches this model and train split, else built and saved there, with a warning where it
        cannot be; None: built in memory only). ``progress``: a ``rich.progress.Progress`` for the memory's
        build."""
        self.settings = settings or RecommenderSettings()
        self.model, self.space, self.dataset, self.config = model, space, dataset, config
        # the run's decoding with the settings' overrides, its scoring the objective's where neither names one
        self.decoding = self.settings.overrides.apply(config.decoding).with_scoring(config.scoring)
        self.decoders = self.settings.decoders or (self.decoding.decoder,)
        self.default_decoder = self.decoding.decoder if self.decoding.decoder in self.decoders else self.decoders[0]
        self.titles = dataset.titles
        self.item_ids = [str(i) for i in dataset.items["item_id"]]
        self._by_title = {t: i for i, t in enumerate(self.titles)}
        self._by_id = {item: i for i, item in enumerate(self.item_ids)}
        self._folded = [t.casefold() for t in self.titles]
        histories = dataset.splits["train"]["history"]
        self.window = max((len(h) for h in histories), default=0) or None  # longest history trained on
        self.memory, self.memory_info = None, {}  # memory_built, memory_seconds, items_without_memory, ...
        if "latent" in self.decoders:
            self.memory = timed_item_memory(model, space.encoder, dataset, latent_memory, 32,
                                         progress or Progress(disable=True), self.memory_info)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                 settings: RecommenderSettings | None = None, progress: Progress | None = None,
                 allow_other_data: bool = False) -> "Recommender":
        """Load a finished run folder through :func:`~bearrec.runs.load_run`, the path ``evaluate`` takes
        (safetensors weights, one clear error for a bad folder, the dataset checked against the one the run was
        trained on; ``data`` with other content than that needs ``allow_other_data``)."""
        (settings or RecommenderSettings()).validate()  # before the model is loaded
        model, tokenizer, dataset, config = load_run(run_dir, data, allow_other_data=allow_other_data)
        space = item_space(tokenizer, dataset, config)
        return cls(model, space, dataset, config, settings, Path(run_dir) / MEMORY_FILE, progress)

    @property
    def scoring(self) -> str:
        """The step scoring of beam and exact decoding (the run's, or the settings' override)."""
        return self.decoding.scoring

    # ------------------------------------------------------------------ the catalog
    def resolve(self, history: list[str]) -> list[int]:
        """Catalog indices of history entries (exact titles after ``prepare``'s normalisation, else item ids);
        a ``ValueError`` names the first entry that is neither, by position."""
        if not history:
            raise ValueError("the history is empty: give at least one item id or title")
        indices = []
        for pos, entry in enumerate(history, 1):
            title = normalize_title(entry)
            if not title:
                raise ValueError(f"history item {pos}: empty")
            index = self._by_title.get(title, self._by_id.get(entry.strip()))
            if index is None:
                raise ValueError(f"history item {pos} ({entry!r}): neither an item id nor a title of the catalog")
            indices.append(index)
        return indices

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Up to ``limit`` catalog indices for a search box: the item with that id, then titles starting with
        ``query``, then titles containing it (case-insensitive, normalised like titles; catalog order within
        each group). An empty query lists the catalog from its start."""
        text = normalize_title(query).casefold()
        exact = self._by_id.get(query.strip())
        found = [] if exact is None else [exact]
        if text:
            found += [i for i, t in enumerate(self._folded) if t.startswith(text) and i != exact]
            found += [i for i, t in enumerate(self._folded) if text in t and not t.startswith(text) and i != exact]
        else:
            found += [i for i in range(len(self.titles)) if i != exact]
        return found[:limit]

    # ------------------------------------------------------------------ decoding
    def check_query(self, query: Query) -> None:
        """A one-line ``ValueError`` for a query this recommender cannot answer."""
        if query.decoder not in self.decoders:
            raise ValueError(f"decoder {query.decoder!r} is not available here; choose one of {', '.join(self.decoders)}")
        if not 1 <= query.k <= self.settings.beam_width:
            raise ValueError(f"k must be between 1 and the beam width {self.settings.beam_width}, got {query.k}")
        if not query.history:
            raise ValueError("the history is empty: give at least one item")

    def width(self, query: Query) -> int:
        """How many items the query's search returns before its history is dropped."""
        seen = set(query.history) if query.exclude_history else set()
        return search_width(self.settings.beam_width if query.decoder == "beam" else query.k, seen, len(self.titles))

    def groups(self, queries: list[Query]) -> dict[tuple[str, int | None], list[int]]:
        """The decoder calls :meth:`recommend` makes for ``queries``: (decoder, search width or None for
        ``latent``, which decodes at the group's widest) -> positions of the queries it decodes."""
        groups = defaultdict(list)
        for n, query in enumerate(queries):
            groups[(query.decoder, None if query.decoder == "latent" else self.width(query))].append(n)
        return dict(groups)

    @torch.inference_mode()
    def recommend(self, queries: list[Query]) -> list[Recommendation]:
        """Answers to ``queries``, in order; queries with the same decoder and search width share one call."""
        for query in queries:
            self.check_query(query)
        answers: list[Recommendation | None] = [None] * len(queries)
        for (decoder, width), members in self.groups(queries).items():
            prompts, used, notes = [], [], []
            for n in members:
                history, note = self._window(queries[n].history)
                prompts.append(history)
                used.append(len(history))
                notes.append(note)
            width = width or max(self.width(queries[n]) for n in members)
            found = decode(self.model, self.space.prompts(prompts), self.space.trie, width,
                           replace(self.decoding, decoder=decoder), self.memory, batch_size=64)
            seen = [set(queries[n].history) if queries[n].exclude_history else set() for n in members]
            items, scores = without_history(found.item_ids, found.scores, seen, width)
            certified = getattr(found, "certified", None)
            for row, n in enumerate(members):
                ranked = [(i, s) for i, s in zip(items[row].tolist(), scores[row].tolist())
                          if i >= 0 and s > float("-inf")][: queries[n].k]
                answers[n] = Recommendation([i for i, _ in ranked], [s for _, s in ranked], used[row],
                                            None if certified is None else bool(certified[row]), notes[row])
        return answers

    def _window(self, history: list[int]) -> tuple[list[int], list[str]]:
        """The most recent ``window`` items of a history (the longest the model was trained on), and a
        warning when older ones were left out of the prompt."""
        if self.window is None or len(history) <= self.window:
            return history, []
        return history[-self.window :], [f"the history has {len(history)} items; the model was trained on at most "
                                         f"{self.window}: using the {self.window} most recent"]

    def describe_scores(self, decoder: str) -> str:
        """What a score means for ``decoder``, in a few words (``log p``: of the title + EOS, ``scoring``'s)."""
        if decoder == "latent":
            return f"{self.decoding.latent_similarity} similarity"
        if decoder == "exact" or self.decoding.length_penalty == 0:
            return "log p"
        return f"log p / length^{self.decoding.length_penalty:g}"
