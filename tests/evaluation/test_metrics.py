"""Metrics against hand-computed values (paper definitions, one positive per user)."""

import math

import pytest
import torch

from bearrec.evaluation.metrics import full_rank, ranking_metrics, retrieved_rank


def test_ndcg_hr_by_hand():
    retrieved = torch.tensor([[3, 1, 2, -1], [0, 2, 1, 3], [5, 6, 7, 8]])
    targets = torch.tensor([1, 3, 0])
    assert retrieved_rank(retrieved, targets).tolist() == [2, 4, 0]
    m = ranking_metrics(retrieved, targets, ks=(1, 3))
    assert m["HR@1"] == 0 and m["HR@3"] == pytest.approx(1 / 3)
    assert m["NDCG@3"] == pytest.approx((1 / math.log2(3)) / 3)
    assert "PR@3" not in m


def test_pruning_rate_by_hand():
    # 4 users, 5 items; exact scores decide the full rank of the positive
    scores = torch.tensor([
        [0.0, -1.0, -2.0, -3.0, -4.0],  # positive 0: full rank 1, retrieved -> not pruned
        [0.0, -1.0, -2.0, -3.0, -4.0],  # positive 1: full rank 2, missing -> pruned
        [0.0, -1.0, -2.0, -3.0, -4.0],  # positive 4: full rank 5 -> not eligible for K=2
        [-1.0, -1.0, 0.0, -3.0, -4.0],  # positive 1 tied with item 0: rank 2 (ties favour the positive)
    ])
    targets = torch.tensor([0, 1, 4, 1])
    retrieved = torch.tensor([[0, 2], [0, 2], [0, 1], [2, 1]])
    assert full_rank(scores, targets).tolist() == [1, 2, 5, 2]
    m = ranking_metrics(retrieved, targets, full_rank(scores, targets), ks=(2,))
    assert m["PR@2"] == pytest.approx(1 / 3)  # eligible users 0, 1, 3; user 1 pruned


def test_pruning_rate_without_eligible_users_is_nan():
    scores = torch.tensor([[0.0, -1.0]])
    m = ranking_metrics(torch.tensor([[0]]), torch.tensor([1]), full_rank(scores, torch.tensor([1])), ks=(1,))
    assert math.isnan(m["PR@1"])


def test_unranked_users_are_left_out_of_the_pruning_rate():
    retrieved = torch.tensor([[0, 2], [0, 2], [0, 1]])
    targets = torch.tensor([1, 1, 1])
    exact = torch.tensor([2, -1, 1])  # user 1 was not ranked
    m = ranking_metrics(retrieved, targets, exact, ks=(2,))
    assert m["PR@2"] == pytest.approx(1 / 2)  # users 0 (pruned) and 2 (retrieved)
