"""The exact ranking is no ceiling: the gap between its NDCG@K and beam search's, in parts that sum to it (lost
with pruned positives, gained from pruned higher-scored negatives, changed by the list's length-normalised
order), against brute force on small catalogs, and in an evaluation's result."""

import pytest
import torch
from reference import EOS, PAD, brute_force_gap, scored_case, tie_free

from bearrec.config import ExperimentConfig
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.decoding import DecodingConfig, constrained_beam_search
from bearrec.evaluation.evaluate import EvalSettings, evaluate
from bearrec.evaluation.metrics import exact_ranking_metrics, full_rank, gap_parts, ndcg_gain
from bearrec.evaluation.pruning import attribute_pruning
from bearrec.items.prompts import PromptTemplate
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import left_pad
from bearrec.lm.models import tiny_model_for
from bearrec.runs import item_space, tokenizer_corpus

K, B = 5, 3  # K above B: more top-K positives pruned, so both parts occur


@pytest.fixture(scope="module", params=["full", "masked"])
def case(request):
    """A random Llama, a 40-item catalog with shared prefixes and varied lengths, 4 prompts, every item as the
    positive of every prompt, and the brute-force score of every item for every prompt."""
    model, items, prompts, all_scores = scored_case("llama", 48, num_items=40, num_prompts=4, seed=4,
                                                    scoring=request.param)
    rows = [(n, t) for n in range(len(prompts)) for t in range(len(items))]
    ids, mask = left_pad([prompts[n] for n, _ in rows], PAD)
    item_scores = [[all_scores[n][tuple(s)] for s in items] for n in range(len(prompts))]
    return model, ItemTrie.from_sequences(items, EOS), ids, mask, rows, item_scores, all_scores, request.param


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_gap_parts_equal_brute_force_and_sum_to_the_gap(case, length_penalty):
    model, trie, ids, mask, rows, item_scores, all_scores, scoring = case
    targets = torch.tensor([t for _, t in rows])
    beams = constrained_beam_search(model, ids, mask, trie, beam_width=B, targets=targets, scoring=scoring,
                                    length_penalty=length_penalty)
    summed = beams.summed_scores(trie, length_penalty)  # [N, B] the items' log-probabilities
    catalog = torch.tensor([item_scores[n] for n, _ in rows])  # [N, items] brute-force scores
    exact = full_rank(catalog, targets).clamp(max=K + 1)  # as exact_target_ranks gives it (tested against this)
    users = attribute_pruning(beams, exact, targets, ks=(K,), summed_scores=summed).per_user
    lost, gained, reordered = (torch.tensor(users[f"gap_{p}@{K}"].tolist()) for p in ("lost", "gained", "reordered"))
    checked = 0
    for row, (n, t) in enumerate(rows):
        if not tie_free(all_scores[n]):
            continue
        listed = [i for i in beams.item_ids[row].tolist() if i >= 0]
        truth = brute_force_gap(item_scores[n], listed, t, K)
        assert (float(lost[row]), float(gained[row])) == (pytest.approx(truth["lost"]), pytest.approx(truth["gained"]))
        if length_penalty == 0:
            assert float(reordered[row]) == 0.0  # the list is in log-probability order: nothing else moves it
        checked += 1
    assert checked >= len(rows) // 2
    # Per user and in total, the parts sum to the exact ranking's NDCG@K minus beam search's.
    rank = torch.tensor(users["retrieved_rank"].tolist())
    assert torch.allclose(lost - gained - reordered, ndcg_gain(exact, K) - ndcg_gain(rank, K), atol=1e-6)
    parts = gap_parts(exact, rank, torch.tensor(users["log_prob_rank"].tolist()), K)
    total = exact_ranking_metrics(exact, rank, (K,), {K: parts})
    assert total[f"exact_NDCG@{K}"] - total[f"decoded_NDCG@{K}"] == pytest.approx(
        total[f"lost_NDCG@{K}"] - total[f"gained_NDCG@{K}"] - total[f"reordered_NDCG@{K}"], abs=1e-6)
    # Both effects occur: positives pruned, and positives lifted above pruned negatives; the exact ranking is
    # no ceiling for those users (the beam list puts them higher than their exact rank).
    assert (lost > 0).any() and (gained > 0).any() and (lost >= 0).all() and (gained >= 0).all()
    if length_penalty == 1.0:  # the list is ordered by log P / length, the exact ranking by log P
        assert (reordered != 0).any()


def test_evaluation_reports_the_gap_parts_per_user_and_in_total():
    dataset = generate_synthetic(SyntheticConfig(num_users=40, num_categories=3, items_per_category=12))
    config = ExperimentConfig()
    model, tokenizer = tiny_model_for(tokenizer_corpus(dataset, PromptTemplate(dataset.domain)), config.tiny, seed=3)
    space = item_space(tokenizer, dataset, config)
    result = evaluate(model.eval(), space, dataset, EvalSettings(max_users=16, pruning_users=12),
                      DecodingConfig(length_penalty=1.0, scoring="full"))
    metrics, users = result["metrics"], result["per_user"]
    assert result["exact_ranking"]["users"] == 12
    for k in (5, 10):
        assert metrics[f"gap_NDCG@{k}"] == pytest.approx(
            metrics[f"lost_NDCG@{k}"] - metrics[f"gained_NDCG@{k}"] - metrics[f"reordered_NDCG@{k}"], abs=1e-6)
        for part in ("lost", "gained", "reordered"):  # the total is the mean over the users ranked exactly
            assert metrics[f"{part}_NDCG@{k}"] == pytest.approx(users[f"gap_{part}@{k}"][:12].mean(), abs=1e-6)
        assert (users[f"gap_lost@{k}"][12:] == 0).all()  # users without an exact rank carry no part
    assert {"MRR@10", "ItemCoverage@10", "GiniIndex@10", "TailPercentage@10"} <= set(metrics)
