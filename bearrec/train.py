"""A plain, correct fine-tuning loop: AdamW, a fixed seed, a progress bar, and the model saved at the end.

Only the loss differs between objectives; it is looked up by name in :data:`LOSSES`. Batches are
left-padded so that every answer ends at the last position: the model then computes logits for the
answer positions only (``logits_to_keep``), which is all that SFT and BEAR need.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_scheduler

from bearrec.data.dataset import RecDataset
from bearrec.data.prompts import PromptEncoder, left_pad
from bearrec.decoding.beam_search import position_ids_from_mask
from bearrec.objectives import IGNORE_INDEX, bear_loss, pruning_margin, sft_loss


@dataclass
class TrainConfig:
    """Training hyperparameters. Paper defaults: B = 10, LoRA lr 1e-4, lambda in [0.1, 5], xi in [0.25, 3]."""

    objective: str = "sft"  # "sft" or "bear"
    epochs: int = 3
    lr: float = 1e-3  # 1e-3 suits the tiny model trained from scratch; the paper uses 1e-4 with LoRA
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    beam_width: int = 10  # B of the BEAR regulariser (match the decoding beam width)
    weight: float = 1.0  # lambda: strength of the regulariser
    temperature: float = 1.0  # xi: sigmoid temperature
    surrogate: str = "paper"  # "paper" (eq. 3.4) or "softplus"
    max_prompt_tokens: int = 1024
    max_train_examples: int | None = None


def objective_loss(config: TrainConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if config.objective == "sft":
        return sft_loss(logits, labels)
    if config.objective == "bear":
        return bear_loss(
            logits,
            labels,
            beam_width=config.beam_width,
            temperature=config.temperature,
            weight=config.weight,
            surrogate=config.surrogate,
        )
    raise ValueError(f"unknown objective {config.objective!r}; choose 'sft' or 'bear'")


def encode_split(
    dataset: RecDataset, split: str, encoder: PromptEncoder, limit: int | None = None, seed: int = 0
) -> tuple[list[list[int]], list[int]]:
    """(prompt ids, target catalog indices) of a split, optionally a seeded subsample of ``limit`` examples."""
    frame = dataset.splits[split]
    if limit is not None and limit < len(frame):
        frame = frame.sample(n=limit, random_state=seed)
    histories = [[dataset.item_index(i) for i in h] for h in frame["history"]]
    targets = [dataset.item_index(t) for t in frame["target"]]
    return encoder.prompts(histories), targets


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Left-padded ``input_ids``, ``attention_mask`` and answer-aligned ``labels [n, A]``.

    ``labels[:, j]`` is the token at position ``L - A + j``; the logits of the last ``A + 1``
    positions, minus the final one, predict exactly these tokens.
    """
    input_ids, attention_mask = left_pad([p + a for p, a in examples], pad_id)
    longest = max(len(a) for _, a in examples)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    for row, (_, answer) in enumerate(examples):
        labels[row, longest - len(answer) :] = torch.tensor(answer)
    return input_ids, attention_mask, labels


def answer_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_len: int) -> torch.Tensor:
    """Logits aligned with ``labels`` of :func:`collate`: ``[n, answer_len, V]``."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=answer_len + 1,
    )
    return out.logits[:, :-1]


def train_model(model, tokenizer, dataset: RecDataset, encoder: PromptEncoder, config: TrainConfig, console=None) -> dict:
    """Fine-tune ``model`` in place on the train split; returns the training log (per-epoch losses and seconds)."""
    torch.manual_seed(config.seed)
    prompts, targets = encode_split(dataset, "train", encoder, config.max_train_examples, config.seed)
    examples = [(p, encoder.answers[t]) for p, t in zip(prompts, targets)]
    if not examples:
        raise ValueError("the train split is empty")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(config.warmup_ratio * total), num_training_steps=total)
    generator = torch.Generator().manual_seed(config.seed)
    log = {"config": asdict(config), "examples": len(examples), "truncated_prompts": encoder.truncated, "epochs": []}

    model.train()
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        for epoch in range(config.epochs):
            task = progress.add_task(f"{config.objective} epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch, loss=math.nan)
            order = torch.randperm(len(examples), generator=generator).tolist()
            sums = {"loss": 0.0, "ce": 0.0, "margin_positive": 0.0, "tokens": 0, "seen": 0}
            start = time.perf_counter()
            for step in range(steps_per_epoch):
                batch = [examples[i] for i in order[step * config.batch_size : (step + 1) * config.batch_size]]
                input_ids, attention_mask, labels = (t.to(device) for t in collate(batch, tokenizer.pad_token_id))
                logits = answer_logits(model, input_ids, attention_mask, labels.shape[1])
                loss = objective_loss(config, logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                scheduler.step()
                with torch.no_grad():  # monitoring: CE part and share of tokens beam search would prune
                    ce, delta, can_prune, _ = pruning_margin(logits.detach(), labels, config.beam_width)
                    n_tok = ce.numel()
                    sums["loss"] += float(loss) * n_tok
                    sums["ce"] += float(ce.sum())
                    sums["margin_positive"] += float(((delta > 0) & can_prune).sum())
                    sums["tokens"] += n_tok
                    sums["seen"] += int(attention_mask.sum())
                progress.update(task, advance=1, loss=sums["loss"] / max(sums["tokens"], 1))
            seconds = time.perf_counter() - start
            n = max(sums["tokens"], 1)
            log["epochs"].append({
                "epoch": epoch + 1,
                "seconds": seconds,
                "loss": sums["loss"] / n,
                "ce": sums["ce"] / n,
                "violated_token_share": sums["margin_positive"] / n,
                "tokens_per_second": sums["seen"] / seconds,  # prompt and answer tokens
            })
    model.eval()
    log["seconds_per_epoch"] = sum(e["seconds"] for e in log["epochs"]) / len(log["epochs"])
    return log

