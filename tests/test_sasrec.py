"""SASRec baseline: padding never changes a user's state, no NaN, and it learns a learnable catalog."""

import torch

from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.sasrec import SASRec, SASRecConfig, _pad, evaluate_sasrec, train_sasrec


def test_left_padding_does_not_change_the_state():
    torch.manual_seed(0)
    model = SASRec(20, SASRecConfig(max_len=6, num_heads=2)).eval()
    histories = [[3], [4, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8]]  # shorter, and longer than max_len
    batch = model(_pad(histories, 6))
    for n, history in enumerate(histories):
        kept = history[-6:]
        alone = model(_pad([kept], len(kept)))  # no padding at all
        assert torch.allclose(batch[n], alone[0], atol=1e-5)
    assert torch.isfinite(model(_pad(histories, 6), every_position=True)).all()


def test_learns_the_synthetic_catalog_far_above_chance():
    dataset = generate_synthetic(SyntheticConfig(num_users=300, seed=3))
    model, log = train_sasrec(dataset, SASRecConfig(epochs=15, eval_every=5, seed=0))
    result = evaluate_sasrec(model, dataset)
    chance = 10 / len(dataset.items)
    assert log["epochs_run"] == 15 and log["best_valid_ndcg10"] > 0
    assert result["metrics"]["HR@10"] > 5 * chance
    assert len(result["retrieved_rank"]) == len(dataset.splits["test"])
