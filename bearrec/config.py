"""Experiment configuration: plain dataclasses, one YAML file per experiment, dotted command-line overrides.

A YAML file mirrors :class:`ExperimentConfig` (see ``configs/``); any field can be overridden with
``--set section.field=value`` (``--set train.epochs=5 --set bear.weight=0.5``). The resolved config
is saved as ``config.yaml`` in the run folder, and ``bearrec train --resume`` reads it back.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from bearrec.baselines.configs import BERT4RecConfig, SASRecConfig
from bearrec.checks import INT64_MAX, MAX_SEED, check, short
from bearrec.decoding.config import DecodingConfig
from bearrec.io import write_text
from bearrec.items.semantic_ids import REPRESENTATIONS
from bearrec.lm.code_tokens import CodeTokenSettings
from bearrec.lm.models import CHAT_TEMPLATE_DEFAULT, TINY, LoraSettings, TinyConfig
from bearrec.objectives import registry
from bearrec.yamlfiles import parse_assignment, read_yaml

# train.report_to: the Trainer's integrations a run logs to -> the package an optional one needs (None: a dependency
# of bearrec, or nothing to log to)
TRACKERS = {"tensorboard": None, "mlflow": "mlflow-skinny", "wandb": "wandb", "none": None}

# The largest count that torch (and itertools.islice) take: a batch size, node budget or neighbour count above it
# overflows where it meets a tensor ("Overflow when unpacking long long", "int too big to convert").


@dataclass
class TrainConfig:
    """Optimisation and model selection. The paper: 10 epochs, LoRA rank 8, lr 1e-4, AdamW, batch 128,
    best validation NDCG@10 kept."""

    objective: str = "sft"  # a name of bearrec.objectives.registry: sft, bear, msl, ...
    epochs: int = 3
    lr: float | None = None  # None: 1e-3 for the tiny model trained from scratch, 1e-4 with LoRA (learning_rate)
    batch_size: int = 32  # per device
    grad_accum_steps: int = 1  # effective batch = batch_size * grad_accum_steps * devices
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_scheduler: str = "linear"  # linear | cosine (APAO) | constant: the Trainer's lr_scheduler_type after warm-up
    group_by_length: bool = False  # batches of similar lengths (less padding; batch order no longer uniform)
    # one forward per chain of examples whose sequences continue each other (a user's successive examples over
    # semantic IDs: 2.6x fewer tokens on office; docs/design.md). "true": an objective or model that cannot be
    # packed is an error; "auto": packed where possible, the others train unpacked; batch_size stays a number of
    # examples on average
    pack: str = "false"
    grad_clip: float = 1.0
    seed: int = 0
    bf16: str = "auto"  # auto: bf16 on GPUs that support it, fp32 on CPU; or "true"/"false"
    full_determinism: bool = False  # deterministic GPU kernels (slower; see docs/design.md, Reproducibility)
    # true: on the CPU, floats below 1.2e-38 (subnormals) are read and written as zero while training
    # (torch.set_flush_denormal). x86 takes a slow path on them and a trained T5's backward makes many: its steps
    # 1.31x faster at epoch 16 (docs/benchmarks.md). Off by default: IEEE floats, every earlier result bit for bit
    flush_denormal: bool = False
    max_prompt_tokens: int = 1024  # longer prompts drop their oldest history items
    # semantic IDs on a pretrained LM with titles (LC-Rec, MiniOneRec): title -> codes and codes -> title examples
    # drawn per next-item example, trained with plain cross-entropy beside the objective (0: none)
    alignment_ratio: float = 0.0
    max_train_examples: int | None = None  # seeded subsample of the train split
    valid_users: int | None = 200  # seeded valid subsample for model selection (None: all; 0: no validation)
    valid_beam_width: int = 10
    patience: int = 3  # epochs without a better validation NDCG@10 before stopping (0: never stop early)
    # early stopping never ends a run before this epoch (0: it may from the first): a slow starter (the T5) can sit
    # at its first epochs' validation score for longer than ``patience`` before it learns anything
    min_epochs: int = 0
    select_best: bool = True  # keep the checkpoint with the best validation NDCG@10
    save_total_limit: int = 2  # checkpoints kept on disk (the best one is always kept)
    logging_steps: int = 10
    # where the Trainer logs: tensorboard (RUN/checkpoints/runs), mlflow (./mlruns unless MLFLOW_TRACKING_URI is set),
    # wandb (offline unless WANDB_MODE or WANDB_API_KEY is set), or [none] (README, "Experiment tracking")
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])

    def validate(self, section: str = "train") -> None:
        check(self.epochs >= 1, section, "epochs", "at least 1", self.epochs)
        check(self.lr is None or 0 < self.lr < 1, section, "lr", "in (0, 1) (or null for the default)", self.lr)
        for name in ("batch_size", "grad_accum_steps", "valid_beam_width", "save_total_limit", "logging_steps"):
            check(getattr(self, name) >= 1, section, name, "at least 1", getattr(self, name))
        check(self.batch_size <= INT64_MAX, section, "batch_size", f"at most {INT64_MAX}", self.batch_size)
        check(self.weight_decay >= 0, section, "weight_decay", "at least 0", self.weight_decay)
        check(0 <= self.warmup_ratio < 1, section, "warmup_ratio", "in [0, 1)", self.warmup_ratio)
        check(self.lr_scheduler in ("linear", "cosine", "constant"), section, "lr_scheduler", "linear, cosine or constant",
              self.lr_scheduler)
        check(self.grad_clip > 0, section, "grad_clip", "positive", self.grad_clip)
        # numpy's RandomState range: the Trainer's set_seed and pandas' seeded subsamples (torch's is wider)
        check(0 <= self.seed <= MAX_SEED, section, "seed", f"in [0, {MAX_SEED}]", self.seed)
        check(self.bf16 in ("auto", "true", "false"), section, "bf16", "auto, true or false", self.bf16)
        check(self.pack in ("auto", "true", "false"), section, "pack", "auto, true or false", self.pack)
        check(self.max_prompt_tokens >= 16, section, "max_prompt_tokens", "at least 16", self.max_prompt_tokens)
        check(0 <= self.alignment_ratio <= 100, section, "alignment_ratio", "in [0, 100]", self.alignment_ratio)
        check(self.max_train_examples is None or self.max_train_examples >= 1, section, "max_train_examples",
              "at least 1 (or null for all)", self.max_train_examples)
        check(self.valid_users is None or self.valid_users >= 0, section, "valid_users",
              "at least 0 (0: no validation; null: all)", self.valid_users)
        check(self.patience >= 0, section, "patience", "at least 0", self.patience)
        check(0 <= self.min_epochs <= self.epochs, section, "min_epochs", f"in [0, epochs = {self.epochs}]", self.min_epochs)
        _check_report_to(self.report_to, section)


def _check_report_to(report_to: list[str], section: str) -> None:
    """Known trackers, ``none`` alone, and the optional packages of the ones asked for installed."""
    known = ", ".join(TRACKERS)
    check(bool(report_to) and set(report_to) <= set(TRACKERS), section, "report_to", f"a list of {known}", report_to)
    check(len(set(report_to)) == len(report_to), section, "report_to", "a list without repeats", report_to)
    check("none" not in report_to or len(report_to) == 1, section, "report_to", "[none] alone or a list without none",
          report_to)
    for name in report_to:
        if TRACKERS[name] and importlib.util.find_spec(name) is None:
            raise ValueError(f"{section}.report_to: {name} is not installed; pip install {TRACKERS[name]}")


@dataclass
class ExperimentConfig:
    """An experiment's settings. Besides the fields below, one section per objective section of the registry
    (``bear``, ``msl``, ...: ``config.bear.weight``), kept in ``sections`` and written to YAML at the top level
    like the others."""

    data: str | None = None  # dataset folder from `bearrec prepare`
    model: str = TINY  # "tiny", "smollm2-135m" or a Hugging Face model folder / hub name
    lora: bool | None = None  # None: LoRA for pretrained models, full fine-tuning for tiny
    chat_template: bool | None = None  # wrap the prompt in the tokenizer's chat template (None: the model's default)
    representation: str = "titles"  # titles (the Figure 2 prompt) | semantic-ids (the dataset's codes as new tokens)
    train: TrainConfig = field(default_factory=TrainConfig)
    sections: dict[str, Any] = field(default_factory=registry.default_sections)  # the objectives' settings
    lora_settings: LoraSettings = field(default_factory=LoraSettings)
    code_tokens: CodeTokenSettings = field(default_factory=CodeTokenSettings)  # semantic IDs on a pretrained LM
    tiny: TinyConfig = field(default_factory=TinyConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)  # the conventional baselines of `bearrec compare`
    bert4rec: BERT4RecConfig = field(default_factory=BERT4RecConfig)

    def __getattr__(self, name: str):
        """An objective's section as an attribute (``config.bear``)."""
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def use_lora(self) -> bool:
        return (self.model != TINY) if self.lora is None else self.lora

    @property
    def use_chat_template(self) -> bool:
        return CHAT_TEMPLATE_DEFAULT.get(self.model, False) if self.chat_template is None else self.chat_template

    @property
    def scoring(self) -> str:
        """The step scoring this run decodes with: ``decoding.scoring``, else the one its objective was trained for
        (the registry's: ``masked`` for MSL and the official BEAR, whose losses are softmaxes over the trie-valid
        tokens; ``full`` otherwise)."""
        if self.decoding.scoring:
            return self.decoding.scoring
        objective = registry.get(self.train.objective)
        return objective.scoring(self.sections.get(objective.section))

    @property
    def sid_prompt(self) -> str:
        """The semantic-ID prompt (``code_tokens.prompt``, ``auto`` resolved: codes for the tiny model, an
        instruction for a pretrained one)."""
        if self.code_tokens.prompt != "auto":
            return self.code_tokens.prompt
        return "codes" if self.model == TINY else "instruction"

    @property
    def learning_rate(self) -> float:
        """``train.lr``, else 1e-3 where weights start fresh (the tiny model; new code rows alone, as MiniOneRec's
        freeze_LLM) or without LoRA over titles (as before), 1e-4 with LoRA or fully fine-tuning over codes."""
        if self.train.lr is not None:
            return self.train.lr
        codes = self.representation == "semantic-ids" and self.model != TINY
        fresh = self.model == TINY or self.code_tokens.only_new_rows or not (self.use_lora or codes)
        return 1e-3 if fresh else 1e-4

    def objective_config(self):
        """The config object of the chosen objective (it computes the loss)."""
        objective = registry.get(self.train.objective)
        return objective.settings(self.sections.get(objective.section))

    def validate(self) -> None:
        """Check every section (each config dataclass's own ``validate(section)``) and the fields across them."""
        self.objective_config()
        for name, section in _section_values(self).items():
            if hasattr(section, "validate"):
                section.validate(name)
        check(bool(self.model and self.model.strip()), "config", "model", "a model name or folder", self.model)
        check(self.data is None or bool(self.data.strip()), "config", "data", "a dataset folder", self.data)
        if self.use_lora and self.model == TINY:
            raise ValueError("LoRA needs a pretrained model; the tiny model is trained from scratch (lora: false)")
        check(self.representation in REPRESENTATIONS, "config", "representation", " or ".join(REPRESENTATIONS),
              self.representation)
        self._validate_codes()

    def _validate_codes(self) -> None:
        """Settings that only semantic IDs on a pretrained model use."""
        codes, pretrained = self.representation == "semantic-ids", self.model != TINY
        if self.train.alignment_ratio and not (codes and pretrained):
            raise ValueError("train.alignment_ratio: alignment examples teach a pretrained model the codes' titles; "
                             "they need representation: semantic-ids and a pretrained model")
        if self.code_tokens.only_new_rows and not (codes and pretrained):
            raise ValueError("code_tokens.only_new_rows trains the new code tokens of a pretrained model; it needs "
                             "representation: semantic-ids and a pretrained model")
        if self.code_tokens.only_new_rows and self.use_lora:
            raise ValueError("code_tokens.only_new_rows trains the new rows alone, without LoRA: set lora: false")
        if codes and not pretrained and self.sid_prompt != "codes":
            raise ValueError(f"code_tokens.prompt: {self.sid_prompt} has words, and the tiny model's vocabulary is the "
                             "code tokens alone; use codes (or auto), or a pretrained model")

    def to_dict(self) -> dict:
        """Nested plain dicts, the objectives' sections after ``train`` as in a YAML file."""
        plain = asdict(self)
        sections = plain.pop("sections")
        ordered: dict = {}
        for key, value in plain.items():
            ordered[key] = value
            if key == "train":
                ordered.update(sections)
        return ordered

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def from_dict(raw: dict, source: str = "config") -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from nested dicts, refusing unknown keys with their path."""
    return _build(ExperimentConfig, raw or {}, source)


def _members(cls) -> dict[str, type | None]:
    """The keys a mapping for ``cls`` may hold: name -> its section's dataclass, or None for a plain field. An
    experiment config's objective sections come from the registry (``sections`` itself is no key)."""
    members = {f.name: _section_type(f) for f in dataclasses.fields(cls)}
    if cls is ExperimentConfig:
        del members["sections"]
        train_at = list(members).index("train") + 1
        items = list(members.items())
        members = dict(items[:train_at] + list(registry.sections().items()) + items[train_at:])
    return members


def _section_values(config) -> dict[str, Any]:
    """Every section of ``config`` (dataclass fields and objective sections) by name."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "sections"}
    values.update(getattr(config, "sections", {}))
    return {name: value for name, value in values.items() if dataclasses.is_dataclass(value)}




def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None,
                raw: dict | None = None) -> ExperimentConfig:
    """Read a YAML experiment file (or the defaults when ``path`` is None) and apply ``key=value`` overrides.
    ``raw``: the file as :func:`read_yaml` already read it (a pipe can be read only once)."""
    raw = copy.deepcopy(raw) if raw is not None else read_yaml(path) if path is not None else {}
    if path is not None:
        from_dict(raw, str(path))  # the file's own shape and types first, so that their errors name the file
    for item in overrides or []:
        key, parsed = parse_assignment(item, f"--set {item[:80]!r}", "section.field=value")
        _set(raw, key, parsed)
    config = from_dict(raw, str(path) if path else "config")
    config.validate()
    return config


def with_overrides(config: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """A copy of ``config`` with dotted fields replaced: ``{"bear.weight": 0.5, "train.seed": 1}``."""
    raw = config.to_dict()
    for key, value in values.items():
        _set(raw, key, value)
    new = from_dict(raw)
    new.validate()
    return new


def _set(raw: dict, key: str, value: Any) -> None:
    """Set the dotted field ``key`` of the raw config, checking each part against the dataclasses."""
    node, owner = raw, ExperimentConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = _members(owner)
        where = ".".join(parts[:depth]) or "the config"
        if part not in fields:
            raise ValueError(f"--set {key}: unknown field {part!r} in {where} (known: {', '.join(fields)})")
        if depth == len(parts) - 1:
            node[part] = value
            return
        section = fields[part]
        if section is None:
            raise ValueError(f"--set {key}: {'.'.join(parts[:depth + 1])} is a field, not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: {'.'.join(parts[:depth + 1])} is not a mapping in the config")
        owner = section


def _section_type(f: dataclasses.Field):
    """The dataclass type of a section field, or None for a plain field."""
    if f.default_factory is dataclasses.MISSING:
        return None
    default = f.default_factory()
    return type(default) if dataclasses.is_dataclass(default) else None


def _build(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of fields, got {short(raw)}")
    fields = _members(cls)
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, sorted(unknown, key=str)))}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    objective_sections: dict[str, Any] = {}
    for name, value in raw.items():
        section = fields[name]
        built = _build(section, value, f"{where}: {name}") if section is not None else \
            _typed(value, hints[name], f"{where}: {name}")
        (values if name in hints else objective_sections)[name] = built
    built = cls(**values)
    if objective_sections:
        built.sections.update(objective_sections)
    return built


def _typed(value: Any, hint, where: str) -> Any:
    """``value`` as the declared type ``hint`` (int, float, str, bool, list[str], optionally None), or a one-line error.

    Numbers pass as floats, integers never as floats or bools; a number or bool where text is expected becomes its
    text (``bf16: true`` -> "true"; the section's ``validate`` judges it).
    """
    arms = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    if value is None:
        if type(None) in arms:
            return None
        raise ValueError(f"{where} must not be empty (null)")
    for arm in arms:
        if arm is bool and isinstance(value, bool):
            return value
        if arm is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if arm is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{where} must be a finite number, got {value!r}")
            return float(value)
        if arm is str and isinstance(value, (str, int, float, bool)):
            return ("true" if value else "false") if isinstance(value, bool) else str(value)
        if typing.get_origin(arm) is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    wanted = " or ".join(_type_name(a) for a in arms)
    raise ValueError(f"{where} must be {wanted}, got {short(value)}")


def _type_name(hint) -> str:
    names = {int: "an integer", float: "a number", str: "text", bool: "true or false", type(None): "null"}
    return names.get(hint, "a list of names" if typing.get_origin(hint) is list else str(hint))
