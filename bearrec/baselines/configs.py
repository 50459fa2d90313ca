"""The baselines' settings (the ``sasrec`` and ``bert4rec`` sections of an experiment config), with RecBole's
defaults; no torch here, so that reading a config does not load the models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SeqRecConfig:
    """Defaults: RecBole's SASRec (2 layers, 64 dims, 2 heads, FFN 256, dropout 0.5, lr 1e-3, batch 256)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    inner_size: int = 256  # width of the feed-forward layer
    dropout: float = 0.5  # embeddings and every sub-layer output (RecBole's hidden_dropout_prob)
    attn_dropout: float = 0.5  # attention weights (RecBole's attn_dropout_prob)
    max_len: int = 10  # history items the model reads; the ../shared/data histories hold at most 10
    init_std: float = 0.02
    layer_norm_eps: float = 1e-12
    epochs: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    eval_every: int = 1  # epochs between validation NDCG@10 checks
    patience: int = 10  # checks without improvement before stopping (0: train all epochs)
    valid_users: int | None = None  # seeded validation subsample for model selection (None: all; 0: none, keep the last)
    seed: int = 0

    def validate(self, section: str) -> None:
        """Raise a one-line ValueError naming ``section.field`` for the first invalid value."""
        for name in ("hidden_size", "num_layers", "num_heads", "inner_size", "max_len", "epochs", "batch_size",
                     "eval_every"):
            _check(section, name, getattr(self, name), "a positive integer",
                   lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)
        _check(section, "patience", self.patience, "an integer >= 0",
               lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)
        for name in ("dropout", "attn_dropout"):
            _check(section, name, getattr(self, name), "in [0, 1)", lambda v: _number(v) and 0 <= v < 1)
        for name in ("lr", "init_std", "layer_norm_eps"):
            _check(section, name, getattr(self, name), "a positive number", lambda v: _number(v) and v > 0)
        _check(section, "valid_users", self.valid_users, "null or an integer >= 0",
               lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0))
        _check(section, "seed", self.seed, "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{section}.num_heads must divide {section}.hidden_size ({self.hidden_size}): "
                             f"got {self.num_heads}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(section: str, name: str, value, expected: str, ok) -> None:
    if not ok(value):
        raise ValueError(f"{section}.{name} must be {expected}: got {value!r}")


LOSSES = ("ce", "bce")


@dataclass
class SASRecConfig(SeqRecConfig):
    """RecBole's SASRec settings (see :class:`~bearrec.baselines.configs.SeqRecConfig`) plus the loss."""

    loss: str = "ce"  # ce: softmax over the whole catalog; bce: one sampled negative per position

    def validate(self, section: str = "sasrec") -> None:
        super().validate(section)
        if self.loss not in LOSSES:
            raise ValueError(f"{section}.loss must be one of {', '.join(LOSSES)}: got {self.loss!r}")


@dataclass
class BERT4RecConfig(SeqRecConfig):
    """RecBole's BERT4Rec settings: SASRec's, with dropout 0.2 and the masking probabilities."""

    dropout: float = 0.2
    attn_dropout: float = 0.2
    mask_ratio: float = 0.2  # chance that an item of a training window is masked
    last_ratio: float = 0.5  # chance that a training window masks its newest item only (RecBole's ft_ratio)

    def validate(self, section: str = "bert4rec") -> None:
        super().validate(section)
        if not (isinstance(self.mask_ratio, (int, float)) and 0 < self.mask_ratio < 1):
            raise ValueError(f"{section}.mask_ratio must be in (0, 1): got {self.mask_ratio!r}")
        if not (isinstance(self.last_ratio, (int, float)) and 0 <= self.last_ratio <= 1):
            raise ValueError(f"{section}.last_ratio must be in [0, 1]: got {self.last_ratio!r}")
