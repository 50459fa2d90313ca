"""APAO's prefix losses against plain-Python loops of the formulas, the grouped forward against separate
forwards, and the apao objectives end to end on a code trie."""

import math

import pytest
import torch

from bearrec.items.trie import ItemTrie
from bearrec.objectives import (
    IGNORE_INDEX,
    adaptive_weights,
    apao_pairwise_loss,
    apao_pointwise_loss,
    distinct_prefixes,
)
from bearrec.objectives.apao import APAOConfig, grouped_answer_logits
from tests.reference import random_model, random_prompts

V = 12


def _log_p(logits_row, token) -> float:
    return float(torch.log_softmax(logits_row.double(), -1)[token])


def _items(labels_row) -> list[tuple[int, int]]:
    """(position, token) of a row's scored tokens, in order."""
    return [(j, int(t)) for j, t in enumerate(labels_row) if int(t) != IGNORE_INDEX]


def _labels(rows: list[list[int]], width: int, right: bool) -> torch.Tensor:
    out = torch.full((len(rows), width), IGNORE_INDEX)
    for i, r in enumerate(rows):
        if right:
            out[i, width - len(r):] = torch.tensor(r)
        else:
            out[i, : len(r)] = torch.tensor(r)
    return out


@pytest.mark.parametrize("right", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_pointwise_matches_loop(right, temperature):
    rows = [[3, 4, 5, 1], [6, 7, 8, 9, 1], [3, 1], [4, 5, 6, 1]]  # items of 1 to 4 codes + EOS
    labels = _labels(rows, 5, right)
    logits = torch.randn(4, 5, V, generator=torch.Generator().manual_seed(1)) * 2
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for n in range(4):
        scored = _items(labels[n])
        for t in range(1, len(scored)):  # prefix lengths 1 .. T_n - 1
            s = sum(_log_p(logits[n, j], tok) for j, tok in scored[:t])
            expected[n, t - 1] = -s / t / temperature
    none = apao_pointwise_loss(logits, labels, temperature, reduction="none")
    assert none.shape == (4, 4)
    assert torch.allclose(none.double(), expected, atol=1e-5)
    exists = torch.tensor([[t <= len(r) - 1 for t in range(1, 5)] for r in rows])
    assert float(apao_pointwise_loss(logits, labels, temperature)) == pytest.approx(float(expected[exists].mean()), abs=1e-5)
    per_prefix = apao_pointwise_loss(logits, labels, temperature, reduction="per_prefix")
    for t in range(4):
        has = exists[:, t]
        assert float(per_prefix[t]) == pytest.approx(float(expected[has, t].mean()) if has.any() else 0.0, abs=1e-5)


def _pairwise_loop(logits, labels, counts, tau):
    """[N, T-1] the formula of the issue, one example, one prefix length and one negative at a time."""
    n_ex, group, width, _ = logits.shape
    out = torch.zeros(n_ex, width - 1, dtype=torch.float64)
    for n in range(n_ex):
        rows = [_items(labels[n, g]) for g in range(group)]
        for t in range(1, len(rows[0])):
            def score(g):
                return sum(_log_p(logits[n, g, j], tok) for j, tok in rows[g][:t])
            seen = {tuple(tok for _, tok in rows[0][:t])}
            kept = []
            for g in range(1, group):
                if len(rows[g]) <= t:  # no t-prefix of codes: invalid
                    continue
                prefix = tuple(tok for _, tok in rows[g][:t])
                if prefix in seen:
                    continue
                seen.add(prefix)
                kept.append(score(g))
            c = 1.0 if counts is None else (counts[t - 1] - 1) / max(len(kept), 1)
            pos = math.exp(score(0) / tau)
            out[n, t - 1] = -math.log(pos / (pos + c * sum(math.exp(s / tau) for s in kept))) / t
    return out


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_pairwise_matches_loop_with_duplicates_and_short_negatives(rescale, tau):
    # example 0: negative 1 shares the positive's first code, negative 2 repeats negative 3's two-code prefix,
    # negative 4 is a one-code item (no 2-prefix); example 1: a 4-code positive, one negative equal to another
    groups = [
        [[3, 4, 5, 1], [3, 6, 7, 1], [8, 9, 5, 1], [8, 9, 4, 1], [10, 1]],
        [[6, 7, 8, 9, 1], [3, 4, 1], [6, 7, 8, 4, 1], [3, 4, 1], [11, 5, 6, 7, 1]],
    ]
    labels = torch.stack([_labels(g, 5, right=False) for g in groups])  # [2, 5, 5]
    logits = torch.randn(2, 5, 5, V, generator=torch.Generator().manual_seed(3)) * 2
    counts = torch.tensor([9, 20, 30, 40]) if rescale else None
    expected = _pairwise_loop(logits, labels, counts, tau)
    none = apao_pairwise_loss(logits, labels, counts, tau, reduction="none")
    assert torch.allclose(none.double(), expected, atol=1e-5)
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    assert float(apao_pairwise_loss(logits, labels, counts, tau)) == pytest.approx(float(expected[valid].mean()), abs=1e-5)


def test_pairwise_without_negatives_is_zero_and_gradient_ranks_positive_up():
    labels = torch.tensor([[[3, 4, 1], [3, 4, 1]]])  # the only negative duplicates the positive everywhere
    logits = torch.randn(1, 2, 3, V, requires_grad=True)
    assert float(apao_pairwise_loss(logits.detach(), labels, torch.tensor([5, 9]))) == pytest.approx(0.0, abs=1e-6)
    labels = torch.tensor([[[3, 4, 1], [5, 6, 1]]])
    loss = apao_pairwise_loss(logits, labels, torch.tensor([5, 9]))
    loss.backward()
    assert logits.grad[0, 0, 0, 3] < 0 and logits.grad[0, 1, 0, 5] > 0  # raise the positive, lower the negative


def test_adaptive_weights():
    losses = torch.tensor([1.0, 3.0, 0.0, 2.0], requires_grad=True)
    assert torch.allclose(adaptive_weights(losses), torch.tensor([1.0, 3.0, 0.0, 2.0]) / 6)  # eta 0: w ∝ L
    eta = 0.7
    w = torch.tensor([math.exp(eta * v) * v for v in (1.0, 3.0, 0.0, 2.0)])
    assert torch.allclose(adaptive_weights(losses, eta), w / w.sum())
    assert not adaptive_weights(losses).requires_grad
    assert torch.allclose(adaptive_weights(torch.zeros(3)), torch.full((3,), 1 / 3))


def test_config_loss_is_ce_plus_weighted_prefix_term():
    labels = _labels([[3, 4, 5, 1], [6, 7, 8, 1]], 4, right=True)
    logits = torch.randn(2, 4, V)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
    per = apao_pointwise_loss(logits, labels, reduction="per_prefix")
    for adaptive, weights in [(True, per / per.sum()), (False, torch.full((3,), 1 / 3))]:
        cfg = APAOConfig(beta=0.3, adaptive=adaptive).for_objective("apao-pointwise")
        loss, reg = cfg.loss(logits, labels)
        assert float(loss) == pytest.approx(float(ce + 0.3 * (weights * per).sum()), abs=1e-5)
        assert float(reg) == pytest.approx(float(0.3 * (weights * per).sum()), abs=1e-5)


def test_distinct_prefixes_of_a_code_trie():
    # codes per level have their own tokens; the last item has a fifth (disambiguation) token
    seqs = [[3, 10, 20, 1], [3, 10, 21, 1], [4, 11, 20, 1], [4, 11, 22, 30, 1]]
    trie = ItemTrie.from_sequences(seqs, eos_token_id=1)
    assert distinct_prefixes(trie).tolist() == [2, 2, 4, 1]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_grouped_answer_logits_equal_separate_forwards(arch):
    model = random_model(arch, vocab=V + 8)
    prompts = random_prompts(3, V + 8, seed=4)
    answers = [[[5, 6, 1], [7, 1], [8, 9, 10, 1]], [[6, 1], [5, 6, 1], [9, 9, 1]], [[11, 12, 1], [5, 1], [7, 8, 1]]]
    width = max(len(p) for p in prompts)
    prompt_ids = torch.zeros(3, width, dtype=torch.long)
    prompt_mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        prompt_ids[i, width - len(p):], prompt_mask[i, width - len(p):] = torch.tensor(p), 1
    group_labels = torch.stack([_labels(a, 4, right=False) for a in answers])  # [3, 3, 4]
    with torch.no_grad():
        grouped = grouped_answer_logits(model, prompt_ids, prompt_mask, group_labels)  # [3, 3, 4, V]
        for n, p in enumerate(prompts):
            for g, a in enumerate(answers[n]):
                alone = model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1 : len(p) + len(a) - 1]
                read = len(a) if g == 0 else min(len(a), 3)  # the positive's A logits, a negative's first A - 1
                assert torch.allclose(grouped[n, g, :read], alone[:read], atol=1e-4), (n, g)
