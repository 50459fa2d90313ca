"""BERT4Rec: masking never touches padding, the loss equals a loop over masked positions, padding never
changes the scores, and it learns a learnable catalog far above popularity."""

import pytest
import torch

from bearrec.baselines.bert4rec import BERT4Rec, mask_positions, train_bert4rec
from bearrec.baselines.configs import BERT4RecConfig
from bearrec.baselines.seqrec import evaluate, evaluate_popularity, pad
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic


def _model() -> BERT4Rec:
    torch.manual_seed(0)
    return BERT4Rec(20, BERT4RecConfig(max_len=6)).eval()  # eval: no dropout


def test_masks_real_items_only_and_the_newest_alone_in_last_item_windows():
    windows = pad([list(range(n % 7 + 2)) for n in range(4000)], 8)  # [4000, 8], 2 to 8 items
    real = windows > 0
    for last_ratio in (0.0, 0.4, 1.0):
        masked = mask_positions(windows, 0.3, last_ratio, torch.Generator().manual_seed(0))
        assert not (masked & ~real).any() and masked.any(dim=1).all()
    newest = mask_positions(windows, 0.3, 1.0, torch.Generator().manual_seed(0))
    assert (newest.sum(dim=1) == 1).all() and newest[:, -1].all()
    long = real.all(dim=1)  # 8 items: a window with nothing masked (0.7 ** 8 = 6 %) masks its newest
    random = mask_positions(windows[long], 0.3, 0.0, torch.Generator().manual_seed(0))
    assert 0.28 < random.float().mean() < 0.35


def test_loss_is_the_softmax_over_the_catalog_at_every_masked_position():
    model = _model()
    windows = pad([[0, 1, 2, 3, 4, 5, 6], [7, 8], [9, 3, 9, 2]], 7)  # [3, 7]
    loss = model.loss(windows, torch.Generator().manual_seed(1))
    masked = mask_positions(windows, 0.2, 0.5, torch.Generator().manual_seed(1))  # the same draws
    expected = []
    for row, position in masked.nonzero().tolist():
        tokens = windows[row].clone()
        tokens[masked[row]] = model.mask_token
        scores = model.logits(model(tokens[None])[0, position])  # [num_items]
        expected.append(torch.logsumexp(scores, 0) - scores[windows[row, position] - 1])
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-5)


def test_left_padding_does_not_change_the_scores():
    model = _model()
    histories = [[3], [4, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8]]
    rows = model.history_rows(histories)  # [3, 7]: history then [mask]
    assert (rows[:, -1] == model.mask_token).all()
    batch = model.scores(rows)
    for n, history in enumerate(histories):
        kept = history[-6:]
        alone = torch.cat([pad([kept], len(kept)), torch.tensor([[model.mask_token]])], dim=1)
        assert torch.allclose(batch[n], model.scores(alone)[0], atol=1e-4)


@pytest.mark.slow
def test_learns_the_synthetic_catalog_far_above_popularity():
    dataset = generate_synthetic(SyntheticConfig(num_users=200, seed=3, p_successor=0.8, pruning_pressure=0.0))
    popularity = evaluate_popularity(dataset)["metrics"]["NDCG@10"]  # the same metric code, on the same users
    config = BERT4RecConfig(hidden_size=32, inner_size=64, dropout=0.1, attn_dropout=0.1, lr=5e-3, batch_size=32,
                            mask_ratio=0.4, epochs=80, eval_every=10)
    model, log = train_bert4rec(dataset, config)
    result = evaluate(model, dataset)
    assert log["best_valid_ndcg10"] > 0
    assert result["metrics"]["NDCG@10"] > 3 * popularity, (result["metrics"], popularity)
