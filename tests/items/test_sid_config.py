"""SemanticIdConfig: one object for `--semantic-ids build`, each bad field one line naming it and its flag."""

import pytest

from bearrec.items.sid_config import SemanticIdConfig


def test_defaults_validate_and_are_frozen():
    config = SemanticIdConfig().validate()
    assert (config.levels, config.codebook_size, config.backend, config.balanced) == (3, 256, "auto", False)
    assert config.normalize_residuals and config.unique_last_level
    with pytest.raises(AttributeError):
        config.levels = 4


@pytest.mark.parametrize("field,value,flag", [
    ("levels", 0, "--levels"), ("levels", 26, "--levels"), ("levels", 2.0, "--levels"),
    ("codebook_size", 1, "--codebook-size"), ("codebook_size", True, "--codebook-size"),
    ("seed", -1, "--seed"), ("seed", 2**32, "--seed"), ("backend", "torch", "--kmeans-backend"),
    ("embedding_model", "", "--embedding-model"), ("balanced", 1, "true or false"), ("batch_size", 0, "at least 1"),
])
def test_each_bad_field_is_one_line(field, value, flag):
    with pytest.raises(ValueError, match=rf"semantic_ids\.{field} must be .*{flag}.*got"):
        SemanticIdConfig(**{field: value}).validate()
