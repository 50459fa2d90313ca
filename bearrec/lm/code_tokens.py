"""A pretrained causal LM that learns a catalog's semantic IDs: new code tokens, their first rows, what trains.

MiniOneRec and OpenOneRec add one token per (level, code) to Qwen's vocabulary; LC-Rec does the same to Llama. Here
any Hugging Face causal LM (``smollm2-135m`` included) gets them:

1. :func:`add_code_tokens` adds the tokens to the tokenizer (refusing one that the vocabulary already holds, or a
   tokenizer that does not add them as single tokens), gives them the ids after the tokenizer's (a model's spare
   rows first, as Qwen has them, then new rows: the input embedding and an untied output layer are resized), and
   writes their rows: ``init: mean`` puts the mean of the old rows in every new row; ``init: titles`` gives each
   code token the mean embedding of the titles of the items that carry it (the mean of each title's token rows,
   then over those items), and the old mean to a code no titled item carries. The old rows are untouched, so the
   old tokens' logits are exactly the same before training.
2. :func:`adapt_for_codes` decides what trains (:class:`CodeTokenSettings`, ``config.lora``):

   * LoRA on the attention and MLP projections, and the new rows (``rows: trainable-tokens``: peft's
     ``trainable_token_indices``, only those rows train and are saved, an untied output layer's too;
     ``rows: modules-to-save``: a trainable copy of the whole embedding and output layer, saved whole);
   * ``lora: false``: every weight (full fine-tuning);
   * ``only_new_rows: true``: nothing but the new rows (MiniOneRec's ``freeze_LLM``), peft's ``TrainableTokens``.

   A LoRA or trainable-tokens run saves only what changed (the adapters and the new rows); :func:`load_model
   <bearrec.lm.models.load_model>` resizes the base model to the saved tokenizer before loading them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, TrainableTokensConfig, get_peft_model

from bearrec.checks import check, first_line
from bearrec.lm.models import LoraSettings, quiet_peft

INITS = ("mean", "titles")
ROWS = ("trainable-tokens", "modules-to-save")
# the prompt of a semantic-ID model (items/semantic_ids.py): auto = codes for the tiny model, instruction for a
# pretrained one
SID_PROMPTS = ("auto", "codes", "instruction", "instruction-titles")
# LoRA's targets: attention and MLP projections of Llama-, Qwen- and Mistral-style models (peft's default for them
# is attention only)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class CodeTokenSettings:
    """How a pretrained model learns semantic-ID tokens (``representation: semantic-ids`` with a pretrained
    ``model``; the tiny model is built over its code tokens and uses none of these but ``prompt``).

    ``init``: the new rows' first values, ``mean`` of the old rows (default: it needs no titles) or ``titles`` (each
    code's items' mean title embedding). ``rows``: how the new rows train beside LoRA, ``trainable-tokens`` (only
    those rows; default: 10x fewer trainable parameters and a 15x smaller run folder, docs/benchmarks.md) or
    ``modules-to-save`` (the whole embedding and output layer). ``only_new_rows``: train the new rows alone, the
    model frozen (needs ``lora: false``). ``prompt``: ``codes`` (the history's codes alone, as the tiny model),
    ``instruction`` (an instruction, then the history's codes), ``instruction-titles`` (each history item's title
    beside its codes), ``auto`` (codes for the tiny model, instruction otherwise).
    """

    init: str = "mean"
    rows: str = "trainable-tokens"
    only_new_rows: bool = False
    prompt: str = "auto"

    def validate(self, section: str = "code_tokens") -> None:
        check(self.init in INITS, section, "init", " or ".join(INITS), self.init)
        check(self.rows in ROWS, section, "rows", " or ".join(ROWS), self.rows)
        check(self.prompt in SID_PROMPTS, section, "prompt", ", ".join(SID_PROMPTS), self.prompt)


def add_code_tokens(model, tokenizer, tokens: Sequence[str], init: str = "mean",
                    title_ids: dict[str, list[list[int]]] | None = None) -> list[int]:
    """Add ``tokens`` (``<a_12>``-style code tokens) to ``tokenizer`` and ``model``; returns their ids, in order.

    ``title_ids`` (for ``init: titles``): code token -> the title token ids of the items carrying it (under the
    tokenizer before the addition). One-line ``ValueError`` when a token is already in the vocabulary or the
    tokenizer cannot add it as one token.
    """
    vocab = tokenizer.get_vocab()
    taken = next((t for t in tokens if t in vocab), None)
    if taken is not None:
        raise ValueError(f"code token {taken!r} collides with token {vocab[taken]} of the model's tokenizer; "
                         "bearrec cannot add the semantic-ID tokens to this tokenizer")
    old_rows, first = model.get_input_embeddings().weight.shape[0], len(tokenizer)
    try:
        added = tokenizer.add_tokens(list(tokens))
    except Exception as err:  # tokenizers raise their own error types
        raise ValueError(f"the model's tokenizer cannot add the semantic-ID tokens ({first_line(err)})") from None
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    spelled = tokenizer("".join(tokens[:64]), add_special_tokens=False)["input_ids"]
    if added != len(tokens) or spelled != ids[:64]:
        raise ValueError(f"the model's tokenizer cannot add the semantic-ID tokens ({type(tokenizer).__name__} "
                         f"added {added} of {len(tokens)}, or does not read them back as single tokens)")
    if min(ids) < first:
        raise ValueError(f"the model's tokenizer gave a new code token the id {min(ids)}, one of its {first} "
                         "existing tokens; bearrec cannot add the semantic-ID tokens to it")
    # the new ids follow the tokenizer's: in the spare rows of a model with more rows than tokens (Qwen pads its
    # vocabulary to a multiple of 128), then in new rows; load_model grows a base the same way
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for layer in _token_layers(model):
            real = layer.weight[:min(first, old_rows)]  # the tokens' rows (not the spare ones)
            layer.weight[ids] = _first_rows(real, tokens, ids, old_rows, init, title_ids)
    return ids


def _token_layers(model) -> list[torch.nn.Module]:
    """The input embedding, and the output layer when it is not tied to it."""
    layers = [model.get_input_embeddings()]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not layers[0].weight:
        layers.append(output)
    return layers


def _first_rows(old: torch.Tensor, tokens: Sequence[str], ids: list[int], start: int, init: str,
                title_ids: dict[str, list[list[int]]] | None) -> torch.Tensor:
    """``[len(tokens), H]``: the old rows' mean, or per token its items' mean title embedding (``init: titles``)."""
    mean = old.mean(0)  # [H]
    rows = mean.expand(len(tokens), -1).clone()  # [T, H]
    if init == "titles":
        for row, token in zip(rows, tokens):
            titles = [t for t in (title_ids or {}).get(token, []) if t]
            if titles:
                row.copy_(torch.stack([old[t].mean(0) for t in titles]).mean(0))
    return rows.to(old.dtype)


def adapt_for_codes(model, new_ids: list[int], lora: LoraSettings | None, settings: CodeTokenSettings):
    """What trains: LoRA plus the new rows (``lora`` given), the new rows alone (``settings.only_new_rows``), or
    every weight (neither; the model is returned as it is)."""
    # an untied output layer's new rows train too (its own trainable tokens); else every code token would keep the
    # one mean output row, score alike, and load back with the random rows of the base's resize
    untied = len(_token_layers(model)) > 1
    if settings.only_new_rows:
        config = TrainableTokensConfig(token_indices=list(new_ids),
                                       target_modules=_row_modules(model) if untied else None)
    elif lora is not None:
        rows = ({"trainable_token_indices": ({name: list(new_ids) for name in _row_modules(model)} if untied
                                             else list(new_ids))} if settings.rows == "trainable-tokens" else
                {"modules_to_save": _row_modules(model), "ensure_weight_tying": not untied})
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                            target_modules=lora.target_modules or _projections(model), **rows)
    else:
        return model
    with quiet_peft():
        return get_peft_model(model, config)


def _projections(model) -> list[str] | str:
    """The attention and MLP projections the model has (``all-linear`` for an architecture without these names)."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    found = [p for p in PROJECTIONS if p in names]
    return found or "all-linear"


def _row_modules(model) -> list[str]:
    """Names of the embedding and output layers, as ``modules_to_save`` matches them."""
    layers = {id(layer) for layer in _token_layers(model)}
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if id(module) in layers})
