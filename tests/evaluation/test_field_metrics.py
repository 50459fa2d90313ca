"""MRR@K and the beyond-accuracy metrics against loop-based RecBole references, and NDCG/HR/MRR@K cross-checked
against an independent library (torchmetrics) on random rankings with ties."""

import math
from collections import Counter

import pytest
import torch
from reference import loop_beyond_accuracy, loop_rank_metrics
from torchmetrics.functional.retrieval import (
    retrieval_hit_rate,
    retrieval_normalized_dcg,
    retrieval_recall,
    retrieval_reciprocal_rank,
)

from bearrec.baselines.seqrec import evaluate_popularity, user_sequences
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.evaluation.evaluate import train_item_counts
from bearrec.evaluation.metrics import full_rank, gini_index_at_k, ranking_metrics, retrieved_rank, tail_items

USERS, ITEMS, KS = 300, 30, (1, 5, 10)


def tied_scores(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[USERS, ITEMS]`` integer scores in 0..5 (so most positives tie with other items) and one positive per user."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 6, (USERS, ITEMS), generator=g).float(), torch.randint(0, ITEMS, (USERS,), generator=g)


def positive_first(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The scores with every tie broken in favour of the positive (+0.5 on integer scores: it passes the items it
    ties with and no other), shifted above 0 because torchmetrics' MRR and recall drop a positive scored <= 0."""
    return scores + 0.5 * torch.nn.functional.one_hot(targets, ITEMS) + 1.0


def torchmetrics_per_user(preds: torch.Tensor, targets: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    relevant = torch.nn.functional.one_hot(targets, ITEMS).bool()
    rows = list(zip(preds, relevant))
    return {"NDCG": torch.stack([retrieval_normalized_dcg(p, t, top_k=k) for p, t in rows]),
            "HR": torch.stack([retrieval_hit_rate(p, t, top_k=k) for p, t in rows]),
            "Recall": torch.stack([retrieval_recall(p, t, top_k=k) for p, t in rows]),
            "MRR": torch.stack([retrieval_reciprocal_rank(p, t, top_k=k) for p, t in rows])}


@pytest.mark.parametrize("seed", [0, 1])
def test_ndcg_hr_mrr_equal_torchmetrics_once_ties_favour_the_positive(seed):
    """Our convention: a positive's rank counts the items scored strictly higher, so it comes first among the
    items it ties with. Given the same scores with those ties broken the same way, torchmetrics agrees exactly
    (Recall@K = HR@K with one positive), and so does the loop over each list."""
    scores, targets = tied_scores(seed)
    rank = full_rank(scores, targets)  # [USERS], ties favour the positive
    retrieved = positive_first(scores, targets).topk(10, dim=1).indices  # [USERS, 10] lists, ties broken alike
    assert torch.equal(retrieved_rank(retrieved, targets), torch.where(rank <= 10, rank, 0))
    ours = ranking_metrics(retrieved, targets, ks=KS)
    theirs = {k: torchmetrics_per_user(positive_first(scores, targets), targets, k) for k in KS}
    for k in KS:
        loop = loop_rank_metrics(retrieved.tolist(), targets.tolist(), k)
        for name in ("NDCG", "HR", "MRR"):
            assert ours[f"{name}@{k}"] == pytest.approx(float(theirs[k][name].mean()), abs=1e-6) == loop[name]
        assert ours[f"HR@{k}"] == pytest.approx(float(theirs[k]["Recall"].mean()), abs=1e-6)
    assert 0 < ours["HR@1"] < ours["HR@5"] < ours["HR@10"] < 1


def test_with_ties_left_in_torchmetrics_averages_them_and_ours_favours_the_positive():
    """Where the libraries differ, and why. Handed the tied scores, torchmetrics' NDCG averages the discount over
    the positions of the positive's tie block (scikit-learn's rule); its HR and MRR put the positive wherever its
    sort leaves it in the block. Ours is the first position of the block: never below theirs, the same where
    the positive ties with no other item, above theirs in NDCG wherever a tie straddles a discount."""
    scores, targets = tied_scores(2)
    preds = scores + 1.0  # ties left in; above 0 for torchmetrics
    ours_rank = full_rank(scores, targets)  # [USERS]
    above = (scores > scores.gather(1, targets[:, None])).sum(dim=1)  # [USERS]
    block = (scores == scores.gather(1, targets[:, None])).sum(dim=1)  # [USERS] tie block, the positive included
    for k in (5, 10):
        theirs = torchmetrics_per_user(preds, targets, k)
        discount = [[1 / math.log2(p + 1) if p <= k else 0.0 for p in range(int(a) + 1, int(a + b) + 1)]
                    for a, b in zip(above, block)]
        average = torch.tensor([sum(d) / len(d) for d in discount])
        assert torch.allclose(theirs["NDCG"], average, atol=1e-6)  # the tie-averaged discount, by hand
        ours = {"NDCG": torch.where(ours_rank <= k, 1 / torch.log2(ours_rank.float() + 1), 0.0),
                "HR": (ours_rank <= k).float(), "MRR": torch.where(ours_rank <= k, 1 / ours_rank.float(), 0.0)}
        alone = block == 1
        for name in ("NDCG", "HR", "MRR"):
            assert (ours[name] >= theirs[name] - 1e-6).all()
            assert torch.allclose(ours[name][alone], theirs[name][alone], atol=1e-6)
        assert (ours["NDCG"] > theirs["NDCG"] + 1e-3).sum() > USERS // 5  # the difference is real and common
        assert ranking_metrics(positive_first(scores, targets).topk(10, dim=1).indices, targets, ks=(k,))[
            f"NDCG@{k}"] == pytest.approx(float(ours["NDCG"].mean()))


def test_beyond_accuracy_equals_recbole_loops():
    """ItemCoverage, GiniIndex and TailPercentage on random lists over a skewed catalog, against loops that follow
    RecBole's code (including its tail: the 10 % least popular of the items seen in train, ties by id)."""
    g = torch.Generator().manual_seed(0)
    num_items, users = 60, 80
    weights = 1 / torch.arange(1, num_items + 1).float()  # skewed: low indices drawn far more often
    retrieved = torch.stack([torch.multinomial(weights, 10, replacement=False, generator=g) for _ in range(users)])
    counts = torch.randint(0, 4, (num_items,), generator=g) * torch.randint(0, 2, (num_items,), generator=g)
    assert (counts == 0).sum() > 10 and len(set(counts.tolist())) > 2  # unseen items and ties in popularity
    for k in (1, 5, 10):
        ours = ranking_metrics(retrieved, torch.zeros(users, dtype=torch.long), ks=(k,), item_counts=counts)
        loop = loop_beyond_accuracy(retrieved.tolist(), num_items, counts.tolist(), k)
        for name, value in loop.items():
            assert ours[f"{name}@{k}"] == pytest.approx(value, abs=1e-9), (name, k)
    tail = tail_items(counts)
    seen = int((counts > 0).sum())
    assert int(tail.sum()) == max(int(seen * 0.1), 1) and not tail[counts == 0].any()


def test_beyond_accuracy_by_hand():
    even = torch.tensor([[0, 1], [2, 3], [1, 0], [3, 2]])  # every one of 4 items twice
    assert gini_index_at_k(even, 4, 2) == pytest.approx(0.0)
    assert gini_index_at_k(torch.tensor([[2], [2], [2]]), 4, 1) == pytest.approx(3 / 4)  # one item fills every list
    m = ranking_metrics(torch.tensor([[0, 1, -1], [0, 2, 3]]), torch.tensor([1, 3]), ks=(2, 3),
                        item_counts=torch.tensor([5, 0, 1, 2, 9, 3, 4, 4, 6, 7, 8]))
    assert m["MRR@2"] == pytest.approx(0.25) and m["MRR@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["ItemCoverage@2"] == pytest.approx(3 / 11) and m["ItemCoverage@3"] == pytest.approx(4 / 11)
    # 10 items seen in train (item 1 never): the tail is the least popular one, item 2 (count 1)
    assert m["TailPercentage@2"] == pytest.approx((0 + 1 / 2) / 2) and m["TailPercentage@3"] == pytest.approx(1 / 6)


def test_train_popularity_counts_train_targets():
    """The popularity behind the tail, as RecBole counts it for a sequential model (its train split after data
    augmentation: one row per target): how often each item is a train example's target. Each user's first item is
    never a target, so it counts less than the items of the users' sequences."""
    dataset = generate_synthetic(SyntheticConfig(num_users=60, num_categories=3, items_per_category=10))
    counts = train_item_counts(dataset)
    expected = Counter(dataset.item_index(t) for t in dataset.splits["train"]["target"])
    assert counts.tolist() == [expected.get(i, 0) for i in range(len(dataset.items))]
    assert int(counts.sum()) == len(dataset.splits["train"])
    in_sequences = Counter(i for sequence in user_sequences(dataset) for i in sequence)
    assert sum(in_sequences.values()) > int(counts.sum())


def test_baselines_report_the_same_metrics():
    dataset = generate_synthetic(SyntheticConfig(num_users=60, num_categories=3, items_per_category=10))
    metrics = evaluate_popularity(dataset)["metrics"]
    names = {m.split("@")[0] for m in metrics}
    assert names == {"NDCG", "HR", "MRR", "ItemCoverage", "GiniIndex", "TailPercentage"}
    assert metrics["ItemCoverage@10"] == pytest.approx(10 / len(dataset.items))  # the same 10 items for everyone
