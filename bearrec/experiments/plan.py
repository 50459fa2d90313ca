"""The plan of an experiment: one :class:`RunSpec` per (label, seed). ``compare`` plans each objective (and
conventional baseline) per seed, seed-major; ``sweep`` one run per grid point plus the SFT baseline.
:func:`cpu_budget` shrinks ``compare`` of smollm2-135m to what a CPU finishes."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from bearrec.config import ExperimentConfig, TrainConfig, with_overrides
from bearrec.lm.models import SMOLLM2
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
                 baselines: tuple[str, ...] = BASELINES, baseline_seeds: int | None = None) -> list[RunSpec]:
    """Seed-major order, so that every objective has a result early and later seeds refine them.

    The conventional baselines train in seconds, so they may have more seeds than the LMs (``baseline_seeds``;
    default ``seeds``): a seed beyond the LMs' plans the baselines only, after every LM run."""
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: at least 1")
    if baseline_seeds is None:
        baseline_seeds = seeds
    elif baselines and baseline_seeds < 1:
        raise ValueError(f"--baseline-seeds {baseline_seeds}: at least 1 (or --baselines none)")
    labels = list(dict.fromkeys(objectives))
    if BASELINE not in labels:
        labels.insert(0, BASELINE)
    specs = []
    for seed in range(base_seed, base_seed + max(seeds, baseline_seeds)):
        if seed < base_seed + seeds:
            specs += [RunSpec(name, seed, objective_variant(name)) for name in labels]
        if seed < base_seed + baseline_seeds:
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


# The train fields that size a run: cpu_budget applies only while all of them are at their defaults.
CPU_BUDGET_TRAIN_FIELDS = ("epochs", "max_train_examples", "valid_users", "batch_size", "lr")


@dataclass(frozen=True)
class CpuBudget:
    """What :func:`cpu_budget` chose: the config to train with, the evaluation's user counts and a note that says so
    (plain text: the caller prints it)."""

    config: ExperimentConfig
    max_eval_users: int
    pruning_users: int
    pruning_node_budget: int
    note: str


def cpu_budget(base: ExperimentConfig, gpu: bool, max_eval_users: int | None, pruning_users: int | None,
               pruning_node_budget: int | None) -> CpuBudget | None:
    """The budget of ``compare`` with smollm2-135m on a CPU, where a full office epoch would take about a day.

    The rule: when the model is smollm2-135m, there is no GPU, no evaluation subsample was asked for
    (``max_eval_users`` is None) and the train fields that size a run (:data:`CPU_BUDGET_TRAIN_FIELDS`) are all at
    their defaults, train one epoch on 512 training examples with no validation users (one epoch: nothing to
    select), batch size at most 8 and lr 3e-4 (64 LoRA steps: the paper's 1e-4 barely moves the adapters); evaluate
    100 users, PR@K on the first 30 of them (or ``pruning_users``) with at most 512 trie nodes expanded each (or
    ``pruning_node_budget``). Measured on office: 27 min of training and under 30 min of evaluation per objective
    on one core of a loaded 2-core machine. Otherwise None: the caller keeps its config and values.

    ``base`` is left as it is; the budget's config is a copy.
    """
    defaults = TrainConfig()
    untouched = all(getattr(base.train, f) == getattr(defaults, f) for f in CPU_BUDGET_TRAIN_FIELDS)
    if base.model != SMOLLM2 or gpu or max_eval_users is not None or not untouched:
        return None
    lr = base.train.lr or 3e-4
    config = with_overrides(base, {"train.max_train_examples": 512, "train.epochs": 1, "train.valid_users": 0,
                                   "train.batch_size": min(base.train.batch_size, 8), "train.lr": lr})
    note = (f"smollm2-135m on a CPU: 1 epoch on 512 training examples (batch 8, lr {lr:g}), 100 evaluation users per "
            "run, PR@K on 30 of them (at most 512 trie nodes expanded each); pass --max-train-examples, --epochs or "
            "--max-eval-users to choose your own budget")
    return CpuBudget(config, 100, pruning_users or 30, pruning_node_budget or 512, note)
