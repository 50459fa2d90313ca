"""Evaluation: the scoring and length penalty it decodes with, PR@K's exact ranks under the same scoring,
and how users left undecided by a node budget are counted and described."""

from types import SimpleNamespace

import pytest
import torch

from bearrec.catalog import build_trie
from bearrec.config import ExperimentConfig
from bearrec.data.prompts import left_pad
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.decoding import default_scoring, score_catalog
from bearrec.evaluate import evaluate, pruning_scope
from bearrec.metrics import full_rank
from bearrec.runs import prompt_encoder, tokenizer_corpus
from bearrec.data.prompts import PromptTemplate
from bearrec.models import tiny_model_for
from bearrec.train import encode_split

USERS = 12


@pytest.fixture(scope="module")
def setup():
    """An untrained tiny model (seeded) on a small synthetic catalog, and the exact item scores of the
    evaluated users under both scorings."""
    dataset = generate_synthetic(SyntheticConfig(num_users=40, num_categories=3, items_per_category=12))
    config = ExperimentConfig()
    model, tokenizer = tiny_model_for(tokenizer_corpus(dataset, PromptTemplate(dataset.domain)), config.tiny, seed=3)
    model.eval()
    encoder = prompt_encoder(tokenizer, dataset, config)
    trie = build_trie(tokenizer, dataset.titles)
    prompts, targets = encode_split(dataset, "test", encoder, USERS, 0)
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    exact = {s: score_catalog(model, ids, mask, trie, scoring=s) for s in ("full", "masked")}
    return model, tokenizer, dataset, encoder, trie, torch.tensor(targets), exact


@pytest.mark.parametrize("scoring", ["full", "masked"])
def test_pr_at_k_ranks_use_the_scoring_of_the_beam_search(setup, scoring):
    model, tokenizer, dataset, encoder, trie, targets, exact = setup
    result = evaluate(model, tokenizer, dataset, encoder, trie, max_users=USERS, scoring=scoring, length_penalty=1.0)
    assert (result["scoring"], result["length_penalty"]) == (scoring, 1.0)
    got = torch.tensor(result["per_user"]["exact_rank"].tolist())
    assert got.tolist() == full_rank(exact[scoring], targets).clamp(max=11).tolist()
    other = "masked" if scoring == "full" else "full"
    assert got.tolist() != full_rank(exact[other], targets).clamp(max=11).tolist()  # the two scorings rank differently


def test_node_budget_counts_and_describes_undecided_users(setup):
    model, tokenizer, dataset, encoder, trie, targets, exact = setup
    result = evaluate(model, tokenizer, dataset, encoder, trie, max_users=USERS, scoring="masked",
                      pruning_users=10, pruning_node_budget=4)
    ranks = result["per_user"]["exact_rank"].tolist()
    truth = full_rank(exact["masked"], targets).clamp(max=11).tolist()
    undecided = sum(r == -1 for r in ranks[:10])
    summary = result["pruning"]
    assert 0 < undecided < 10 and ranks[10:] == [-1, -1]  # the last two users were never attempted
    assert all(r in (-1, t) for r, t in zip(ranks, truth))  # decided users get their exact rank
    assert (summary["pruning_users"], summary["ranked_users"], summary["unranked_users"]) == (10, 10 - undecided, undecided)
    text = pruning_scope(summary, result["users"])
    assert f"{10 - undecided} of {USERS} users (the first 10 evaluated)" in text
    assert f"{undecided} left undecided by the node budget (4 expanded" in text
    assert "more probable than their positive" in text


def test_evaluate_refuses_unknown_scoring(setup):
    model, tokenizer, dataset, encoder, trie, _, _ = setup
    with pytest.raises(ValueError, match="scoring"):
        evaluate(model, tokenizer, dataset, encoder, trie, max_users=2, scoring="vocab")


@pytest.mark.parametrize("objective,formulation,expected", [
    ("sft", None, "full"), ("beam-sim", None, "full"), ("msl", None, "masked"), ("bear", "official", "masked"),
    ("bear", "paper", "full"), ("bear", None, "full"),  # a config from before bear.formulation existed
])
def test_default_scoring_follows_the_objective(objective, formulation, expected):
    bear = SimpleNamespace() if formulation is None else SimpleNamespace(formulation=formulation)
    config = SimpleNamespace(train=SimpleNamespace(objective=objective), bear=bear)
    assert default_scoring(config) == expected
