"""The GPU path: decoders against Hugging Face ``generate`` and teacher forcing on CUDA, in fp32 and bf16, and
training steps of every objective in bf16. Skipped where CUDA is absent (benchmarks/gpu/machine.py runs a smoke test of them).

fp32 on the GPU must reproduce the CPU tests exactly (same lists, scores within 1e-4). In bf16 the logits are
rounded to 8 bits of mantissa and two implementations batch their forwards differently, so a near-tie between
prefixes can flip which one survives: most lists must be identical (with scores equal to bf16 rounding) and
the others must share most of their items.
"""

import os

import pytest
import torch
from reference import (
    EOS,
    PAD,
    hf_beam_search,
    item_token_log_probs,
    prefix_scores,
    random_catalog,
    random_model,
    random_prompts,
    tie_free,
)

from bearrec.decoding import constrained_beam_search, exact_target_ranks, exact_top_k, score_catalog
from bearrec.evaluation.metrics import full_rank
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import left_pad

# BEARREC_TEST_DEVICE=cpu runs these tests on the CPU, to check their own logic on a machine without a GPU.
CUDA = torch.device(os.environ.get("BEARREC_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (run on the GPU machine)")

VOCAB = 48
# summed log-probabilities of a title of up to 6 tokens: fp32 agrees to rounding, bf16 to a few bf16 ulps per token
ATOL = {torch.float32: 1e-4, torch.bfloat16: 0.25}


def _case(arch: str, dtype, seed: int, num_items: int = 40, num_prompts: int = 6):
    model = random_model(arch, VOCAB, seed=seed).to(CUDA, dtype)
    items = random_catalog(num_items, VOCAB, seed=seed + 1)
    prompts = random_prompts(num_prompts, VOCAB, seed=seed + 2)
    ids, mask = left_pad(prompts, PAD)
    return model, items, prompts, ItemTrie.from_sequences(items, EOS), ids.to(CUDA), mask.to(CUDA)


def assert_agree_in_bf16(items, scores, other_items, other_scores, atol: float = ATOL[torch.bfloat16]):
    """Two bf16 beam searches: most lists identical, with scores equal to bf16 rounding; where a near-tie flipped
    which prefix survived, the lists still share most of their items."""
    same = (items == other_items).all(dim=1)
    assert float(same.float().mean()) >= 0.5, f"{int(same.sum())}/{len(same)} identical lists"
    assert torch.allclose(scores[same], other_scores[same], atol=atol)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / len(a) for a, b in zip(items, other_items)]
    assert sum(overlap) / len(overlap) >= 0.8, overlap


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("shared_prompt", [True, False], ids=["shared-prompt-cache", "standard-cache"])
@pytest.mark.parametrize("scoring", ["full", "masked"])
def test_beam_search_equals_hf_generate_on_cuda(dtype, arch, shared_prompt, scoring, monkeypatch):
    import bearrec.decoding.beam_search as beam_search

    if arch == "t5" and shared_prompt:
        pytest.skip("shared-prompt attention is for decoder-only models: T5 always uses its standard cache")
    monkeypatch.setattr(beam_search, "supports", lambda model: shared_prompt)
    model, items, prompts, trie, ids, mask = _case(arch, dtype, seed=4)
    B = 5
    for length_penalty in (0.0, 1.0):
        ours = constrained_beam_search(model, ids, mask, trie, beam_width=B, length_penalty=length_penalty,
                                       scoring=scoring)
        hf_items, hf_scores = hf_beam_search(model, ids, mask, trie, B, length_penalty, scoring)
        if dtype == torch.float32:
            assert all(tie_free(prefix_scores(model, p, items, scoring)) for p in prompts)
            assert torch.equal(ours.item_ids, hf_items)
            assert torch.allclose(ours.scores, hf_scores, atol=ATOL[dtype])
        else:
            assert_agree_in_bf16(ours.item_ids, ours.scores, hf_items, hf_scores)


def test_shared_prompt_cache_equals_standard_cache_on_a_gqa_model_in_bf16(monkeypatch):
    """The two cache paths of our search against each other on a grouped-query Llama (2 KV heads for 4)."""
    import bearrec.decoding.beam_search as beam_search

    model, items, prompts, trie, ids, mask = _case("llama", torch.bfloat16, seed=8, num_items=80, num_prompts=16)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    runs = []
    for shared in (True, False):
        monkeypatch.setattr(beam_search, "supports", lambda model, shared=shared: shared)
        runs.append(constrained_beam_search(model, ids, mask, trie, beam_width=10, batch_size=5))
    assert_agree_in_bf16(runs[0].item_ids, runs[0].scores, runs[1].item_ids, runs[1].scores)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("scoring", ["full", "masked"])
def test_score_catalog_and_exact_ranks_equal_teacher_forcing_on_cuda(dtype, arch, scoring):
    model, items, prompts, trie, ids, mask = _case(arch, dtype, seed=9, num_items=30, num_prompts=4)
    got = score_catalog(model, ids, mask, trie, batch_size=3, scoring=scoring).cpu()
    expected = torch.tensor([[sum(item_token_log_probs(model, p, s, items if scoring == "masked" else None))
                              for s in items] for p in prompts])
    assert torch.allclose(got, expected, atol=ATOL[dtype])
    # every item as the target of every prompt: exact ranks equal ranking the whole (teacher-forced) catalog
    rows = [(n, t) for n in range(len(prompts)) for t in range(len(items))]
    targets = torch.tensor([t for _, t in rows])
    ranks = exact_target_ranks(model, ids[[n for n, _ in rows]], mask[[n for n, _ in rows]], trie, targets.to(CUDA),
                               max_rank=10, scoring=scoring).cpu()
    brute = full_rank(got[[n for n, _ in rows]], targets).clamp(max=11)
    if dtype == torch.float32:
        assert torch.equal(ranks, brute)
    else:  # tree attention and the search's forwards round differently: a rank may move across near-ties
        assert float((ranks - brute).abs().float().mean()) < 0.5
    top = exact_top_k(model, ids, mask, trie, k=10, scoring=scoring)
    assert top.certified.all()
    assert torch.allclose(top.scores.cpu(), got.sort(dim=1, descending=True).values[:, :10], atol=ATOL[dtype])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from bearrec.data.synthetic import SyntheticConfig, generate_synthetic

    folder = tmp_path_factory.mktemp("data") / "synthetic"
    generate_synthetic(SyntheticConfig(num_users=40, num_categories=3, items_per_category=12)).save(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "msl", "bear", "bear:formulation=paper"])
def test_training_runs_on_cuda_in_bf16(synthetic, tmp_path, objective):
    """One epoch through the Trainer in bf16 (autocast), validation by beam search on the GPU, finite losses."""
    if CUDA.type != "cuda":
        pytest.skip("the Trainer's bf16 needs a GPU")
    from bearrec.config import ExperimentConfig, TrainConfig, with_overrides
    from bearrec.experiments.plan import objective_variant
    from bearrec.runs import train_run

    config = with_overrides(ExperimentConfig(data=str(synthetic), train=TrainConfig(
        epochs=1, batch_size=16, valid_users=16, logging_steps=1, bf16="true")), objective_variant(objective))
    log = train_run(config, tmp_path / "run")
    losses = [h["loss"] for h in log["log_history"] if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert log["epochs"] and "NDCG@10" in log["epochs"][0]
    assert all(h["tokens_per_second"] > 0 for h in log["log_history"] if "tokens_per_second" in h)


@pytest.mark.parametrize("objective", ["sft", "msl", "bear"])
def test_bf16_loss_and_gradient_match_fp32(objective):
    """A training step's loss and gradients in bf16 autocast against the same step in fp32, on the GPU."""
    from bearrec.config import ExperimentConfig
    from bearrec.lm.forward import answer_logits

    model = random_model("llama", VOCAB, seed=21).to(CUDA).train()
    items = random_catalog(30, VOCAB, seed=22)
    trie = ItemTrie.from_sequences(items, EOS).to(CUDA)
    prompts = random_prompts(8, VOCAB, seed=23)
    answers = [items[i] for i in range(0, 24, 3)]
    ids, mask = left_pad([p + a for p, a in zip(prompts, answers)], PAD)
    longest = max(map(len, answers))
    labels = torch.full((len(answers), longest), -100)
    for row, a in enumerate(answers):
        labels[row, longest - len(a):] = torch.tensor(a)
    ids, mask, labels = ids.to(CUDA), mask.to(CUDA), labels.to(CUDA)
    config = ExperimentConfig()
    config.train.objective = objective
    loss_fn = config.objective_config()
    extra = {"candidates": trie.label_candidates(labels), "step": 0}
    results = []
    for autocast in (False, True):
        model.zero_grad()
        with torch.autocast(CUDA.type, dtype=torch.bfloat16, enabled=autocast):
            logits = answer_logits(model, ids, mask, labels.shape[1])
            loss, _ = loss_fn.loss(logits, labels, extra)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((float(loss.detach()), grad))
    (loss32, grad32), (loss16, grad16) = results
    assert torch.isfinite(grad16).all() and loss16 == pytest.approx(loss32, rel=0.05)
    assert float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)) > 0.98
