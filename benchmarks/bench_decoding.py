"""Decoding benchmark: our constrained beam search vs Hugging Face generate, in one run, same inputs.

Measures, for one model, one set of prompts and B:
* users per second of ``constrained_beam_search`` and of ``model.generate(num_beams=B,
  prefix_allowed_tokens_fn=trie walk, length_penalty=0.0)``, and whether their item lists and scores agree;
* the decoding overhead: our time divided by the time of the bare forwards beam search cannot avoid
  (one prefill, then one forward of B rows per user per decoding step, KV cache growing);
* exact scoring of the whole catalog (``score_catalog``) and exact ranks of the positives
  (``exact_target_ranks``, what PR@K uses) against beam search;
* all of the above again with ``scoring="masked"`` (step scores renormalised over the trie children;
  HF: ``renormalize_logits=True``), and its time relative to full scoring in the same run.

Usage (CPU, the quickstart's synthetic catalog and tiny model trained for one epoch):
    python benchmarks/bench_decoding.py --users 256
With a trained run folder and its dataset (for example the office data):
    python benchmarks/bench_decoding.py --run runs/office-sft --users 128
An encoder-decoder run (T5, TIGER, over semantic IDs) is measured the same way, except the exact scoring and
ranks, which decode causal LMs only (recorded as skipped); its bare forwards are the encoder once per user, then
the decoder's B rows per step with its self- and cross-attention caches.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import transformers

from bearrec.config import ExperimentConfig, TrainConfig
from bearrec.data.synthetic import generate_synthetic
from bearrec.decoding import constrained_beam_search, exact_target_ranks, score_catalog
from bearrec.evaluation.metrics import full_rank
from bearrec.items.prompts import encode_split
from bearrec.lm.forward import cache_of, is_encoder_decoder, left_pad, position_ids_from_mask, with_cache
from bearrec.runs import item_space, load_run, train_run


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


@torch.no_grad()
def bare_forwards(model, ids, mask, steps: int, B: int, batch_size: int) -> None:
    """The forwards any beam search needs: prefill, then ``steps`` single-token forwards of B rows per user."""
    if is_encoder_decoder(model):
        return bare_seq2seq_forwards(model, ids, mask, steps, B, batch_size)
    for start in range(0, ids.shape[0], batch_size):
        i, m = ids[start : start + batch_size], mask[start : start + batch_size]
        out = model(input_ids=i, attention_mask=m, position_ids=position_ids_from_mask(m), use_cache=True, logits_to_keep=1)
        cache = cache_of(out)
        cache.reorder_cache(torch.arange(i.shape[0], device=i.device).repeat_interleave(B))
        attention = m.repeat_interleave(B, 0)
        positions = m.sum(-1).repeat_interleave(B)[:, None]
        token = torch.zeros(i.shape[0] * B, 1, dtype=torch.long, device=i.device)
        for step in range(steps):
            attention = torch.cat([attention, attention.new_ones(attention.shape[0], 1)], 1)
            out = model(input_ids=token, attention_mask=attention, position_ids=positions + step,
                        use_cache=True, **with_cache(cache))
            cache = cache_of(out)
            torch.log_softmax(out.logits[:, -1].float(), -1)


def bare_seq2seq_forwards(model, ids, mask, steps: int, B: int, batch_size: int) -> None:
    """The encoder-decoder's: the encoder once per user, the decoder's start token, then ``steps`` single-token
    forwards of B rows per user (the cross-attention cache computed once and copied to the rows)."""
    for start in range(0, ids.shape[0], batch_size):
        i, m = ids[start : start + batch_size], mask[start : start + batch_size]
        encoded = model.get_encoder()(input_ids=i, attention_mask=m)
        token = torch.full((i.shape[0], 1), model.config.decoder_start_token_id, dtype=torch.long, device=i.device)
        out = model(encoder_outputs=encoded, attention_mask=m, decoder_input_ids=token, use_cache=True)
        cache = cache_of(out)
        cache.reorder_cache(torch.arange(i.shape[0], device=i.device).repeat_interleave(B))
        encoded.last_hidden_state = encoded.last_hidden_state.repeat_interleave(B, 0)
        rows_mask, token = m.repeat_interleave(B, 0), token.repeat_interleave(B, 0)
        for _ in range(steps):
            torch.log_softmax(out.logits[:, -1].float(), -1)
            out = model(encoder_outputs=encoded, attention_mask=rows_mask, decoder_input_ids=token,
                        use_cache=True, **with_cache(cache))
            cache = cache_of(out)


@torch.no_grad()
def hf_generate(model, ids, mask, trie, B: int, batch_size: int, pad_id: int, renormalize: bool = False):
    """Items and scores from Hugging Face beam search with the trie as prefix_allowed_tokens_fn."""
    width = 1 if is_encoder_decoder(model) else ids.shape[1]  # a decoder's output starts with its start token
    eos = trie.eos_token_id

    def allowed(batch_id, sent):
        return trie.allowed_tokens(sent[width:].tolist()) or [eos]

    items, scores = [], []
    for start in range(0, ids.shape[0], batch_size):
        out = model.generate(input_ids=ids[start : start + batch_size], attention_mask=mask[start : start + batch_size],
                             num_beams=B, num_return_sequences=B, prefix_allowed_tokens_fn=allowed,
                             length_penalty=0.0, do_sample=False, renormalize_logits=renormalize,
                             max_new_tokens=trie.max_length, eos_token_id=eos,
                             pad_token_id=pad_id, output_scores=True, return_dict_in_generate=True)
        for seq in out.sequences[:, width:].tolist():
            seq = seq[: seq.index(eos) + 1] if eos in seq else seq
            node = trie.node_of(seq)
            items.append(int(trie.node_item[node]) if node >= 0 else -1)
        scores.append(out.sequences_scores.float().cpu())
    return torch.tensor(items).view(-1, B), torch.cat(scores).view(-1, B)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="trained run folder (default: tiny model on synthetic data, 1 epoch)")
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--beam-width", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--skip-hf", action="store_true", help="do not run Hugging Face generate")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    transformers.logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    run = args.run
    if run is None:  # train the tiny model for one epoch on the quickstart's synthetic data
        tmp = Path(tempfile.mkdtemp(prefix="bench-decoding-"))
        generate_synthetic().save(tmp / "data")
        run = tmp / "run"
        train_run(ExperimentConfig(data=str(tmp / "data"), train=TrainConfig(epochs=1, valid_users=None, select_best=False)), run)
    model, tokenizer, dataset, config = load_run(run)
    model.to(device, dtype=getattr(torch, args.dtype)).eval()
    space = item_space(tokenizer, dataset, config)  # the run's own prompt format; titles or semantic IDs
    encoder, trie = space.encoder, space.trie
    seq2seq = is_encoder_decoder(model)
    prompts, positives = encode_split(dataset, "test", encoder, args.users, seed=0)
    ids, mask = (t.to(device) for t in left_pad(prompts, tokenizer.pad_token_id))
    B, bs = args.beam_width, args.batch_size
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(fn):
        def wrapped():
            out = fn()
            sync()
            return out
        return timed(wrapped, repeat=2)

    steps = trie.max_length
    bare_s, _ = run(lambda: bare_forwards(model, ids, mask, steps, B, bs))
    targets = torch.tensor(positives)
    n = ids.shape[0]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   + (torch.cuda.get_device_name() if device.type == "cuda" else "CPU"),
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "architecture": model.config.model_type, "dtype": args.dtype, "users": n, "beam_width": B, "batch_size": bs, "catalog_items": trie.num_items,
        "trie_nodes": trie.num_nodes, "max_title_tokens": steps, "mean_prompt_tokens": float(mask.sum(1).float().mean()),
        "bare_forwards_users_per_s": n / bare_s,
    }
    seconds = {}
    for scoring in ("full", "masked"):
        key = "" if scoring == "full" else "masked_"  # full keeps the keys of earlier runs
        ours_s, ours = run(lambda: constrained_beam_search(model, ids, mask, trie, beam_width=B, batch_size=bs,
                                                           scoring=scoring))
        result.update({f"{key}ours_users_per_s": n / ours_s, f"{key}decoding_overhead": ours_s / bare_s})
        seconds[scoring] = {"beam": ours_s}
        if seq2seq:
            result[f"{key}exact_scoring"] = "skipped: score_catalog and exact ranks decode causal LMs only"
        else:
            exact_s, exact = run(lambda: score_catalog(model, ids, mask, trie, scoring=scoring))
            ranks_s, ranks = run(lambda: exact_target_ranks(model, ids, mask, trie, targets, max_rank=B,
                                                            scoring=scoring, known_items=ours.item_ids,
                                                            known_scores=ours.scores))
            seconds[scoring] |= {"catalog": exact_s, "ranks": ranks_s}
            result.update({
                f"{key}exact_scoring_users_per_s": n / exact_s,
                f"{key}exact_scoring_vs_beam_time": exact_s / ours_s,
                f"{key}exact_ranks_users_per_s": n / ranks_s,
                f"{key}exact_ranks_vs_beam_time": ranks_s / ours_s,
                f"{key}exact_ranks_equal_full_scoring": bool((ranks == full_rank(exact, targets).clamp(max=B + 1)).all()),
                f"{key}beam_scores_equal_exact_scores": float((exact.gather(1, ours.item_ids.clamp(min=0)) - ours.scores)
                                                              .masked_fill(ours.item_ids < 0, 0).abs().max()),
            })
        if not args.skip_hf:
            hf_s, (hf_items, hf_scores) = timed(lambda: hf_generate(model, ids, mask, trie, B, bs, tokenizer.pad_token_id,
                                                                    renormalize=scoring == "masked"))
            same = (hf_items == ours.item_ids).all(dim=1)
            result.update({
                f"{key}hf_users_per_s": n / hf_s,
                f"{key}speedup_vs_hf": hf_s / ours_s,
                f"{key}identical_item_lists": f"{int(same.sum())}/{n}",
                f"{key}max_score_difference_on_identical_lists":
                    float((hf_scores[same] - ours.scores[same]).abs().max()) if same.any() else None,
            })
    result["masked_vs_full_time"] = {part: seconds["masked"][part] / seconds["full"][part] for part in seconds["full"]}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
