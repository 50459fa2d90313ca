"""Fine-tuning through the Hugging Face ``Trainer``: only the loss and the model selection are ours.

The Trainer brings gradient accumulation, bf16, checkpoints with optimizer/scheduler/RNG state
(``resume_from_checkpoint``), TensorBoard logging, and multi-GPU training under ``accelerate launch``
or ``torchrun`` (DDP, FSDP or DeepSpeed through their standard configs) with no code of our own.

Batches are left-padded so that every answer (title + EOS) ends at the last position: the model then
computes logits for the answer positions only (``logits_to_keep``), which is all the objectives need.
At the end of every epoch the model is evaluated with constrained beam search on a validation
subsample; the checkpoint with the best NDCG@10 is kept and training stops after ``patience`` epochs
without improvement.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from bearrec.catalog import ItemTrie
from bearrec.config import ExperimentConfig
from bearrec.data.dataset import RecDataset
from bearrec.data.prompts import PromptEncoder, left_pad
from bearrec.decoding.beam_search import position_ids_from_mask
from bearrec.io import write_json
from bearrec.objectives import IGNORE_INDEX, pruning_margin

SELECTION_METRIC = "NDCG@10"


def encode_split(
    dataset: RecDataset, split: str, encoder: PromptEncoder, limit: int | None = None, seed: int = 0
) -> tuple[list[list[int]], list[int]]:
    """(prompt ids, target catalog indices) of a split, optionally a seeded subsample of ``limit`` examples."""
    histories, targets = dataset.examples(split, limit, seed)
    return encoder.prompts(histories), targets


class Collator:
    """Left-padded ``input_ids``/``attention_mask``, answer-aligned ``labels [n, A]``, and, for objectives
    that simulate beam search, the prompts alone (``prompt_ids``/``prompt_mask``).

    ``labels[:, j]`` is the token at position ``L - A + j``: the logits of the last ``A + 1`` positions,
    minus the final one, predict exactly these tokens.
    """

    def __init__(self, pad_id: int, with_prompts: bool = False):
        self.pad_id, self.with_prompts = pad_id, with_prompts

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = left_pad([e["prompt"] + e["answer"] for e in examples], self.pad_id)
        longest = max(len(e["answer"]) for e in examples)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(examples):
            labels[row, longest - len(e["answer"]) :] = torch.tensor(e["answer"])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.with_prompts:
            batch["prompt_ids"], batch["prompt_mask"] = left_pad([e["prompt"] for e in examples], self.pad_id)
        return batch


def answer_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_len: int) -> torch.Tensor:
    """Logits aligned with the collator's ``labels``: ``[n, answer_len, V]``."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=answer_len + 1,
    )
    return out.logits[:, :-1]


class RecTrainer(Trainer):
    """``Trainer`` with our objective as the loss and constrained-beam-search NDCG@10 as the evaluation."""

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean: let the Trainer divide by the accumulation steps

    def __init__(self, *args, objective, trie: ItemTrie, valid: tuple[list, list] | None, beam_width: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective, self.valid, self.beam_width = objective, valid, beam_width
        self.trie = trie.to(self.args.device)  # once, not on every decoding call
        self._reset_parts()

    def _reset_parts(self) -> None:
        self._parts = {"sft": 0.0, "reg": 0.0, "violated": 0.0, "seen": 0, "batches": 0}
        self._since = time.perf_counter()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        thresholds = None
        if self.objective.needs_search:
            from bearrec.objectives.beam_sim import align_thresholds, simulate_thresholds

            raw = simulate_thresholds(model, inputs["prompt_ids"], inputs["prompt_mask"], self.trie,
                                      beam_width=self.objective.beam_width)
            thresholds = align_thresholds(raw, labels)
        logits = answer_logits(model, inputs["input_ids"], inputs["attention_mask"], labels.shape[1])
        loss, reg = self.objective.loss(logits, labels, thresholds)
        if model.training:
            with torch.no_grad():  # what the logs show: SFT and regulariser parts, share of tokens beam search would prune
                ce, delta, can_prune, _ = pruning_margin(logits.detach(), labels, getattr(self.objective, "beam_width", 10))
                p = self._parts
                p["sft"] += float(ce.mean())
                p["reg"] += float(reg)
                p["violated"] += float(((delta > 0) & can_prune).float().mean())
                p["seen"] += int(inputs["attention_mask"].sum())
                p["batches"] += 1
        return (loss, logits) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        p = self._parts
        if "loss" in logs and p["batches"]:
            elapsed = time.perf_counter() - self._since
            logs.update({"loss_sft": p["sft"] / p["batches"], "loss_regulariser": p["reg"] / p["batches"],
                         "violated_token_share": p["violated"] / p["batches"], "tokens_per_second": p["seen"] / elapsed})
            self._reset_parts()
        super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """NDCG@K and HR@K of constrained beam search on the validation subsample."""
        from bearrec.decoding import constrained_beam_search
        from bearrec.metrics import ranking_metrics

        prompts, targets = self.valid
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        ids, mask = left_pad(prompts, self.processing_class.pad_token_id)
        beams = constrained_beam_search(model, ids, mask, self.trie, beam_width=self.beam_width,
                                        batch_size=self.args.per_device_eval_batch_size)
        model.train(was_training)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in ranking_metrics(beams.item_ids, torch.tensor(targets)).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class EpochLog(TrainerCallback):
    """Seconds per epoch (training only, evaluation excluded) and a rich progress bar.

    The list is kept in ``<checkpoint dir>/epochs.json`` (rewritten atomically after each epoch and its
    validation, before the epoch's checkpoint is saved), so a resumed run logs every epoch, not only the
    ones after the resume: it keeps the entries up to the epoch of the checkpoint it resumes from.
    """

    FILE = "epochs.json"

    def __init__(self, progress=None, checkpoint_dir: Path | None = None, resume_from: str | None = None):
        self.progress, self.task, self.epochs, self._start = progress, None, [], 0.0
        self.path = Path(checkpoint_dir) / self.FILE if checkpoint_dir is not None else None
        if resume_from and self.path is not None and self.path.is_file():
            reached = json.loads((Path(resume_from) / "trainer_state.json").read_text()).get("epoch") or 0
            self.epochs = [e for e in json.loads(self.path.read_text()) if e["epoch"] <= reached + 1e-6]

    def _keep(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, self.epochs)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        if self.progress is not None:
            steps = math.ceil(state.max_steps / max(args.num_train_epochs, 1))
            done = state.global_step % steps if steps else 0
            self.task = self.progress.add_task(f"epoch {int(state.epoch or 0) + 1}/{int(args.num_train_epochs)}",
                                               total=steps, completed=done)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs.append({"epoch": round(state.epoch or 0, 3), "seconds": time.perf_counter() - self._start})
        self._keep()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.epochs and metrics:
            self.epochs[-1].update({k.removeprefix("eval_"): v for k, v in metrics.items()})
            if self.progress is not None:
                shown = ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in metrics.items() if k != "epoch")
                self.progress.console.print(f"epoch {self.epochs[-1]['epoch']:g}: valid {shown}")
            self._keep()


def train_model(
    model,
    tokenizer,
    dataset: RecDataset,
    encoder: PromptEncoder,
    trie: ItemTrie,
    config: ExperimentConfig,
    checkpoint_dir: Path,
    resume_from: str | None = None,
    console=None,
) -> dict:
    """Fine-tune ``model`` on the train split; returns the training log. The best (or last) model stays in ``model``."""
    tc = config.train
    prompts, targets = encode_split(dataset, "train", encoder, tc.max_train_examples, tc.seed)
    if not prompts:
        raise ValueError("the train split is empty")
    examples = [{"prompt": p, "answer": encoder.answers[t]} for p, t in zip(prompts, targets)]
    has_valid = len(dataset.splits["valid"]) > 0 and tc.valid_users != 0  # valid_users: 0 turns validation off
    valid = encode_split(dataset, "valid", encoder, tc.valid_users, tc.seed) if has_valid else None
    objective = config.objective_config()
    use_bf16 = tc.bf16 == "true" or (tc.bf16 == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    select = tc.select_best and valid is not None
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=tc.epochs,
        per_device_train_batch_size=tc.batch_size,
        per_device_eval_batch_size=64,
        gradient_accumulation_steps=tc.grad_accum_steps,
        learning_rate=config.learning_rate,
        weight_decay=tc.weight_decay,
        warmup_steps=tc.warmup_ratio,
        lr_scheduler_type="linear",
        max_grad_norm=tc.grad_clip,
        seed=tc.seed,
        data_seed=tc.seed,
        bf16=use_bf16,
        eval_strategy="epoch" if valid is not None else "no",
        save_strategy="epoch",
        save_total_limit=tc.save_total_limit,
        load_best_model_at_end=select,
        metric_for_best_model=SELECTION_METRIC if select else None,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=tc.logging_steps,
        report_to=["tensorboard"],
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn(f"{tc.objective} {{task.description}}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        epoch_log = EpochLog(progress, checkpoint_dir, resume_from)
        callbacks = [epoch_log]
        if select and tc.patience > 0:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=tc.patience))
        trainer = RecTrainer(
            model=model, args=args, train_dataset=examples, eval_dataset=valid[0] if valid else None, data_collator=Collator(tokenizer.pad_token_id, objective.needs_search),
            processing_class=tokenizer, callbacks=callbacks, objective=objective, trie=trie, valid=valid,
            beam_width=tc.valid_beam_width,
        )
        trainer.remove_callback(PrinterCallback)  # our progress bar and per-epoch lines replace its raw dicts
        trainer.train(resume_from_checkpoint=resume_from)
    model.eval()
    history = [h for h in trainer.state.log_history if "loss" in h]
    epochs = epoch_log.epochs
    return {
        "examples": len(examples),
        "truncated_prompts": encoder.truncated,
        "epochs": epochs,
        "seconds_per_epoch": sum(e["seconds"] for e in epochs) / len(epochs) if epochs else math.nan,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_valid_ndcg10": trainer.state.best_metric,
        "global_step": trainer.state.global_step,
        "log_history": history,
    }
