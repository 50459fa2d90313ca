"""bearrec: fine-tune language models as sequential recommenders with beam-search-aware objectives (BEAR).

The public Python API (:mod:`bearrec.api`: the objectives, the trie, the decoders, the metrics) is importable
from here, ``from bearrec import bear_loss, build_trie``, and loaded on first use: ``import bearrec`` (and the
command line's start-up) does not import torch.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    import bearrec.api

    if name in bearrec.api.__all__:
        return getattr(bearrec.api, name)
    raise AttributeError(f"module 'bearrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    import bearrec.api

    return sorted([*globals(), *bearrec.api.__all__])
