"""Fine-tuning through the Hugging Face ``Trainer``: only the loss and the model selection are ours.

The Trainer brings gradient accumulation, bf16, checkpoints with optimizer/scheduler/RNG state
(``resume_from_checkpoint``), logging to TensorBoard, MLflow or W&B (``train.report_to``), and multi-GPU
training under ``accelerate launch`` or ``torchrun`` (DDP, FSDP or DeepSpeed through their standard configs)
with no code of our own.

Batches are left-padded so that every answer (title + EOS) ends at the last position: the model then
computes logits for the answer positions only (``logits_to_keep``), which is all the objectives need.
At the end of every epoch the model is evaluated with constrained beam search on a validation
subsample; the checkpoint with the best NDCG@10 is kept and training stops after ``patience`` epochs
without improvement.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import PrinterCallback, Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from bearrec.checks import first_line
from bearrec.config import ExperimentConfig
from bearrec.data.dataset import RecDataset
from bearrec.decoding import decode
from bearrec.decoding.config import DecodingConfig
from bearrec.decoding.latent import item_memory
from bearrec.distributed import map_users
from bearrec.evaluation.metrics import ranking_metrics
from bearrec.io import disk_error
from bearrec.items.alignment import alignment_examples
from bearrec.items.prompts import encode_split
from bearrec.items.space import ItemSpace
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import (
    IGNORE_INDEX,
    Prompts,
    answer_logits,
    is_encoder_decoder,
    position_ids_from_mask,
    seq2seq_answer_logits,
)
from bearrec.lm.models import load_model
from bearrec.objectives import distinct_prefixes, pruning_margin, sequence_log_probs
from bearrec.objectives.apao import grouped_answer_logits
from bearrec.objectives.beam_sim import align_thresholds, simulate_thresholds
from bearrec.training.arguments import training_arguments
from bearrec.training.callbacks import EarlyStoppingCallback, EpochLog
from bearrec.training.collators import AlignmentDraw, Collator, PackedCollator, pack_examples
from bearrec.training.diagnostics import dump_batch, nonfinite_diagnosis
from bearrec.training.tracking import tracker_environment, tracker_runs


class RecTrainer(Trainer):
    """``Trainer`` with our objective as the loss and constrained-beam-search NDCG@10 as the evaluation."""

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean: let the Trainer divide by the accumulation steps

    def __init__(self, *args, objective, trie: ItemTrie, valid: Prompts | None, valid_targets: list[int] | None,
                 beam_width: int, decoding: DecodingConfig | None = None, memory_builder=None, reference=None,
                 group_by_length: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length
        self.objective, self.valid, self.valid_targets, self.beam_width = objective, valid, valid_targets, beam_width
        # decoded as evaluation will decode (``decoding``: the run's, its scoring resolved); the latent decoder's
        # item memory is rebuilt from the current weights
        self.decoding, self.memory_builder = decoding or DecodingConfig(), memory_builder
        self.trie = trie.to(self.args.device)  # once, not on every decoding call
        self.prefix_counts = distinct_prefixes(self.trie)  # P_t of APAO's pairwise rescaling
        self.reference = reference.to(self.args.device).eval() if reference is not None else None
        self.nonfinite: dict | None = None  # the first non-finite step's diagnosis
        if isinstance(self.model, PeftModel):  # checkpoints keep what trains, as save_model does
            self.model.save_pretrained = functools.partial(self.model.save_pretrained, save_embedding_layers=False)
        self._reset_parts()

    def _issue_warnings_after_load(self, load_result):
        """The Trainer's check of a loaded checkpoint, without its false alarm on tied weights.

        A checkpoint stores a tied matrix once (the tiny Llama's embedding, which is also its output layer; the
        T5's shared embedding, also its encoder's, decoder's and output one), so loading it reports the tied names
        missing. The Trainer only excuses names listed in ``_keys_to_ignore_on_save``, which transformers 5 no
        longer fills for tied weights, and warns "There were missing keys" on every resume and best-model load
        though nothing is lost (transformers#27972). Tied names are excused here and tied again; any other
        missing or unexpected key still warns.
        """
        tied = set(getattr(self.accelerator.unwrap_model(self.model), "all_tied_weights_keys", None) or ())
        missing = [k for k in load_result.missing_keys if k not in tied]
        if len(missing) < len(load_result.missing_keys):
            self.model.tie_weights()
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def _load_callback_state(self) -> None:
        """The checkpoint's callback states (the early-stopping count); the Trainer rebuilds the early stopping
        from the checkpointed arguments alone, so this run's ``min_epochs`` is carried over from the one it replaces."""
        ours = next((c.min_epochs for c in self.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)), None)
        super()._load_callback_state()
        if ours is not None:
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, EarlyStoppingCallback):
                    callback.min_epochs = ours

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint save, all or nothing: a save that fails (a full disk, a read-only folder)
        removes the checkpoint folder it had begun and is one ``OSError`` naming it, so the run folder holds only
        complete checkpoints to resume from."""
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        existed = folder.exists()
        try:
            super()._save_checkpoint(model, trial)
        except Exception as err:
            named = disk_error(folder, err)  # before the removal frees space
            if not existed:
                shutil.rmtree(folder, ignore_errors=True)
            if named is None:
                raise
            raise named from err

    def _collator_rng_file(self, checkpoint: str) -> Path:
        return Path(checkpoint) / f"collator_rng_{self.args.process_index}.pth"

    def _save_rng_state(self, output_dir: str) -> None:
        """The Trainer's RNG states, plus the collator's generator (S-DPO's and APAO pairwise's negatives).

        Without it a resumed run would draw the first epoch's negatives again (the collator is built anew, from
        the seed), and ``--resume`` would not reach the uninterrupted run's weights.
        """
        super()._save_rng_state(output_dir)
        generator = getattr(self.data_collator, "generator", None)
        if generator is not None:
            torch.save(generator.get_state(), self._collator_rng_file(output_dir))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        generator = getattr(self.data_collator, "generator", None)
        if checkpoint is not None and generator is not None and self._collator_rng_file(checkpoint).is_file():
            generator.set_state(torch.load(self._collator_rng_file(checkpoint)))

    def _get_train_sampler(self, train_dataset=None):
        """``train.group_by_length``: the Trainer's length-grouped sampler, with our examples' token counts."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    lengths=[len(e["ids"]) if "ids" in e else len(e["prompt"]) + len(e["answer"])
                                             for e in dataset])

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step, then a guard against non-finite gradients.

        One bf16 batch whose gradients come out NaN or infinite would otherwise reach the weights through the
        optimizer and end learning for the rest of the run without an error (every later loss NaN, every item
        list empty). Such a micro-batch is dropped together with the gradients accumulated so far in its step:
        without gradient accumulation the optimizer skips the step, with it the step goes on with the micro-batches
        after that one. Counted in the logs as ``nonfinite_skipped``, and the first one is
        diagnosed (:func:`nonfinite_diagnosis`), printed, and kept to be replayed: its batch and the trainable
        weights it met go to ``<checkpoints>/nonfinite-step<N>.safetensors`` (``benchmarks/gpu/nan_probe.py``
        re-runs it under each attention kernel). One host sync per micro-batch.
        """
        loss = super().training_step(model, inputs, num_items_in_batch)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            if self.nonfinite is None:
                step = self.state.global_step + 1
                self.nonfinite = {"step": step, **nonfinite_diagnosis(model, inputs, self)}
                if self.is_world_process_zero():
                    self.nonfinite["dump"] = str(dump_batch(model, inputs, Path(self.args.output_dir) /
                                                            f"nonfinite-step{step}.safetensors"))
                print(f"warning: non-finite gradients at step {self.nonfinite['step']}; the step is skipped "
                      f"(diagnosis: {json.dumps(self.nonfinite)})", flush=True)
            model.zero_grad(set_to_none=True)
            self._parts["skipped"] += 1
        return loss

    def _reset_parts(self) -> None:
        self._parts = {"sft": 0.0, "reg": 0.0, "violated": 0.0, "seen": 0, "batches": 0, "skipped": 0, "align": 0.0,
                       "align_batches": 0}
        self._since = time.perf_counter()

    def _logging_step(self) -> bool:
        """Whether the optimizer step in progress ends with a log line (the Trainer logs after step k when
        k % logging_steps == 0): the pruning diagnostics are computed on those steps only."""
        every = self.args.logging_steps
        return every > 0 and (self.state.global_step + 1) % max(int(every), 1) == 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        extra = {"step": self.state.global_step}
        if self.objective.needs_search:
            raw = simulate_thresholds(model, inputs["prompt_ids"], inputs["prompt_mask"], self.trie,
                                      beam_width=self.objective.beam_width)
            extra["thresholds"] = align_thresholds(raw, labels)
        if "candidates" in inputs:
            extra["candidates"] = inputs["candidates"]
        group = 1 + self.objective.negatives if self.reference is not None else 1
        if "group_labels" in inputs:  # APAO pairwise: the positive and its negatives after one copy of the prompt
            group = inputs["group_labels"].shape[1]
            labels = inputs["group_labels"].flatten(0, 1)  # [N(1+K), A], rows grouped 1 + K per example
            extra["prefix_counts"] = self.prefix_counts
        examples = labels.shape[0] // group  # next-item examples of the batch (before any alignment examples)
        logits = self._answer_logits(model, inputs, labels, group)
        if self.reference is not None:
            with torch.no_grad():  # the frozen reference's sequence log-probabilities, [N, 1 + K]
                ref_logits = self._answer_logits(self.reference, inputs, labels, group)
                extra["reference"] = sequence_log_probs(ref_logits, labels).view(-1, group)
                del ref_logits
        loss, reg = self.objective.loss(logits, labels, extra)
        if "align_ids" in inputs:  # train.alignment_ratio: the batch's share of alignment examples, plain cross-entropy
            align_labels = inputs["align_labels"]  # [M, A]
            align_logits = answer_logits(model, inputs["align_ids"], inputs["align_mask"], align_labels.shape[1])
            align = F.cross_entropy(align_logits.flatten(0, 1).float(), align_labels.flatten(), ignore_index=IGNORE_INDEX)
            loss = (examples * loss + len(align_labels) * align) / (examples + len(align_labels))
            if model.training:  # its mean over the batches that drew alignment examples (a small ratio skips some)
                self._parts["align"] += float(align.detach())
                self._parts["align_batches"] += 1
        if model.training:
            p = self._parts
            p["seen"] += inputs["attention_mask"].sum()  # a device tensor: no host sync on ordinary steps
            if self._logging_step():
                with torch.no_grad():  # what the logs show: SFT and regulariser parts, share of tokens beam search would prune
                    positive = labels[::group]  # S-DPO: the positives' rows
                    # trie-valid top B, as constrained search ranks them (the collator's, when the batch has them)
                    candidates = (inputs["candidates"][::group] if "candidates" in inputs
                                  else self.trie.label_candidates(positive))
                    ce, delta, can_prune, _ = pruning_margin(logits.detach()[::group], positive,
                                                             getattr(self.objective, "beam_width", 10), candidates)
                    p["sft"] += float(ce.mean())
                    p["reg"] += float(reg)
                    p["violated"] += float(((delta > 0) & can_prune).float().mean())
                    p["batches"] += 1
        return (loss, logits) if return_outputs else loss

    @staticmethod
    def _answer_logits(model, inputs: dict, labels: torch.Tensor, group: int) -> torch.Tensor:
        """``[R, A, V]`` logits predicting ``labels``: for an encoder-decoder, the prompt to the encoder (the
        collator's ``prompt_ids``, one per ``group`` rows); for a decoder-only model, packed chains of examples
        (``pack_index``), APAO pairwise's answer groups after one copy of the prompt (``group_labels``), else
        prompt and answer as one sequence."""
        if is_encoder_decoder(model):
            return seq2seq_answer_logits(model, inputs["prompt_ids"], inputs["prompt_mask"], labels, group)
        if "pack_index" in inputs:  # train.pack: every example's answer logits from one forward over its chain
            mask = inputs["attention_mask"]
            logits = model(input_ids=inputs["input_ids"], attention_mask=mask,
                           position_ids=position_ids_from_mask(mask)).logits  # [P, L, V]
            return logits.flatten(0, 1)[inputs["pack_index"]]  # [N, A, V]
        if "group_labels" in inputs:
            return grouped_answer_logits(model, inputs["prompt_ids"], inputs["prompt_mask"],
                                         inputs["group_labels"]).flatten(0, 1)  # [N(1+K), A, V]
        return answer_logits(model, inputs["input_ids"], inputs["attention_mask"], labels.shape[1])

    def log(self, logs: dict, *args, **kwargs) -> None:
        p = self._parts
        if "loss" in logs and p["batches"]:
            elapsed = time.perf_counter() - self._since
            logs.update({"nonfinite_skipped": p["skipped"], "loss_sft": p["sft"] / p["batches"], "loss_regulariser": p["reg"] / p["batches"],
                         "violated_token_share": p["violated"] / p["batches"], "tokens_per_second": float(p["seen"]) / elapsed})
            if p["align_batches"]:
                logs["loss_alignment"] = p["align"] / p["align_batches"]
            self._reset_parts()
        super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """NDCG@K and HR@K of the run's decoder (``decoding.decoder``, beam search by default) on the validation
        subsample."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        memory = self.memory_builder(model) if self.decoding.decoder == "latent" else None
        # each process decodes its share of the users; every process gets every user's list (distributed.py)
        found = map_users(decode, model, self.valid, self.trie, self.beam_width, self.decoding, memory,
                          self.args.per_device_eval_batch_size)
        model.train(was_training)
        found_metrics = ranking_metrics(found.item_ids, torch.tensor(self.valid_targets))
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in found_metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def load_reference(objective, model, tokenizer):
    """The frozen reference of S-DPO (the SFT run in ``objective.reference``); ``model`` starts from its weights.

    The run's tokenizer must be the one this run trains with (for the tiny model: the same dataset).
    """
    folder = objective.reference
    if not folder or not (Path(folder) / "model").is_dir():
        raise ValueError(f"sdpo.reference must be a finished run folder (with model/): got {folder!r}")
    reference, ref_tokenizer = load_model(Path(folder) / "model")
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"sdpo.reference {folder}: its tokenizer differs from this run's (same model and data needed)")
    try:
        model.load_state_dict(reference.state_dict())
    except RuntimeError as err:
        raise ValueError(f"sdpo.reference {folder}: its weights do not fit this run's model ({first_line(err)})") from None
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


def _packs(examples: list[dict], model, pack: str, name: str, objective, prefix_negatives: int) -> list[dict] | None:
    """``train.pack``'s training rows (None: unpacked). Where packing cannot give the objective its inputs,
    ``pack: true`` is a one-line error and ``pack: auto`` trains unpacked."""
    if pack == "false":
        return None
    why = ("an encoder-decoder model reads the history in its encoder" if is_encoder_decoder(model) else
           "beam-sim searches from each prompt" if objective.needs_search else
           "its negatives answer each prompt separately" if objective.negatives or prefix_negatives else None)
    if why and pack == "true":
        raise ValueError(f"train.pack: the objective {name!r} on this model cannot be packed ({why}); "
                         "set train.pack: auto or false")
    return None if why else pack_examples(examples)


def _alignment(model, space: ItemSpace, dataset: RecDataset, ratio: float) -> AlignmentDraw | None:
    """``train.alignment_ratio``'s draw of title <-> codes examples (None at 0)."""
    if not ratio:
        return None
    if is_encoder_decoder(model):
        raise ValueError("train.alignment_ratio: alignment examples train causal LMs; this model is an encoder-decoder")
    examples = alignment_examples(space.tokenizer, dataset, space.encoder.titles)
    return AlignmentDraw(examples, ratio, space.tokenizer.pad_token_id)


def train_model(
    model,
    space: ItemSpace,
    dataset: RecDataset,
    config: ExperimentConfig,
    checkpoint_dir: Path,
    resume_from: str | None = None,
    console=None,
) -> dict:
    """Fine-tune ``model`` on the train split of ``dataset`` in the run's item ``space``; returns the training log.
    The best (or last) model stays in ``model``."""
    tc = config.train
    tokenizer, encoder, trie = space.tokenizer, space.encoder, space.trie
    prompts, targets = encode_split(dataset, "train", encoder, tc.max_train_examples, tc.seed)
    if not prompts:
        raise ValueError("the train split is empty")
    examples = [{"prompt": p, "answer": encoder.answers[t], "item": t} for p, t in zip(prompts, targets)]
    objective = config.objective_config()
    objective_negatives = getattr(objective, "prefix_negatives", 0)  # APAO pairwise
    packs = _packs(examples, model, tc.pack, tc.objective, objective, objective_negatives)
    alignment = _alignment(model, space, dataset, tc.alignment_ratio)
    has_valid = len(dataset.splits["valid"]) > 0 and tc.valid_users != 0  # valid_users: 0 turns validation off
    valid = dataset.examples("valid", tc.valid_users, tc.seed) if has_valid else None  # (histories, targets)
    reference = load_reference(objective, model, tokenizer) if objective.negatives else None
    select = tc.select_best and valid is not None
    # packed: as many packs per batch as hold batch_size examples on average
    batch_size = max(1, round(tc.batch_size * len(packs) / len(examples))) if packs else tc.batch_size
    tracker_environment(tc.report_to)
    args = training_arguments(config, checkpoint_dir, batch_size, validate=valid is not None, select=select)
    columns = (TextColumn(f"{tc.objective} {{task.description}}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        epoch_log = EpochLog(progress, checkpoint_dir, resume_from)
        callbacks = [epoch_log]
        if select and tc.patience > 0:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=tc.patience, min_epochs=tc.min_epochs))
        trainer = RecTrainer(
            model=model, args=args, train_dataset=packs or examples, eval_dataset=valid[0] if valid else None,
            data_collator=PackedCollator(tokenizer.pad_token_id, trie if objective.needs_candidates else None,
                                         alignment, tc.seed) if packs
            else Collator(tokenizer.pad_token_id, objective.needs_search or is_encoder_decoder(model),
                          trie if objective.needs_candidates else None, objective.negatives,
                          encoder.answers if objective.negatives or objective_negatives else None, tc.seed,
                          objective_negatives, alignment),
            processing_class=tokenizer, callbacks=callbacks, objective=objective, trie=trie,
            valid=space.prompts(valid[0]) if valid else None, valid_targets=valid[1] if valid else None,
            beam_width=tc.valid_beam_width, decoding=config.decoding.with_scoring(config.scoring), reference=reference,
            memory_builder=lambda m: item_memory(m, encoder, dataset, None, 64)[0], group_by_length=tc.group_by_length,
        )
        trainer.remove_callback(PrinterCallback)  # our progress bar and per-epoch lines replace its raw dicts
        trainer.train(resume_from_checkpoint=resume_from)
    model.eval()
    history = [h for h in trainer.state.log_history if "loss" in h]
    epochs = epoch_log.epochs
    return {
        "examples": len(examples),
        "packs": len(packs) if packs else None,
        "truncated_prompts": encoder.truncated,
        "epochs": epochs,
        "seconds_per_epoch": EpochLog.seconds_per_epoch(epochs),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_valid_ndcg10": trainer.state.best_metric,
        "global_step": trainer.state.global_step,
        "log_history": history,
        "nonfinite_skipped": sum(h.get("nonfinite_skipped", 0) for h in history),
        "nonfinite_first": trainer.nonfinite,
        "trackers": tracker_runs(tc.report_to),  # the MLflow / W&B runs it logged to
    }
