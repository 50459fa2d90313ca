"""SFT and BEAR losses against direct, loop-based computations of the formulas in the issue / paper."""

import math

import pytest
import torch

from bearrec.objectives import bear_loss, pruning_margin, sft_loss


def _case(seed=0, n=3, t=5, v=13, scored=0.7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=g) * 3
    labels = torch.randint(0, v, (n, t), generator=g)
    labels[torch.rand(n, t, generator=g) > scored] = -100
    labels[0, 0] = 2  # at least one scored token
    return logits, labels


def _direct(logits, labels, B, T, w, surrogate, allowed=None):
    """Per-token loss [N, T] computed one position at a time with plain Python math."""
    n, t, v = logits.shape
    out = torch.zeros(n, t, dtype=torch.float64)
    for i in range(n):
        for j in range(t):
            y = int(labels[i, j])
            if y == -100:
                continue
            z = [float(x) for x in logits[i, j]]
            m = max(z)
            lse = m + math.log(sum(math.exp(x - m) for x in z))
            logp = [x - lse for x in z]
            ce = -logp[y]
            cand = [logp[k] for k in range(v) if allowed is None or bool(allowed[i, j, k])]
            if len(cand) < B:
                reg = 0.0
            else:
                delta = sorted(cand, reverse=True)[B - 1] - logp[y]
                s = 1 / (1 + math.exp(-delta / T))
                reg = math.log(s) if surrogate == "paper" else -math.log(1 / (1 + math.exp(delta / T)))
            out[i, j] = ce + w * reg
    return out


def test_sft_loss_matches_cross_entropy():
    logits, labels = _case()
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 13), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(sft_loss(logits, labels), expected, atol=1e-6)
    none = sft_loss(logits, labels, reduction="none")
    assert none.shape == labels.shape and (none[labels == -100] == 0).all()
    assert torch.allclose(none.sum(), sft_loss(logits, labels, reduction="sum"))


@pytest.mark.parametrize("surrogate", ["paper", "softplus"])
@pytest.mark.parametrize("B,T,w", [(1, 1.0, 1.0), (3, 0.5, 2.0), (10, 3.0, 0.1), (13, 1.0, 1.0), (14, 1.0, 1.0)])
def test_bear_loss_matches_direct_formula(surrogate, B, T, w):
    logits, labels = _case(seed=B)
    expected = _direct(logits, labels, B, T, w, surrogate)
    got = bear_loss(logits, labels, beam_width=B, temperature=T, weight=w, formulation="paper", surrogate=surrogate, reduction="none")
    assert torch.allclose(got.double(), expected, atol=1e-5)
    scored = (labels != -100).sum()
    assert torch.allclose(bear_loss(logits, labels, B, T, w, "paper", surrogate=surrogate, reduction="sum").double(), expected.sum(), atol=1e-4)
    assert torch.allclose(bear_loss(logits, labels, B, T, w, "paper", surrogate=surrogate).double(), expected.sum() / scored, atol=1e-5)


@pytest.mark.parametrize("surrogate", ["paper", "softplus"])
def test_bear_loss_with_allowed_candidates(surrogate):
    logits, labels = _case(seed=5)
    g = torch.Generator().manual_seed(6)
    allowed = torch.rand(logits.shape, generator=g) < 0.4  # some steps have fewer than B candidates
    allowed[0, 0] = False  # a step with a single candidate: cannot prune
    allowed.scatter_(2, labels.clamp(min=0).unsqueeze(-1), True)
    expected = _direct(logits, labels, 4, 1.0, 1.0, surrogate, allowed)
    got = bear_loss(logits, labels, beam_width=4, temperature=1.0, weight=1.0, formulation="paper", surrogate=surrogate, allowed=allowed, reduction="none")
    assert torch.allclose(got.double(), expected, atol=1e-5)
    assert ((allowed.sum(-1) < 4) & (labels != -100)).any(), "the case must include steps that cannot prune"


def test_bear_with_zero_weight_is_sft_and_gradients_flow():
    logits, labels = _case(seed=7)
    logits.requires_grad_(True)
    assert torch.allclose(bear_loss(logits, labels, weight=0.0, formulation="paper"), sft_loss(logits, labels))
    bear_loss(logits, labels, beam_width=3, temperature=1.0, weight=1.0, formulation="paper").backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_pruning_margin_sign_marks_violations():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    _, delta, can_prune, _ = pruning_margin(logits, torch.tensor([[3]]), beam_width=2)
    assert can_prune.all() and float(delta) == pytest.approx(math.log(0.3 / 0.05), abs=1e-5)  # outside the top 2
    _, delta, _, _ = pruning_margin(logits, torch.tensor([[0]]), beam_width=2)
    assert float(delta) < 0  # inside the top 2


def test_surrogates_spend_gradient_where_documented():
    # a violated token (delta > 0) and a safe token (delta < 0): compare |d reg / d logit of the positive|
    logits = torch.log(torch.tensor([[[0.6, 0.3, 0.09, 0.01], [0.97, 0.01, 0.01, 0.01]]])).requires_grad_(True)
    labels = torch.tensor([[3, 0]])
    grads = {}
    for surrogate in ("paper", "softplus"):
        logits.grad = None
        reg = bear_loss(logits, labels, beam_width=2, temperature=1.0, weight=1.0, formulation="paper", surrogate=surrogate, reduction="none") - sft_loss(logits, labels, reduction="none")
        reg.sum().backward()
        grads[surrogate] = logits.grad[0, :, :].gather(1, labels[0].unsqueeze(1)).abs().squeeze(1)
    violated, safe = 0, 1
    assert grads["softplus"][violated] > grads["softplus"][safe]
    assert grads["paper"][safe] > grads["paper"][violated]


def test_bad_arguments():
    logits, labels = _case()
    with pytest.raises(ValueError, match="surrogate"):
        bear_loss(logits, labels, formulation="paper", surrogate="hinge")
    with pytest.raises(ValueError, match="temperature"):
        bear_loss(logits, labels, formulation="paper", temperature=0)
    with pytest.raises(ValueError, match="aligned"):
        sft_loss(logits[:, :-1], labels)
    with pytest.raises(ValueError, match="reduction"):
        sft_loss(logits, labels, reduction="avg")
