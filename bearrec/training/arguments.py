"""The Hugging Face ``TrainingArguments`` of a run, from its config: the one place where our settings become the
Trainer's (epochs, batch, schedule, bf16, checkpoints, model selection, logging)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainingArguments

from bearrec.config import ExperimentConfig

SELECTION_METRIC = "NDCG@10"  # validation metric of model selection and early stopping


def training_arguments(config: ExperimentConfig, checkpoint_dir: Path, batch_size: int, validate: bool,
                       select: bool) -> TrainingArguments:
    """``batch_size``: rows per device and step (packs, when packed); ``validate``: evaluate after every epoch;
    ``select``: keep the best validation checkpoint."""
    tc = config.train
    use_bf16 = tc.bf16 == "true" or (tc.bf16 == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=tc.epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        gradient_accumulation_steps=tc.grad_accum_steps,
        learning_rate=config.learning_rate,
        weight_decay=tc.weight_decay,
        warmup_steps=tc.warmup_ratio,
        lr_scheduler_type="constant_with_warmup" if tc.lr_scheduler == "constant" else tc.lr_scheduler,
        max_grad_norm=tc.grad_clip,
        seed=tc.seed,
        data_seed=tc.seed,
        full_determinism=tc.full_determinism,
        bf16=use_bf16,
        eval_strategy="epoch" if validate else "no",
        save_strategy="epoch",
        save_total_limit=tc.save_total_limit,
        # a resumed run keeps the early-stopping count of its checkpoint, so it stops where an uninterrupted one would
        restore_callback_states_from_checkpoint=True,
        load_best_model_at_end=select,
        metric_for_best_model=SELECTION_METRIC if select else None,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=tc.logging_steps,
        report_to=list(tc.report_to),
        run_name=str(checkpoint_dir.parent),  # the run folder: the MLflow / W&B run's name
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
