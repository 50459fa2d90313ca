"""bearrec: fine-tune language models as sequential recommenders with beam-search-aware objectives (BEAR)."""

__version__ = "0.1.0"
