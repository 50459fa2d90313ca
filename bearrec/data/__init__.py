"""Data: the dataset contract, readers and the synthetic generator. This layer knows no tokenizer."""

from bearrec.data.config import PrepareConfig
from bearrec.data.dataset import DataError, RecDataset
from bearrec.data.readers import read_amazon, read_dataset, read_interactions, read_processed, read_source
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic

__all__ = [
    "DataError",
    "PrepareConfig",
    "RecDataset",
    "SyntheticConfig",
    "generate_synthetic",
    "read_amazon",
    "read_dataset",
    "read_interactions",
    "read_processed",
    "read_source",
]
