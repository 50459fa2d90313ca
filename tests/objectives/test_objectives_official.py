"""BEAR's official formulation, MSL (+ ATS) and the sparse trie candidates, against plain-Python loops."""

import math

import pytest
import torch

from bearrec.items.trie import ItemTrie
from bearrec.objectives import ats_temperature, bear_loss, bear_regulariser, msl_loss, sft_loss
from bearrec.objectives.msl import ats_loss


def _case(seed=0, n=3, t=6, v=17, scored=0.8, density=0.5):
    """Random logits, labels and a dense allowed mask that holds each label; includes |A_t| = 1 and |A_t| < B."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=g) * 3
    labels = torch.randint(0, v, (n, t), generator=g)
    labels[torch.rand(n, t, generator=g) > scored] = -100
    labels[0, 0], labels[1, 1], labels[2, 2] = 2, 3, 4  # scored tokens for the special rows below
    allowed = torch.rand(n, t, v, generator=g) < density
    allowed[0, 0] = False  # |A| = 1: ce 0, weight 0
    allowed[1, 1] = False
    allowed[1, 1, :3] = True  # |A| = 4: fewer than B candidates, beta = the smallest q
    allowed.scatter_(2, labels.clamp(min=0).unsqueeze(-1), True)
    return logits, labels, allowed


def _sparse(allowed, seed=1):
    """The same sets as token ids [N, T, C], shuffled, padded with -1 (and one extra pad column)."""
    g = torch.Generator().manual_seed(seed)
    n, t, v = allowed.shape
    c = int(allowed.sum(-1).max()) + 1
    ids = torch.full((n, t, c), -1, dtype=torch.long)
    for i in range(n):
        for j in range(t):
            tokens = allowed[i, j].nonzero().flatten()
            ids[i, j, : len(tokens)] = tokens[torch.randperm(len(tokens), generator=g)]
    return ids


def _masked(logits, allowed, i, j, tau):
    """{token: log q} of the masked softmax at one position, by hand."""
    z = {k: float(logits[i, j, k]) / tau for k in range(logits.shape[2]) if allowed[i, j, k]}
    m = max(z.values())
    lse = m + math.log(sum(math.exp(x - m) for x in z.values()))
    return {k: x - lse for k, x in z.items()}


def _official(logits, labels, allowed, B, xi, lam, tau):
    """Per-token w~_t * ce_t [N, T] and the loss, one position at a time."""
    n, t, _ = logits.shape
    w = torch.zeros(n, t, dtype=torch.float64)
    ce = torch.zeros(n, t, dtype=torch.float64)
    for i in range(n):
        for j in range(t):
            y = int(labels[i, j])
            if y == -100:
                continue
            log_q = _masked(logits, allowed, i, j, tau)
            ce[i, j] = -log_q[y]
            ranked = sorted(log_q.values(), reverse=True)
            if len(ranked) > 1:
                log_beta = ranked[B - 1] if len(ranked) >= B else ranked[-1]
                w[i, j] = 1 + lam / (1 + math.exp(-(log_q[y] - log_beta) / xi))
    per_token = w / w.sum() * ce
    return per_token, per_token.sum()


@pytest.mark.parametrize("B,xi,lam,tau", [(10, 2.75, 0.25, 1.0), (3, 0.5, 2.0, 1.0), (1, 1.0, 5.0, 2.0), (20, 3.0, 0.1, 0.7)])
def test_official_bear_matches_loop(B, xi, lam, tau):
    logits, labels, allowed = _case(seed=B)
    per_token, total = _official(logits, labels, allowed, B, xi, lam, tau)
    for form in (allowed, _sparse(allowed)):
        got = bear_loss(logits, labels, B, xi, lam, "official", allowed=form, tau=tau, reduction="none")
        assert torch.allclose(got.double(), per_token, atol=1e-5)
        assert float(bear_loss(logits, labels, B, xi, lam, allowed=form, tau=tau)) == pytest.approx(float(total), abs=1e-5)
    assert float(got.sum()) == pytest.approx(float(total), abs=1e-5)  # "none" sums to the normalised loss


def test_official_gradient_is_sft_plus_lambda_xi_eq34_with_beta_detached():
    """Autograd on both sides: grad of sum w~ ce == (1/W) grad sum [ce + lambda xi log sigmoid((log beta - log q(y)) / xi)]."""
    logits, labels, allowed = _case(seed=11)
    B, xi, lam, tau = 4, 1.5, 0.8, 1.3
    a = logits.clone().requires_grad_(True)
    bear_loss(a, labels, B, xi, lam, allowed=allowed, tau=tau).backward()

    b = logits.clone().requires_grad_(True)
    mask = labels != -100
    z = (b[mask] / tau).masked_fill(~allowed[mask], float("-inf"))
    log_q = z - z.logsumexp(-1, keepdim=True)
    target = log_q.gather(1, labels[mask][:, None]).squeeze(1)
    size = allowed[mask].sum(-1)
    ranked = log_q.sort(-1, descending=True).values
    log_beta = torch.where(size >= B, ranked[:, B - 1], ranked.gather(1, (size - 1)[:, None]).squeeze(1)).detach()
    reg = torch.nn.functional.logsigmoid((log_beta - target) / xi)
    counts = size > 1
    big_w = (1 + lam * torch.sigmoid((target - log_beta) / xi)).detach()[counts].sum()
    ((-target + lam * xi * reg)[counts].sum() / big_w).backward()
    assert a.grad.abs().sum() > 0
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_official_beta_has_no_gradient_and_bounded_push():
    """A token far inside the top B gets gradient (1 + lambda)/W * d ce, not the paper form's extra push at p(y) -> 1."""
    logits = torch.tensor([[[8.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    allowed = torch.ones(1, 1, 4, dtype=torch.bool)
    labels = torch.tensor([[0]])
    bear_loss(logits, labels, beam_width=2, temperature=1.0, weight=1.0, allowed=allowed).backward()
    official = logits.grad.clone()
    logits.grad = None
    sft_loss(logits, labels).backward()
    # one token: w~ = 1, so the gradient is exactly the (masked = full here) cross-entropy's
    assert torch.allclose(official, logits.grad, atol=1e-6, rtol=1e-4)
    logits.grad = None  # the paper form keeps pushing (gradient through log beta as well)
    bear_loss(logits, labels, beam_width=2, temperature=1.0, weight=1.0, formulation="paper").backward()
    assert (logits.grad - official).abs().max() > 0.1


@pytest.mark.parametrize("tau", [1.0, 4.5])
def test_msl_matches_loop_and_sparse_equals_dense(tau):
    logits, labels, allowed = _case(seed=3)
    n, t, _ = logits.shape
    expected = torch.zeros(n, t, dtype=torch.float64)
    for i in range(n):
        for j in range(t):
            if int(labels[i, j]) != -100:
                expected[i, j] = -_masked(logits, allowed, i, j, tau)[int(labels[i, j])]
    for form in (allowed, _sparse(allowed)):
        assert torch.allclose(msl_loss(logits, labels, form, tau, reduction="none").double(), expected, atol=1e-5)
        got = float(msl_loss(logits, labels, form, tau))
        assert got == pytest.approx(float(expected.sum() / (labels != -100).sum()), abs=1e-5)
    a = logits.clone().requires_grad_(True)
    msl_loss(a, labels, allowed, tau).backward()
    b = logits.clone().requires_grad_(True)
    msl_loss(b, labels, _sparse(allowed), tau).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_msl_with_the_full_vocabulary_is_sft():
    logits, labels, _ = _case(seed=4)
    everything = torch.ones(logits.shape, dtype=torch.bool)
    assert torch.allclose(msl_loss(logits, labels, everything), sft_loss(logits, labels), atol=1e-6)


def test_ats_estimate_and_loss_match_loop():
    logits, labels, allowed = _case(seed=5, density=0.7)
    root = torch.rand(allowed.shape[2], generator=torch.Generator().manual_seed(9)) < 0.6
    mask = labels != -100
    for i in range(labels.shape[0]):  # every first answer step sees the root's children
        j = int(mask[i].nonzero()[0])
        allowed[i, j] = root
        allowed[i, j, labels[i, j]] = True
        root = allowed[i, j].clone()
    pos, values = [], []
    for i in range(labels.shape[0]):
        j = int(mask[i].nonzero()[0])
        pos.append(float(logits[i, j, labels[i, j]]))
        values += [float(logits[i, j, k]) for k in range(logits.shape[2]) if allowed[i, j, k]]
    mean = sum(values) / len(values)
    var = sum((x - mean) ** 2 for x in values) / (len(values) - 1)
    d = sum(pos) / len(pos) - mean
    c = math.log(int(root.sum()) * 0.25)
    expected = min(max((d + math.sqrt(max(d * d - 2 * c * var, 0))) / (2 * c), 1.5), 5.0)
    for form in (allowed, _sparse(allowed)):
        assert ats_temperature(logits, labels, form, eta=0.25) == pytest.approx(expected, rel=1e-5)
    tau = 2.0
    ce = [-_masked(logits, allowed, i, j, tau)[int(labels[i, j])] for i, j in mask.nonzero().tolist()
          if int(allowed[i, j].sum()) > 1]
    assert float(ats_loss(logits, labels, _sparse(allowed), tau)) == pytest.approx(tau * sum(ce) / len(ce), abs=1e-5)


@pytest.mark.parametrize("surrogate", ["paper", "softplus"])
def test_paper_formulation_with_trie_candidates_sparse_equals_dense(surrogate):
    logits, labels, allowed = _case(seed=6)
    dense = bear_loss(logits, labels, 3, 1.0, 1.0, "paper", allowed=allowed, surrogate=surrogate, reduction="none")
    sparse = bear_loss(logits, labels, 3, 1.0, 1.0, "paper", allowed=_sparse(allowed), surrogate=surrogate, reduction="none")
    assert torch.allclose(dense, sparse, atol=1e-6)


@pytest.mark.parametrize("formulation", ["official", "paper"])
def test_regulariser_matches_loop(formulation):
    logits, labels, allowed = _case(seed=8)
    B, xi = 3, 0.7
    reg, mask = bear_regulariser(logits, labels, B, xi, formulation, _sparse(allowed))
    expected = []
    for i, j in mask.nonzero().tolist():
        y = int(labels[i, j])
        if formulation == "official":
            log_q = _masked(logits, allowed, i, j, 1.0)
        else:
            full = _masked(logits, torch.ones_like(allowed), i, j, 1.0)
            log_q = {k: full[k] for k in range(logits.shape[2]) if allowed[i, j, k]}
            target = full[y]
        ranked = sorted(log_q.values(), reverse=True)
        target = log_q[y] if formulation == "official" else target
        if formulation == "official":
            if len(ranked) < 2:
                expected.append(0.0)
                continue
            log_beta = ranked[B - 1] if len(ranked) >= B else ranked[-1]
        else:
            if len(ranked) < B:
                expected.append(0.0)
                continue
            log_beta = ranked[B - 1]
        expected.append(-math.log(1 + math.exp(-(log_beta - target) / xi)))
    assert torch.allclose(reg.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)


def test_label_candidates_match_the_trie_walk():
    seqs = [[5, 1, 9], [5, 2, 9], [5, 2, 3, 9], [7, 9], [6, 1, 1, 9], [5, 9]]
    trie = ItemTrie.from_sequences(seqs, 9)
    width = 5
    labels = torch.full((len(seqs), width), -100)
    for row, s in enumerate(seqs):
        labels[row, width - len(s):] = torch.tensor(s)
    ids = trie.label_candidates(labels)
    for row, s in enumerate(seqs):
        offset = width - len(s)
        for j in range(width):
            got = sorted(int(x) for x in ids[row, j] if x >= 0)
            assert got == (sorted(trie.allowed_tokens(s[: j - offset])) if j >= offset else [])
    bad = labels.clone()
    bad[0, -2] = 4  # 5 -> 4 is no title's prefix
    with pytest.raises(ValueError, match="row 0"):
        trie.label_candidates(bad)


def test_bad_arguments():
    logits, labels, allowed = _case()
    with pytest.raises(ValueError, match="needs allowed"):
        bear_loss(logits, labels)
    with pytest.raises(ValueError, match="formulation"):
        bear_loss(logits, labels, formulation="printed", allowed=allowed)
    with pytest.raises(ValueError, match="tau"):
        bear_loss(logits, labels, formulation="paper", tau=2.0)
    outside = allowed.clone()
    outside[0, 0] = False
    with pytest.raises(ValueError, match="not among"):
        msl_loss(logits, labels, outside)
    with pytest.raises(ValueError, match="tau"):
        msl_loss(logits, labels, allowed, tau=0)
