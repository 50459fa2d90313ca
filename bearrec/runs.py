"""Run folders: what a training run leaves on disk, how it resumes, and how evaluation finds it again.

A run folder holds:

* ``config.yaml``: the resolved :class:`~bearrec.config.ExperimentConfig`; ``run.json``: dataset folder,
  prompt domain, model name;
* ``tokenizer/``: saved before training starts (the tiny model's tokenizer is trained on the data, and a
  resumed run must reuse it);
* ``checkpoints/checkpoint-<step>/``: the Trainer's checkpoints (weights or LoRA adapters in
  safetensors, optimizer, scheduler, RNG state), and their TensorBoard logs under ``checkpoints/runs/``;
* ``model/``: the final (best-validation) model and tokenizer, written atomically at the end;
  ``train_log.json``: per-epoch seconds and validation metrics.

A checkpoint counts only once its ``trainer_state.json`` (written last) parses: a run killed while
saving resumes from the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from transformers import AutoTokenizer

from bearrec import distributed
from bearrec.checks import first_line, short
from bearrec.config import ExperimentConfig, load_config
from bearrec.data.dataset import RecDataset
from bearrec.decoding.config import DecodingOverrides
from bearrec.decoding.latent import MEMORY_FILE
from bearrec.evaluation.evaluate import EvalSettings, evaluate
from bearrec.io import DISK_ERRNOS, atomic_file, atomic_folder, check_replaceable, folder_kind, folder_lock, write_json
from bearrec.items.prompts import PromptEncoder, PromptTemplate
from bearrec.items.semantic_ids import code_tokenizer, code_tokens, dataset_codes
from bearrec.items.space import ItemSpace
from bearrec.lm.code_tokens import adapt_for_codes, add_code_tokens
from bearrec.lm.models import TINY, build_tiny_model, count_parameters, load_model, save_model, tiny_model_for
from bearrec.training.checkpoints import last_checkpoint
from bearrec.training.diagnostics import flush_denormals
from bearrec.training.trainer import train_model


def tokenizer_corpus(dataset: RecDataset, template: PromptTemplate) -> list[str]:
    """Text the tiny model's tokenizer is trained on: every title and the prompt's fixed wording."""
    return dataset.titles + [template.render(dataset.titles[:3])] * 50


def item_space(tokenizer, dataset: RecDataset, config: ExperimentConfig) -> ItemSpace:
    """The item space a run trains and decodes in (titles or semantic IDs under the run's tokenizer, the Figure 2
    prompt, optionally in the chat template, or the history's codes, bare or after an instruction), its catalog
    tokenised once."""
    return ItemSpace.build(tokenizer, dataset, config.representation, config.train.max_prompt_tokens,
                           config.use_chat_template, config.sid_prompt)


def new_model(config: ExperimentConfig, dataset: RecDataset, tokenizer=None):
    """(model, tokenizer) to fine-tune: the tiny default built for ``dataset``, or a pretrained LM (+ LoRA), over
    titles or over the dataset's semantic IDs as new tokens. ``tokenizer``: the one a resumed run saved."""
    if config.representation == "semantic-ids" and config.model == TINY:
        tokenizer = tokenizer or code_tokenizer(dataset_codes(dataset))
        return build_tiny_model(tokenizer, config.tiny, config.train.seed), tokenizer
    if config.representation == "semantic-ids":
        return _code_model(config, dataset, tokenizer)
    if config.model == TINY:
        if tokenizer is not None:
            return build_tiny_model(tokenizer, config.tiny, config.train.seed), tokenizer
        return tiny_model_for(tokenizer_corpus(dataset, PromptTemplate(dataset.domain)), config.tiny, config.train.seed)
    model, loaded_tokenizer = load_model(config.model, lora=config.lora_settings if config.use_lora else None)
    return model, tokenizer or loaded_tokenizer


def _code_model(config: ExperimentConfig, dataset: RecDataset, saved_tokenizer=None):
    """A pretrained LM with the catalog's code tokens added (their rows as ``code_tokens.init`` says), wrapped for
    what trains (:func:`~bearrec.lm.code_tokens.adapt_for_codes`). The tokens are added the same way on every
    start, so a resumed run checks that they are the ones its saved tokenizer holds."""
    torch.manual_seed(config.train.seed)  # LoRA's initial weights
    model, tokenizer = load_model(config.model)
    codes = dataset_codes(dataset)
    tokens = code_tokens(codes)
    title_ids = _title_ids(tokenizer, dataset, codes) if config.code_tokens.init == "titles" else None
    new_ids = add_code_tokens(model, tokenizer, tokens, config.code_tokens.init, title_ids)
    if saved_tokenizer is not None and saved_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"model {config.model!r}: its tokenizer with the code tokens differs from the one the run "
                         "saved (tokenizer/); resume with the model and data the run started with")
    lora = config.lora_settings if config.use_lora else None
    return adapt_for_codes(model, new_ids, lora, config.code_tokens), tokenizer


def _title_ids(tokenizer, dataset: RecDataset, codes: list[list[int]]) -> dict[str, list[list[int]]]:
    """``code_tokens.init: titles``: code token -> the title token ids of the titled items carrying it."""
    titled = dataset.titled_indices
    if not titled:
        raise ValueError("code_tokens.init: titles needs item titles, and this catalog has none (use mean)")
    encoded = tokenizer([dataset.titles[i] for i in titled], add_special_tokens=False)["input_ids"]
    out: dict[str, list[list[int]]] = {}
    for i, ids in zip(titled, encoded):
        for token in code_tokens([codes[i]]):  # this item's tokens (one per level)
            out.setdefault(token, []).append(ids)
    return out


def dataset_check(run_dir: Path, meta: dict, dataset: RecDataset, purpose: str, allow_other_data: bool = False) -> None:
    """Refuse a dataset whose content differs from the one ``run_dir`` was trained on (``run.json``'s fingerprint),
    unless ``allow_other_data``. ``purpose`` words the way out (how to use another dataset anyway)."""
    recorded, was = meta.get("dataset_fingerprint"), meta.get("dataset_files") or {}
    if dataset.fingerprint is None:
        return
    for name, value, kind in (("dataset_fingerprint", recorded, str), ("dataset_files", was, dict)):
        if value is not None and not isinstance(value, kind):
            problem = (f"{run_dir / 'run.json'}: {name} is damaged ({short(value)}); bearrec cannot tell whether the "
                       "dataset is the one the run was trained on")
            if not allow_other_data:
                raise ValueError(problem + " (pass --allow-other-data to use it anyway)")
            warnings.warn(problem)
            return
    if not recorded:
        warnings.warn(f"{run_dir / 'run.json'}: records no dataset fingerprint (written by an earlier bearrec); "
                      "the dataset is not checked against the one the run was trained on")
        return
    if recorded == dataset.fingerprint:
        return
    changed = ", ".join(name for name, digest in dataset.file_digests.items() if was.get(name) != digest)
    trained_on = meta.get("dataset_dir")
    same = trained_on and dataset.folder and Path(trained_on).resolve() == Path(dataset.folder).resolve()
    what = (f"{changed or 'its content'} changed since {run_dir} was trained on it" if same else
            f"not the data {run_dir} was trained on ({trained_on}; {changed or 'the content'} differ)")
    fingerprints = f"dataset fingerprint {dataset.fingerprint[:12]}, run.json records {recorded[:12]}"
    if allow_other_data:
        warnings.warn(f"--allow-other-data: {dataset.folder}: {what} ({fingerprints}); using its catalog")
        return
    raise ValueError(f"{dataset.folder}: {what}: {fingerprints}; {purpose}")


def _check_sequence_length(model, encoder: PromptEncoder, dataset: RecDataset, config: ExperimentConfig) -> None:
    """Refuse titles so long that prompt + answer would run past the model's positions."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not limit:
        return
    lengths = [len(a) for a in encoder.answers]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] + config.train.max_prompt_tokens > limit:
        item, what = dataset.items["item_id"].iat[longest], ("codes" if config.representation == "semantic-ids"
                                                              else "title")
        raise ValueError(f"item {item!r}: its {what} + EOS are {lengths[longest]} tokens; with train.max_prompt_tokens="
                         f"{config.train.max_prompt_tokens} a training sequence can reach "
                         f"{lengths[longest] + config.train.max_prompt_tokens} tokens, beyond the model's {limit} "
                         f"positions (lower train.max_prompt_tokens{', or shorten that title' if what == 'title' else ''})")


def train_run(config: ExperimentConfig, out_dir: str | os.PathLike, resume: bool = False, overwrite: bool = False,
              dataset: RecDataset | None = None, console=None) -> dict:
    """Train one model into the run folder ``out_dir``; with ``resume``, continue from its last checkpoint.

    Everything is checked (config, dataset, model, trie, output folder) before the run folder is written,
    and the folder's first content (config, tokenizer, run.json) appears in one atomic step: a failed start
    leaves nothing behind. ``overwrite`` replaces an earlier run folder (never anything else).
    """
    out_dir = Path(out_dir)
    if resume and not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: no run to resume (no such folder)")
    with writer_lock(out_dir):
        return _train_run(config, out_dir, resume, overwrite, dataset, console)


def writer_lock(folder: Path):
    """The one-writer lock of a run folder (:func:`~bearrec.io.folder_lock`), taken by the main process only:
    under a launcher every process works on the same folder."""
    return folder_lock(folder, "run") if distributed.is_main() else contextlib.nullcontext()


def _train_run(config, out_dir: Path, resume: bool, overwrite: bool, dataset: RecDataset | None, console) -> dict:
    checkpoint = None
    if resume:
        if folder_kind(out_dir) != "run":
            raise FileNotFoundError(f"{out_dir}: no run to resume (not a bearrec run folder)")
        if not (out_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{out_dir}: no run to resume ({out_dir / 'config.yaml'} is missing)")
        config = load_config(out_dir / "config.yaml")
        checkpoint = last_checkpoint(out_dir / "checkpoints")
    elif (out_dir / "config.yaml").is_file() and not overwrite:
        raise FileExistsError(f"{out_dir}: already holds a run; pass --resume to continue it, or choose another --out")
    else:
        check_replaceable(out_dir, "run")
    config.validate()
    if not config.data:
        raise ValueError("no dataset: pass DATA or set 'data' in the config")
    data_dir = Path(config.data).resolve()
    if out_dir.resolve() == data_dir or data_dir in out_dir.resolve().parents:
        raise ValueError(f"{out_dir}: is inside the dataset folder {config.data}; choose a run folder outside it")
    # from before the model is built, so that the threads the run creates inherit the mode (train.py)
    with flush_denormals(config.train.flush_denormal):
        dataset = dataset or RecDataset.load(config.data)
        if resume:
            dataset_check(out_dir, _run_meta(out_dir), dataset, "a run resumes only on the data it started on "
                          "(prepare it again as it was, or train a new run)")
            if console:
                console.print(f"resuming {out_dir} from {checkpoint or 'the start (no complete checkpoint yet)'}")
        if len(dataset.splits["train"]) == 0:
            raise ValueError(f"{config.data}: the train split is empty; nothing to train on")
        saved_tokenizer = AutoTokenizer.from_pretrained(out_dir / "tokenizer") if resume and (out_dir / "tokenizer").is_dir() else None
        model, tokenizer = new_model(config, dataset, saved_tokenizer)
        space = item_space(tokenizer, dataset, config)  # fails before anything is written if titles collide
        _check_sequence_length(model, space.encoder, dataset, config)

        distributed.barrier()  # several processes: all have checked the folder before the main one writes it
        if not resume:
            def start_folder():
                with atomic_folder(out_dir, "run") as tmp:
                    config.save(tmp / "config.yaml")
                    tokenizer.save_pretrained(tmp / "tokenizer")
                    write_json(tmp / "run.json", {"model": config.model, "dataset_dir": str(data_dir),
                                                  "domain": dataset.domain, "objective": config.train.objective,
                                                  "dataset_fingerprint": dataset.fingerprint,
                                                  "dataset_files": dataset.file_digests})

            distributed.on_main(start_folder)
        try:
            log = train_model(model, space, dataset, config, out_dir / "checkpoints", checkpoint, console)
        except OSError as err:
            if not resume and err.errno in DISK_ERRNOS and last_checkpoint(out_dir / "checkpoints") is None:
                distributed.on_main(lambda: shutil.rmtree(out_dir))  # this command's new run, with nothing to resume
            raise
        log["parameters"] = count_parameters(model)

        def finish_folder():
            save_model(model, tokenizer, out_dir / "model")
            write_json(out_dir / "train_log.json", log)

        distributed.on_main(finish_folder)
    return log


def _run_meta(run_dir: Path) -> dict:
    try:
        meta = json.loads((run_dir / "run.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, RecursionError) as err:
        raise ValueError(f"{run_dir / 'run.json'}: unreadable ({first_line(err)})") from None
    return meta


def load_run(run_dir: str | os.PathLike, dataset_dir: str | os.PathLike | None = None, dataset: RecDataset | None = None,
             allow_other_data: bool = False):
    """(model, tokenizer, dataset, config) of a finished run, with the dataset it was trained on (checked by
    content against ``run.json``'s fingerprint).

    ``dataset_dir`` (or an already loaded ``dataset``) replaces the recorded folder: a folder with the same
    content is accepted; other content needs ``allow_other_data``, and a warning names the catalog used.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file() or not (run_dir / "model").is_dir():
        raise FileNotFoundError(f"{run_dir}: not a finished bearrec run (no run.json or model/); train one with `bearrec train`")
    meta = _run_meta(run_dir)
    config = load_config(run_dir / "config.yaml")
    source = dataset_dir or meta.get("dataset_dir")
    if dataset is None and not source:
        raise ValueError(f"{run_dir / 'run.json'}: names no dataset folder; pass --data")
    dataset = dataset or RecDataset.load(source)
    dataset_check(run_dir, meta, dataset, "pass --allow-other-data to use it anyway" if dataset_dir is not None else
                  "prepare it again as it was, or pass --data with the dataset the run was trained on",
                  allow_other_data)
    model, tokenizer = load_model(run_dir / "model")
    model.to(distributed.device()).eval()
    return model, tokenizer, dataset, config


def evaluate_run(run_dir, settings: EvalSettings, overrides: DecodingOverrides | None = None, data=None,
                 console=None, allow_other_data: bool = False) -> dict:
    """Evaluate a run folder on a split; written to ``eval_<split>.json`` (and per user to ``eval_<split>_users.csv``),
    or for ``decoder`` ``exact`` / ``latent`` (see :func:`~bearrec.evaluation.evaluate.evaluate`) to ``eval_<split>_<decoder>.json``,
    so that the beam-search evaluation is never overwritten. The latent decoder's item memory is kept in the
    run folder (``latent_memory.safetensors``) and reused while it matches the model and the train split.

    ``settings`` and ``overrides`` arrive checked (their ``validate``, before this loads the model). ``data`` is a
    dataset folder or an already loaded :class:`~bearrec.data.dataset.RecDataset` (None: the one the run was
    trained on, see :func:`load_run`).

    A run folder that cannot be written (read-only, full disk) raises :class:`ResultNotSaved`, which carries the
    result so that it can still be shown.

    The run decodes as its config says (its ``decoding`` section; the scoring defaults to the objective's: masked
    for ``msl`` and the official ``bear``, full otherwise), with the fields ``overrides`` sets; the result records
    the ones used.
    """
    with writer_lock(Path(run_dir)):
        return _evaluate_run(Path(run_dir), settings, overrides or DecodingOverrides(), data, console, allow_other_data)


class ResultNotSaved(OSError):
    """An evaluation that ran but whose files could not be written (a read-only or full disk): ``result`` holds it,
    so that it can still be shown; the error names the path."""

    def __init__(self, err: OSError, result: dict):
        super().__init__(err.errno, err.strerror, err.filename)
        self.result = result


def _evaluate_run(run_dir: Path, settings: EvalSettings, overrides: DecodingOverrides, data, console,
                  allow_other_data: bool) -> dict:
    loaded = isinstance(data, RecDataset)
    model, tokenizer, dataset, config = load_run(run_dir, None if loaded else data, data if loaded else None,
                                                 allow_other_data)
    split = settings.split
    if len(dataset.splits.get(split, ())) == 0:
        raise ValueError(f"{run_dir}: the dataset's {split} split has no examples to evaluate")
    decoding = overrides.apply(config.decoding).with_scoring(config.scoring)
    result = evaluate(model, item_space(tokenizer, dataset, config), dataset, settings, decoding,
                      latent_memory=run_dir / MEMORY_FILE, console=console)
    decoder = decoding.decoder
    per_user = result.pop("per_user", None)

    def write():
        if per_user is not None:  # item ids instead of catalog indices, for people reading the file
            per_user.insert(0, "target_item_id", dataset.items["item_id"].to_numpy()[per_user.pop("target").to_numpy()])
            with atomic_file(Path(run_dir) / f"eval_{split}_users.csv") as tmp:
                per_user.to_csv(tmp, index=False)
        write_json(Path(run_dir) / (f"eval_{split}.json" if decoder == "beam" else f"eval_{split}_{decoder}.json"), result)

    try:
        distributed.on_main(write)
    except OSError as err:
        if err.errno in DISK_ERRNOS:
            raise ResultNotSaved(err, result) from None
        raise
    return result
