"""The one shape of an option error, shared by every config dataclass's ``validate(section)``.

Each config dataclass (``TrainConfig``, ``TinyConfig``, ``BEARConfig``, ...) checks its own fields in a
``validate(section)`` method with :func:`check`; ``ExperimentConfig.validate`` calls them all, so an option
is validated in one place whether it came from a flag, ``--set`` or a YAML file.
"""

from __future__ import annotations


def check(ok: bool, section: str, name: str, rule: str, value) -> None:
    """Raise ``ValueError("section.name must be <rule>, got <value>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{section}.{name} must be {rule}, got {value!r}")
