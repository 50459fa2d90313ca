"""L2D latent-space decoding against loop-based references; the item memory's build, fallback and reuse."""

import errno
import math
import os

import pytest
import safetensors
import torch
from reference import PAD, random_model, random_prompts

from bearrec.config import ExperimentConfig
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.decoding import latent
from bearrec.decoding.latent import (
    ItemMemory,
    item_memory,
    item_scores,
    latent_decode,
    latent_top_k,
    prompt_states,
    training_prompts,
)
from bearrec.items.prompts import PromptTemplate
from bearrec.lm.forward import left_pad
from bearrec.lm.models import tiny_model_for
from bearrec.runs import item_space, tokenizer_corpus

NUM_ITEMS = 9  # items 7 and 8 are never a target


def _memory(seed: int = 0) -> ItemMemory:
    g = torch.Generator().manual_seed(seed)
    targets = torch.tensor([0] * 6 + [1] + [2] * 3 + [3] * 4 + [4] * 2 + [5] * 9 + [6] * 5)
    targets = targets[torch.randperm(targets.numel(), generator=g)]  # items' states interleaved, as in real data
    return ItemMemory(torch.randn(targets.numel(), 6, generator=g), targets, NUM_ITEMS)


def _similarity(u: torch.Tensor, v: torch.Tensor, similarity: str) -> float:
    if similarity == "l2":
        return -math.sqrt(sum((a - b) ** 2 for a, b in zip(u.tolist(), v.tolist())))
    return float(u @ v) / (float(u.norm()) * float(v.norm()))


def _reference_scores(users, memory: ItemMemory, variant: str, similarity: str, neighbors: int) -> list[list[float]]:
    """One loop per user and item: the item's training states, the M most similar (local) or all (global), their
    mean, its similarity to the user; -inf for items without training states."""
    out = []
    for u in users:
        row = []
        for item in range(memory.num_items):
            own = [memory.states[t] for t in range(len(memory.targets)) if int(memory.targets[t]) == item]
            if not own:
                row.append(-math.inf)
                continue
            if variant == "local":
                own = sorted(own, key=lambda s: -_similarity(u, s, similarity))[:neighbors]
            row.append(_similarity(u, torch.stack(own).mean(0), similarity))
        out.append(row)
    return out


@pytest.mark.parametrize("variant,neighbors", [("global", 5), ("local", 1), ("local", 3), ("local", 50)])
@pytest.mark.parametrize("similarity", ["l2", "cosine"])
def test_item_scores_equal_the_loop_reference(variant, similarity, neighbors):
    memory = _memory()
    users = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    got = item_scores(users, memory, variant, similarity, neighbors)
    expected = torch.tensor(_reference_scores(users, memory, variant, similarity, neighbors))
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert torch.allclose(got[torch.isfinite(got)], expected[torch.isfinite(expected)], atol=1e-5)
    if variant == "local" and neighbors >= 9:  # M above every item's count: the local variant is the global one
        assert torch.allclose(got, item_scores(users, memory, "global", similarity), atol=1e-5)


def test_local_differs_from_global():
    memory, users = _memory(), torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    local, glob = item_scores(users, memory, "local", "l2", 2), item_scores(users, memory, "global", "l2")
    finite = torch.isfinite(glob)
    assert not torch.allclose(local[finite], glob[finite])
    assert (local[:, 1] == glob[:, 1]).all()  # an item with one training state is that state in both


def test_items_never_a_target_are_ranked_last_in_catalog_order():
    memory, users = _memory(), torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    for variant in ("global", "local"):
        top = latent_top_k(users, memory, k=12, variant=variant, neighbors=2)
        assert top.item_ids.shape == (4, 12)
        assert (top.item_ids[:, 7:9] == torch.tensor([7, 8])).all() and torch.isneginf(top.scores[:, 7:]).all()
        assert (top.item_ids[:, 9:] == -1).all()
        assert sorted(top.item_ids[0, :7].tolist()) == list(range(7)) and torch.isfinite(top.scores[:, :7]).all()
        assert (top.scores[:, :6] >= top.scores[:, 1:7]).all()


def test_prompt_states_are_the_last_hidden_state_whatever_the_padding():
    model = random_model("llama", 48, seed=3)
    prompts = random_prompts(5, 48, seed=4)
    ids, mask = left_pad(prompts, PAD)
    got = prompt_states(model, ids, mask, batch_size=2)
    for n, prompt in enumerate(prompts):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([prompt]), output_hidden_states=True).hidden_states[-1][0, -1]
        assert torch.allclose(got[n], alone, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_run():
    dataset = generate_synthetic(SyntheticConfig(num_users=30, num_categories=3, items_per_category=10))
    config = ExperimentConfig()
    model, tokenizer = tiny_model_for(tokenizer_corpus(dataset, PromptTemplate(dataset.domain)), config.tiny, seed=3)
    return model.eval(), dataset, item_space(tokenizer, dataset, config).encoder


def test_memory_is_built_saved_and_reused_only_when_it_matches(tiny_run, tmp_path):
    model, dataset, encoder = tiny_run
    path = tmp_path / "latent_memory.safetensors"
    opened = []
    memory, built = item_memory(model, encoder, dataset, path, batch_size=7, on_build=opened.append)
    prompts, targets = training_prompts(encoder, dataset)
    assert built and path.is_file() and opened == [len(prompts)]
    assert memory.targets.tolist() == targets and memory.num_items == len(dataset.titles)
    ids, mask = left_pad(prompts[:3], encoder.tokenizer.pad_token_id)
    assert torch.allclose(memory.states[:3], prompt_states(model, ids, mask), atol=1e-5)

    again, built = item_memory(model, encoder, dataset, path)
    assert not built and torch.equal(again.states, memory.states) and torch.equal(again.targets, memory.targets)

    weight = next(model.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():  # another model: the saved memory no longer matches and is rebuilt
        weight.add_(0.01)
    try:
        changed, built = item_memory(model, encoder, dataset, path)
        assert built and not torch.allclose(changed.states, memory.states)
    finally:
        with torch.no_grad():
            weight.copy_(saved)  # exactly the first model again (adding and subtracting 0.01 rounds)

    path.write_bytes(path.read_bytes()[:100])  # truncated: rebuilt, not trusted
    rebuilt, built = item_memory(model, encoder, dataset, path, batch_size=7)
    assert built and torch.allclose(rebuilt.states, memory.states, atol=1e-6)


def _refuse_writes(monkeypatch, error: Exception) -> None:
    def save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:  # half a file, then the failure
            handle.write(b"\0" * 100)
        raise error

    monkeypatch.setattr("bearrec.decoding.latent.save_file", save_file)


@pytest.mark.parametrize("error,reason", [
    (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
    (OSError(errno.EACCES, "Permission denied"), "permission denied"),
    # what safetensors raises on a full disk (safetensors 0.8: no errno, the OS error in the text)
    (safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
     "no space left on device"),
])
def test_a_memory_that_cannot_be_saved_is_used_with_a_warning(tiny_run, tmp_path, monkeypatch, error, reason):
    model, dataset, encoder = tiny_run
    expected, _ = item_memory(model, encoder, dataset)
    _refuse_writes(monkeypatch, error)
    path = tmp_path / latent.MEMORY_FILE
    with pytest.warns(UserWarning) as caught:
        memory, built = item_memory(model, encoder, dataset, path)
    assert built and torch.equal(memory.states, expected.states) and torch.equal(memory.targets, expected.targets)
    assert len(caught) == 1, [str(w.message) for w in caught]
    text = str(caught[0].message)
    assert str(path) in text and f"({reason})" in text and "rebuilt at the next start" in text, text
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_a_failed_save_that_is_not_the_disk_still_raises(tiny_run, tmp_path, monkeypatch):
    model, dataset, encoder = tiny_run
    _refuse_writes(monkeypatch, safetensors.SafetensorError("invalid metadata"))
    with pytest.raises(safetensors.SafetensorError, match="invalid metadata"):
        item_memory(model, encoder, dataset, tmp_path / latent.MEMORY_FILE)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its mode")
def test_a_memory_in_a_read_only_folder_is_used_with_a_warning(tiny_run, tmp_path):
    model, dataset, encoder = tiny_run
    tmp_path.chmod(0o555)
    try:
        with pytest.warns(UserWarning, match="permission denied"):
            memory, built = item_memory(model, encoder, dataset, tmp_path / latent.MEMORY_FILE)
    finally:
        tmp_path.chmod(0o755)
    assert built and memory.num_items == len(dataset.titles) and list(tmp_path.iterdir()) == []


def test_latent_decode_ranks_the_users_prompt_states(tiny_run):
    model, dataset, encoder = tiny_run
    memory, _ = item_memory(model, encoder, dataset)
    histories, _ = dataset.examples("test")
    ids, mask = left_pad(encoder.prompts(histories), encoder.tokenizer.pad_token_id)
    got = latent_decode(model, ids, mask, memory, k=5, variant="local", similarity="cosine", neighbors=2, batch_size=4)
    scores = item_scores(prompt_states(model, ids, mask), memory, "local", "cosine", 2)
    assert got.item_ids.shape == (len(histories), 5)
    assert torch.allclose(got.scores, scores.sort(dim=1, descending=True).values[:, :5], atol=1e-6)
    assert torch.allclose(scores.gather(1, got.item_ids), got.scores, atol=1e-6)


@pytest.mark.parametrize("kwargs,name", [({"variant": "nearest"}, "variant"), ({"similarity": "dot"}, "similarity"),
                                         ({"neighbors": 0}, "neighbors"), ({"k": 0}, "k")])
def test_bad_arguments_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):  # the error names the argument
        latent_top_k(torch.zeros(1, 6), _memory(), **kwargs)
