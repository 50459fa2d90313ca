"""Item tests never write the user's cache: title embeddings are cached in a temporary folder."""

import pytest


@pytest.fixture(autouse=True)
def _embedding_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BEARREC_CACHE_DIR", str(tmp_path_factory.mktemp("bearrec-cache")))
