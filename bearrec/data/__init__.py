"""Data: the dataset contract, readers, the synthetic generator and the prompt."""

from bearrec.data.dataset import DataError, RecDataset
from bearrec.data.prompts import PromptEncoder, PromptTemplate
from bearrec.data.readers import read_amazon, read_interactions, read_processed, read_source
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic

__all__ = [
    "DataError",
    "PromptEncoder",
    "PromptTemplate",
    "RecDataset",
    "SyntheticConfig",
    "generate_synthetic",
    "read_amazon",
    "read_interactions",
    "read_processed",
    "read_source",
]
