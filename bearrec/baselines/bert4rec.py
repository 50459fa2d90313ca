"""BERT4Rec (Sun et al., CIKM 2019): masked item prediction with a bidirectional transformer encoder.

Training (as RecBole's ``BERT4Rec`` with its ``mask_itemseq`` transform): a window of the user's train
sequence (:mod:`bearrec.baselines.seqrec`) has each item replaced by a [mask] token with probability
``mask_ratio``; with probability ``last_ratio`` the window instead has only its newest item masked,
which is exactly the inference task (RecBole's ``ft_ratio``, drawn per batch there, per window here).
The model predicts each masked item by softmax cross-entropy over the whole catalog. Inference
appends [mask] after the history (at most ``max_len`` items) and ranks the catalog by the masked
position's output: a GELU projection and LayerNorm, a dot product with the item embeddings and a
per-item bias.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bearrec.baselines.configs import BERT4RecConfig
from bearrec.baselines.seqrec import SequenceEncoder, SequentialRecommender, init_weights, pad, train
from bearrec.data.dataset import RecDataset


class BERT4Rec(SequentialRecommender):
    """Tokens: 0 padding, 1..num_items the catalog, num_items + 1 the [mask]; rows of ``max_len + 1``."""

    def __init__(self, num_items: int, config: BERT4RecConfig):
        super().__init__()
        d = config.hidden_size
        self.config = config
        self.num_items = num_items
        self.mask_token = num_items + 1
        self.encoder = SequenceEncoder(num_items + 2, config.max_len + 1, config, causal=False)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=config.layer_norm_eps))
        self.bias = nn.Parameter(torch.zeros(num_items))
        init_weights(self, config.init_std)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Output states ``[B, L, D]`` of left-padded token rows ``[B, L]``."""
        return self.head(self.encoder(rows))

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """``[..., num_items]`` item scores of output states ``[..., D]``."""
        return states @ self.encoder.tokens.weight[1:self.mask_token].T + self.bias

    def history_rows(self, histories: list[list[int]]) -> torch.Tensor:
        rows = pad(histories, self.config.max_len)  # [N, L]
        return torch.cat([rows, torch.full((len(rows), 1), self.mask_token)], dim=1)  # [N, L + 1]

    def scores(self, rows: torch.Tensor) -> torch.Tensor:
        return self.logits(self(rows)[:, -1])  # [N, num_items]

    def loss(self, windows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        masked = mask_positions(windows.cpu(), self.config.mask_ratio, self.config.last_ratio, generator)  # [B, L + 1]
        masked = masked.to(windows.device)
        states = self(windows.masked_fill(masked, self.mask_token))[masked]  # [P, D]
        return F.cross_entropy(self.logits(states), windows[masked] - 1)


def mask_positions(windows: torch.Tensor, mask_ratio: float, last_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``[B, L]`` positions to mask in left-padded windows ``[B, L]``: the newest item only for a share
    ``last_ratio`` of the windows, otherwise each item with probability ``mask_ratio``. Never padding."""
    real = windows > 0  # [B, L]
    random = (torch.rand(windows.shape, generator=generator) < mask_ratio) & real  # [B, L]
    last = torch.zeros_like(real)
    last[:, -1] = real[:, -1]
    random = random | (last & ~random.any(dim=1, keepdim=True))  # a window with nothing masked masks its newest
    newest_only = torch.rand(len(windows), generator=generator) < last_ratio  # [B]
    return torch.where(newest_only[:, None], last, random)


def train_bert4rec(dataset: RecDataset, config: BERT4RecConfig | None = None, console=None) -> tuple[BERT4Rec, dict]:
    """Train on the train split; keep the weights with the best validation NDCG@10. Returns (model, log)."""
    return train(BERT4Rec, dataset, config or BERT4RecConfig(), "BERT4Rec", console)
