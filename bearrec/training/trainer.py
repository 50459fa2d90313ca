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
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from bearrec.checks import first_line
from bearrec.config import DecodingConfig, ExperimentConfig
from bearrec.data.dataset import RecDataset
from bearrec.decoding.latent import item_memory
from bearrec.io import disk_error, write_json
from bearrec.items.prompts import PromptEncoder
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import (
    answer_logits,
    is_encoder_decoder,
    left_pad,
    position_ids_from_mask,
    seq2seq_answer_logits,
)
from bearrec.objectives import (
    IGNORE_INDEX,
    distinct_prefixes,
    pruning_margin,
    sequence_log_probs,
)
from bearrec.objectives.apao import grouped_answer_logits

SELECTION_METRIC = "NDCG@10"


def encode_split(
    dataset: RecDataset, split: str, encoder: PromptEncoder, limit: int | None = None, seed: int = 0
) -> tuple[list[list[int]], list[int]]:
    """(prompt ids, target catalog indices) of a split, optionally a seeded subsample of ``limit`` examples."""
    histories, targets = dataset.examples(split, limit, seed)
    return encoder.prompts(histories), targets


class Collator:
    """Left-padded ``input_ids``/``attention_mask`` and answer-aligned ``labels [R, A]``, plus what the
    objective asks for:

    * ``with_prompts``: the prompts alone (``prompt_ids``/``prompt_mask``), for beam-sim's search;
    * ``negatives = K > 0``: K catalog items other than the target, drawn uniformly, answer the same
      prompt in the K rows after each example's own row (rows grouped ``1 + K`` per example, S-DPO);
    * ``trie``: ``candidates [R, A, C]``, the trie-valid next tokens of every answer position (-1
      padded), gathered from the trie on the CPU while the accelerator trains: no ``[R, A, V]`` mask;
    * ``prefix_negatives = K > 0`` (APAO pairwise): ``group_labels [N, 1 + K, A]``, each example's answer
      then K uniformly drawn other items' (left-aligned, -100 padded), and the prompts alone, so that one
      forward scores all of them after one copy of the prompt.

    ``labels[:, j]`` is the token at position ``L - A + j``: the logits of the last ``A + 1`` positions,
    minus the final one, predict exactly these tokens.
    """

    def __init__(self, pad_id: int, with_prompts: bool = False, trie: ItemTrie | None = None, negatives: int = 0,
                 answers: list[list[int]] | None = None, seed: int = 0, prefix_negatives: int = 0):
        self.pad_id, self.with_prompts, self.trie, self.negatives, self.answers = pad_id, with_prompts, trie, negatives, answers
        self.prefix_negatives = prefix_negatives
        if (negatives or prefix_negatives) and not answers:
            raise ValueError("sampling negatives needs the catalog's answers")
        self.generator = torch.Generator().manual_seed(seed)

    def _draw(self, item: int, k: int) -> list[int]:
        """K catalog items drawn uniformly with replacement, never ``item``."""
        draw = torch.randint(0, len(self.answers) - 1, (k,), generator=self.generator)  # [K] uniform, target skipped
        return (draw + (draw >= item).long()).tolist()

    def _rows(self, examples: list[dict]) -> list[dict]:
        if not self.negatives:
            return examples
        rows = []
        for e in examples:
            rows += [e] + [{"prompt": e["prompt"], "answer": self.answers[i], "item": i} for i in self._draw(e["item"], self.negatives)]
        return rows

    def _group_labels(self, examples: list[dict]) -> torch.Tensor:
        """``[N, 1 + K, A]``: each example's answer, then K negatives' (left-aligned, -100 padded)."""
        groups = [[e["answer"]] + [self.answers[i] for i in self._draw(e["item"], self.prefix_negatives)] for e in examples]
        width = max(len(a) for g in groups for a in g)
        out = torch.full((len(groups), 1 + self.prefix_negatives, width), IGNORE_INDEX, dtype=torch.long)
        for n, group in enumerate(groups):
            for g, answer in enumerate(group):
                out[n, g, : len(answer)] = torch.tensor(answer)
        return out

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows = self._rows(examples)
        input_ids, attention_mask = left_pad([e["prompt"] + e["answer"] for e in rows], self.pad_id)
        longest = max(len(e["answer"]) for e in rows)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(rows):
            labels[row, longest - len(e["answer"]) :] = torch.tensor(e["answer"])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.with_prompts or self.prefix_negatives:
            batch["prompt_ids"], batch["prompt_mask"] = left_pad([e["prompt"] for e in examples], self.pad_id)
        if self.prefix_negatives:
            batch["group_labels"] = self._group_labels(examples)
        if self.trie is not None:
            batch["candidates"] = self.trie.label_candidates(labels)  # [R, A, C]
        return batch


def pack_examples(examples: list[dict]) -> list[dict]:
    """Chains of examples whose token sequences continue each other, one training row each (``train.pack``).

    An example reads ``prompt + answer`` (answer = item tokens + EOS). When another example's prompt is exactly
    this prompt followed by this answer's item tokens (over semantic IDs: the same user one item later, since the
    prompt is the history's codes and nothing else), the longer sequence holds the shorter one as its prefix, and
    a causal model computes the shorter example's answer logits at the same positions, from the same context, in
    one forward over the longer. Chains are checked token by token, so packing never changes a logit; where no
    prompt continues another (a title prompt ends with its response header) every pack holds one example.

    Returns packs ``{"ids": the chain's longest sequence, "members": [(prompt length, answer)] of each example}``.
    """
    by_prompt: dict[tuple, list[int]] = {}
    for n, e in enumerate(examples):
        by_prompt.setdefault(tuple(e["prompt"]), []).append(n)
    for waiting in by_prompt.values():
        waiting.reverse()  # popped from the end: examples in their original order
    used = [False] * len(examples)
    packs = []
    for n in sorted(range(len(examples)), key=lambda n: len(examples[n]["prompt"])):  # chains start shortest first
        if used[n]:
            continue
        chain, used[n] = [n], True
        while True:
            e = examples[chain[-1]]
            waiting = by_prompt.get(tuple(e["prompt"] + e["answer"][:-1]), [])
            while waiting and used[waiting[-1]]:
                waiting.pop()
            if not waiting:
                break
            chain.append(waiting.pop())
            used[chain[-1]] = True
        last = examples[chain[-1]]
        packs.append({"ids": last["prompt"] + last["answer"],
                      "members": [(len(examples[c]["prompt"]), examples[c]["answer"]) for c in chain]})
    return packs


class PackedCollator:
    """Batches of packs (:func:`pack_examples`): left-padded ``input_ids``/``attention_mask`` of the packs, and per
    example, in the :class:`Collator`'s layout, ``labels [N, A]``, ``candidates [N, A, C]`` (with ``trie``) and
    ``pack_index [N, A]``: where in the flattened ``[P * L]`` logits of the packs each label's logits are."""

    def __init__(self, pad_id: int, trie: ItemTrie | None = None):
        self.pad_id, self.trie = pad_id, trie

    def __call__(self, packs: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = left_pad([p["ids"] for p in packs], self.pad_id)  # [P, L]
        width = input_ids.shape[1]
        members = [(row * width + width - len(p["ids"]) + start, answer)  # flat position of the prompt's end + 1
                   for row, p in enumerate(packs) for start, answer in p["members"]]
        longest = max(len(answer) for _, answer in members)
        labels = torch.full((len(members), longest), IGNORE_INDEX, dtype=torch.long)  # [N, A]
        index = torch.zeros((len(members), longest), dtype=torch.long)  # [N, A]
        for n, (end, answer) in enumerate(members):
            labels[n, longest - len(answer):] = torch.tensor(answer)
            index[n, longest - len(answer):] = torch.arange(end - 1, end - 1 + len(answer))  # position t predicts t + 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pack_index": index}
        if self.trie is not None:
            batch["candidates"] = self.trie.label_candidates(labels)  # [N, A, C]
        return batch


class EarlyStoppingCallback(transformers.EarlyStoppingCallback):
    """transformers' early stopping, which never ends a run before epoch ``min_epochs`` (``train.min_epochs``).

    It keeps its parent's name because the Trainer restores a callback's checkpointed state (the patience count)
    into the callback of the same class name: runs checkpointed with the parent resume into this one.
    ``min_epochs`` is not in that state; :class:`RecTrainer` carries it over to the restored callback.
    """

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float | None = 0.0,
                 min_epochs: int = 0):
        super().__init__(early_stopping_patience, early_stopping_threshold)
        self.min_epochs = min_epochs

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        stopping = control.should_training_stop  # set by something else: not ours to undo
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if not stopping and (state.epoch or 0) < self.min_epochs - 1e-6:
            control.should_training_stop = False


class RecTrainer(Trainer):
    """``Trainer`` with our objective as the loss and constrained-beam-search NDCG@10 as the evaluation."""

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean: let the Trainer divide by the accumulation steps

    def __init__(self, *args, objective, trie: ItemTrie, valid: tuple[list, list] | None, beam_width: int,
                 scoring: str = "full", decoding: DecodingConfig | None = None, memory_builder=None, reference=None,
                 group_by_length: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length
        self.objective, self.valid, self.beam_width = objective, valid, beam_width
        # decoded as evaluation will decode; the latent decoder's item memory is rebuilt from the current weights
        self.scoring, self.decoding, self.memory_builder = scoring, decoding or DecodingConfig(), memory_builder
        self.trie = trie.to(self.args.device)  # once, not on every decoding call
        self.prefix_counts = distinct_prefixes(self.trie)  # P_t of APAO's pairwise rescaling
        self.reference = reference.to(self.args.device).eval() if reference is not None else None
        self.nonfinite: dict | None = None  # the first non-finite step's diagnosis
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
        from transformers.trainer_pt_utils import LengthGroupedSampler

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
        self._parts = {"sft": 0.0, "reg": 0.0, "violated": 0.0, "seen": 0, "batches": 0, "skipped": 0}
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
            from bearrec.objectives.beam_sim import (
                align_thresholds,
                simulate_thresholds,
            )

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
        logits = self._answer_logits(model, inputs, labels, group)
        if self.reference is not None:
            with torch.no_grad():  # the frozen reference's sequence log-probabilities, [N, 1 + K]
                ref_logits = self._answer_logits(self.reference, inputs, labels, group)
                extra["reference"] = sequence_log_probs(ref_logits, labels).view(-1, group)
                del ref_logits
        loss, reg = self.objective.loss(logits, labels, extra)
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
            self._reset_parts()
        super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """NDCG@K and HR@K of the run's decoder (``decoding.decoder``, beam search by default) on the validation
        subsample."""
        from bearrec.decoding import decode
        from bearrec.distributed import map_users
        from bearrec.evaluation.metrics import ranking_metrics

        prompts, targets = self.valid
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        ids, mask = left_pad(prompts, self.processing_class.pad_token_id)
        d = self.decoding
        memory = self.memory_builder(model) if d.decoder == "latent" else None
        # each process decodes its share of the users; every process gets every user's list (distributed.py)
        found = map_users(decode, model, ids, mask, self.trie, k=self.beam_width, decoder=d.decoder,
                          scoring=self.scoring, length_penalty=d.length_penalty, node_budget=d.node_budget,
                          memory=memory, latent_variant=d.latent_variant, latent_similarity=d.latent_similarity,
                          latent_neighbors=d.latent_neighbors, batch_size=self.args.per_device_eval_batch_size)
        model.train(was_training)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in ranking_metrics(found.item_ids, torch.tensor(targets)).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def nonfinite_diagnosis(model, inputs: dict, trainer: RecTrainer) -> dict:
    """Where a batch's non-finite gradients come from, for the warning and the training log.

    Re-runs the batch's forward (no gradients) under the training's autocast with a hook on every module and
    names the first module, in call order, whose output is not finite, then once more in full precision
    (autocast off) to tell a bf16 overflow from a NaN the data or the weights carry. Also: the loss of each
    pass, the parameters whose gradients are not finite (the first 5), and the batch's shape and sequence lengths.
    """
    bad_grads = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    mask = inputs["attention_mask"]

    def run(autocast) -> tuple[str | None, float]:
        first: list[str] = []

        def hook(module, args, output, name):
            out = output[0] if isinstance(output, tuple) else getattr(output, "logits", output)
            if not first and torch.is_tensor(out) and out.is_floating_point() and not torch.isfinite(out).all():
                first.append(name)

        handles = [m.register_forward_hook(lambda mod, a, o, n=n: hook(mod, a, o, n)) for n, m in model.named_modules() if n]
        try:
            with torch.no_grad(), autocast:
                loss = trainer.compute_loss(model, inputs)
        finally:
            for h in handles:
                h.remove()
        return (first[0] if first else None), float(loss)

    parts = dict(trainer._parts)  # the re-runs must not count in the logged diagnostics
    mixed_module, mixed_loss = run(trainer.autocast_smart_context_manager())
    full_module, full_loss = run(torch.autocast(mask.device.type, enabled=False))
    trainer._parts = parts
    return {"first_nonfinite_module": mixed_module, "loss": mixed_loss,
            "first_nonfinite_module_autocast_off": full_module, "loss_autocast_off": full_loss,
            "nonfinite_grad_parameters": bad_grads[:5], "batch": list(mask.shape),
            "lengths": mask.sum(1).tolist()}


DUMP_MAX_WEIGHTS = 50_000_000  # trainable values kept with a non-finite batch (LoRA: all of them; full fine-tuning: none)


def dump_batch(model, inputs: dict, path: Path) -> Path:
    """The batch (``input.<key>``) and, up to :data:`DUMP_MAX_WEIGHTS` values, the trainable weights
    (``weight.<name>``) as they were for that forward, in one safetensors file."""
    from safetensors.torch import save_file

    tensors = {f"input.{k}": v.detach().cpu().contiguous() for k, v in inputs.items() if torch.is_tensor(v)}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if sum(p.numel() for p in trainable.values()) <= DUMP_MAX_WEIGHTS:
        tensors |= {f"weight.{n}": p.detach().cpu().contiguous() for n, p in trainable.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def flushing_denormals() -> bool:
    """Whether the calling thread flushes subnormal floats to zero (``torch.set_flush_denormal``, which has no
    getter): a subnormal times one comes out zero only then."""
    subnormal = torch.tensor([torch.finfo(torch.float32).tiny / 4])  # [1]: computed on this thread
    return bool((subnormal * 1.0).item() == 0.0)


@contextmanager
def flush_denormals(enabled: bool):
    """``train.flush_denormal``: inside the block, subnormal floats are flushed to zero on the CPU (``enabled``)
    or kept (IEEE); the calling thread's earlier mode is restored after it. A CPU that cannot flush keeps them.

    The mode is per thread and a new thread inherits its creator's, so a block opened before the process's
    first parallel operation covers the intra-op (OpenMP) threads too; opened later, it covers the calling
    thread only (one-thread runs, such as ``compare``'s parallel jobs, entirely).
    """
    before = flushing_denormals()
    switched = enabled != before and torch.set_flush_denormal(enabled)
    try:
        yield
    finally:
        if switched:
            torch.set_flush_denormal(before)


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
            self.epochs = [e for e in self._read() if e["epoch"] <= reached + 1e-6]

    def _read(self) -> list[dict]:
        """The epochs logged so far; a damaged log is moved aside with a warning (the run resumes, and its log
        starts again at the resumed epoch)."""
        try:
            epochs = json.loads(self.path.read_text())
            if isinstance(epochs, list) and all(isinstance(e, dict) and isinstance(e.get("epoch"), (int, float))
                                                for e in epochs):
                return epochs
            problem = "not a list of epochs"
        except (OSError, ValueError) as err:
            problem = first_line(err, 80)
        aside = next(path for k in range(1, 10_000) if not (path := self.path.with_name(
            f"damaged-{k}-{self.path.name}" if k > 1 else f"damaged-{self.path.name}")).exists())
        self.path.rename(aside)
        warnings.warn(f"{self.path}: damaged ({problem}); moved aside to {aside.name}, and the run's epoch log "
                      "restarts at the resumed epoch")
        return []

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


def load_reference(objective, model, tokenizer):
    """The frozen reference of S-DPO (the SFT run in ``objective.reference``); ``model`` starts from its weights.

    The run's tokenizer must be the one this run trains with (for the tiny model: the same dataset).
    """
    from bearrec.lm.models import load_model

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
    examples = [{"prompt": p, "answer": encoder.answers[t], "item": t} for p, t in zip(prompts, targets)]
    objective = config.objective_config()
    objective_negatives = getattr(objective, "prefix_negatives", 0)  # APAO pairwise
    packs = _packs(examples, model, tc.pack, tc.objective, objective, objective_negatives)
    has_valid = len(dataset.splits["valid"]) > 0 and tc.valid_users != 0  # valid_users: 0 turns validation off
    valid = encode_split(dataset, "valid", encoder, tc.valid_users, tc.seed) if has_valid else None
    reference = load_reference(objective, model, tokenizer) if objective.negatives else None
    use_bf16 = tc.bf16 == "true" or (tc.bf16 == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    select = tc.select_best and valid is not None
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=tc.epochs,
        # packed: as many packs as hold batch_size examples on average
        per_device_train_batch_size=max(1, round(tc.batch_size * len(packs) / len(examples))) if packs else tc.batch_size,
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
        eval_strategy="epoch" if valid is not None else "no",
        save_strategy="epoch",
        save_total_limit=tc.save_total_limit,
        # a resumed run keeps the early-stopping count of its checkpoint, so it stops where an uninterrupted one would
        restore_callback_states_from_checkpoint=True,
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
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn(f"{tc.objective} {{task.description}}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        epoch_log = EpochLog(progress, checkpoint_dir, resume_from)
        callbacks = [epoch_log]
        if select and tc.patience > 0:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=tc.patience, min_epochs=tc.min_epochs))
        trainer = RecTrainer(
            model=model, args=args, train_dataset=packs or examples, eval_dataset=valid[0] if valid else None,
            data_collator=PackedCollator(tokenizer.pad_token_id, trie if objective.needs_candidates else None) if packs
            else Collator(tokenizer.pad_token_id, objective.needs_search or is_encoder_decoder(model),
                          trie if objective.needs_candidates else None, objective.negatives,
                          encoder.answers if objective.negatives or objective_negatives else None, tc.seed,
                          objective_negatives),
            processing_class=tokenizer, callbacks=callbacks, objective=objective, trie=trie, valid=valid,
            beam_width=tc.valid_beam_width, scoring=config.scoring, decoding=config.decoding, reference=reference,
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
        "seconds_per_epoch": sum(e["seconds"] for e in epochs) / len(epochs) if epochs else math.nan,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_valid_ndcg10": trainer.state.best_metric,
        "global_step": trainer.state.global_step,
        "log_history": history,
        "nonfinite_skipped": sum(h.get("nonfinite_skipped", 0) for h in history),
        "nonfinite_first": trainer.nonfinite,
    }
