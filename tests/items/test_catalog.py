"""The CSR trie: structure, lookups and errors, against a dict-of-dicts trie built by hand."""

import random

import pytest
import torch

from bearrec.items.trie import ItemTrie, build_trie, tokenize_titles
from bearrec.lm.models import train_tokenizer

EOS = 1


def _dict_trie(seqs):
    root = {}
    for i, s in enumerate(seqs):
        node = root
        for tok in s:
            node = node.setdefault(tok, {})
        node["item"] = i
    return root


def test_trie_matches_dict_trie_on_random_catalog():
    rng = random.Random(0)
    seqs = {tuple([rng.randint(2, 6) for _ in range(rng.randint(0, 5))] + [EOS]) for _ in range(200)}
    seqs = [list(s) for s in seqs]
    rng.shuffle(seqs)
    trie = ItemTrie.from_sequences(seqs, EOS)
    ref = _dict_trie(seqs)

    def walk(node_ref, prefix):
        tokens = sorted(k for k in node_ref if k != "item")
        assert trie.allowed_tokens(prefix) == tokens
        node = trie.node_of(prefix)
        assert int(trie.node_depth[node]) == len(prefix)
        if "item" in node_ref:
            assert int(trie.node_item[node]) == node_ref["item"]
        for tok in tokens:
            walk(node_ref[tok], prefix + [tok])

    walk(ref, [])
    assert trie.num_items == len(seqs)
    assert trie.max_length == max(len(s) for s in seqs)
    assert int((trie.node_item >= 0).sum()) == len(seqs)
    assert trie.lengths.tolist() == [len(s) for s in seqs]


def test_prefix_titles_and_unknown_prefixes():
    trie = ItemTrie.from_sequences([[5, 6, EOS], [5, EOS], [5, 6, 7, EOS]], EOS)
    assert trie.allowed_tokens([5]) == [EOS, 6]
    assert trie.allowed_tokens([5, 6]) == [EOS, 7]
    assert trie.allowed_tokens([9]) == [] and trie.node_of([5, 9]) == -1
    assert int(trie.node_item[trie.node_of([5, EOS])]) == 1


@pytest.mark.parametrize("seqs,match", [
    ([[5, 6]], "must end with the EOS"),
    ([[5, EOS, 6, EOS]], "only at the end"),
    ([[5, EOS], [5, EOS]], "same token sequence"),
    ([], "empty catalog"),
])
def test_invalid_sequences(seqs, match):
    with pytest.raises(ValueError, match=match):
        ItemTrie.from_sequences(seqs, EOS)


def test_titles_through_a_trained_tokenizer():
    titles = ["Acme Stapler Pro", "Acme Stapler", "Nova Binder Max", "Zorvik Pencil Eco"]
    tok = train_tokenizer(titles * 3, vocab_size=300)
    seqs = tokenize_titles(tok, titles)
    assert all(s[-1] == tok.eos_token_id for s in seqs)
    assert [tok.decode(s[:-1]) for s in seqs] == titles
    trie = build_trie(tok, titles)
    assert trie.num_items == 4
    assert torch.equal(trie.to("cpu").child_start, trie.child_start)
