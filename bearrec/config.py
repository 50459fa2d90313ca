"""Experiment configuration: plain dataclasses, one YAML file per experiment, dotted command-line overrides.

A YAML file mirrors :class:`ExperimentConfig` (see ``configs/``); any field can be overridden with
``--set section.field=value`` (``--set train.epochs=5 --set bear.weight=0.5``). The resolved config
is saved as ``config.yaml`` in the run folder, and ``bearrec train --resume`` reads it back.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bearrec.bert4rec import BERT4RecConfig
from bearrec.io import write_text
from bearrec.models import TINY, LoraSettings, TinyConfig
from bearrec.objectives.configs import BeamSimConfig, BEARConfig
from bearrec.sasrec import SASRecConfig


@dataclass
class TrainConfig:
    """Optimisation and model selection. The paper: 10 epochs, LoRA rank 8, lr 1e-4, AdamW, batch 128,
    best validation NDCG@10 kept."""

    objective: str = "sft"  # sft | bear | beam-sim
    epochs: int = 3
    lr: float | None = None  # None: 1e-3 for the tiny model trained from scratch, 1e-4 with LoRA
    batch_size: int = 32  # per device
    grad_accum_steps: int = 1  # effective batch = batch_size * grad_accum_steps * devices
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    bf16: str = "auto"  # auto: bf16 on GPUs that support it, fp32 on CPU; or "true"/"false"
    max_prompt_tokens: int = 1024  # longer prompts drop their oldest history items
    max_train_examples: int | None = None  # seeded subsample of the train split
    valid_users: int | None = 200  # seeded valid subsample for model selection (None: all; 0: no validation)
    valid_beam_width: int = 10
    patience: int = 3  # epochs without a better validation NDCG@10 before stopping (0: never stop early)
    select_best: bool = True  # keep the checkpoint with the best validation NDCG@10
    save_total_limit: int = 2  # checkpoints kept on disk (the best one is always kept)
    logging_steps: int = 10


@dataclass
class ExperimentConfig:
    data: str | None = None  # dataset folder from `bearrec prepare`
    model: str = TINY  # "tiny", "smollm2-135m" or a Hugging Face model folder / hub name
    lora: bool | None = None  # None: LoRA for pretrained models, full fine-tuning for tiny
    chat_template: bool | None = None  # wrap the prompt in the tokenizer's chat template (None: the model's default)
    train: TrainConfig = field(default_factory=TrainConfig)
    bear: BEARConfig = field(default_factory=BEARConfig)
    beam_sim: BeamSimConfig = field(default_factory=BeamSimConfig)
    lora_settings: LoraSettings = field(default_factory=LoraSettings)
    tiny: TinyConfig = field(default_factory=TinyConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)  # the conventional baselines of `bearrec compare`
    bert4rec: BERT4RecConfig = field(default_factory=BERT4RecConfig)

    @property
    def use_lora(self) -> bool:
        return (self.model != TINY) if self.lora is None else self.lora

    @property
    def use_chat_template(self) -> bool:
        from bearrec.models import CHAT_TEMPLATE_DEFAULT

        return CHAT_TEMPLATE_DEFAULT.get(self.model, False) if self.chat_template is None else self.chat_template

    @property
    def learning_rate(self) -> float:
        return self.train.lr if self.train.lr is not None else (1e-4 if self.use_lora else 1e-3)

    def objective_config(self):
        """The config object of the chosen objective (it computes the loss)."""
        from bearrec.objectives.configs import OBJECTIVE_CONFIGS

        name = self.train.objective
        if name not in OBJECTIVE_CONFIGS:
            raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVE_CONFIGS)}")
        return {"bear": self.bear, "beam-sim": self.beam_sim}.get(name) or OBJECTIVE_CONFIGS[name]()

    def validate(self) -> None:
        self.objective_config()
        if self.use_lora and self.model == TINY:
            raise ValueError("LoRA needs a pretrained model; the tiny model is trained from scratch (lora: false)")
        for section in (self.bear, self.beam_sim):
            if section.surrogate not in ("paper", "softplus"):
                raise ValueError(f"surrogate must be 'paper' or 'softplus', not {section.surrogate!r}")
        if self.train.bf16 not in ("auto", "true", "false"):
            raise ValueError(f"train.bf16 must be auto, true or false, not {self.train.bf16!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def from_dict(raw: dict, source: str = "config") -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from nested dicts, refusing unknown keys with their path."""
    return _build(ExperimentConfig, raw or {}, source)


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment file (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", row {mark.line + 1}" if mark else ""
            raise ValueError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a config file must be a mapping of sections")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected section.field=value")
        _set(raw, key, parse_value(value))
    config = from_dict(raw, str(path) if path else "config")
    config.validate()
    return config


def parse_value(text: str) -> Any:
    """A command-line value as YAML, except that ``3e-4`` is a number (YAML 1.1 wants ``3.0e-4``)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def with_overrides(config: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """A copy of ``config`` with dotted fields replaced: ``{"bear.weight": 0.5, "train.seed": 1}``."""
    raw = config.to_dict()
    for key, value in values.items():
        _set(raw, key, value)
    new = from_dict(raw)
    new.validate()
    return new


def _set(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _build(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            values[name] = _build(type(default), value, f"{where}: {name}")
        else:
            declared = fields[name].default
            if isinstance(declared, (int, float)) and not isinstance(declared, bool) and value is not None and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{where}: {name} must be a number, not {value!r}")
            values[name] = value
    return cls(**values)
