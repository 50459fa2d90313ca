"""The synthetic generator's pruning_pressure knob and its oracle PR@K (what a model that knows the true
distribution loses to beam search)."""

import numpy as np
import pytest

from bearrec.data.synthetic import SyntheticConfig, _generate, _word_beam_search, generate_synthetic, oracle_pruning


def test_same_seed_same_data_and_pressure_changes_the_catalog():
    a, b = generate_synthetic(SyntheticConfig(num_users=30)), generate_synthetic(SyntheticConfig(num_users=30))
    assert a.items.equals(b.items) and all(a.splits[s].equals(b.splits[s]) for s in a.splits)
    low = generate_synthetic(SyntheticConfig(num_users=30, pruning_pressure=0.0))
    first_words = [t.split()[0] for t in low.items["title"]]
    assert len(set(first_words)) == len(first_words)  # pressure 0: every title starts with its own word
    high = generate_synthetic(SyntheticConfig(num_users=30, pruning_pressure=1.0))
    shared = sum(w in {"Acme", "Office", "Paper", "Swift", "Nova", "Classic", "Atlas", "Summit", "Orion", "Vertex",
                       "Zenith", "Harbor"} for w in (t.split()[0] for t in high.items["title"]))
    assert shared == 6 * round(0.75 * 80)  # three quarters of every category start with a common brand


def test_next_item_distribution_is_what_the_users_follow():
    """The empirical next-item frequencies of the train split follow the distribution the oracle uses."""
    cfg = SyntheticConfig(num_users=400, pruning_pressure=0.75, seed=2)
    dataset, world, homes = _generate(cfg)
    index = {item: i for i, item in enumerate(dataset.items["item_id"])}
    expected = observed = 0.0
    frame = dataset.splits["train"]
    for history, target, home in zip(frame["history"], frame["target"], homes["train"]):
        p = world.next_distribution([index[h] for h in history], home)
        assert p.min() >= 0 and abs(p.sum() - 1) < 1e-9 and p[index[history[-1]]] == 0
        expected += p.max()  # the chance that the next item is the most probable one
        observed += p[index[target]] == p.max()
    assert abs(observed - expected) / len(frame) < 0.03


def test_word_beam_search_prunes_an_item_whose_first_word_is_weak():
    words = [("Niche", "A", "</s>")] + [(brand, str(k), "</s>") for brand in ("B", "C") for k in range(4)]
    p = np.array([0.2] + [0.1] * 8)  # the niche item is the most probable, each brand holds 0.4
    assert 0 not in _word_beam_search(p, words, beam_width=2)  # pruned at the first word
    assert _word_beam_search(p, words, beam_width=3)[0] == 0  # a wider beam keeps it, and it ranks first
    unique = [(f"W{k}", "</s>") for k in range(5)]
    q = np.array([0.1, 0.3, 0.05, 0.25, 0.3])
    assert _word_beam_search(q, unique, beam_width=3) == [4, 1, 3]  # unique first words: the exact top 3 (ties: later first)


def test_oracle_pruning_rises_with_pressure():
    low = oracle_pruning(SyntheticConfig(num_users=200, pruning_pressure=0.0))
    high = oracle_pruning(SyntheticConfig(num_users=200, pruning_pressure=1.0))
    assert low["PR@10"] == 0.0 and low["NDCG@10"] == pytest.approx(low["exact_NDCG@10"])
    assert high["PR@10"] > 0.5 and high["NDCG@10"] < high["exact_NDCG@10"]


@pytest.mark.parametrize("field,value", [("pruning_pressure", 1.5), ("pruning_pressure", -0.1), ("p_successor", 0.95)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**{field: value}).validate()


def test_command_line_defaults_match_the_generator():
    import inspect

    from bearrec.cli.data import prepare
    from bearrec.cli.experiments import quickstart

    for command in (prepare, quickstart):
        default = inspect.signature(command).parameters["pruning_pressure"].default
        assert default == SyntheticConfig.pruning_pressure
