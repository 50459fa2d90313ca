"""SASRec (Kang & McAuley, ICDM 2018): the causal self-attention recommender the paper compares against.

Every position of a training window predicts the next item (:mod:`bearrec.baselines.seqrec` builds the windows,
one per user unless its train sequence is longer than ``max_len + 1``). The loss is ``ce``, softmax
cross-entropy over the whole catalog (RecBole's default, and much stronger than the original paper's),
or ``bce``, binary cross-entropy against one sampled negative per position (the original paper),
with negatives drawn uniformly from the items other than the positive. The user's state after the
newest history item scores every catalog item by a dot product with the (shared) item embeddings.
PR@K does not apply: there is no beam search to prune anything.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from bearrec.baselines.configs import SASRecConfig
from bearrec.baselines.seqrec import SequenceEncoder, SequentialRecommender, init_weights, pad, train
from bearrec.data.dataset import RecDataset


class SASRec(SequentialRecommender):
    """Item + position embeddings and causal transformer layers; the newest position scores every item."""

    def __init__(self, num_items: int, config: SASRecConfig):
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.encoder = SequenceEncoder(num_items + 1, config.max_len, config, causal=True)  # token 0: padding
        init_weights(self, config.init_std)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """States ``[B, L, D]`` after every prefix of left-padded rows ``[B, L]``."""
        return self.encoder(rows)

    @property
    def item_table(self) -> torch.Tensor:
        return self.encoder.tokens.weight[1:]  # [num_items, D]

    def history_rows(self, histories: list[list[int]]) -> torch.Tensor:
        return pad(histories, self.config.max_len)  # [N, L]

    def scores(self, rows: torch.Tensor) -> torch.Tensor:
        return self(rows)[:, -1] @ self.item_table.T  # [N, num_items]

    def loss(self, windows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        rows, targets = windows[:, :-1], windows[:, 1:] - 1  # [B, L] each; targets: catalog index, -1 at padding
        real = (rows > 0) & (targets >= 0)  # positions with an item and a next item
        states = self(rows)[real]  # [P, D]
        targets = targets[real]  # [P]
        if self.config.loss == "ce":
            return F.cross_entropy(states @ self.item_table.T, targets)
        negatives = sample_negatives(targets.cpu(), self.num_items, generator).to(targets.device)  # [P]
        positive = (states * self.item_table[targets]).sum(-1)  # [P]
        negative = (states * self.item_table[negatives]).sum(-1)  # [P]
        return -(F.logsigmoid(positive) + F.logsigmoid(-negative)).mean()


def sample_negatives(targets: torch.Tensor, num_items: int, generator: torch.Generator) -> torch.Tensor:
    """One item per target, uniform over the ``num_items - 1`` items other than the target."""
    negatives = torch.randint(0, num_items - 1, targets.shape, generator=generator)
    return negatives + (negatives >= targets).long()


def train_sasrec(dataset: RecDataset, config: SASRecConfig | None = None, console=None) -> tuple[SASRec, dict]:
    """Train on the train split; keep the weights with the best validation NDCG@10. Returns (model, log)."""
    return train(SASRec, dataset, config or SASRecConfig(), "SASRec", console)
