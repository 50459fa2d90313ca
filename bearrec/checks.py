"""The one shape of an option error, shared by every config dataclass's ``validate(section)``, and the one
line an exception becomes in an error message (:func:`first_line`).

Each config dataclass (``TrainConfig``, ``TinyConfig``, ``BEARConfig``, ...) checks its own fields in a
``validate(section)`` method with :func:`check`; ``ExperimentConfig.validate`` calls them all, so an option
is validated in one place whether it came from a flag, ``--set`` or a YAML file.
"""

from __future__ import annotations

INT64_MAX = 2**63 - 1  # the largest count a C long (numpy, torch, itertools) holds
MAX_SEED = 2**32 - 1  # numpy's RandomState (the Trainer's set_seed, pandas' sample, scikit-learn) takes 0 .. 2**32 - 1


def first_line(err: BaseException, limit: int | None = None) -> str:
    """An exception as one line for an error message: its first line (cut to ``limit``), or its class name."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line[:limit] if limit else line


def check(ok: bool, section: str, name: str, rule: str, value) -> None:
    """Raise ``ValueError("section.name must be <rule>, got <value>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{section}.{name} must be {rule}, got {value!r}")


def is_number(value) -> bool:
    """An int or float, not a bool (YAML's ``true`` is no number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def short(value, limit: int = 60) -> str:
    """``repr`` of a value, cut so that an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
