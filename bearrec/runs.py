"""Run folders: what a training run leaves on disk, and how evaluation and `recommend` find it again.

A run folder holds ``model/`` (weights or LoRA adapters, plus the tokenizer, in safetensors),
``run.json`` (model name, dataset folder, prompt domain, resolved configs) and ``train_log.json``.
It is written to a temporary sibling and renamed when training ends, so a failed run leaves nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from bearrec.catalog import build_trie
from bearrec.data.dataset import RecDataset
from bearrec.data.prompts import PromptEncoder, PromptTemplate
from bearrec.evaluate import evaluate
from bearrec.io import atomic_folder, write_json
from bearrec.models import TINY, LoraSettings, TinyConfig, count_parameters, load_model, save_model, tiny_model_for
from bearrec.train import TrainConfig, train_model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tokenizer_corpus(dataset: RecDataset, template: PromptTemplate) -> list[str]:
    """Text the tiny model's tokenizer is trained on: every title and the prompt's fixed wording."""
    return dataset.titles + [template.render(dataset.titles[:3])] * 50


def new_model(model_name: str, dataset: RecDataset, template: PromptTemplate, seed: int = 0,
              lora: LoraSettings | None = None, tiny: TinyConfig | None = None):
    """(model, tokenizer) to fine-tune: the tiny default built for ``dataset``, or a pretrained LM."""
    if model_name == TINY:
        return tiny_model_for(tokenizer_corpus(dataset, template), tiny, seed)
    return load_model(model_name, lora=lora)


def train_run(
    dataset: RecDataset,
    dataset_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    model_name: str = TINY,
    config: TrainConfig | None = None,
    lora: LoraSettings | None = None,
    tiny: TinyConfig | None = None,
    console=None,
) -> dict:
    """Train one model and write its run folder atomically; returns the training log."""
    config = config or TrainConfig()
    out_dir = Path(out_dir)
    template = PromptTemplate(dataset.domain)
    model, tokenizer = new_model(model_name, dataset, template, config.seed, lora, tiny)
    model.to(default_device())
    encoder = PromptEncoder(tokenizer, dataset.titles, template, config.max_prompt_tokens)
    build_trie(tokenizer, dataset.titles)  # fail before training if titles collide under this tokenizer
    log = train_model(model, tokenizer, dataset, encoder, config, console=console)
    log["parameters"] = count_parameters(model)

    with atomic_folder(out_dir) as tmp:
        save_model(model, tokenizer, tmp / "model")
        meta = {
            "model": model_name,
            "dataset_dir": str(Path(dataset_dir).resolve()) if dataset_dir else None,
            "domain": dataset.domain,
            "train": asdict(config),
            "lora": asdict(lora) if lora else None,
            "tiny": asdict(tiny or TinyConfig()) if model_name == TINY else None,
        }
        write_json(tmp / "run.json", meta)
        write_json(tmp / "train_log.json", log)
    return log


def load_run(run_dir: str | os.PathLike, dataset_dir: str | os.PathLike | None = None):
    """(model, tokenizer, dataset, run metadata) of a finished run; ``dataset_dir`` overrides the recorded one."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a bearrec run folder (no run.json); create one with `bearrec train`")
    meta = json.loads((run_dir / "run.json").read_text())
    data = dataset_dir or meta.get("dataset_dir")
    if not data:
        raise ValueError(f"{run_dir}/run.json: field 'dataset_dir' is empty; pass --data")
    dataset = RecDataset.load(data)
    model, tokenizer = load_model(run_dir / "model")
    model.to(default_device()).eval()
    return model, tokenizer, dataset, meta


def evaluate_run(run_dir, dataset_dir=None, split: str = "test", beam_width: int = 10, max_users: int | None = None,
                 pruning_rate: bool = True, seed: int = 0, console=None) -> dict:
    """Evaluate a run folder on a split; the result is also written to ``eval_<split>.json`` in it."""
    model, tokenizer, dataset, meta = load_run(run_dir, dataset_dir)
    template = PromptTemplate(dataset.domain)
    encoder = PromptEncoder(tokenizer, dataset.titles, template, meta["train"]["max_prompt_tokens"])
    trie = build_trie(tokenizer, dataset.titles)
    result = evaluate(model, tokenizer, dataset, encoder, trie, split=split, beam_width=beam_width,
                      max_users=max_users, seed=seed, pruning_rate=pruning_rate, console=console)
    per_user = result.pop("per_user", None)
    if per_user is not None:  # item ids instead of catalog indices, for people reading the file
        per_user.insert(0, "target_item_id", dataset.items["item_id"].to_numpy()[per_user.pop("target").to_numpy()])
        per_user.to_csv(Path(run_dir) / f"eval_{split}_users.csv", index=False)
    write_json(Path(run_dir) / f"eval_{split}.json", result)
    return result
