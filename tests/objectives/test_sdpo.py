"""S-DPO and sdpo-bear against plain-Python loops of their formulas."""

import math

import pytest
import torch

from bearrec.objectives import bear_regulariser, sdpo_bear_loss, sdpo_loss, sequence_log_probs


def _logps(seed=0, n=4, k=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1 + k, generator=g) * 2 - 5, torch.randn(n, 1 + k, generator=g) * 2 - 5


@pytest.mark.parametrize("beta,k", [(1.0, 3), (0.1, 1), (2.5, 5)])
def test_sdpo_matches_loop(beta, k):
    policy, reference = _logps(seed=k, k=k)
    losses = []
    for i in range(policy.shape[0]):
        r_pos = float(policy[i, 0] - reference[i, 0])
        s = sum(math.exp(beta * (float(policy[i, j] - reference[i, j]) - r_pos)) for j in range(1, k + 1))
        losses.append(-math.log(1 / (1 + math.exp(math.log(s)))))  # -log sigmoid(-log s)
    assert torch.allclose(sdpo_loss(policy, reference, beta, reduction="none").double(), torch.tensor(losses, dtype=torch.float64), atol=1e-5)
    assert float(sdpo_loss(policy, reference, beta)) == pytest.approx(sum(losses) / len(losses), abs=1e-5)


def test_sdpo_with_one_negative_is_dpo():
    policy, reference = _logps(seed=9, k=1)
    dpo = -torch.nn.functional.logsigmoid(0.5 * ((policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])))
    assert torch.allclose(sdpo_loss(policy, reference, 0.5, reduction="none"), dpo, atol=1e-6)


def test_sdpo_gradient_raises_the_positive_and_lowers_negatives_and_not_the_reference():
    policy, reference = _logps(seed=2)
    policy.requires_grad_(True)
    reference.requires_grad_(True)
    sdpo_loss(policy, reference).backward()
    assert (policy.grad[:, 0] < 0).all() and (policy.grad[:, 1:] > 0).all()
    assert reference.grad is None or (reference.grad == 0).all()


def _rows(seed=0, n=2, k=2, t=4, v=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n * (1 + k), t, v, generator=g) * 2
    labels = torch.randint(0, v, (n * (1 + k), t), generator=g)
    labels[:, 0] = -100  # right-aligned answers of different lengths
    labels[1, 1] = -100
    allowed = torch.rand(logits.shape, generator=g) < 0.6
    allowed.scatter_(2, labels.clamp(min=0).unsqueeze(-1), True)
    return logits, labels, allowed


def test_sequence_log_probs_matches_loop():
    logits, labels, _ = _rows()
    expected = []
    for r in range(labels.shape[0]):
        total = 0.0
        for j in range(labels.shape[1]):
            y = int(labels[r, j])
            if y != -100:
                z = [float(x) for x in logits[r, j]]
                total += z[y] - math.log(sum(math.exp(x) for x in z))
        expected.append(total)
    assert torch.allclose(sequence_log_probs(logits, labels).double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("formulation", ["official", "paper"])
def test_sdpo_bear_is_sdpo_plus_positive_minus_negative_regulariser(formulation):
    n, k = 2, 2
    logits, labels, allowed = _rows(n=n, k=k)
    reference = torch.randn(n, 1 + k) - 8
    lam, B, xi = 0.7, 3, 1.5
    loss, part = sdpo_bear_loss(logits, labels, reference, 1.0, lam, B, xi, formulation, allowed)
    base = sdpo_loss(sequence_log_probs(logits, labels).view(n, 1 + k), reference)
    reg, mask = bear_regulariser(logits, labels, B, xi, formulation, allowed)
    per_row = torch.zeros(labels.shape).masked_scatter(mask, reg)  # [R, T]
    pos, neg = [], []
    for r in range(labels.shape[0]):  # loop over rows: row r is a positive iff r % (1 + k) == 0
        for j in range(labels.shape[1]):
            if int(labels[r, j]) != -100:
                (pos if r % (1 + k) == 0 else neg).append(float(per_row[r, j]))
    expected = float(base) + lam * (sum(pos) / len(pos) - sum(neg) / len(neg))
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert float(part) == pytest.approx(lam * (sum(pos) / len(pos) - sum(neg) / len(neg)), abs=1e-5)
    plain, zero = sdpo_bear_loss(logits, labels, reference, 1.0, 0.0, B, xi, formulation, allowed)
    assert float(plain) == pytest.approx(float(base), abs=1e-6) and float(zero) == 0


def test_bad_arguments():
    policy, reference = _logps()
    with pytest.raises(ValueError, match="beta"):
        sdpo_loss(policy, reference, beta=0)
    with pytest.raises(ValueError, match="1 \\+ K"):
        sdpo_loss(policy[:, :1], reference[:, :1])
    logits, labels, _ = _rows()
    with pytest.raises(ValueError, match="rows"):
        sdpo_bear_loss(logits, labels, torch.zeros(5, 3))
