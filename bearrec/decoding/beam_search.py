"""Trie-constrained beam search with Hugging Face semantics, batched over users and beams.

Semantics (those of ``generate(num_beams=B, prefix_allowed_tokens_fn=..., do_sample=False)``, which
BIGRec, D3, MSL and the BEAR paper decode with):

* a candidate's score is the sum of its tokens' step scores: by default (``scoring="full"``) the
  full-vocabulary log-softmax, the trie only deciding which children exist; with ``scoring="masked"``
  the log-softmax over the trie children of each node (``generate(..., renormalize_logits=True)``, the
  decoding MSL and the authors' BEAR use; see ``scoring.py``);
* at each step all children of all live beams of a user are ranked together; an EOS child (a
  finished item) ranked within the top B is kept as a result, and the B best non-EOS children become
  the live beams of the next step (finished items leave the beam);
* a finished item scores ``sum_log_probs / generated_length ** length_penalty`` (0.0 by default, no
  length normalisation; 1.0 reproduces BIGRec's decoding) and the B best finished items are returned;
* Hugging Face's default stopping heuristic (``early_stopping=False``): a user stops accepting results
  once it holds B of them and its best live beam, scored at the current length, cannot beat the worst.

Implementation: one forward per step for the whole batch with the KV cache (the prompt is encoded
once; beams share its rows through ``reorder_cache``), and trie children gathered with tensor ops.
Encoder-decoder models (T5, TIGER) run the encoder once per user; the decoder starts from
``decoder_start_token_id`` and its self-attention cache follows the beams the same way. The cross-attention
cache is copied to each user's B rows once: beams never move between users, so it needs no reordering after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutput

from bearrec.decoding.scoring import check_scoring, edge_log_probs
from bearrec.decoding.shared_prompt import PromptCache, shared_prompt, supports
from bearrec.items.trie import ItemTrie
from bearrec.lm.forward import cache_of, is_encoder_decoder, position_ids_from_mask, with_cache

NEG_INF = float("-inf")


@dataclass
class BeamResult:
    """``item_ids [N, B]`` catalog indices best first (-1 where fewer items were found), ``scores [N, B]``.

    When the search was given ``targets``, ``drop_step [N]`` is the decoding step (1 = first token) at
    which the target left the beam (-1: returned), and ``violated [N]`` says whether its token at that
    step ranked outside the top B of its siblings (the token-level necessary condition, eq. 3.2).

    With ``return_thresholds=True``, ``thresholds [N, trie.max_length]`` holds, per user and decoding
    step (column s = step s + 1, the step that picks the (s+1)-th token), the score (summed
    log-probability, not length-normalised) of the candidate ranked exactly B-th among all candidates
    of that step: the threshold of eq. 3.1 that a prefix must reach to stay in the beam. ``-inf``
    where the step had fewer than B candidates (nothing is pruned) or the user had no live beam left.
    After a user stopped early (HF heuristic), every later step holds its worst (B-th) finished score:
    see ``_hold_after_stop``.
    """

    item_ids: torch.Tensor
    scores: torch.Tensor
    drop_step: torch.Tensor | None = None
    violated: torch.Tensor | None = None
    thresholds: torch.Tensor | None = None

    def summed_scores(self, trie: ItemTrie, length_penalty: float) -> torch.Tensor:
        """``[N, B]`` each item's summed step scores (its log-probability under the search's scoring): ``scores``
        times ``length ** length_penalty``, undoing the normalisation of finished beams (length: the item's
        tokens, EOS included, as ``generate`` counts them)."""
        if length_penalty == 0:
            return self.scores
        lengths = trie.lengths.to(self.scores.device)[self.item_ids.clamp(min=0)]  # [N, B]
        return self.scores * lengths.to(self.scores.dtype) ** length_penalty


@torch.no_grad()
def constrained_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    beam_width: int = 10,
    batch_size: int = 64,
    length_penalty: float = 0.0,
    targets: torch.Tensor | None = None,
    progress=None,
    return_thresholds: bool = False,
    scoring: str = "full",
) -> BeamResult:
    """Top ``beam_width`` catalog items per prompt.

    ``input_ids``/``attention_mask`` are left-padded prompts ``[N, L]``; ``trie`` is the catalog trie.
    ``targets [N]`` (catalog indices, optional) are followed through the search to tell where and why
    each was pruned (see :class:`BeamResult`). ``progress`` is an optional callable receiving the
    number of prompts finished after each batch. ``return_thresholds`` also returns the B-th candidate
    score of every step (``BeamResult.thresholds``, used by the beam-sim objective of eq. 3.1).
    ``scoring`` is ``"full"`` (full-vocabulary log-softmax) or ``"masked"`` (log-softmax over each
    node's trie children); every returned score, threshold and violation flag uses it.
    """
    if beam_width < 1:
        raise ValueError("beam_width must be at least 1")
    check_scoring(scoring)
    device = next(model.parameters()).device
    trie = trie.to(device)
    fields = ["item_ids", "scores"] + (["drop_step", "violated"] if targets is not None else [])
    fields += ["thresholds"] if return_thresholds else []
    parts = []
    for start in range(0, input_ids.shape[0], batch_size):
        batch = slice(start, start + batch_size)
        parts.append([t.cpu() for t in _search_batch(
            model, input_ids[batch].to(device), attention_mask[batch].to(device), trie, beam_width, length_penalty,
            None if targets is None else targets[batch].to(device), return_thresholds, scoring,
        )])
        if progress is not None:
            progress(min(batch_size, input_ids.shape[0] - start))
    return BeamResult(**{name: torch.cat(column) for name, column in zip(fields, zip(*parts))})


def _search_batch(model, input_ids, attention_mask, trie: ItemTrie, B: int, length_penalty: float, targets=None,
                  return_thresholds: bool = False, scoring: str = "full"):
    """Beam search over one batch of left-padded prompts ``[n, L]``: the fields of :class:`BeamResult`, in its order
    (``item_ids, scores [n, B]``; ``drop_step, violated [n]`` with ``targets``; ``thresholds`` if asked for)."""
    n = input_ids.shape[0]
    dev = input_ids.device
    users = torch.arange(n, device=dev)
    forward = _BeamForward(model, input_ids, attention_mask, B)
    logits = forward.first_logits  # [n * rows, V], rows = 1 live beam per user (the root) at step 0

    # Live beams: trie node and summed score; -inf marks an empty slot. Step 0 has one beam (the root).
    beam_node = torch.zeros(n, 1, dtype=torch.long, device=dev)
    beam_score = torch.zeros(n, 1, device=dev)
    fin_item = torch.full((n, B), -1, dtype=torch.long, device=dev)
    fin_score = torch.full((n, B), NEG_INF, device=dev)
    accepting = torch.ones(n, dtype=torch.bool, device=dev)  # HF's early-stop heuristic, per user
    tracker = _TargetTracker(trie, targets, B) if targets is not None else None
    # B-th candidate score per step (eq. 3.1's threshold); steps never reached stay -inf, see _hold_after_stop.
    thresholds = torch.full((n, trie.max_length), NEG_INF, device=dev) if return_thresholds else None
    stop_step = torch.full((n,), trie.max_length, dtype=torch.long, device=dev) if return_thresholds else None

    for step in range(trie.max_length):
        rows = beam_node.shape[1]
        candidates = _expand(trie, beam_node, beam_score, accepting, logits, scoring)
        if candidates is None:  # no live beam has a child
            break
        flat_beam, child, token, cand_user, cand_score = candidates  # [C] each
        sorted_score, sorted_index = _rank(cand_user, cand_score, n)  # [n, W] each
        valid = torch.isfinite(sorted_score)
        if thresholds is not None and sorted_score.shape[1] >= B:  # users with fewer than B candidates keep -inf
            thresholds[:, step] = sorted_score[:, B - 1]
        is_eos = valid & (token[sorted_index.clamp(min=0)] == trie.eos_token_id)  # [n, W]
        new_item, fin_item, fin_score = _finish(fin_item, fin_score, sorted_score, sorted_index, is_eos, child, trie,
                                                step, length_penalty)
        beam_node, beam_score, kept, chosen = _next_beams(sorted_score, sorted_index, valid & ~is_eos, child, B)

        if tracker is not None:
            tracker.update(step, child, cand_user, flat_beam, cand_score, beam_node, kept, new_item, fin_item)

        closing = _closing(accepting, beam_score, fin_item, fin_score, step, length_penalty)  # [n]
        if thresholds is not None:
            stop_step = torch.where(closing, step, stop_step)
        accepting &= ~closing  # sticky, as in HF
        if not bool((kept.any(dim=1) & accepting).any()) or step + 1 == trie.max_length:
            if tracker is not None:
                tracker.stop(step)
            break

        # One forward for every (user, beam) row; cache rows follow their source beams.
        source_row = torch.where(kept, flat_beam[chosen], users[:, None] * rows)  # [n, B]
        tokens = torch.where(kept, trie.node_token[beam_node], trie.eos_token_id).reshape(n * B, 1)
        logits = forward.step(tokens, source_row.flatten(), step)  # [n * B, V]

    outputs = [fin_item, fin_score]
    if tracker is not None:
        outputs += [tracker.drop_step, tracker.violated]
    if thresholds is not None:
        outputs.append(_hold_after_stop(thresholds, stop_step, fin_score))
    return tuple(outputs)


class _BeamForward:
    """The model's side of one batch's search: the prompts read once (``first_logits [n, V]``, the root's), then
    one forward per step for the ``n * B`` beam rows (:meth:`step`), whose cache rows follow their source beams.

    Encoder-decoder models run the encoder once; the decoder starts from ``decoder_start_token_id``. Where the
    architecture allows, a causal LM keeps the prompt's keys/values one copy per user and the cache that beams
    reorder holds generated tokens only (see shared_prompt.py); otherwise the standard cache.
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, B: int):
        n, dev = input_ids.shape[0], input_ids.device
        self.model, self.B, self.attention_mask = model, B, attention_mask
        self.seq2seq = is_encoder_decoder(model)
        if self.seq2seq:  # the encoder reads the prompt once; the decoder starts from its start token
            encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
            start = torch.full((n, 1), model.config.decoder_start_token_id, dtype=torch.long, device=dev)
            out = model(encoder_outputs=encoded, attention_mask=attention_mask, decoder_input_ids=start,
                        use_cache=True)
            self.encoded_rows = BaseModelOutput(
                last_hidden_state=encoded.last_hidden_state.repeat_interleave(B, dim=0))  # [n*B, L, d]
        else:
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=True,
                logits_to_keep=1,
            )
        self.first_logits = out.logits[:, -1]  # [n, V]
        self.prompt_len = attention_mask.long().sum(-1)  # [n]
        self.prompt = PromptCache.from_cache(cache_of(out), attention_mask) if supports(model) else None
        self.cache = DynamicCache() if self.prompt is not None else cache_of(out)
        self.prompt_mask_rows = attention_mask.repeat_interleave(B, dim=0) if self.prompt is None else None  # [n*B, L]

    def step(self, tokens: torch.Tensor, source_row: torch.Tensor, step: int) -> torch.Tensor:
        """Next-token logits ``[n*B, V]`` after ``tokens [n*B, 1]``, the (step+1)-th token of each beam row, once the
        cache rows are reordered to their source rows ``source_row [n*B]``."""
        if self.seq2seq and step > 0:
            # A beam's source is a beam of the same user, and a user's rows share its encoder states: the cross-
            # attention cache, copied to the B rows of each user at step 0, stays as it is (most of the copying).
            self.cache.self_attention_cache.reorder_cache(source_row)
        else:
            self.cache.reorder_cache(source_row)
        positions = (self.prompt_len.repeat_interleave(self.B) + step).unsqueeze(1)  # [n*B, 1]
        if self.seq2seq:  # rows of a user share its encoding; the cross-attention cache holds it per row since step 0
            out = self.model(encoder_outputs=self.encoded_rows, attention_mask=self.prompt_mask_rows,
                             decoder_input_ids=tokens, use_cache=True, **with_cache(self.cache))
        elif self.prompt is not None:
            with shared_prompt(self.model, self.prompt):
                out = self.model(input_ids=tokens, position_ids=positions, use_cache=True, **with_cache(self.cache))
        else:
            gen_mask = torch.ones(tokens.shape[0], step + 1, dtype=self.attention_mask.dtype, device=tokens.device)
            attention = torch.cat([self.prompt_mask_rows, gen_mask], dim=1)  # [n*B, L + step + 1]
            out = self.model(input_ids=tokens, attention_mask=attention, position_ids=positions, use_cache=True,
                             **with_cache(self.cache))
        self.cache = cache_of(out)
        return out.logits[:, -1]


def _expand(trie: ItemTrie, beam_node: torch.Tensor, beam_score: torch.Tensor, accepting: torch.Tensor,
            logits: torch.Tensor, scoring: str):
    """Every trie child of every live beam ``[n, rows]``, as one flat candidate list ordered by user, then beam:
    ``(flat_beam, child, token, cand_user, cand_score)``, each ``[C]`` (the beam row of ``logits [n * rows, V]`` a
    candidate extends, its node, token, user, and summed score), or None when no live beam has a child."""
    n, rows = beam_node.shape
    dev = beam_node.device
    live = torch.isfinite(beam_score) & accepting[:, None]  # [n, rows]
    counts = torch.where(live, trie.child_count[beam_node], 0).flatten()  # [n * rows]
    flat_beam = torch.repeat_interleave(torch.arange(n * rows, device=dev), counts)  # [C]
    if flat_beam.numel() == 0:
        return None
    first = torch.cumsum(counts, 0) - counts  # [n * rows] position of each beam's first child
    child = trie.child_start[beam_node.flatten()[flat_beam]] + (
        torch.arange(flat_beam.numel(), device=dev) - first[flat_beam]
    )
    token = trie.node_token[child]
    cand_score = beam_score.flatten()[flat_beam] + edge_log_probs(logits, flat_beam, token, scoring)  # [C]
    return flat_beam, child, token, flat_beam // rows, cand_score


def _rank(cand_user: torch.Tensor, cand_score: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's candidates best first (stable): the ragged lists padded into ``[n, W]`` (W: the most
    candidates of a user) and sorted. Returns ``(sorted_score, sorted_index)``, the index into the flat list;
    padding is -inf and -1."""
    dev = cand_score.device
    per_user = torch.bincount(cand_user, minlength=n)  # [n]
    user_first = torch.cumsum(per_user, 0) - per_user
    slot = torch.arange(cand_user.numel(), device=dev) - user_first[cand_user]  # [C] column in the user's row
    width = int(per_user.max())
    padded_score = torch.full((n, width), NEG_INF, device=dev)
    padded_index = torch.full((n, width), -1, dtype=torch.long, device=dev)
    padded_score[cand_user, slot] = cand_score
    padded_index[cand_user, slot] = torch.arange(cand_user.numel(), device=dev)
    sorted_score, order = padded_score.sort(dim=1, descending=True, stable=True)
    return sorted_score, padded_index.gather(1, order)


def _finish(fin_item, fin_score, sorted_score, sorted_index, is_eos, child, trie: ItemTrie, step: int,
            length_penalty: float):
    """Finished items: the EOS candidates ranked within the top B, length-normalised and merged with the earlier
    results ``[n, B]``, the best B kept. Returns ``(new_item [n, W], fin_item [n, B], fin_score [n, B])``, new_item
    the items finished at this step (-1 elsewhere)."""
    B = fin_item.shape[1]
    rank = torch.arange(sorted_score.shape[1], device=sorted_score.device)  # [W]
    finishing = is_eos & (rank < B)[None, :]
    new_score = torch.where(finishing, sorted_score / float(step + 1) ** length_penalty, NEG_INF)
    new_item = torch.where(finishing, trie.node_item[child[sorted_index.clamp(min=0)]], -1)
    merged_score, pick = torch.cat([fin_score, new_score], 1).topk(B, dim=1)  # [n, B]
    return new_item, torch.cat([fin_item, new_item], 1).gather(1, pick), merged_score


def _next_beams(sorted_score, sorted_index, running, child, B: int):
    """The next live beams: the B best ``running`` (non-EOS) candidates of each user, best first.

    Returns ``(beam_node, beam_score, kept, chosen)``, each ``[n, B]``: the node, its summed score (-inf: an
    empty slot), whether the slot holds a beam, and the candidate's index in the flat list (0 where empty)."""
    n, width = sorted_score.shape
    rank = torch.arange(width, device=sorted_score.device)
    keep = running & (running.long().cumsum(1) <= B)
    next_rank = torch.where(keep, rank[None, :], width + rank[None, :])  # kept ones first, in order
    take = next_rank.argsort(dim=1, stable=True)[:, :B]
    kept = keep.gather(1, take)
    if take.shape[1] < B:  # fewer candidates than beams this step: pad empty slots
        pad = B - take.shape[1]
        take = torch.cat([take, take.new_zeros(n, pad)], 1)
        kept = torch.cat([kept, kept.new_zeros(n, pad)], 1)
    chosen = sorted_index.gather(1, take).clamp(min=0)
    beam_node = torch.where(kept, child[chosen], 0)
    beam_score = torch.where(kept, sorted_score.gather(1, take), NEG_INF)
    return beam_node, beam_score, kept, chosen


def _closing(accepting, beam_score, fin_item, fin_score, step: int, length_penalty: float) -> torch.Tensor:
    """HF early stopping (``early_stopping=False``): the accepting users ``[n]`` that close at this step, full and
    with a best live beam, scored at the current length, no better than their worst result."""
    best_live = beam_score[:, 0] / float(step + 1) ** length_penalty
    full = (fin_item >= 0).all(dim=1)
    return accepting & full & (best_live <= fin_score[:, -1])


def _hold_after_stop(thresholds: torch.Tensor, stop_step: torch.Tensor, fin_score: torch.Tensor) -> torch.Tensor:
    """``thresholds [n, max_length]`` with the steps after each user's early stop set to its worst result.

    A user that stopped early (HF heuristic, ``accepting`` False) ranks no more candidates, yet its later steps
    still have a meaningful bar: the worst finished score. The user stopped because no live beam could beat it,
    and with length_penalty = 0 scores only fall as a prefix grows, so a prefix scoring below the B-th result can
    never be returned: that score is what a positive prefix must beat, the natural continuation of "the B-th
    candidate" (-inf instead would silently switch the objective off exactly where the positive is lost). Its
    first step is the one after the user stopped (``stop_step``): the step on which it stopped was ranked and
    recorded. Users that ran out of live beams while still accepting keep -inf (no candidates: nothing to beat).
    With a length_penalty other than 0 this bar is length-normalised like the results (the other steps are raw
    sums): the beam-sim objective uses length_penalty = 0.
    """
    after = torch.arange(thresholds.shape[1], device=thresholds.device)[None, :] > stop_step[:, None]
    return torch.where(after, fin_score[:, -1:], thresholds)


class _TargetTracker:
    """Follows each user's target item through the search: when it leaves the beam, and why."""

    def __init__(self, trie: ItemTrie, targets: torch.Tensor, B: int):
        n, dev = targets.shape[0], targets.device
        self.targets, self.B = targets, B
        self.path = trie.paths[targets]  # [n, max_len] node after each target token
        self.alive = torch.ones(n, dtype=torch.bool, device=dev)  # target prefix among the live beams
        self.finished = torch.zeros(n, dtype=torch.bool, device=dev)  # target among the results
        self.drop_step = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.violated = torch.zeros(n, dtype=torch.bool, device=dev)

    def update(self, step, child, cand_user, flat_beam, cand_score, beam_node, kept, new_item, fin_item):
        n = self.targets.shape[0]
        target_node = self.path[:, step] if step < self.path.shape[1] else torch.full_like(self.targets, -1)
        is_target = child == target_node[cand_user]
        users = cand_user[is_target]
        target_beam = torch.full((n,), -1, dtype=torch.long, device=child.device)
        target_score = torch.full((n,), NEG_INF, device=child.device)
        target_beam[users] = flat_beam[is_target]
        target_score[users] = cand_score[is_target]
        # Siblings (children of the same beam) that beat the target's token: B or more is a violation.
        better = (flat_beam == target_beam[cand_user]) & (cand_score > target_score[cand_user])
        sibling_rank = torch.bincount(cand_user[better], minlength=n)
        kept_live = ((beam_node == target_node[:, None]) & kept).any(dim=1)
        kept_done = (new_item == self.targets[:, None]).any(dim=1)
        lost = self.alive & ~kept_live & ~kept_done
        self.drop_step[lost] = step + 1
        self.violated |= lost & (target_beam >= 0) & (sibling_rank >= self.B)
        self.finished |= self.alive & kept_done
        self.alive &= kept_live
        displaced = self.finished & ~(fin_item == self.targets[:, None]).any(dim=1)  # pushed out by better results
        self.drop_step[displaced] = step + 1
        self.finished &= ~displaced

    def stop(self, step):
        """The search ended with the target still live (early stopping): it is lost at the next step."""
        self.drop_step[self.alive] = step + 2
        self.alive[:] = False
