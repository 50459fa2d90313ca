"""The public Python API: every exported name imports from ``bearrec``, ``import bearrec`` stays light, and the
examples of docs/api.md (BEAR in a plain Hugging Face Trainer, trie-constrained generate) run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bearrec
import bearrec.api
from bearrec import build_trie

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_public_name_imports_from_bearrec():
    for name in bearrec.api.__all__:
        assert getattr(bearrec, name) is getattr(bearrec.api, name)
    assert set(bearrec.api.__all__) <= set(dir(bearrec))
    assert {"bear_loss", "msl_loss", "build_trie", "constrained_beam_search", "exact_top_k", "ndcg_at_k"} <= set(dir(bearrec))


def test_import_bearrec_does_not_import_torch():
    code = "import sys, bearrec; assert 'torch' not in sys.modules, 'torch imported'; bearrec.__version__"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prefix_allowed_tokens_fn_walks_the_trie():
    class Tokenizer:  # whitespace words as token ids
        eos_token_id = 0

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[1 + ["a", "b", "c"].index(w) for w in t.split()] for t in texts]}

    trie = build_trie(Tokenizer(), ["a b", "a c", "c"])
    allowed = trie.prefix_allowed_tokens_fn(prompt_length=2)
    prompt = [7, 7]
    assert sorted(allowed(0, torch.tensor(prompt))) == [1, 3]  # a, c
    assert sorted(allowed(0, torch.tensor(prompt + [1]))) == [2, 3]  # a -> b, c
    assert allowed(0, torch.tensor(prompt + [3])) == [0]  # c -> EOS
    assert allowed(0, torch.tensor(prompt + [2])) == [0]  # no item starts with b: EOS only


@pytest.mark.slow
def test_the_docs_examples_run(tmp_path, monkeypatch):
    """docs/api.md's code blocks, in order, in one namespace: BEAR trains inside a plain Trainer (its loss is
    finite and the weights move), and bearrec's constrained beam search returns generate's lists."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)  # the Trainer's output_dir
    namespace: dict = {}
    exec(compile(blocks[0], f"{DOCS}:block1", "exec"), namespace)
    history = [h["loss"] for h in namespace["trainer"].state.log_history if "loss" in h]
    assert namespace["trainer"].state.global_step == 4 and len(history) == 4
    assert all(torch.isfinite(torch.tensor(history))) and history[-1] < history[0]
    exec(compile(blocks[1], f"{DOCS}:block2", "exec"), namespace)
    assert namespace["result"].item_ids.shape == (1, 3)
