"""Evaluation: the scoring and length penalty it decodes with, PR@K's exact ranks under the same scoring,
and how users left undecided by a node budget are counted and described."""

from types import SimpleNamespace

import pytest
import torch

from bearrec.config import ExperimentConfig
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.decoding import DecodingConfig, constrained_beam_search, score_catalog
from bearrec.decoding.config import DecodingOverrides
from bearrec.evaluation.evaluate import EvalSettings, evaluate, pruning_scope
from bearrec.evaluation.metrics import full_rank
from bearrec.items.prompts import PromptTemplate
from bearrec.lm.models import tiny_model_for
from bearrec.runs import item_space, tokenizer_corpus

USERS = 12


def run(setup, settings: dict | None = None, latent_memory=None, **decoding):
    """``evaluate`` on the fixture's model: ``settings`` are EvalSettings fields (USERS users by default),
    ``decoding`` DecodingConfig fields (no length penalty by default)."""
    model, space, dataset = setup[:3]
    eval_settings = EvalSettings(**{"max_users": USERS, **(settings or {})})
    return evaluate(model, space, dataset, eval_settings, DecodingConfig(**{"length_penalty": 0.0, **decoding}),
                    latent_memory=latent_memory)


@pytest.fixture(scope="module")
def setup():
    """An untrained tiny model (seeded) on a small synthetic catalog, and the exact item scores of the
    evaluated users under both scorings."""
    dataset = generate_synthetic(SyntheticConfig(num_users=40, num_categories=3, items_per_category=12))
    config = ExperimentConfig()
    model, tokenizer = tiny_model_for(tokenizer_corpus(dataset, PromptTemplate(dataset.domain)), config.tiny, seed=3)
    model.eval()
    space = item_space(tokenizer, dataset, config)
    histories, targets = dataset.examples("test", USERS, 0)
    ids, mask = space.prompts(histories)
    exact = {s: score_catalog(model, ids, mask, space.trie, scoring=s) for s in ("full", "masked")}
    return model, space, dataset, torch.tensor(targets), exact


@pytest.mark.parametrize("scoring", ["full", "masked"])
def test_pr_at_k_ranks_use_the_scoring_of_the_beam_search(setup, scoring):
    targets, exact = setup[3:]
    result = run(setup, scoring=scoring, length_penalty=1.0)
    assert (result["scoring"], result["length_penalty"]) == (scoring, 1.0)
    got = torch.tensor(result["per_user"]["exact_rank"].tolist())
    assert got.tolist() == full_rank(exact[scoring], targets).clamp(max=11).tolist()
    other = "masked" if scoring == "full" else "full"
    assert got.tolist() != full_rank(exact[other], targets).clamp(max=11).tolist()  # the two scorings rank differently


def test_node_budget_counts_and_describes_undecided_users(setup):
    targets, exact = setup[3:]
    result = run(setup, {"pruning_users": 10, "pruning_node_budget": 4}, scoring="masked")
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


def test_decoding_settings_refuse_unknown_scoring():
    with pytest.raises(ValueError, match="decoding.scoring"):
        DecodingConfig(scoring="vocab").validate()
    with pytest.raises(ValueError, match=r"evaluate.scoring .*\(--scoring\)"):
        DecodingOverrides(scoring="vocab").validate("evaluate", {"scoring": "--scoring"})


@pytest.mark.parametrize("objective,formulation,expected", [
    ("sft", None, "full"), ("beam-sim", None, "full"), ("msl", None, "masked"), ("bear", "official", "masked"),
    ("bear", "paper", "full"), ("bear", None, "full"),  # a config from before bear.formulation existed
])
def test_default_scoring_follows_the_objective(objective, formulation, expected):
    """The registry's scoring of each objective, as a run's config reads it (``ExperimentConfig.scoring``)."""
    from bearrec.config import ExperimentConfig, TrainConfig

    config = ExperimentConfig(train=TrainConfig(objective=objective))
    if formulation is None:
        config.sections["bear"] = SimpleNamespace()  # a config from before bear.formulation existed
    else:
        config.bear.formulation = formulation
    assert config.scoring == expected
    config.decoding.scoring = "masked" if expected == "full" else "full"
    assert config.scoring == config.decoding.scoring  # decoding.scoring overrides it


def test_exact_decoder_lists_the_most_probable_items(setup):
    targets, exact = setup[3:]
    result = run(setup, scoring="masked", decoder="exact")
    assert (result["decoder"], result["scoring"], result["certified_users"]) == ("exact", "masked", USERS)
    ranks = full_rank(exact["masked"], targets)
    assert result["metrics"]["HR@10"] == pytest.approx(float((ranks <= 10).float().mean()))
    assert "pruning" not in result and "PR@10" not in result["metrics"]


def test_beam_results_hold_the_exact_rankings_metrics_on_the_ranked_users(setup):
    """What pruning costs: NDCG/HR@K of the exact ranking, from the ranks PR@K uses, on the same users."""
    targets, exact = setup[3:]
    result = run(setup, {"pruning_users": 8}, scoring="full")
    ranks = full_rank(exact["full"], targets)[:8].float()
    ceiling = result["exact_ranking"]
    assert ceiling["users"] == 8 and result["decoder"] == "beam"
    for k in (5, 10):
        expected = float(torch.where(ranks <= k, 1 / torch.log2(ranks + 1), 0.0).mean())
        assert result["metrics"][f"exact_NDCG@{k}"] == pytest.approx(expected) == ceiling[f"exact_NDCG@{k}"]
        assert result["metrics"][f"exact_HR@{k}"] == pytest.approx(float((ranks <= k).float().mean()))
        beam = torch.tensor(result["retrieved_rank"][:8]).float()  # beam search on the same 8 users
        assert ceiling[f"decoded_HR@{k}"] == pytest.approx(float(((beam >= 1) & (beam <= k)).float().mean()))
    # A beam list is a subset of the catalog in score order, so a returned positive sits no lower than its exact
    # rank: pruning loses positives, but it can also lift them (the "ceiling" is not one per user).
    found = beam >= 1
    assert (beam[found] <= ranks[found]).all()


def test_latent_decoder_builds_its_memory_once(setup, tmp_path):
    dataset = setup[2]
    path = tmp_path / "latent_memory.safetensors"
    first = run(setup, latent_memory=path, decoder="latent", latent_variant="local")
    second = run(setup, latent_memory=path, decoder="latent", latent_variant="local")
    assert first["memory_built"] and not second["memory_built"] and path.is_file()
    assert first["metrics"] == second["metrics"] and first["retrieved_rank"] == second["retrieved_rank"]
    assert first["memory_examples"] == len(dataset.splits["train"])


@pytest.mark.parametrize("kwargs,name", [({"decoder": "greedy"}, "decoder"), ({"node_budget": 0}, "node_budget"),
                                         ({"latent_variant": "nearest"}, "variant")])
def test_decoding_settings_refuse_bad_decoder_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DecodingConfig(**kwargs).validate()
    with pytest.raises(ValueError, match=name):
        DecodingOverrides(**kwargs).validate("evaluate")


@pytest.mark.parametrize("decoder", ["beam", "exact", "latent"])
def test_exclude_history_leaves_history_items_out(setup, decoder):
    targets, exact = setup[3:]
    model, space, dataset = setup[:3]
    result = run(setup, {"exclude_history": True}, decoder=decoder)
    plain = run(setup, {"pruning_rate": False}, decoder=decoder)
    assert result["exclude_history"] is True and "pruning" not in result  # PR@K ranks the whole catalog
    histories = dataset.examples("test", USERS, 0)[0]
    ranks, B = result["retrieved_rank"], result["beam_width"]
    for history, rank, target in zip(histories, ranks, targets.tolist()):
        assert rank == 0 or target not in history  # a history item is never found
    assert ranks != plain["retrieved_rank"]  # the case has history items to take out above a positive
    if decoder == "exact":  # the catalog sorted by exact score with the history's items taken out
        scores = exact[result["scoring"]].clone()  # [USERS, items]
        for user, history in enumerate(histories):
            scores[user, sorted(set(history))] = float("-inf")
        truth = full_rank(scores, targets).tolist()
        assert ranks == [0 if t in h or r > B else r for r, t, h in zip(truth, targets.tolist(), histories)]
    elif decoder == "beam":  # one user at a time, B + its distinct history items wide, history items dropped
        for user, (history, target) in enumerate(zip(histories, targets.tolist())):
            ids, mask = space.prompts([history])
            wide = constrained_beam_search(model, ids, mask, space.trie, beam_width=B + len(set(history)),
                                           scoring=result["scoring"], length_penalty=result["length_penalty"])
            kept = [i for i in wide.item_ids[0].tolist() if i >= 0 and i not in set(history)][:B]
            assert ranks[user] == (kept.index(target) + 1 if target in kept else 0)
    else:  # latent: only history items above the positive go
        for history, rank, before, target in zip(histories, ranks, plain["retrieved_rank"], targets.tolist()):
            if before and target not in history:
                assert 1 <= rank <= before


def test_exact_decoder_equals_sorting_the_catalog(setup):
    targets, exact = setup[3:]
    result = run(setup, decoder="exact", scoring="full")
    truth = full_rank(exact["full"], targets)
    expected = [int(r) if r <= 10 else 0 for r in truth.tolist()]
    assert result["retrieved_rank"] == expected and result["certified_users"] == USERS
