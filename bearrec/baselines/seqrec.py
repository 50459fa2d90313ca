"""What the conventional sequential recommenders (SASRec, BERT4Rec) share: settings, the transformer
encoder, training sequences, the training loop and full-catalog evaluation.

Both follow RecBole's implementations (the reference the project measures against): item + position
embeddings, LayerNorm and dropout, post-norm transformer layers (attention dropout and hidden dropout
apart, GELU feed-forward of 4x the width), normal initialisation with std 0.02, Adam with lr 1e-3,
early stopping on validation NDCG@10. A model only says how it encodes histories, scores the catalog
and computes its training loss; everything else lives here.

Training sequences: every user's train rows (sliding windows of history + target) are chained back into
the user's train sequence, which is cut from its end into windows of ``max_len + 1`` items. Predicting
every position of a window then counts each train transition exactly once per epoch, as the official
SASRec code does with one sequence per user (for users with at most ``max_len + 1`` train items the
window *is* the user's whole train sequence), instead of up to ``max_len`` times through the rows.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from bearrec.baselines.configs import SeqRecConfig
from bearrec.data.dataset import RecDataset
from bearrec.evaluation.evaluate import EvalSettings, train_item_counts
from bearrec.evaluation.history import mask_history
from bearrec.evaluation.metrics import ranking_metrics, report_ks, retrieved_rank

# --- the transformer --------------------------------------------------------------------------------------

class EncoderLayer(nn.Module):
    """Post-norm transformer layer: multi-head attention, then a GELU feed-forward, each followed by
    dropout, the residual and LayerNorm (BERT's and RecBole's layout)."""

    def __init__(self, config: SeqRecConfig):
        super().__init__()
        d = config.hidden_size
        self.heads = config.num_heads
        self.attn_dropout = config.attn_dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, config.inner_size), nn.GELU(), nn.Linear(config.inner_size, d))
        self.norm_attn = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.norm_ffn = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x [B, L, D]``; ``allowed [B, 1, L, L]``: may query i attend to key j."""
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, D/H]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                                  dropout_p=self.attn_dropout if self.training else 0.0)  # [B, H, L, D/H]
        x = self.norm_attn(x + self.dropout(self.out(attended.transpose(1, 2).reshape(b, length, d))))  # [B, L, D]
        return self.norm_ffn(x + self.dropout(self.ffn(x)))  # [B, L, D]


class SequenceEncoder(nn.Module):
    """Token + position embeddings and transformer layers over left-padded rows (token 0 = padding).

    Positions count from a row's oldest token (as in RecBole, whose rows are right-padded), so padding
    never changes a row's states, and with ``causal`` attention (position i sees positions <= i only,
    SASRec) the state after the i-th item of a training window is the state of that prefix alone: every
    position of a window is trained exactly as the history it stands for is scored. Without ``causal``
    every position sees the whole row (BERT4Rec).
    """

    def __init__(self, num_tokens: int, length: int, config: SeqRecConfig, causal: bool):
        super().__init__()
        d = config.hidden_size
        self.causal = causal
        self.tokens = nn.Embedding(num_tokens, d, padding_idx=0)
        self.positions = nn.Embedding(length, d)
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """States ``[B, L, D]`` of token rows ``[B, L]``."""
        length = rows.shape[1]
        positions = ((rows > 0).cumsum(dim=1) - 1).clamp(min=0)  # [B, L]: 0 at the oldest token (and padding)
        x = self.dropout(self.norm(self.tokens(rows) + self.positions(positions)))  # [B, L, D]
        own = torch.eye(length, dtype=torch.bool, device=rows.device)  # [L, L]
        # Padding keys are hidden, but every position keeps itself: a fully masked row would give NaN.
        allowed = (rows > 0)[:, None, None, :] | own  # [B, 1, L, L]
        if self.causal:
            allowed = allowed & torch.ones_like(own).tril()
        for layer in self.layers:
            x = layer(x, allowed)
        return x


def init_weights(model: nn.Module, std: float) -> None:
    """RecBole's initialisation: normal(0, std) for linear and embedding weights, zero biases, unit LayerNorms."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


# --- sequences --------------------------------------------------------------------------------------------

def pad(histories: list[list[int]], length: int) -> torch.Tensor:
    """``[N, length]`` rows of tokens (catalog index + 1), left-padded with 0; longer histories keep the newest."""
    rows = torch.zeros(len(histories), length, dtype=torch.long)
    for n, history in enumerate(histories):
        kept = history[-length:]
        if kept:
            rows[n, length - len(kept):] = torch.tensor(kept) + 1
    return rows


def user_sequences(dataset: RecDataset, split: str = "train") -> list[list[int]]:
    """Each user's sequence of catalog indices, chained from its rows: a row whose history ends the way the
    user's sequence so far ends adds its target; any other row starts a new sequence of that user.
    Every row's target ends up in exactly one sequence, once."""
    frame = dataset.splits[split]
    sequences: dict[str, list[list[int]]] = {}
    for user, history, target in zip(frame["user_id"], frame["history"], frame["target"]):
        items = [dataset.item_index(i) for i in history]
        own = sequences.setdefault(user, [])
        if own and own[-1][-len(items):] == items:
            own[-1].append(dataset.item_index(target))
        else:
            own.append(items + [dataset.item_index(target)])
    return [s for own in sequences.values() for s in own]


def training_windows(sequences: list[list[int]], length: int) -> torch.Tensor:
    """``[W, length]`` left-padded windows cut from each sequence's end, overlapping by one item, so that
    predicting every next item of every window predicts each transition of each sequence exactly once."""
    windows = []
    for sequence in sequences:
        end = len(sequence)
        while end > 1:
            windows.append(sequence[max(0, end - length):end])
            end -= length - 1
    return pad(windows, length)


# --- training ---------------------------------------------------------------------------------------------

class SequentialRecommender(nn.Module):
    """What the shared loop needs from a model: rows for histories, catalog scores, and a training loss."""

    config: SeqRecConfig

    def history_rows(self, histories: list[list[int]]) -> torch.Tensor:
        """``[N, L]`` token rows that :meth:`scores` reads."""
        raise NotImplementedError

    def scores(self, rows: torch.Tensor) -> torch.Tensor:
        """``[N, num_items]`` score of every catalog item after each row."""
        raise NotImplementedError

    def loss(self, windows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Mean training loss of a batch of windows ``[B, max_len + 1]`` from :func:`training_windows`."""
        raise NotImplementedError


@torch.no_grad()
def top_items(model: SequentialRecommender, histories: list[list[int]], k: int, batch_size: int = 1024,
              exclude_history: bool = False) -> torch.Tensor:
    """``[N, k]`` catalog indices ranked by score over the whole catalog; with ``exclude_history`` each user's
    history items are left out (as the LM evaluation's ``exclude_history`` does)."""
    model.eval()
    device = next(model.parameters()).device
    rows = model.history_rows(histories)
    out = []
    for i in range(0, len(rows), batch_size):
        scores = model.scores(rows[i:i + batch_size].to(device))  # [n, num_items]
        if exclude_history:
            mask_history(scores, histories[i:i + batch_size])
        out.append(scores.topk(k, dim=1).indices.cpu())
    return torch.cat(out)


def train(model_class, dataset: RecDataset, config: SeqRecConfig, name: str, console=None):
    """Check ``config`` (errors name the ``name.lower()`` section), seed, build ``model_class(num_items, config)``
    and :func:`fit` it. Returns (model, log)."""
    config.validate(name.lower())
    torch.manual_seed(config.seed)
    model = model_class(len(dataset.items), config)
    return model, fit(model, dataset, name, console)


def fit(model: SequentialRecommender, dataset: RecDataset, name: str, console=None) -> dict:
    """Train ``model`` on the train split; keep the weights with the best validation NDCG@10. Returns the log."""
    cfg = model.config
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    windows = training_windows(user_sequences(dataset), cfg.max_len + 1)  # [W, L + 1]
    valid_histories, valid_targets = dataset.examples("valid", cfg.valid_users, cfg.seed) if cfg.valid_users != 0 else ([], [])
    generator = torch.Generator().manual_seed(cfg.seed)
    best, best_epoch, best_state, since_best, epochs_run, seconds = -1.0, None, None, 0, 0, 0.0
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("epoch {task.completed}/{task.total}"),
               TextColumn("{task.fields[valid]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(name, total=cfg.epochs, valid="")
        for epoch in range(1, cfg.epochs + 1):
            start = time.perf_counter()
            model.train()
            order = torch.randperm(len(windows), generator=generator)
            for lo in range(0, len(windows), cfg.batch_size):
                loss = model.loss(windows[order[lo:lo + cfg.batch_size]].to(device), generator)
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
                best, best_epoch, since_best = ndcg, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if cfg.patience and since_best >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"epochs_run": epochs_run, "best_epoch": best_epoch, "seconds_per_epoch": seconds / epochs_run,
            "best_valid_ndcg10": best if best >= 0 else None, "train_windows": len(windows), "config": asdict(cfg)}


# --- evaluation -------------------------------------------------------------------------------------------

def evaluate(model: SequentialRecommender, dataset: RecDataset, settings: EvalSettings | None = None) -> dict:
    """Metrics from the top ``beam_width`` of a full catalog ranking, on the same users as the LM evaluation with
    the same ``settings`` (split, users, seed, history exclusion; PR@K does not apply: nothing is pruned)."""
    settings = settings or EvalSettings()
    histories, targets = dataset.examples(settings.split, settings.max_users, settings.seed)
    retrieved = top_items(model, histories, settings.beam_width, exclude_history=settings.exclude_history)
    return _result(retrieved, torch.tensor(targets), dataset, settings.split, report_ks(settings.beam_width))


def evaluate_popularity(dataset: RecDataset, split: str = "test", max_users: int | None = None, seed: int = 0,
                        top_k: int = 10, ks=(5, 10)) -> dict:
    """The floor every model must clear: the ``top_k`` most frequent train targets, for every user."""
    _, targets = dataset.examples(split, max_users, seed)
    counts = torch.bincount(torch.tensor(dataset.examples("train")[1]), minlength=len(dataset.items))  # [num_items]
    retrieved = counts.topk(top_k).indices.expand(len(targets), top_k)  # [N, k]
    return _result(retrieved, torch.tensor(targets), dataset, split, ks)


def _result(retrieved: torch.Tensor, target: torch.Tensor, dataset: RecDataset, split: str, ks) -> dict:
    """The LM evaluation's contract: the same metrics (MRR and the beyond-accuracy ones included), users, ranks."""
    metrics = ranking_metrics(retrieved, target, ks=ks, item_counts=train_item_counts(dataset))
    return {"metrics": metrics, "split": split, "users": len(target),
            "of_users": len(dataset.splits[split]), "retrieved_rank": retrieved_rank(retrieved, target).tolist()}


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Weights as safetensors, written to a temporary file and renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
