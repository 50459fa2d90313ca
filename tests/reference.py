"""Brute-force references for tests: slow, obvious, and independent of the library's fast code."""

from __future__ import annotations

import math

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

EOS = 1
PAD = 0


def random_model(arch: str = "llama", vocab: int = 48, seed: int = 0):
    """A small randomly initialised LM with peaky distributions (large init: few near-ties): causal (llama,
    gpt2) or encoder-decoder (t5, as TIGER; the decoder starts from PAD)."""
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                             pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, initializer_range=0.3,
                            pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2)
        model = GPT2LMHeadModel(config)
    elif arch == "t5":
        config = T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                          feed_forward_proj="relu", tie_word_embeddings=False,
                          pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD)
        model = T5ForConditionalGeneration(config)
    else:
        raise ValueError(arch)
    return model.eval()


def random_prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    """``n`` prompts of 4 to 9 tokens (BOS first) over ``vocab``."""
    g = torch.Generator().manual_seed(seed)
    return [[2] + torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def tie_free(scores: dict, tol: float = 2e-5) -> bool:
    """True if no two scores that beam search compares are closer than ``tol``: prefixes of the same length
    (the candidates of one step) and whole items (the results). Prefixes of different lengths may tie:
    with masked scoring a node's only child scores exactly its parent's score."""
    groups: dict = {}
    for prefix, score in scores.items():
        groups.setdefault(len(prefix), []).append(score)
    groups["items"] = [score for prefix, score in scores.items() if prefix and prefix[-1] == EOS]
    return all(b - a > tol for values in groups.values() for a, b in zip(sorted(values), sorted(values)[1:]))


def random_catalog(num_items: int, vocab: int, seed: int = 0, max_len: int = 5) -> list[list[int]]:
    """Distinct token sequences ending in EOS with shared prefixes, varied lengths, and a title that is a
    prefix of another (tokens 3..vocab-1; 0 = pad, 1 = EOS, 2 = BOS)."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(3, vocab, (max(2, num_items // 4),), generator=g).tolist()  # few first tokens: sharing
    seqs: set[tuple[int, ...]] = set()
    while len(seqs) < num_items:
        length = int(torch.randint(1, max_len + 1, (1,), generator=g))
        head = first[int(torch.randint(len(first), (1,), generator=g))]
        body = torch.randint(3, vocab, (length - 1,), generator=g).tolist()
        seqs.add(tuple([head, *body, EOS]))
    longest = max(seqs, key=len)
    seqs.add(longest[:-2] + (EOS,))  # a title that is a strict prefix of another one
    return [list(s) for s in sorted(seqs)]


def scored_case(arch: str, vocab: int, num_items: int, num_prompts: int, seed: int, scoring: str = "full"):
    """(model, items, prompts, brute-force prefix scores per prompt): the shared setup of decoding tests."""
    model = random_model(arch, vocab, seed=seed)
    items = random_catalog(num_items, vocab, seed=seed + 1)
    prompts = random_prompts(num_prompts, vocab, seed=seed + 2)
    return model, items, prompts, [prefix_scores(model, p, items, scoring) for p in prompts]


def next_tokens(items: list[list[int]], prefix: list[int]) -> list[int]:
    """The tokens that follow ``prefix`` in some item (its trie children), by scanning the item list."""
    return sorted({s[len(prefix)] for s in items if len(s) > len(prefix) and s[: len(prefix)] == prefix})


def item_token_log_probs(model, prompt: list[int], item: list[int], items: list[list[int]] | None = None) -> list[float]:
    """log p(token_t | prompt, item[:t]) for each token of one item: one full forward, no cache.

    With the catalog ``items``, the softmax runs over the tokens that continue ``item[:t]`` to some item
    only (masked scoring); without, over the whole vocabulary (full scoring)."""
    if model.config.is_encoder_decoder:  # the prompt to the encoder, [start] + item[:-1] to the decoder
        decoder = torch.tensor([[model.config.decoder_start_token_id] + item[:-1]], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt], device=model.device), decoder_input_ids=decoder).logits[0].float()
        start = 0
    else:
        ids = torch.tensor([prompt + item], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        start = len(prompt) - 1
    out = []
    for t, tok in enumerate(item):
        row = logits[start + t]
        if items is None:
            out.append(float(torch.log_softmax(row, -1)[tok]))
        else:
            allowed = next_tokens(items, item[:t])
            out.append(float(torch.log_softmax(row[allowed], -1)[allowed.index(tok)]))
    return out


def prefix_scores(model, prompt: list[int], items: list[list[int]], scoring: str = "full") -> dict[tuple[int, ...], float]:
    """Summed log-probability of every prefix of every item (the trie's node scores), by teacher forcing;
    ``scoring="masked"`` normalises each step over the prefix's trie children only."""
    scores: dict[tuple[int, ...], float] = {(): 0.0}
    for item in items:
        total = 0.0
        for t, lp in enumerate(item_token_log_probs(model, prompt, item, items if scoring == "masked" else None)):
            total += lp
            key = tuple(item[: t + 1])
            if key in scores:
                assert abs(scores[key] - total) < 1e-4, "teacher forcing disagrees with itself"
            scores[key] = total
    return scores


def simulate_beam_search(scores: dict, items: list[list[int]], B: int, length_penalty: float = 0.0, target=None):
    """Hugging Face beam search simulated by hand on known prefix scores.

    Returns [(item index, score)] best first, at most B. With a ``target`` item index, returns
    ``(results, drop_step, violated)``: the 1-based step at which the target's prefix was pruned (-1 if
    returned) and whether its token was outside the top B of its siblings at that step.
    """
    drop_step, violated, alive, done = -1, False, True, False
    index = {tuple(s): i for i, s in enumerate(items)}
    children: dict[tuple, set[int]] = {}
    for s in items:
        for t in range(len(s)):
            children.setdefault(tuple(s[:t]), set()).add(s[t])
    live = [()]
    finished: list[tuple[float, int]] = []
    accepting = True
    for step in range(max(len(s) for s in items)):
        cands = sorted(((scores[p + (tok,)], p + (tok,)) for p in live for tok in children.get(p, ())), reverse=True)
        for rank, (score, seq) in enumerate(cands):
            if seq[-1] == EOS and rank < B and accepting:
                finished.append((score / (step + 1) ** length_penalty, index[seq]))
        finished = sorted(finished, reverse=True)[:B]
        live = [seq for _, seq in cands if seq[-1] != EOS][:B]
        if target is not None and alive:
            prefix = tuple(items[target][: step + 1])
            if prefix not in live:
                alive = False
                done = any(i == target for _, i in finished)
                if not done:
                    drop_step = step + 1
                    if any(seq == prefix for _, seq in cands):
                        siblings = [sc for sc, seq in cands if seq[:-1] == prefix[:-1]]
                        violated = sum(sc > scores[prefix] for sc in siblings) >= B
        elif target is not None and done and all(i != target for _, i in finished):
            done, drop_step = False, step + 1  # pushed out of the results by better ones
        best_live = scores[live[0]] / (step + 1) ** length_penalty if live else -math.inf
        if len(finished) == B and best_live <= finished[-1][0]:
            accepting = False
        if not live or not accepting:
            break
    if target is not None and alive:
        drop_step = step + 2  # still live when the search stopped early
    results = [(i, s) for s, i in finished]
    return results if target is None else (results, drop_step, violated)


def hf_beam_search(model, ids, mask, trie, beam_width: int, length_penalty: float = 0.0, scoring: str = "full"):
    """Hugging Face ``generate(num_beams=B, prefix_allowed_tokens_fn=<trie walk>)`` as (items [N, B], scores [N, B]);
    masked scoring is ``renormalize_logits=True``. Catalog index -1 for a sequence that is no item."""

    generated = 1 if model.config.is_encoder_decoder else ids.shape[1]  # after the decoder's start token / the prompt

    def allowed(batch_id, sent):
        tokens = trie.allowed_tokens(sent[generated:].tolist())
        return tokens or [trie.eos_token_id]  # beams HF keeps with -inf score: any token, they never win

    out = model.generate(input_ids=ids, attention_mask=mask, num_beams=beam_width, num_return_sequences=beam_width,
                         prefix_allowed_tokens_fn=allowed, length_penalty=length_penalty, do_sample=False,
                         renormalize_logits=scoring == "masked", max_new_tokens=trie.max_length,
                         eos_token_id=trie.eos_token_id, pad_token_id=PAD, output_scores=True,
                         return_dict_in_generate=True)
    eos = trie.eos_token_id
    items = []
    for seq in out.sequences[:, generated:].tolist():
        node = trie.node_of(seq[: seq.index(eos) + 1] if eos in seq else seq)
        items.append(int(trie.node_item[node]) if node >= 0 else -1)
    return torch.tensor(items).view(-1, beam_width), out.sequences_scores.float().cpu().view(-1, beam_width)


# --- metrics: loops over users and list positions, following RecBole's recbole/evaluator/metrics.py ---------------

def loop_rank_metrics(ranked_lists: list[list[int]], targets: list[int], k: int) -> dict[str, float]:
    """NDCG@K, HR@K and MRR@K with one positive per user, one user and one position at a time."""
    ndcg = hr = mrr = 0.0
    for items, target in zip(ranked_lists, targets):
        for position, item in enumerate(items[:k], start=1):
            if item == target:
                ndcg, hr, mrr = ndcg + 1 / math.log2(position + 1), hr + 1, mrr + 1 / position
                break
    n = len(targets)
    return {"NDCG": ndcg / n, "HR": hr / n, "MRR": mrr / n}


def loop_beyond_accuracy(ranked_lists: list[list[int]], num_items: int, train_counts: list[int], k: int,
                         tail_ratio: float = 0.1) -> dict[str, float]:
    """RecBole's ItemCoverage, GiniIndex and TailPercentage (``tail_ratio`` <= 1) for full lists, by loops:
    its ``get_coverage``, ``get_gini`` (only recommended items, ranked from ``num_items - m + 1``) and ``get_tail``
    (``count_items`` holds only items seen in train, sorted by (count, id), the first ``max(int(n * ratio), 1)``)."""
    tops = [items[:k] for items in ranked_lists]
    recommended: dict[int, int] = {}
    for top in tops:
        for item in top:
            recommended[item] = recommended.get(item, 0) + 1
    coverage = len(recommended) / num_items
    sorted_count = sorted(recommended.values())
    m, total = len(sorted_count), len(tops) * k
    gini = sum((2 * idx - num_items - 1) * c for idx, c in zip(range(num_items - m + 1, num_items + 1), sorted_count))
    gini = gini / total / num_items
    count_items = sorted(((i, c) for i, c in enumerate(train_counts) if c > 0), key=lambda kv: (kv[1], kv[0]))
    tail = {i for i, _ in count_items[:max(int(len(count_items) * tail_ratio), 1)]}
    share = sum(sum(item in tail for item in top) / k for top in tops) / len(tops)
    return {"ItemCoverage": coverage, "GiniIndex": gini, "TailPercentage": share}


def brute_force_gap(item_scores: list[float], beam_items: list[int], target: int, k: int) -> dict[str, float]:
    """One user's exact-minus-beam NDCG@K in parts, from every catalog item's exact score (summed log-probability)
    and the beam list (best first, length_penalty 0): lost = the exact NDCG@K if the positive is not in the list;
    gained = NDCG@K at (exact rank - catalog items above the positive that the list lacks) minus the exact NDCG@K,
    if it is. Ties favour the positive."""
    def gain(rank: int) -> float:
        return 1 / math.log2(rank + 1) if rank <= k else 0.0

    above = [i for i, s in enumerate(item_scores) if s > item_scores[target]]
    exact = gain(len(above) + 1)
    if target not in beam_items:
        return {"lost": exact, "gained": 0.0}
    pruned_above = [i for i in above if i not in beam_items]
    return {"lost": 0.0, "gained": gain(len(above) + 1 - len(pruned_above)) - exact}
