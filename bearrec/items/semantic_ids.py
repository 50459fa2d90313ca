"""Items as semantic IDs: a few discrete codes per item (TIGER, APAO), an alternative to titles.

An item's semantic ID is a short list of codes, one per level (``[159, 42, 1, 0]``), usually built by
residual quantisation of a text embedding: level 1 clusters the embeddings, level 2 the residuals
left by level 1's centroids, and so on (RQ-KMeans). They come from a file (``item_id,codes``, codes a
JSON list of ints, as ``../shared/data/office/semantic_ids.csv``) or are built here by RQ-KMeans
(:mod:`bearrec.items.rq_kmeans`, faiss or scikit-learn) over the embeddings of a real text encoder
(:mod:`bearrec.items.embeddings`), as a :class:`~bearrec.items.sid_config.SemanticIdConfig` says.

Items that share every code (5 pairs in the APAO Office file) must still be told apart, since a
generated code sequence has to name one item: as in TIGER, those items get one more level, a
disambiguation code 0, 1, ... in catalog order; every other item keeps its codes. Codes live in the
dataset's ``items.parquet`` (column ``codes``, after disambiguation) and ``dataset.json``
(``semantic_ids``: source, settings, collisions and the quality report of :mod:`bearrec.items.sid_quality`).

To the rest of bearrec an item is then just another token sequence. Every level has its own tokens
(level ``l`` code ``c`` is the token ``<a_c>`` for level 1, ``<b_c>`` for level 2, ...), so the trie over
code sequences (+ EOS) is an ordinary :class:`~bearrec.items.trie.ItemTrie`, and every decoder and
objective works on it unchanged. :func:`code_tokenizer` is a word-level Hugging Face tokenizer over
these tokens (saved and loaded like any other), :func:`code_strings` spells each item's codes as text
(``"<a_159><b_42><c_1><d_0>"``), and the prompt (:class:`CodePrompt`) is the history's codes, oldest
first, with no text: the setting of TIGER and APAO's decoder-only Llama.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from bearrec.data.dataset import DataError, RecDataset
from bearrec.data.parsing import read_csv
from bearrec.items.embeddings import cached_embeddings
from bearrec.items.kmeans import resolve_backend
from bearrec.items.prompts import PromptTemplate
from bearrec.items.rq_kmeans import rq_kmeans
from bearrec.items.sid_config import SemanticIdConfig
from bearrec.items.sid_quality import sid_quality

REPRESENTATIONS = ("titles", "semantic-ids")
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
MAX_LEVELS = 26  # level letters a..z
MAX_CODE = 2**31 - 1  # codes fit int32 (and any tokenizer's ids) after disambiguation adds its small level


# ---------------------------------------------------------------------------------- codes
def read_semantic_ids(path: str | os.PathLike, item_ids: Sequence[str]) -> np.ndarray:
    """Codes ``[items, levels]`` of the catalog ``item_ids`` (in that order) from an ``item_id,codes`` CSV
    (:func:`read_code_rows`). Ids of the file that are not in the catalog are ignored (a catalog may be a
    k-core subset); a catalog item without a row is an error naming the file and the first such id."""
    path = Path(path)
    seen = read_code_rows(path)
    missing = [i for i in item_ids if i not in seen]
    if missing:
        raise DataError(path, f"{len(missing)} catalog item(s) have no codes, first {missing[0]!r}", field="item_id")
    return np.array([seen[i] for i in item_ids], dtype=np.int64)


def read_code_rows(path: str | os.PathLike) -> dict[str, list[int]]:
    """Every row of an ``item_id,codes`` CSV, in file order: item id -> codes.

    ``codes`` is a non-empty JSON list of integers in ``0 .. MAX_CODE`` (2**31 - 1, so that they fit int32),
    the same length on every row; a negative, fractional (``1.5``, ``1.0``), boolean, string or out-of-range
    code is refused, and so is an id given twice. Errors are one line naming the file, row (1-based line
    number, header = row 1) and field.
    """
    path = Path(path)
    frame = read_csv(path, ("item_id", "codes"))
    seen: dict[str, list[int]] = {}
    width = None
    for item_id, raw, line in zip(frame["item_id"], frame["codes"], frame["_line"]):
        try:
            codes = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: a list nested thousands deep
            raise DataError(path, f"not a JSON list of codes: {raw[:40]!r}", row=int(line), field="codes") from None
        if not isinstance(codes, list) or not codes:
            raise DataError(path, f"codes must be a non-empty JSON list of integers in [0, {MAX_CODE}], got "
                            f"{raw[:40]!r}", row=int(line), field="codes")
        bad = [k for k, c in enumerate(codes)
               if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_CODE]
        if bad:
            shown = json.dumps(codes[bad[0]])[:40]  # as the file spells it: 1.5, true, "a", null, 9223372036854775808
            raise DataError(path, f"code {bad[0] + 1} ({shown}) is not an integer in [0, {MAX_CODE}]",
                            row=int(line), field="codes")
        if width is None:
            width = len(codes)
        if len(codes) != width:
            raise DataError(path, f"{len(codes)} codes where the first row has {width}", row=int(line), field="codes")
        if len(codes) >= MAX_LEVELS:
            raise DataError(path, f"{len(codes)} levels; at most {MAX_LEVELS - 1} are supported", row=int(line),
                            field="codes")
        if item_id in seen:
            raise DataError(path, f"item id {item_id!r} appears twice", row=int(line), field="item_id")
        seen[item_id] = codes
    return seen


def disambiguate(codes: np.ndarray) -> tuple[list[list[int]], int]:
    """Codes that name one item each: items sharing all codes get one more level (0, 1, ... in catalog order).

    Returns the code lists and the number of items that share their codes with another item.
    """
    out = [list(map(int, row)) for row in codes]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(out):
        groups.setdefault(tuple(row), []).append(i)
    shared = 0
    for members in groups.values():
        if len(members) > 1:
            shared += len(members)
            for k, i in enumerate(members):
                out[i].append(k)
    return out, shared


def attach_semantic_ids(dataset: RecDataset, codes: np.ndarray, source: dict,
                        codebook_size: int | None = None) -> RecDataset:
    """``dataset`` with a ``codes`` column (disambiguated) and ``meta["semantic_ids"]`` describing them: where they
    come from, and the quality report of the codes before disambiguation (``quality``, see
    :func:`~bearrec.items.sid_quality.sid_quality`; ``codebook_size`` when known, else each level's largest
    code + 1)."""
    final, shared = disambiguate(codes)
    items = dataset.items.assign(codes=pd.Series(final, dtype=object, index=dataset.items.index))
    meta = {**dataset.meta, "semantic_ids": {
        **source, "levels": int(codes.shape[1]),
        "codes_per_level": [int(len(np.unique(codes[:, level]))) for level in range(codes.shape[1])],
        "items_sharing_codes": shared, "disambiguation_level": shared > 0,
        "quality": sid_quality(codes, codebook_size)}}
    return RecDataset(items=items, splits=dataset.splits, domain=dataset.domain, meta=meta)


def with_semantic_ids(dataset: RecDataset, source: str, config: SemanticIdConfig | str | None = None,
                      levels: int | None = None, codebook_size: int | None = None, seed: int | None = None,
                      progress=None, *, embedding_model: str | None = None) -> RecDataset:
    """``dataset`` with semantic IDs read from the CSV ``source``, or, for ``source="build"``, built by RQ-KMeans
    (:func:`~bearrec.items.rq_kmeans.rq_kmeans`) over the titles' embeddings as ``config`` says.

    ``config`` is a :class:`~bearrec.items.sid_config.SemanticIdConfig`. The loose ``embedding_model, levels,
    codebook_size, seed`` of earlier versions (``config`` then being the embedding model's name) are still
    accepted and become one. The embeddings come from the cache when the same titles were embedded by the same
    model files before (:func:`~bearrec.items.embeddings.cached_embeddings`).
    """
    if not isinstance(config, SemanticIdConfig):
        loose = {"embedding_model": config if config is not None else embedding_model, "levels": levels,
                 "codebook_size": codebook_size, "seed": seed}
        config = SemanticIdConfig(**{name: value for name, value in loose.items() if value is not None})
    ids = dataset.items["item_id"].tolist()
    if source != "build":
        return attach_semantic_ids(dataset, read_semantic_ids(source, ids), {"source": str(source)})
    config.validate()
    embeddings, _ = cached_embeddings(dataset.titles, config.embedding_model, config.batch_size, progress)
    codes = rq_kmeans(embeddings, config, progress)
    settings = {**config.as_dict(), "backend": resolve_backend(config.backend)}
    settings.pop("batch_size")  # changes nothing but floating-point noise: not part of the dataset's identity
    return attach_semantic_ids(dataset, codes, {"source": "rq-kmeans", **settings}, config.codebook_size)


def dataset_codes(dataset: RecDataset) -> list[list[int]]:
    """The catalog's semantic IDs (after disambiguation); a clear error when the dataset has none."""
    if "codes" not in dataset.items.columns:
        raise ValueError("representation semantic-ids: this dataset has no semantic IDs; prepare it with "
                         "`bearrec prepare ... --semantic-ids FILE` (or `--semantic-ids build`)")
    codes = [list(map(int, c)) for c in dataset.items["codes"]]
    if len({tuple(c) for c in codes}) != len(codes):
        raise ValueError("the dataset's semantic IDs name some items twice; prepare it again")
    return codes


# ---------------------------------------------------------------------------------- tokens
def _token(level: int, code: int) -> str:
    return f"<{chr(ord('a') + level)}_{code}>"


def code_strings(codes: Sequence[Sequence[int]]) -> list[str]:
    """Each item's codes as the text its tokenizer reads: ``"<a_159><b_42><c_1><d_0>"``."""
    return ["".join(_token(level, c) for level, c in enumerate(row)) for row in codes]


def code_tokens(codes: Sequence[Sequence[int]]) -> list[str]:
    """One token per (level, code) seen in ``codes``: level by level, codes ascending."""
    depth = max(len(row) for row in codes)
    return [_token(level, code) for level in range(depth)
            for code in sorted({row[level] for row in codes if len(row) > level})]


def code_tokenizer(codes: Sequence[Sequence[int]]):
    """A word-level tokenizer with one token per (level, code) seen in ``codes``, after the special tokens
    ``<pad> <s> </s> <unk>``; level by level, codes ascending. Adds no special tokens when encoding."""
    from transformers import PreTrainedTokenizerFast  # heavy (+0.9 s), as in items/embeddings; training has it loaded

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS.values(), *code_tokens(codes)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"<[^>]*>"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **SPECIAL_TOKENS)


@dataclass(frozen=True)
class CodePrompt:
    """The prompt of a semantic-ID model: the history items' codes, oldest first, and nothing else.

    It stands in for :class:`~bearrec.items.prompts.PromptTemplate` in a ``PromptEncoder`` whose item
    texts are :func:`code_strings`.
    """

    domain: str = "products"

    def render(self, history_titles: list[str], response_header: bool = True) -> str:
        return "".join(history_titles)


@dataclass(frozen=True)
class CodeInstructionPrompt:
    """The prompt of a pretrained LM over semantic IDs (``code_tokens.prompt: instruction``): one instruction, then
    the history's codes, oldest first, which the answer continues::

        ### Instruction:
        Below are the semantic IDs of the products the user has bought, oldest first. Write the semantic ID of
        the next product the user will buy.

        ### History:
        <a_159><b_42><c_1><d_0><a_12><b_7><c_200><d_3>
        (the answer: its codes + EOS)

    The codes follow each other with nothing between them, so a user's successive examples continue each other and
    ``train.pack`` packs them. With ``instruction-titles`` each history item is a line of its codes and its title
    (``<a_159><b_42><c_1><d_0> Pilot G2 Gel Pens``), and the answer starts a new line. :func:`history_line` writes
    one item.
    """

    domain: str = "products"

    def render(self, history_lines: list[str], response_header: bool = True) -> str:
        template = PromptTemplate(self.domain)
        return (f"### Instruction:\nBelow are the semantic IDs of the {self.domain} the user has {template.verb}, "
                f"oldest first. Write the semantic ID of the next {template.singular} the user will "
                f"{_present(template.verb)}.\n\n### History:\n" + "".join(history_lines))


def _present(verb: str) -> str:
    """``bought`` -> ``buy``: the verb of the instruction's last sentence."""
    return {"bought": "buy", "watched": "watch", "read": "read", "played": "play", "listened to": "listen to",
            "interacted with": "interact with"}.get(verb, verb)


def history_line(codes: str, title: str | None = None) -> str:
    """One history item of :class:`CodeInstructionPrompt`: its codes alone (packable), or its codes, its title and a
    new line (an untitled item, ``title=""``: its codes on a line of their own, so that the next item's codes do
    not run into them). The title is shown as :func:`title_text` writes it."""
    if title is None:
        return codes
    return f"{codes} {title_text(title)}\n" if title else f"{codes}\n"


def title_text(title: str) -> str:
    """``title`` beside code tokens (the prompt's history, the alignment examples): a code token spelled inside it
    is broken with a zero-width space, so that the title never reads as codes."""
    return re.sub(r"<(?=[a-z]_[0-9])", "<\u200b", title)
