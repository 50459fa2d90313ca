"""SASRec (Kang & McAuley, ICDM 2018): the conventional sequential recommender the paper compares against.

The paper's settings: 2 self-attention layers, 64 dimensions, batch 128, learning rate 1e-3, up to 200
epochs. It is trained on the same train split as the language models: each row's history + target is
one sequence, and as in the official code every position predicts the next item (binary cross-entropy
against one sampled negative). It keeps the epoch with the best validation NDCG@10,
and is scored by ranking the whole catalog, with the metric code every other model uses. PR@K does not
apply: there is no beam search to prune anything.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from bearrec.data.dataset import RecDataset
from bearrec.metrics import ranking_metrics, retrieved_rank


@dataclass
class SASRecConfig:
    """Defaults: the paper's (2 layers, 64 dims, batch 128, lr 1e-3, 200 epochs) and the official code's."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 1  # official default
    dropout: float = 0.5  # official setting for the sparse Amazon data sets (0.2 for MovieLens)
    max_len: int = 10  # the histories of ../shared/data hold at most 10 items; longer ones keep the newest
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    loss: str = "bce"  # bce: one sampled negative per example (official); ce: softmax over the whole catalog
    eval_every: int = 5  # epochs between validation NDCG@10 checks
    patience: int = 4  # checks without improvement before stopping (0: train all epochs)
    valid_users: int | None = 1000  # seeded validation subsample for model selection (None: all; 0: none, keep the last)
    seed: int = 0


class SASRec(nn.Module):
    """Item + position embeddings, causal pre-norm transformer layers; the last position scores every item."""

    def __init__(self, num_items: int, config: SASRecConfig):
        super().__init__()
        d = config.hidden_size
        self.config = config
        self.items = nn.Embedding(num_items + 1, d, padding_idx=0)  # row 0: padding; item i is row i + 1
        self.positions = nn.Embedding(config.max_len, d)
        layer = nn.TransformerEncoderLayer(d, config.num_heads, dim_feedforward=d, dropout=config.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)
        for name, param in self.named_parameters():  # as the official code: Xavier for every matrix
            if param.dim() > 1:
                nn.init.xavier_normal_(param)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, sequences: torch.Tensor, every_position: bool = False) -> torch.Tensor:
        """User states ``[n, d]`` after left-padded item rows ``[n, L]`` (0 = padding), or ``[n, L, d]``
        after every prefix with ``every_position``."""
        n, length = sequences.shape
        x = self.items(sequences) * math.sqrt(self.config.hidden_size) + self.positions.weight[-length:]
        x = self.dropout(x * (sequences > 0)[..., None])
        future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), 1)
        # Padding keys are hidden, but every position keeps itself: a fully masked row would give NaN.
        blocked = future[None] | ((sequences == 0)[:, None, :] & ~torch.eye(length, dtype=torch.bool, device=x.device))
        mask = blocked.repeat_interleave(self.config.num_heads, 0)
        states = self.norm(self.encoder(x, mask=mask))
        return states if every_position else states[:, -1]

    def scores(self, sequences: torch.Tensor) -> torch.Tensor:
        """``[n, num_items]`` scores of every catalog item."""
        return self(sequences) @ self.items.weight[1:].T


def _pad(histories: list[list[int]], max_len: int) -> torch.Tensor:
    rows = torch.zeros(len(histories), max_len, dtype=torch.long)
    for n, history in enumerate(histories):
        kept = history[-max_len:]
        rows[n, max_len - len(kept):] = torch.tensor(kept) + 1
    return rows


@torch.no_grad()
def top_items(model: SASRec, histories: list[list[int]], k: int, batch_size: int = 1024) -> torch.Tensor:
    """``[N, k]`` catalog indices ranked by score (full ranking, nothing filtered)."""
    model.eval()
    device = next(model.parameters()).device
    rows = _pad(histories, model.config.max_len)
    return torch.cat([model.scores(rows[i:i + batch_size].to(device)).topk(k, dim=1).indices.cpu()
                      for i in range(0, len(rows), batch_size)])


def train_sasrec(dataset: RecDataset, config: SASRecConfig | None = None, console=None) -> tuple[SASRec, dict]:
    """Train on the train split; keep the weights with the best validation NDCG@10. Returns (model, log)."""
    cfg = config or SASRecConfig()
    if cfg.loss not in ("bce", "ce"):
        raise ValueError(f"sasrec.loss must be 'bce' or 'ce', not {cfg.loss!r}")
    if cfg.eval_every < 1 or cfg.epochs < 1:
        raise ValueError("sasrec.epochs and sasrec.eval_every must be at least 1")
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    num_items = len(dataset.items)
    model = SASRec(num_items, cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    histories, targets = dataset.examples("train")
    sequences = _pad([h + [t] for h, t in zip(histories, targets)], cfg.max_len + 1)
    rows, targets = sequences[:, :-1], sequences[:, 1:] - 1  # targets: catalog index after each prefix, -1 at padding
    valid_histories, valid_targets = dataset.examples("valid", cfg.valid_users, cfg.seed) if cfg.valid_users != 0 else ([], [])
    generator = torch.Generator().manual_seed(cfg.seed)
    best, best_state, since_best, epochs_run, seconds = -1.0, None, 0, 0, 0.0
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("epoch {task.completed}/{task.total}"),
               TextColumn("{task.fields[valid]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("SASRec", total=cfg.epochs, valid="")
        for epoch in range(1, cfg.epochs + 1):
            start = time.perf_counter()
            model.train()
            order = torch.randperm(len(rows), generator=generator)
            for lo in range(0, len(rows), cfg.batch_size):
                batch = order[lo:lo + cfg.batch_size]
                target = targets[batch].to(device)
                real = (target >= 0) & (rows[batch] > 0).to(device)  # positions with an item and a next item
                state = model(rows[batch].to(device), every_position=True)[real]
                target = target[real]
                if cfg.loss == "ce":
                    loss = nn.functional.cross_entropy(state @ model.items.weight[1:].T, target)
                else:
                    negative = torch.randint(0, num_items - 1, target.shape, generator=generator).to(device)
                    negative = negative + (negative >= target).long()  # uniform over the other items
                    pos = (state * model.items(target + 1)).sum(-1)
                    neg = (state * model.items(negative + 1)).sum(-1)
                    loss = -(nn.functional.logsigmoid(pos) + nn.functional.logsigmoid(-neg)).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            seconds += time.perf_counter() - start
            epochs_run = epoch
            progress.advance(task)
            if not valid_targets or (epoch % cfg.eval_every and epoch != cfg.epochs):
                continue  # no validation data: the last epoch's weights are kept
            ndcg = ranking_metrics(top_items(model, valid_histories, 10), torch.tensor(valid_targets), ks=(10,))["NDCG@10"]
            progress.update(task, valid=f"valid NDCG@10 {ndcg:.4f} (best {max(best, ndcg):.4f})")
            if ndcg > best:
                best, since_best = ndcg, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if cfg.patience and since_best >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, {"epochs_run": epochs_run, "seconds_per_epoch": seconds / epochs_run, "best_valid_ndcg10": best if best >= 0 else None,
                   "config": asdict(cfg)}


def evaluate_sasrec(model: SASRec, dataset: RecDataset, split: str = "test", max_users: int | None = None,
                    seed: int = 0, top_k: int = 10, ks=(5, 10)) -> dict:
    """Metrics from the top ``top_k`` of a full catalog ranking, on the same rows as the LM evaluation."""
    histories, targets = dataset.examples(split, max_users, seed)
    retrieved = top_items(model, histories, top_k)
    target = torch.tensor(targets)
    return {"metrics": ranking_metrics(retrieved, target, ks=ks), "split": split, "users": len(targets),
            "of_users": len(dataset.splits[split]), "retrieved_rank": retrieved_rank(retrieved, target).tolist()}


def save_sasrec(model: SASRec, path: str | os.PathLike) -> None:
    """Weights as safetensors, written to a temporary file and renamed."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
