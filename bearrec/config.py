"""Experiment configuration: plain dataclasses, one YAML file per experiment, dotted command-line overrides.

A YAML file mirrors :class:`ExperimentConfig` (see ``configs/``); any field can be overridden with
``--set section.field=value`` (``--set train.epochs=5 --set bear.weight=0.5``). The resolved config
is saved as ``config.yaml`` in the run folder, and ``bearrec train --resume`` reads it back.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bearrec.baselines.bert4rec import BERT4RecConfig
from bearrec.baselines.sasrec import SASRecConfig
from bearrec.checks import MAX_SEED, check
from bearrec.io import write_text
from bearrec.items.semantic_ids import REPRESENTATIONS
from bearrec.lm.models import TINY, LoraSettings, TinyConfig
from bearrec.objectives import registry

# The largest count that torch (and itertools.islice) take: a batch size, node budget or neighbour count above it
# overflows where it meets a tensor ("Overflow when unpacking long long", "int too big to convert").
INT64_MAX = 2**63 - 1


@dataclass
class TrainConfig:
    """Optimisation and model selection. The paper: 10 epochs, LoRA rank 8, lr 1e-4, AdamW, batch 128,
    best validation NDCG@10 kept."""

    objective: str = "sft"  # a name of bearrec.objectives.registry: sft, bear, msl, ...
    epochs: int = 3
    lr: float | None = None  # None: 1e-3 for the tiny model trained from scratch, 1e-4 with LoRA
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
        check(self.max_train_examples is None or self.max_train_examples >= 1, section, "max_train_examples",
              "at least 1 (or null for all)", self.max_train_examples)
        check(self.valid_users is None or self.valid_users >= 0, section, "valid_users",
              "at least 0 (0: no validation; null: all)", self.valid_users)
        check(self.patience >= 0, section, "patience", "at least 0", self.patience)
        check(0 <= self.min_epochs <= self.epochs, section, "min_epochs", f"in [0, epochs = {self.epochs}]", self.min_epochs)


@dataclass
class DecodingConfig:
    """How a run is decoded: in training validation, ``evaluate``, ``compare``, ``sweep``, ``recommend`` and
    ``serve``: by which ``decoder`` (``decoding/decode.py``), with which step ``scoring`` and length penalty.

    The defaults match the BEAR authors' inference (``inference.py``): ``scoring`` follows the objective
    (masked step scores, renormalised over the trie children, for ``msl`` and the official ``bear``; the
    full-vocabulary log-softmax for ``sft`` and the rest), and ``length_penalty`` is Hugging Face
    ``generate``'s default, 1.0 (sequence score divided by its length); 0 ranks by log P(title | prompt).
    """

    scoring: str | None = None  # full | masked; null: the objective's
    length_penalty: float = 1.0
    decoder: str = "beam"  # beam | exact (the exact top K, nothing pruned) | latent (L2D, decoding/latent.py)
    node_budget: int | None = None  # exact: trie nodes expanded per user (null: no limit, always certified)
    latent_variant: str = "global"  # latent: global (mean state per item) | local (M nearest training states)
    latent_similarity: str = "l2"  # latent: l2 (the paper's) | cosine
    latent_neighbors: int = 5  # latent local: M

    def validate(self, section: str = "decoding") -> None:
        from bearrec.decoding.decode import DECODERS
        from bearrec.decoding.latent import SIMILARITIES, VARIANTS

        check(self.scoring in (None, "full", "masked"), section, "scoring", "full, masked or null (the objective's)",
              self.scoring)
        check(self.decoder in DECODERS, section, "decoder", " | ".join(DECODERS), self.decoder)
        check(self.node_budget is None or 1 <= self.node_budget <= INT64_MAX, section, "node_budget",
              f"in [1, {INT64_MAX}], or null", self.node_budget)
        check(self.latent_variant in VARIANTS, section, "latent_variant", " | ".join(VARIANTS), self.latent_variant)
        check(self.latent_similarity in SIMILARITIES, section, "latent_similarity", " | ".join(SIMILARITIES),
              self.latent_similarity)
        check(1 <= self.latent_neighbors <= INT64_MAX, section, "latent_neighbors", f"in [1, {INT64_MAX}]",
              self.latent_neighbors)


@dataclass
class ExperimentConfig:
    """An experiment's settings. Besides the fields below, one section per objective section of the registry
    (``bear``, ``msl``, ...: ``config.bear.weight``), kept in ``sections`` and written to YAML at the top level
    like the others."""

    data: str | None = None  # dataset folder from `bearrec prepare`
    model: str = TINY  # "tiny", "smollm2-135m" or a Hugging Face model folder / hub name
    lora: bool | None = None  # None: LoRA for pretrained models, full fine-tuning for tiny
    chat_template: bool | None = None  # wrap the prompt in the tokenizer's chat template (None: the model's default)
    representation: str = "titles"  # titles (the Figure 2 prompt) | semantic-ids (the dataset's codes; tiny models)
    train: TrainConfig = field(default_factory=TrainConfig)
    sections: dict[str, Any] = field(default_factory=registry.default_sections)  # the objectives' settings
    lora_settings: LoraSettings = field(default_factory=LoraSettings)
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
        from bearrec.lm.models import CHAT_TEMPLATE_DEFAULT

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
    def learning_rate(self) -> float:
        return self.train.lr if self.train.lr is not None else (1e-4 if self.use_lora else 1e-3)

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
        if self.representation == "semantic-ids" and self.model != TINY:
            raise ValueError("representation semantic-ids trains a model from scratch over code tokens: set model: tiny "
                             "(its shape in the 'tiny' section)")

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


# A config is a page of text; a stream such as /dev/zero would otherwise be read until memory runs out.
MAX_CONFIG_BYTES = 16 << 20
_INT, _FLOAT, _MERGE = ("tag:yaml.org,2002:" + t for t in ("int", "float", "merge"))


class StrictYAMLError(yaml.YAMLError, ValueError):
    """YAML that :class:`StrictLoader` refuses; ``line`` is 1-based."""

    def __init__(self, line: int, problem: str):
        super().__init__(problem)
        self.line = line


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what YAML 1.1 reads otherwise than a reader would (a :class:`StrictYAMLError`
    naming the row and the key): a key twice in one mapping (PyYAML keeps the last), and the numbers whose YAML 1.1
    value is not the YAML 1.2 one: base 60 (``1:00`` is 60), a leading zero (``010`` is octal 8) and underscores
    (``1_0`` is 10). Quoted, they are text. ``0x1f`` and ``0b11`` keep their values; ``0o10`` is text, as in YAML 1.1.
    A scalar that does not fit its explicit tag (``!!int x``) is a YAML error instead of a crash.
    """

    def construct_document(self, node):
        self._check(node)
        return super().construct_document(node)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError):
            raise yaml.constructor.ConstructorError(
                None, None, f"{_short(node.value)} is not a valid {node.tag.rsplit(':', 1)[-1]}", node.start_mark) from None

    def _check(self, root: yaml.Node) -> None:
        """Refuse the first duplicate key or YAML 1.1-only number under ``root``, in document order."""
        stack, seen = [(root, "")], set()
        while stack:
            node, where = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.ScalarNode) and node.tag in (_INT, _FLOAT):
                self._check_number(node, where)
            elif isinstance(node, yaml.SequenceNode):
                stack += reversed([(item, f"{where}[{i}]") for i, item in enumerate(node.value)])
            elif isinstance(node, yaml.MappingNode):
                first: dict = {}
                children = []
                for key, value in node.value:
                    name = where
                    if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE:
                        name = f"{where}.{key.value}" if where else key.value
                        earlier = first.setdefault((key.tag, key.value), key)
                        if earlier is not key:
                            raise StrictYAMLError(key.start_mark.line + 1,
                                                  f"duplicate key {name!r} (first at row {earlier.start_mark.line + 1})")
                    children += [(key, where), (value, name)]
                stack += reversed(children)

    def _check_number(self, node: yaml.ScalarNode, where: str) -> None:
        """Refuse a number whose YAML 1.1 value is not YAML 1.2's, naming ``where`` and what to write instead."""
        text = node.value
        if ":" in text:
            reason, instead = "base 60 in YAML 1.1", ""
        elif "_" in text:
            reason, instead = "YAML 1.1 drops underscores", ""
        elif node.tag == _INT and re.fullmatch(r"[-+]?0[0-9]+", text):
            reason, instead = "octal in YAML 1.1", f", or {int(text)} without the leading zero"
        else:
            return
        try:
            value = (self.construct_yaml_int if node.tag == _INT else self.construct_yaml_float)(node)
        except ValueError:
            return  # not a number at all: construct_object says so
        if instead and int(text) == value:  # 00, +07: decimal and octal agree
            instead = ""
        raise StrictYAMLError(node.start_mark.line + 1, f"{where + ': ' if where else ''}{text} is read as {value!r} "
                                                        f"({reason}): write {value!r}{instead}, or quote it as text")


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML experiment file, or a pipe such as ``--config <(...)`` (read once), as a dict (see :class:`StrictLoader`);
    one-line errors name the file (and the row of a syntax error, a duplicate key or a YAML 1.1-only number)."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a config file") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: over {MAX_CONFIG_BYTES >> 20} MiB, too large for a config file")
    try:
        raw = yaml.load(data.decode("utf-8"), Loader=StrictLoader)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason})") from None
    except StrictYAMLError as err:
        raise ValueError(f"{path}, row {err.line}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", row {mark.line + 1}" if mark else ""
        raise ValueError(f"{path}{where}: not valid YAML ({_yaml_problem(err)})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a config") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config file must be a mapping of sections, not a {type(raw).__name__}")
    return raw


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None,
                raw: dict | None = None) -> ExperimentConfig:
    """Read a YAML experiment file (or the defaults when ``path`` is None) and apply ``key=value`` overrides.
    ``raw``: the file as :func:`read_yaml` already read it (a pipe can be read only once)."""
    raw = copy.deepcopy(raw) if raw is not None else read_yaml(path) if path is not None else {}
    if path is not None:
        from_dict(raw, str(path))  # the file's own shape and types first, so that their errors name the file
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected section.field=value")
        try:
            parsed = parse_value(value)
        except ValueError as err:
            raise ValueError(f"--set {item[:80]!r}: {err}") from None
        _set(raw, key, parsed)
    config = from_dict(raw, str(path) if path else "config")
    config.validate()
    return config


def _yaml_problem(err: yaml.YAMLError) -> str:
    return " ".join(str(getattr(err, "problem", None) or err).split())


# The decimal numbers that YAML 1.1 leaves as text: 3e-4 (it wants 3.0e-4), 1.0e5, -.5; not 09 nor 1_0e5
_DECIMAL = re.compile(r"[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def parse_value(text: str) -> Any:
    """A command-line value as YAML (:class:`StrictLoader`), except that ``3e-4`` is a number (YAML 1.1 wants
    ``3.0e-4``). Anything YAML refuses is a one-line ``ValueError``."""
    try:
        value = yaml.load(text, Loader=StrictLoader)
    except StrictYAMLError:
        raise
    except yaml.YAMLError as err:
        raise ValueError(f"not a valid value ({_yaml_problem(err)})") from None
    except RecursionError:
        raise ValueError("the value is nested too deeply") from None
    return float(value) if isinstance(value, str) and _DECIMAL.fullmatch(value) else value


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
        raise ValueError(f"{where}: expected a mapping of fields, got {_short(raw)}")
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
    raise ValueError(f"{where} must be {wanted}, got {_short(value)}")


def _type_name(hint) -> str:
    names = {int: "an integer", float: "a number", str: "text", bool: "true or false", type(None): "null"}
    return names.get(hint, "a list of names" if typing.get_origin(hint) is list else str(hint))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
