"""`PrepareConfig`: every setting of `bearrec prepare` for a file format, validated once and passed whole."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from bearrec.data.dataset import DataError

SPLIT_MODES = ("time", "leave-one-out")  # 8:1:1 by target time | per user: last test, second-to-last valid

# format -> the inputs it takes, in order (a trailing "?" marks an optional one)
FORMATS = {
    "processed": ("folder",),
    "amazon": ("reviews", "meta"),
    "amazon2023": ("reviews", "meta"),
    "interactions": ("interactions.csv", "items.csv"),
    "movielens": ("ratings", "movies"),
    "recbole": ("inter", "item"),
    "lcrec": ("inter.json", "item.json", "index.json?"),
}
RAW_FORMATS = tuple(name for name in FORMATS if name != "processed")
DEFAULT_DOMAIN = {"movielens": "movies"}  # a format's domain noun when --domain is not given
DEFAULT_SPLIT = {"lcrec": "leave-one-out"}  # a format's --split when not given: LC-Rec's lists have no times


@dataclass(frozen=True)
class PrepareConfig:
    """What to read and how to turn it into a dataset.

    ``history_len`` (``--max-history``, default 10) and ``split`` (``--split``: "time" 8:1:1 by target time, or
    "leave-one-out"; default "time", "leave-one-out" for lcrec) apply to the raw formats only; ``None`` means the default. ``keep_untitled``
    keeps items without a title (named ``(untitled item <id>)``: semantic IDs name them). ``domain`` ``None``
    is the format's default (movies for movielens, products otherwise).
    """

    format: str
    inputs: tuple[str | os.PathLike, ...]
    domain: str | None = None
    strict: bool = False
    min_interactions: int = 5
    history_len: int | None = None
    split: str | None = None
    keep_untitled: bool = False

    def validated(self) -> PrepareConfig:
        """Check every field (one-line ``ValueError`` or ``DataError``) and fill the defaults; returns the
        checked config, which the readers take as it is."""
        where = ", ".join(map(str, self.inputs)) or "<no input>"
        k = self.min_interactions
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"min_interactions (--min-interactions) must be an integer of at least 1, got {k!r}")
        h = self.history_len
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
            raise ValueError(f"history_len (--max-history) must be an integer of at least 1, got {h!r}")
        if self.split is not None and self.split not in SPLIT_MODES:
            raise ValueError(f"split (--split) must be one of {', '.join(SPLIT_MODES)}, got {self.split!r}")
        domain = self.domain if self.domain is not None else DEFAULT_DOMAIN.get(self.format, "products")
        if not re.fullmatch(r"[^\W\d_][\w -]*", domain or ""):
            raise ValueError(f"domain (--domain) must be a plural noun for the prompt, such as products or books: "
                             f"got {domain!r}")
        if self.format not in FORMATS:
            raise DataError(where, f"unknown format {self.format!r}; expected one of {', '.join(FORMATS)}",
                            field="format")
        expected = FORMATS[self.format]
        required = [name for name in expected if not name.endswith("?")]
        if not len(required) <= len(self.inputs) <= len(expected):
            count = str(len(expected)) if len(required) == len(expected) else f"{len(required)} or {len(expected)}"
            raise DataError(where, f"format {self.format!r} takes {count} input(s) ({', '.join(expected)}), got "
                                   f"{len(self.inputs)}", field="inputs")
        if self.format == "processed":
            if h is not None or self.split is not None:
                raise ValueError("--max-history and --split apply to the raw formats (amazon, interactions, ...); a "
                                 "processed folder brings its own split and histories")
            return replace(self, domain=domain, inputs=tuple(self.inputs))
        return replace(self, domain=domain, inputs=tuple(self.inputs), history_len=h or 10,
                       split=self.split or DEFAULT_SPLIT.get(self.format, "time"))
