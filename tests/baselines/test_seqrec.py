"""What SASRec and BERT4Rec share: training windows predict every train transition exactly once, bad settings
give a one-line error naming the field, popularity is the floor."""

import pytest
import torch

from bearrec.baselines.configs import BERT4RecConfig, SASRecConfig
from bearrec.baselines.seqrec import evaluate_popularity, training_windows, user_sequences
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic


def test_windows_predict_each_train_transition_once():
    dataset = generate_synthetic(SyntheticConfig(num_users=50, seed=1, min_sequence=4, max_sequence=30))
    sequences = user_sequences(dataset)
    assert len(sequences) == dataset.splits["train"]["user_id"].nunique()  # one chain per user
    windows = training_windows(sequences, 6)  # [W, 6]
    pairs = windows[:, :-1].reshape(-1), windows[:, 1:].reshape(-1)
    predicted = sorted((a - 1, b - 1) for a, b in zip(*(p.tolist() for p in pairs)) if a > 0)
    histories, targets = dataset.examples("train")  # leave-one-out: each row adds one transition
    assert predicted == sorted((h[-1], t) for h, t in zip(histories, targets))
    assert len(windows) > len(sequences)  # some users are longer than a window


def test_popularity_recommends_the_most_frequent_train_targets():
    dataset = generate_synthetic(SyntheticConfig(num_users=50, seed=5))
    result = evaluate_popularity(dataset, top_k=10)
    counts = torch.bincount(torch.tensor(dataset.examples("train")[1]), minlength=len(dataset.items))
    top = counts.topk(11).values
    assert top[9] > top[10]  # the data leave no tie at the cut: the top 10 are one set
    most_frequent = set(torch.nonzero(counts >= top[9]).flatten().tolist())
    targets = dataset.examples("test")[1]
    assert result["users"] == len(targets)
    assert result["metrics"]["HR@10"] == pytest.approx(sum(t in most_frequent for t in targets) / len(targets))
    assert all((rank > 0) == (t in most_frequent) for t, rank in zip(targets, result["retrieved_rank"]))
    assert 0 < result["metrics"]["HR@10"] < 1


@pytest.mark.parametrize("config, section, message", [
    (SASRecConfig(hidden_size=0), "sasrec", "sasrec.hidden_size must be a positive integer: got 0"),
    (SASRecConfig(dropout=1.0), "sasrec", "sasrec.dropout must be in [0, 1): got 1.0"),
    (SASRecConfig(loss="bpr"), "sasrec", "sasrec.loss must be one of ce, bce: got 'bpr'"),
    (SASRecConfig(num_heads=3), "sasrec", "sasrec.num_heads must divide sasrec.hidden_size (64): got 3"),
    (SASRecConfig(lr=-1), "sasrec", "sasrec.lr must be a positive number: got -1"),
    (SASRecConfig(epochs=2.5), "sasrec", "sasrec.epochs must be a positive integer: got 2.5"),
    (BERT4RecConfig(mask_ratio=0), "bert4rec", "bert4rec.mask_ratio must be in (0, 1): got 0"),
    (BERT4RecConfig(last_ratio=2), "bert4rec", "bert4rec.last_ratio must be in [0, 1]: got 2"),
    (BERT4RecConfig(patience=-1), "bert4rec", "bert4rec.patience must be an integer >= 0: got -1"),
])
def test_bad_settings_name_the_field(config, section, message):
    with pytest.raises(ValueError) as err:
        config.validate(section)
    assert str(err.value) == message


def test_default_settings_are_valid():
    SASRecConfig().validate("sasrec")
    BERT4RecConfig().validate("bert4rec")


def test_exclude_history_ranks_the_rest_of_the_catalog():
    """With ``exclude_history`` a baseline's list is its full ranking with the user's history items removed, as the
    LM evaluation's (so a compare with --exclude-history scores both under one rule)."""
    from bearrec.baselines.sasrec import SASRec
    from bearrec.baselines.seqrec import top_items

    dataset = generate_synthetic(SyntheticConfig(num_users=30, seed=2))
    torch.manual_seed(0)
    model = SASRec(len(dataset.items), SASRecConfig(hidden_size=16, num_heads=2, num_layers=1, max_len=10))
    histories = dataset.examples("test")[0]
    kept = top_items(model, histories, 5)
    excluded = top_items(model, histories, 5, batch_size=7, exclude_history=True)  # batches of 7: offsets matter
    with torch.no_grad():
        scores = model.scores(model.history_rows(histories))  # [N, num_items]
    for user, history in enumerate(histories):
        ranked = [i for i in scores[user].argsort(descending=True, stable=True).tolist() if i not in set(history)]
        assert excluded[user].tolist() == ranked[:5]
    assert any(set(k.tolist()) & set(h) for k, h in zip(kept, histories))  # the filter had something to remove
