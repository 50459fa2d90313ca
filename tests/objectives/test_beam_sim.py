"""Beam-sim objective (eq. 3.1): search thresholds against brute force, loss against a by-hand formula."""

import math

import pytest
import torch
import torch.nn.functional as F
from reference import EOS, PAD, prefix_scores, random_catalog, random_model, random_prompts, scored_case, tie_free

from bearrec.decoding import constrained_beam_search
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import left_pad, position_ids_from_mask
from bearrec.objectives import align_thresholds, beam_sim_loss, registry, sft_loss, simulate_thresholds

VOCAB = 48
NEG_INF = -math.inf


def thresholds_by_hand(scores: dict, items: list[list[int]], B: int) -> tuple[list[float], set[str]]:
    """B-th candidate score of every step of Hugging Face beam search, simulated on known prefix scores.

    Same rules as ``reference.simulate_beam_search`` (length_penalty 0). Also returns which kinds of
    step occurred: "ranked" (B-th score), "few" (fewer than B candidates: -inf), "stopped" (after the
    early stop: the worst finished score), "empty" (no live beam left: -inf).
    """
    children: dict[tuple, set[int]] = {}
    for s in items:
        for t in range(len(s)):
            children.setdefault(tuple(s[:t]), set()).add(s[t])
    max_len = max(len(s) for s in items)
    thr = [NEG_INF] * max_len
    kinds = set()
    live, finished, accepting = [()], [], True
    for step in range(max_len):
        if not accepting:
            thr[step] = finished[-1]
            kinds.add("stopped")
            continue
        cands = sorted(((scores[p + (tok,)], p + (tok,)) for p in live for tok in children.get(p, ())), reverse=True)
        if len(cands) >= B:
            thr[step] = cands[B - 1][0]
            kinds.add("ranked")
        else:
            kinds.add("few")
        finished += [score for rank, (score, seq) in enumerate(cands) if seq[-1] == EOS and rank < B]
        finished = sorted(finished, reverse=True)[:B]
        live = [seq for _, seq in cands if seq[-1] != EOS][:B]
        best_live = scores[live[0]] if live else NEG_INF
        if len(finished) == B and best_live <= finished[-1]:
            accepting = False
        if not live and accepting:
            if step + 1 < max_len:
                kinds.add("empty")
            break
    return thr, kinds


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def case(request):
    """A random model, catalog and prompts, with brute-force prefix scores for every prompt (computed once)."""
    return scored_case(request.param, VOCAB, num_items=30, num_prompts=6, seed=21)


@pytest.mark.parametrize("beam_width", [2, 4])
def test_thresholds_match_brute_force(case, beam_width):
    model, items, prompts, all_scores = case
    trie = ItemTrie.from_sequences(items, EOS)
    ids, mask = left_pad(prompts, PAD)
    result = constrained_beam_search(model, ids, mask, trie, beam_width=beam_width, batch_size=4,
                                     return_thresholds=True)
    assert result.thresholds.shape == (len(prompts), trie.max_length)
    plain = constrained_beam_search(model, ids, mask, trie, beam_width=beam_width, batch_size=4)
    assert plain.thresholds is None and torch.equal(plain.item_ids, result.item_ids)  # the flag changes nothing else
    checked, kinds = 0, set()
    for n, scores in enumerate(all_scores):
        if not tie_free(scores):
            continue
        expected, seen = thresholds_by_hand(scores, items, beam_width)
        got = result.thresholds[n]
        expected = torch.tensor(expected)
        assert torch.equal(torch.isinf(got), torch.isinf(expected)), (n, got, expected)
        assert torch.allclose(got[torch.isfinite(got)], expected[torch.isfinite(expected)], atol=1e-4)
        kinds |= seen
        checked += 1
    assert checked >= 3
    assert "ranked" in kinds
    if beam_width == 2:
        assert "stopped" in kinds  # the early-stop rule is exercised (for both models)


def test_thresholds_with_targets_and_few_candidates():
    """Thresholds come back next to the pruning attribution; steps with fewer than B candidates are -inf."""
    model = random_model("llama", VOCAB, seed=24)
    items = [[5, EOS], [5, 6, EOS], [5, 7, 8, EOS], [9, EOS]]
    trie = ItemTrie.from_sequences(items, EOS)
    prompts = random_prompts(3, VOCAB, seed=25)
    ids, mask = left_pad(prompts, PAD)
    result = constrained_beam_search(model, ids, mask, trie, beam_width=3, targets=torch.tensor([0, 2, 3]),
                                     return_thresholds=True)
    assert result.drop_step.shape == (3,) and result.thresholds.shape == (3, 4)
    for n, prompt in enumerate(prompts):
        expected, _ = thresholds_by_hand(prefix_scores(model, prompt, items), items, 3)
        expected = torch.tensor(expected)
        assert torch.isinf(expected[0])  # step 1 has two candidates (5, 9) < B = 3
        assert torch.equal(torch.isinf(result.thresholds[n]), torch.isinf(expected))
        finite = torch.isfinite(expected)
        assert torch.allclose(result.thresholds[n][finite], expected[finite], atol=1e-4)


def test_simulate_thresholds_restores_modes():
    model = random_model("gpt2", VOCAB, seed=26)
    items = random_catalog(20, VOCAB, seed=27)
    trie = ItemTrie.from_sequences(items, EOS)
    ids, mask = left_pad(random_prompts(3, VOCAB, seed=28), PAD)
    expected = constrained_beam_search(model.eval(), ids, mask, trie, beam_width=3, batch_size=2,
                                       return_thresholds=True).thresholds
    model.train()
    model.transformer.h[0].eval()  # a mixed state must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    got = simulate_thresholds(model, ids, mask, trie, beam_width=3, batch_size=2)
    assert torch.equal(got, expected)  # dropout was off during the search
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert got.grad_fn is None


# ---------------------------------------------------------------------------------------------- loss


def _loss_by_hand(logits, labels, thresholds, temperature, weight, surrogate):
    """Per-position loss [N, T] with explicit loops and running sums (0 at unscored positions)."""
    out = torch.zeros(labels.shape)
    for i in range(labels.shape[0]):
        cum = 0.0
        for t in range(labels.shape[1]):
            if labels[i, t] == -100:
                continue
            lp = torch.log_softmax(logits[i, t].float(), dim=-1)[labels[i, t]]
            cum = cum + lp
            reg = 0.0
            if math.isfinite(float(thresholds[i, t])):
                z = (thresholds[i, t] - cum) / temperature
                reg = F.logsigmoid(z) if surrogate == "paper" else F.softplus(z)
            out[i, t] = -lp + weight * reg
    return out


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    N, T, V = 3, 5, 7
    logits = torch.randn(N, T, V, generator=g) * 2
    labels = torch.randint(0, V, (N, T), generator=g)
    labels[0, :2] = -100  # answers of lengths 3, 5, 1, right-aligned as the trainer makes them
    labels[2, :4] = -100
    thresholds = -torch.rand(N, T, generator=g) * 6
    thresholds[1, 3] = NEG_INF  # a step that cannot prune
    thresholds[0, 0] = NEG_INF  # outside the answer
    return logits, labels, thresholds


@pytest.mark.parametrize("surrogate", ["paper", "softplus"])
@pytest.mark.parametrize("temperature,weight", [(1.0, 1.0), (0.5, 2.5)])
def test_loss_matches_by_hand_formula(surrogate, temperature, weight):
    logits, labels, thresholds = _batch()
    expected = _loss_by_hand(logits, labels, thresholds, temperature, weight, surrogate)
    kw = dict(temperature=temperature, weight=weight, surrogate=surrogate)
    got = beam_sim_loss(logits, labels, thresholds, reduction="none", **kw)
    assert got.shape == labels.shape
    assert torch.allclose(got, expected, atol=1e-5)
    scored = labels != -100
    assert torch.allclose(beam_sim_loss(logits, labels, thresholds, reduction="sum", **kw), expected.sum(), atol=1e-5)
    assert torch.allclose(beam_sim_loss(logits, labels, thresholds, **kw), expected.sum() / scored.sum(), atol=1e-5)
    # -inf threshold: reg 0, the token pays its cross-entropy only
    assert torch.allclose(got[1, 3], sft_loss(logits, labels, reduction="none")[1, 3])


def test_loss_without_thresholds_is_sft():
    logits, labels, _ = _batch(1)
    none = torch.full(labels.shape, NEG_INF)
    assert torch.allclose(beam_sim_loss(logits, labels, none, weight=3.0), sft_loss(logits, labels))
    per_token = beam_sim_loss(logits, labels, none, reduction="none")
    assert torch.equal(per_token, sft_loss(logits, labels, reduction="none"))


def test_loss_rejects_bad_arguments():
    logits, labels, thresholds = _batch()
    with pytest.raises(ValueError):
        beam_sim_loss(logits, labels, thresholds, surrogate="hinge")
    with pytest.raises(ValueError):
        beam_sim_loss(logits, labels, thresholds, temperature=0.0)
    with pytest.raises(ValueError):
        beam_sim_loss(logits, labels, thresholds[:, 1:])
    assert "beam-sim" in registry.names()


@pytest.mark.parametrize("surrogate", ["paper", "softplus"])
def test_gradient_flows_through_the_prefix_sum(surrogate):
    logits, labels, _ = _batch(2)
    thresholds = torch.full(labels.shape, NEG_INF)
    thresholds[1, 4] = -3.0  # only the last token of row 1 is regularised
    logits.requires_grad_(True)
    reg = beam_sim_loss(logits, labels, thresholds, surrogate=surrogate, reduction="sum") - sft_loss(
        logits, labels, reduction="sum")
    (grad,) = torch.autograd.grad(reg, logits)
    # cum_4 = sum of the five log-probs of row 1: every earlier token of the answer gets a gradient
    assert all(grad[1, t].abs().sum() > 1e-6 for t in range(5))
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    # and it is the gradient of the by-hand formula
    logits2 = logits.detach().clone().requires_grad_(True)
    by_hand = _loss_by_hand(logits2, labels, thresholds, 1.0, 1.0, surrogate).sum()
    total = beam_sim_loss(logits, labels, thresholds, surrogate=surrogate, reduction="sum")
    assert torch.allclose(torch.autograd.grad(total, logits)[0], torch.autograd.grad(by_hand, logits2)[0], atol=1e-5)
    # d reg / d log p(y_s) = -d surrogate/d delta: raising the prefix lowers "softplus" and raises "paper"
    lp = torch.log_softmax(logits.detach()[1], -1).gather(1, labels[1].unsqueeze(1)).sum()
    z = torch.tensor(-3.0) - lp
    slope = torch.sigmoid(-z) if surrogate == "paper" else torch.sigmoid(z)
    one_hot = F.one_hot(labels[1, 0], logits.shape[-1]).float()
    d_logit = -(one_hot - torch.softmax(logits.detach()[1, 0], -1))  # d log p(y_0) / d logits, negated
    assert torch.allclose(grad[1, 0], slope * d_logit, atol=1e-5)


# ------------------------------------------------------------------------------------------ alignment


def test_align_thresholds_hand_example():
    raw = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, NEG_INF, 9.0]])
    labels = torch.tensor([[-100, -100, 11, 12],  # answer of 2: steps 1-2
                           [13, 14, 15, 16],  # answer of 4 > max_len 3: the 4th token gets -inf
                           [-100, -100, -100, 17]])  # answer of 1
    got = align_thresholds(raw, labels)
    expected = torch.tensor([[NEG_INF, NEG_INF, 1.0, 2.0], [4.0, 5.0, 6.0, NEG_INF], [NEG_INF, NEG_INF, NEG_INF, 7.0]])
    assert torch.equal(got, expected)
    with pytest.raises(ValueError):  # left-aligned answers are not what the trainer makes
        align_thresholds(raw, torch.tensor([[11, 12, -100, -100]] * 3))
    with pytest.raises(ValueError):
        align_thresholds(raw[:2], labels)


def test_end_to_end_regulariser_fires_where_the_target_is_pruned(case):
    """simulate -> align -> loss on trainer-shaped batches: a target pruned at step d (within its length)
    has delta > 0 at step d, which softplus shows as reg > log 2 there."""
    model, items, prompts, all_scores = case
    trie = ItemTrie.from_sequences(items, EOS)
    B = 3
    rows = [(n, t) for n in range(len(prompts)) if tie_free(all_scores[n]) for t in range(len(items))]
    prompt_ids, prompt_mask = left_pad([prompts[n] for n, _ in rows], PAD)
    targets = torch.tensor([t for _, t in rows])
    drop = constrained_beam_search(model, prompt_ids, prompt_mask, trie, beam_width=B, targets=targets).drop_step
    raw = simulate_thresholds(model, prompt_ids, prompt_mask, trie, beam_width=B)
    # the trainer's batch: prompt + answer left-padded, labels right-aligned
    answers = [items[t] for _, t in rows]
    ids, mask = left_pad([prompts[n] + a for (n, _), a in zip(rows, answers)], PAD)
    A = max(map(len, answers))
    labels = torch.full((len(rows), A), -100)
    for r, a in enumerate(answers):
        labels[r, A - len(a):] = torch.tensor(a)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logits = logits[:, -A - 1:-1]
    thresholds = align_thresholds(raw, labels)
    reg = (beam_sim_loss(logits, labels, thresholds, surrogate="softplus", reduction="none")
           - sft_loss(logits, labels, reduction="none"))
    pruned = 0
    for r, answer in enumerate(answers):
        d = int(drop[r])
        if 1 <= d <= len(answer):  # pruned while the target was still being decoded
            assert reg[r, A - len(answer) + d - 1] > math.log(2) + 1e-4, (rows[r], d)
            pruned += 1
        violated = reg[r, A - len(answer):] > math.log(2) + 1e-4
        if not violated.any():  # never below the B-th candidate: returned, or displaced after finishing
            assert d == -1 or d > len(answer), (rows[r], d)
    assert pruned > 10
