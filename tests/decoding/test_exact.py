"""Exact top-K decoding against sorting the brute-force catalog scores."""

import pytest
import torch
from reference import EOS, PAD, random_catalog, random_model, random_prompts

from bearrec.decoding import exact_top_k, score_catalog
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import left_pad

VOCAB = 48


def _case(arch: str, seed: int, num_items: int = 40, num_prompts: int = 6):
    model = random_model(arch, VOCAB, seed=seed)
    items = random_catalog(num_items, VOCAB, seed=seed + 1)
    assert any(a != b and b[: len(a) - 1] == a[:-1] for a in items for b in items)  # a title that prefixes another
    ids, mask = left_pad(random_prompts(num_prompts, VOCAB, seed=seed + 2), PAD)
    return model, ItemTrie.from_sequences(items, EOS), ids, mask


def _assert_top_k(got_ids, got_scores, catalog: torch.Tensor, k: int) -> int:
    """The returned items are a top k of ``catalog [N, items]`` in order; the order must equal sorting where no
    two of the first k + 1 scores are within 1e-5 (returns how many users had such a tie-free top)."""
    expected_scores, expected_ids = catalog.sort(dim=1, descending=True, stable=True)
    expected_scores, expected_ids = expected_scores[:, :k], expected_ids[:, :k]
    assert torch.allclose(got_scores, expected_scores, atol=1e-4)
    assert torch.allclose(catalog.gather(1, got_ids), expected_scores, atol=1e-4)
    clean = 0
    for n in range(catalog.shape[0]):
        top = catalog[n].sort(descending=True).values[: k + 1]
        if top.numel() < 2 or bool(((top[:-1] - top[1:]) > 1e-5).all()):
            assert got_ids[n].tolist() == expected_ids[n].tolist()
            clean += 1
    return clean


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("scoring", ["full", "masked"])
@pytest.mark.parametrize("k,batch_size,nodes_per_forward", [(1, 4, 1), (5, 2, 3), (10, 6, 32)])
def test_exact_top_k_equals_sorted_catalog_scores(arch, scoring, k, batch_size, nodes_per_forward):
    model, trie, ids, mask = _case(arch, seed=21)
    catalog = score_catalog(model, ids, mask, trie, scoring=scoring)
    got = exact_top_k(model, ids, mask, trie, k=k, scoring=scoring, batch_size=batch_size,
                      nodes_per_forward=nodes_per_forward)
    assert got.item_ids.shape == got.scores.shape == (ids.shape[0], k)
    assert got.certified.all()
    assert _assert_top_k(got.item_ids, got.scores, catalog, k) >= 3
    # Best-first search expands only part of the trie (the brute force feeds every internal node).
    assert (got.nodes_expanded < int((trie.child_count > 0).sum())).any()


@pytest.mark.parametrize("scoring", ["full", "masked"])
def test_k_larger_than_the_catalog_pads_with_minus_one(scoring):
    model = random_model("llama", VOCAB, seed=3)
    items = [[5, EOS], [5, 6, EOS], [9, 7, EOS]]
    trie = ItemTrie.from_sequences(items, EOS)
    ids, mask = left_pad(random_prompts(3, VOCAB, seed=4), PAD)
    catalog = score_catalog(model, ids, mask, trie, scoring=scoring)
    got = exact_top_k(model, ids, mask, trie, k=5, scoring=scoring)
    assert got.certified.all()
    assert (got.item_ids[:, 3:] == -1).all() and torch.isneginf(got.scores[:, 3:]).all()
    assert torch.equal(got.item_ids[:, :3], catalog.argsort(dim=1, descending=True, stable=True))
    assert torch.allclose(got.scores[:, :3], catalog.sort(dim=1, descending=True).values, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "t5"])
@pytest.mark.parametrize("scoring", ["full", "masked"])
def test_node_budget_uncertified_users_and_exact_certified_ones(arch, scoring):
    model, trie, ids, mask = _case(arch, seed=31, num_items=60, num_prompts=8)
    catalog = score_catalog(model, ids, mask, trie, scoring=scoring)
    free = exact_top_k(model, ids, mask, trie, k=10, scoring=scoring, nodes_per_forward=2)
    budget = int(free.nodes_expanded.float().median())
    got = exact_top_k(model, ids, mask, trie, k=10, scoring=scoring, node_budget=budget, nodes_per_forward=2)
    assert (~got.certified).any() and got.certified.any()
    assert (got.nodes_expanded <= budget).all()
    assert torch.equal(got.certified, free.nodes_expanded <= budget)
    ok = got.certified
    assert torch.equal(got.item_ids[ok], free.item_ids[ok]) and torch.allclose(got.scores[ok], free.scores[ok])
    _assert_top_k(got.item_ids[ok], got.scores[ok], catalog[ok], 10)
    # Uncertified users still get real items with their exact scores, best first.
    found = got.item_ids[~ok] >= 0
    assert found[:, 0].all()
    exact = catalog[~ok].gather(1, got.item_ids[~ok].clamp(min=0))
    assert torch.allclose(exact[found], got.scores[~ok][found], atol=1e-4)
    assert (got.scores[~ok][:, :-1] >= got.scores[~ok][:, 1:]).all()


@pytest.mark.parametrize("scoring", ["full", "masked"])
def test_ties_are_ordered_by_catalog_index_whatever_the_batching(scoring):
    """A model with uniform next-token distributions ties many items exactly: the order is score, then catalog
    index, for any batch size or window."""
    model = random_model("llama", VOCAB, seed=5)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    items = random_catalog(30, VOCAB, seed=6)
    trie = ItemTrie.from_sequences(items, EOS)
    ids, mask = left_pad(random_prompts(4, VOCAB, seed=7), PAD)
    catalog = score_catalog(model, ids, mask, trie, scoring=scoring)
    runs = [exact_top_k(model, ids, mask, trie, k=8, scoring=scoring, batch_size=b, nodes_per_forward=w)
            for b, w in [(1, 1), (4, 3), (2, 64)]]
    for run in runs:
        assert torch.equal(run.item_ids, runs[0].item_ids) and torch.equal(run.scores, runs[0].scores)
    if scoring == "full":  # every step scores -log V: ties by length, then catalog index
        lengths = torch.tensor([len(s) for s in items])
        expected = sorted(range(len(items)), key=lambda i: (int(lengths[i]), i))[:8]
        assert runs[0].item_ids[0].tolist() == expected
    rounded = (catalog * 1e4).round()  # the same scores up to float summation order
    expected = torch.stack([torch.tensor(sorted(range(len(items)), key=lambda i: (-float(r[i]), i))[:8]) for r in rounded])
    assert torch.equal(runs[0].item_ids, expected)
    assert len(set(rounded[0].tolist())) < len(items) - 5  # the case really has ties


def test_bad_arguments_are_refused():
    model, trie, ids, mask = _case("llama", seed=21, num_prompts=1)
    for kwargs, name in [({"k": 0}, "k"), ({"node_budget": 0}, "node_budget"), ({"scoring": "soft"}, "scoring"),
                         ({"nodes_per_forward": 0}, "nodes_per_forward")]:
        with pytest.raises(ValueError, match=rf"\b{name}\b"):  # the error names the argument
            exact_top_k(model, ids, mask, trie, **kwargs)
