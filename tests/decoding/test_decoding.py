"""Constrained beam search and exact scoring against brute force and against Hugging Face generate."""

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
    scored_case,
    simulate_beam_search,
    tie_free,
)

from bearrec.decoding import constrained_beam_search, exact_target_ranks, score_catalog
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import left_pad

VOCAB = 48


@pytest.fixture(scope="module", params=[(arch, scoring) for scoring in ("full", "masked") for arch in ("llama", "gpt2", "t5")],
                ids=lambda p: "-".join(p))
def case(request):
    """A random model, catalog and prompts, brute-force prefix scores for every prompt (computed once), and
    the step scoring they were computed with."""
    arch, scoring = request.param
    return (*scored_case(arch, VOCAB, num_items=40, num_prompts=8, seed=1, scoring=scoring), scoring)


@pytest.mark.parametrize("beam_width", [1, 3, 6])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_matches_exhaustive_simulation(case, beam_width, length_penalty):
    model, items, prompts, all_scores, scoring = case
    trie = ItemTrie.from_sequences(items, EOS)
    ids, mask = left_pad(prompts, PAD)
    result = constrained_beam_search(model, ids, mask, trie, beam_width=beam_width, batch_size=4,
                                     length_penalty=length_penalty, scoring=scoring)
    checked = 0
    for n, scores in enumerate(all_scores):
        if not tie_free(scores):
            continue
        expected = simulate_beam_search(scores, items, beam_width, length_penalty)
        got = [(int(i), float(s)) for i, s in zip(result.item_ids[n], result.scores[n]) if i >= 0]
        assert [i for i, _ in got] == [i for i, _ in expected]
        assert got and all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(got, expected))
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("shared_prompt", [True, False], ids=["shared-prompt-cache", "standard-cache"])
@pytest.mark.parametrize("scoring", ["full", "masked"])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_matches_hf_generate(arch, shared_prompt, scoring, length_penalty, monkeypatch):
    """Items and scores equal ``generate``'s; masked scoring is ``generate(renormalize_logits=True)``. The
    encoder-decoder T5 (TIGER) takes its own path (encoder once, decoder with self- and cross-attention caches)."""
    if arch == "t5" and shared_prompt:
        pytest.skip("shared-prompt attention is for decoder-only models: T5 always uses its standard cache")
    import bearrec.decoding.beam_search as beam_search

    monkeypatch.setattr(beam_search, "supports", lambda model: shared_prompt)
    model = random_model(arch, VOCAB, seed=4)
    items = random_catalog(40, VOCAB, seed=5)
    assert len({len(s) for s in items}) >= 4 and any(a != b and b[: len(a) - 1] == a[:-1] for a in items for b in items)
    trie = ItemTrie.from_sequences(items, EOS)
    prompts = random_prompts(5, VOCAB, seed=6)
    ids, mask = left_pad(prompts, PAD)
    B = 5
    ours = constrained_beam_search(model, ids, mask, trie, beam_width=B, length_penalty=length_penalty, scoring=scoring)
    hf_items, hf_scores = hf_beam_search(model, ids, mask, trie, B, length_penalty, scoring)
    for n, prompt in enumerate(prompts):
        assert tie_free(prefix_scores(model, prompt, items, scoring))
        assert ours.item_ids[n].tolist() == hf_items[n].tolist()
        assert torch.allclose(ours.scores[n], hf_scores[n], atol=1e-4)


def test_beam_search_with_fewer_items_than_beams_pads():
    model = random_model("llama", VOCAB, seed=7)
    items = [[5, EOS], [5, 6, EOS], [9, EOS]]
    trie = ItemTrie.from_sequences(items, EOS)
    ids, mask = left_pad(random_prompts(2, VOCAB, seed=8), PAD)
    result = constrained_beam_search(model, ids, mask, trie, beam_width=5)
    assert result.item_ids.shape == (2, 5)
    for row, scores in zip(result.item_ids, result.scores):
        assert sorted(row[:3].tolist()) == [0, 1, 2]
        assert row[3:].tolist() == [-1, -1] and torch.isinf(scores[3:]).all()
        assert (scores[:2] >= scores[1:3]).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("chunk_nodes", [None, 1, 5])
@pytest.mark.parametrize("scoring", ["full", "masked"])
def test_score_catalog_equals_teacher_forcing(arch, chunk_nodes, scoring):
    model = random_model(arch, VOCAB, seed=9)
    items = random_catalog(30, VOCAB, seed=10)
    trie = ItemTrie.from_sequences(items, EOS)
    prompts = random_prompts(4, VOCAB, seed=11)
    ids, mask = left_pad(prompts, PAD)
    got = score_catalog(model, ids, mask, trie, batch_size=3, chunk_nodes=chunk_nodes, scoring=scoring)
    for n, prompt in enumerate(prompts):
        expected = torch.tensor([sum(item_token_log_probs(model, prompt, s, items if scoring == "masked" else None))
                                 for s in items])
        assert torch.allclose(got[n], expected, atol=1e-4)


def test_t5_node_logits_in_memory_bounded_slices_equal_one_forward(monkeypatch):
    """An encoder-decoder's decoder makes logits at every prefix position: under a small logits budget the rows go
    through in several forwards, with the same scores."""
    import bearrec.decoding.exhaustive as exhaustive

    model = random_model("t5", VOCAB, seed=9)
    items = random_catalog(30, VOCAB, seed=10)
    trie = ItemTrie.from_sequences(items, EOS)
    ids, mask = left_pad(random_prompts(4, VOCAB, seed=11), PAD)
    whole = score_catalog(model, ids, mask, trie, chunk_nodes=8)
    monkeypatch.setattr(exhaustive, "_LOGIT_BUDGET", 3 * (trie.max_length + 1) * VOCAB)  # 3 rows or fewer per forward
    calls = []
    monkeypatch.setattr(model, "forward", lambda *a, _f=model.forward, **k: calls.append(1) or _f(*a, **k))
    assert torch.allclose(score_catalog(model, ids, mask, trie, chunk_nodes=8), whole, atol=1e-5)
    windows = -(-int((trie.child_count[1:] > 0).sum()) // 8)
    assert len(calls) > len(ids) * (windows + 1)  # more forwards than one per (prompt, window)


def test_masked_scores_are_a_distribution_over_the_catalog():
    """Renormalised over each node's children, the items' probabilities sum to 1 (the full-vocabulary ones
    to less): masked scoring is not full scoring under another name."""
    model = random_model("llama", VOCAB, seed=9)
    items = random_catalog(30, VOCAB, seed=10)
    trie = ItemTrie.from_sequences(items, EOS)
    ids, mask = left_pad(random_prompts(4, VOCAB, seed=11), PAD)
    masked = score_catalog(model, ids, mask, trie, scoring="masked")
    full = score_catalog(model, ids, mask, trie, scoring="full")
    assert torch.allclose(masked.exp().sum(1), torch.ones(4), atol=1e-5)
    assert (full.exp().sum(1) < 0.9).all() and (masked >= full - 1e-6).all()


@pytest.mark.parametrize("call", ["beam", "catalog", "ranks"])
def test_unknown_scoring_is_refused(call):
    model = random_model("llama", VOCAB, seed=9)
    trie = ItemTrie.from_sequences([[5, EOS], [6, EOS]], EOS)
    ids, mask = left_pad(random_prompts(1, VOCAB, seed=11), PAD)
    run = {"beam": lambda: constrained_beam_search(model, ids, mask, trie, beam_width=2, scoring="renormalised"),
           "catalog": lambda: score_catalog(model, ids, mask, trie, scoring="renormalised"),
           "ranks": lambda: exact_target_ranks(model, ids, mask, trie, torch.tensor([0]), scoring="renormalised")}[call]
    with pytest.raises(ValueError, match="scoring"):
        run()


# The grids with one to three nodes per forward cost 2 to 10 s per model (hundreds of forwards): the slow lane
# runs them; the fast lane keeps small batches through (2, 4, 6, 1.0).
@pytest.mark.parametrize("nodes_per_forward,max_rank,beam_width,length_penalty", [
    pytest.param(1, 4, 0, 0.0, marks=pytest.mark.slow), pytest.param(3, 50, 0, 0.0, marks=pytest.mark.slow),
    (64, 1, 0, 0.0), (64, 10, 0, 0.0), pytest.param(2, 4, 6, 0.0, marks=pytest.mark.slow), (64, 10, 10, 0.0),
    (2, 4, 6, 1.0), (64, 10, 10, 2.0)])
def test_exact_target_ranks_equal_brute_force_ranks(case, nodes_per_forward, max_rank, beam_width, length_penalty):
    """Every item as the target of every prompt: the pruned search gives the capped rank by enumeration,
    with and without a beam search's items as known scores (its length-normalised scores summed back)."""
    model, items, prompts, all_scores, scoring = case
    trie = ItemTrie.from_sequences(items, EOS)
    rows = [(n, t) for n in range(4) for t in range(len(items))]
    ids, mask = left_pad([prompts[n] for n, _ in rows], PAD)
    targets = torch.tensor([t for _, t in rows])
    known = {}
    if beam_width:
        beams = constrained_beam_search(model, ids, mask, trie, beam_width=beam_width, scoring=scoring,
                                        length_penalty=length_penalty)
        known = {"known_items": beams.item_ids, "known_scores": beams.summed_scores(trie, length_penalty)}
        for row, (n, _) in enumerate(rows):  # the sums are the items' exact scores
            found = [(i, s) for i, s in zip(beams.item_ids[row].tolist(), known["known_scores"][row].tolist()) if i >= 0]
            assert all(s == pytest.approx(all_scores[n][tuple(items[i])], abs=1e-4) for i, s in found)
    got = exact_target_ranks(model, ids, mask, trie, targets, max_rank=max_rank, nodes_per_forward=nodes_per_forward,
                             scoring=scoring, **known)
    expected = []
    for n, t in rows:
        scores = torch.tensor([all_scores[n][tuple(s)] for s in items])
        expected.append(min(int((scores > scores[t] + 1e-5).sum()) + 1, max_rank + 1))
    assert got.tolist() == expected
    assert len(set(expected)) >= min(3, max_rank + 1)  # targets at several ranks, capped and not


@pytest.mark.parametrize("beam_width", [2, 5])
def test_pruning_attribution_matches_simulation(case, beam_width):
    """Every item as the target of every prompt: drop step and violation flag as a by-hand simulation."""
    model, items, prompts, all_scores, scoring = case
    trie = ItemTrie.from_sequences(items, EOS)
    rows = [(n, t) for n in range(len(prompts)) if tie_free(all_scores[n]) for t in range(len(items))]
    ids, mask = left_pad([prompts[n] for n, _ in rows], PAD)
    result = constrained_beam_search(model, ids, mask, trie, beam_width=beam_width,
                                     targets=torch.tensor([t for _, t in rows]), scoring=scoring)
    kinds = set()
    for row, (n, t) in enumerate(rows):
        results, drop_step, violated = simulate_beam_search(all_scores[n], items, beam_width, target=t)
        assert (int(result.drop_step[row]), bool(result.violated[row])) == (drop_step, violated), (n, t)
        assert (drop_step == -1) == (t in [i for i, _ in results])
        kinds.add((drop_step > 0, violated))
    assert kinds == {(False, False), (True, True), (True, False)}  # returned, violation, prefix-level loss


def test_peft_wrapped_model_matches_simulation():
    from bearrec.lm.models import LoraSettings, add_lora

    model = add_lora(random_model("llama", VOCAB, seed=12), LoraSettings(rank=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # non-zero adapters, so the wrapped model really differs from its base
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.eval()
    items = random_catalog(30, VOCAB, seed=13)
    trie = ItemTrie.from_sequences(items, EOS)
    prompts = random_prompts(4, VOCAB, seed=14)
    ids, mask = left_pad(prompts, PAD)
    result = constrained_beam_search(model, ids, mask, trie, beam_width=4)
    exact = score_catalog(model, ids, mask, trie)
    for n, prompt in enumerate(prompts):
        scores = prefix_scores(model, prompt, items)
        assert torch.allclose(exact[n], torch.tensor([scores[tuple(s)] for s in items]), atol=1e-4)
        if tie_free(scores):
            expected = [i for i, _ in simulate_beam_search(scores, items, 4)]
            assert result.item_ids[n].tolist()[: len(expected)] == expected


def test_bfloat16_model_decodes_valid_items():
    model = random_model("llama", VOCAB, seed=15).to(torch.bfloat16)
    items = random_catalog(30, VOCAB, seed=16)
    trie = ItemTrie.from_sequences(items, EOS)
    ids, mask = left_pad(random_prompts(3, VOCAB, seed=17), PAD)
    result = constrained_beam_search(model, ids, mask, trie, beam_width=5)
    exact = score_catalog(model, ids, mask, trie)
    assert ((result.item_ids >= 0) & (result.item_ids < len(items))).all()
    assert all(len(set(row.tolist())) == 5 for row in result.item_ids)
    # scores are fp32 sums of bf16-model log-probs: close to the exact scores of the same items
    assert torch.allclose(exact.gather(1, result.item_ids), result.scores, atol=0.1)


def test_exact_target_ranks_node_budget_leaves_undecided_users_unranked(case):
    """With a tiny budget a user is either ranked exactly or marked -1, never given a wrong rank.

    The budget must decide some users and leave others undecided. Which budget does depends on the random model's
    numbers, and those differ between transformers versions (its initialisation), so it is searched for by
    bisection, from 12 nodes: smaller while every user is decided, larger while none is; every try is checked."""
    model, items, prompts, all_scores, scoring = case
    trie = ItemTrie.from_sequences(items, EOS)
    rows = [(n, t) for n in range(2) for t in range(len(items))]
    ids, mask = left_pad([prompts[n] for n, _ in rows], PAD)
    targets = torch.tensor([t for _, t in rows])
    expected = []
    for n, t in rows:
        scores = torch.tensor([all_scores[n][tuple(s)] for s in items])
        expected.append(min(int((scores > scores[t] + 1e-5).sum()) + 1, 4))
    budgets = [3, 5, 8, 12, 16, 24, 32]
    lo, hi = 0, len(budgets) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        got = exact_target_ranks(model, ids, mask, trie, targets, max_rank=3, nodes_per_forward=2,
                                 max_nodes=budgets[mid], scoring=scoring)
        for rank, want in zip(got.tolist(), expected):
            assert rank in (-1, want)
        if not (got == -1).any():
            hi = mid - 1
        elif not (got > 0).any():
            lo = mid + 1
        else:
            break
    else:
        pytest.fail(f"no budget of {budgets} decides some users and leaves others undecided")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_decoding_with_the_installed_transformers_warns_nothing(arch):
    """Beam search, the exact top K and the exact ranks use transformers' current cache API: no deprecation (or
    other) warning under the installed version, neither a Python warning nor a line of transformers' logger (its
    deprecations go there, and printed once per batch before)."""
    import logging
    import warnings

    import transformers

    from bearrec.decoding import exact_top_k

    model = random_model(arch, VOCAB, seed=3)
    items = random_catalog(20, VOCAB, seed=4)
    trie = ItemTrie.from_sequences(items, EOS)
    ids, mask = left_pad(random_prompts(3, VOCAB, seed=5), PAD)
    logged: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()  # a CLI test may have set errors only
    transformers.logging.add_handler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            beams = constrained_beam_search(model, ids, mask, trie, beam_width=4, batch_size=2)
            exact_top_k(model, ids, mask, trie, k=4)
            exact_target_ranks(model, ids, mask, trie, beams.item_ids[:, 0], max_rank=4)
    finally:
        transformers.logging.remove_handler(handler)
        transformers.logging.set_verbosity(verbosity)
    assert not logged
