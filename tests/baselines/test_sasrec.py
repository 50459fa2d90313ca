"""SASRec: padding never changes a user's state, both losses equal a loop over positions, negatives are never
the positive, and it learns a learnable catalog far above popularity."""

import pytest
import torch
from torch.nn import functional as F

from bearrec.baselines.configs import SASRecConfig
from bearrec.baselines.sasrec import SASRec, sample_negatives, train_sasrec
from bearrec.baselines.seqrec import evaluate, evaluate_popularity, pad
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic


def _model(**changes) -> SASRec:
    torch.manual_seed(0)
    return SASRec(20, SASRecConfig(max_len=6, **changes)).eval()  # eval: no dropout, so the loss is deterministic


def test_left_padding_does_not_change_the_state():
    model = _model()
    histories = [[3], [4, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8]]  # shorter, and longer than max_len
    batch = model(pad(histories, 6))[:, -1]  # [3, D]
    for n, history in enumerate(histories):
        kept = history[-6:]
        alone = model(pad([kept], len(kept)))[0, -1]  # no padding at all
        assert torch.allclose(batch[n], alone, atol=1e-5)
    assert torch.isfinite(model(pad(histories, 6))).all()


def _positions(windows: list[list[int]]):
    """(prefix, next item) of every position of every window, row-major, as the loss visits them."""
    return [(window[:i], window[i]) for window in windows for i in range(1, len(window))]


def test_ce_loss_is_the_softmax_over_the_catalog_at_every_position():
    model = _model(loss="ce")
    windows = [[0, 1, 2, 3, 4, 5, 6], [7, 8], [9, 3, 9, 2]]  # catalog indices; rows of max_len + 1
    loss = model.loss(pad(windows, 7), torch.Generator().manual_seed(0))
    expected = []
    for prefix, target in _positions(windows):
        scores = model(pad([prefix], len(prefix)))[0, -1] @ model.item_table.T  # [num_items]
        expected.append(torch.logsumexp(scores, 0) - scores[target])
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-5)


def test_bce_loss_is_one_sampled_negative_per_position():
    model = _model(loss="bce")
    windows = [[0, 1, 2, 3, 4, 5, 6], [7, 8], [9, 3, 9, 2]]
    loss = model.loss(pad(windows, 7), torch.Generator().manual_seed(5))
    positions = _positions(windows)
    negatives = sample_negatives(torch.tensor([t for _, t in positions]), 20, torch.Generator().manual_seed(5))
    expected = []
    for (prefix, target), negative in zip(positions, negatives.tolist()):
        state = model(pad([prefix], len(prefix)))[0, -1]  # [D]
        expected.append(-F.logsigmoid(state @ model.item_table[target]) - F.logsigmoid(-state @ model.item_table[negative]))
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-5)


def test_negatives_are_never_the_positive_and_cover_every_other_item():
    targets = torch.arange(5).repeat_interleave(2000)  # [10000]
    negatives = sample_negatives(targets, 5, torch.Generator().manual_seed(0))
    assert not (negatives == targets).any()
    for item in range(5):
        assert set(negatives[targets == item].tolist()) == set(range(5)) - {item}


@pytest.mark.slow
def test_learns_the_synthetic_catalog_far_above_popularity():
    dataset = generate_synthetic(SyntheticConfig(num_users=200, seed=3, p_successor=0.8, pruning_pressure=0.0))
    popularity = evaluate_popularity(dataset)["metrics"]["NDCG@10"]  # the same metric code, on the same users
    small = dict(hidden_size=32, inner_size=64, dropout=0.1, attn_dropout=0.1, lr=5e-3, batch_size=32, eval_every=5)
    for loss in ("ce", "bce"):
        model, log = train_sasrec(dataset, SASRecConfig(loss=loss, epochs=10, **small))
        result = evaluate(model, dataset)
        assert log["epochs_run"] == 10 and log["best_valid_ndcg10"] > 0
        assert result["metrics"]["NDCG@10"] > 5 * popularity, (loss, result["metrics"], popularity)
        assert len(result["retrieved_rank"]) == len(dataset.splits["test"])
