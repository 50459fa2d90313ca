"""The plan of an experiment: one :class:`RunSpec` per (label, seed). ``compare`` plans each objective (and
conventional baseline) per seed, seed-major; ``sweep`` one run per grid point plus the SFT baseline."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from bearrec.config import ExperimentConfig, with_overrides
from bearrec.objectives import registry
from bearrec.yamlfiles import parse_assignment, parse_value

BASELINES = ("sasrec", "bert4rec")  # conventional recommenders: config section = run label


BASELINE = "sft"


@dataclass
class RunSpec:
    """One run: a label (row of the results table), its seed and the config fields it changes."""

    label: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9.=_-]+', '_', self.label)}/seed{self.seed}"

    def config(self, base: ExperimentConfig) -> ExperimentConfig:
        return with_overrides(base, {**self.overrides, "train.seed": self.seed})


def objective_variant(entry: str) -> dict[str, Any]:
    """The overrides of one ``--objectives`` entry: ``bear`` or ``bear:formulation=paper:weight=1`` (fields of
    the objective's section, or ``section.field``); the entry itself is the run's label."""
    name, *fields = entry.split(":")
    section = registry.get(name.strip()).section
    overrides: dict[str, Any] = {"train.objective": name.strip()}
    for item in filter(None, (part.strip() for part in fields)):
        key, parsed = parse_assignment(item, f"objective {entry!r}", "name:field=value:... (e.g. bear:formulation=paper)")
        if "." not in key and section is None:
            raise ValueError(f"objective {entry!r}: {name.strip()} has no settings; name them as section.field")
        overrides[key if "." in key else f"{section}.{key}"] = parsed
    return overrides


def parse_baselines(text: str) -> tuple[str, ...]:
    """``"sasrec,bert4rec"`` -> ``("sasrec", "bert4rec")``; ``"none"`` or ``""`` -> ``()``."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"--baselines: unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)} or none")
    return names


def compare_plan(objectives: list[str], seeds: int, base_seed: int = 0,
                 baselines: tuple[str, ...] = BASELINES) -> list[RunSpec]:
    """Seed-major order, so that every objective has a result early and later seeds refine them."""
    labels = list(dict.fromkeys(objectives))
    if BASELINE not in labels:
        labels.insert(0, BASELINE)
    specs = []
    for seed in range(base_seed, base_seed + seeds):
        specs += [RunSpec(name, seed, objective_variant(name)) for name in labels]
        specs += [RunSpec(name, seed) for name in baselines]
    return specs


def parse_grid(entries: list[str], objective: str) -> dict[str, list]:
    """``["weight=0.1,0.5", "train.lr=1e-4,1e-3"]`` -> ``{"bear.weight": [0.1, 0.5], "train.lr": [...]}``.

    A name without a section (``weight``) is a field of the swept objective's section.
    """
    spec = registry.get(objective)
    section = spec.section
    grid: dict[str, list] = {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"grid entry {entry!r}: expected name=v1,v2,... (e.g. weight=0.1,0.5,1)")
        if "." not in key:
            if section is None or key not in spec.fields():
                raise ValueError(f"grid entry {entry!r}: use section.field (e.g. bear.weight or train.lr)")
            key = f"{section}.{key}"
        try:
            grid[key] = [parse_value(v) for v in values.split(",")]
        except ValueError as err:
            raise ValueError(f"grid entry {entry!r}: {err}") from None
    if not grid:
        raise ValueError("empty grid: pass --grid name=v1,v2,... (e.g. --grid weight=0.1,0.5,1 temperature=0.5,1)")
    return grid


def grid_label(objective: str, point: dict[str, Any]) -> str:
    return f"{objective} " + " ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


def sweep_plan(objective: str, grid: dict[str, list], seeds: int, base_seed: int = 0) -> list[RunSpec]:
    """The SFT baseline and every grid point, per seed."""
    specs = []
    for seed in range(base_seed, base_seed + seeds):
        specs.append(RunSpec(BASELINE, seed, {"train.objective": BASELINE}))
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values))
            specs.append(RunSpec(grid_label(objective, point), seed, {"train.objective": objective, **point}))
    return specs
