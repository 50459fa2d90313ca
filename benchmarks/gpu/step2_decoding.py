"""Command 2 of the GPU plan: decoding speed on the office-bear catalog, our beam search against Hugging Face's,
with identical outputs checked in the same run.

SmolLM2-135M (converted by command 1 into the state folder) in bf16 (``--dtype``), B = 10, full scoring, length
penalty 0, at 8, 32 and 128 test users: our ``constrained_beam_search`` (all users in one batch, the best of
``--repeat`` runs) and ``generate(num_beams=10, num_return_sequences=10, prefix_allowed_tokens_fn=<trie walk>)``
(benchmarks/bench_decoding.py's ``hf_generate``; one run, all users in one call, halved while it runs out of
memory). Per user count: users per second of each, their ratio, and whether the lists agree (identical lists, the
largest score difference on them, and the mean overlap where they differ: in bf16 a near-tie can flip a prefix).
Timings are CUDA-synchronised, after one warm-up call of each.

A user count is started only while the budget left holds at least the time of the count before it (a larger
count takes no less), and one still running at the budget is interrupted; either way its row says "not measured
(budget)" and the rows before it stand. After every count ``$OUT/step2.json``, ``step2.md`` (the table for
docs/benchmarks.md) and ``step2.log`` are rewritten.

Usage on the GPU machine, after command 1 has converted SmolLM2:
    python3 benchmarks/gpu/step2_decoding.py --out $OUT --budget-s 130
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASET, ROOT, Deadline, Record, Stopped, parser, synchronize, use_state  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))

# the dry run: a small random Llama over a tokenizer trained on the data, the same code
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True)
LOAD_S = 20.0  # torch and the model loaded, the trie and prompts built, one warm-up of each decoder


def build(dataset, dry_run: bool, dtype):
    """(model, tokenizer) on the device in ``dtype``, in eval mode: SmolLM2-135M, or in the dry run the tiny Llama."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bearrec.distributed import device
    from bearrec.items.prompts import PromptTemplate
    from bearrec.lm.models import SMOLLM2, load_model, train_tokenizer
    from bearrec.runs import tokenizer_corpus

    if not dry_run:
        model, tokenizer = load_model(SMOLLM2, dtype=dtype)
        return model.to(device()).eval(), tokenizer
    tokenizer = train_tokenizer(tokenizer_corpus(dataset, PromptTemplate(dataset.domain)), 1024)
    config = LlamaConfig(**TINY, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device(), dtype).eval(), tokenizer


def timed(fn, repeat: int):
    """(best seconds, last output) of ``repeat`` synchronised calls."""
    best, out = float("inf"), None
    for _ in range(repeat):
        synchronize()
        start = time.perf_counter()
        out = fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def hf_timed(model, ids, mask, trie, beam_width: int, pad: int):
    """(seconds, (items, scores), users per generate call): all users in one call, halved on running out of memory."""
    import torch
    from bench_decoding import hf_generate

    batch = ids.shape[0]
    while True:
        try:
            seconds, out = timed(lambda: hf_generate(model, ids, mask, trie, beam_width, batch, pad), 1)
            return seconds, out, batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            torch.cuda.empty_cache()
            batch //= 2


def agreement(ours_items, ours_scores, hf_items, hf_scores) -> dict:
    same = (ours_items == hf_items).all(dim=1)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / a.numel() for a, b in zip(ours_items[~same], hf_items[~same])]
    return {"identical_lists": f"{int(same.sum())}/{len(same)}",
            "max_score_diff_identical": float((ours_scores[same] - hf_scores[same]).abs().max())
            if same.any() else None,
            "mean_overlap_where_different": sum(overlap) / len(overlap) if overlap else None}


def bench(record: Record, deadline: Deadline, dataset, args) -> None:
    import torch
    from bench_decoding import hf_generate

    from bearrec.decoding import constrained_beam_search
    from bearrec.distributed import device
    from bearrec.items.prompts import PromptEncoder, PromptTemplate, encode_split
    from bearrec.items.trie import build_trie
    from bearrec.lm.forward import left_pad

    start = time.perf_counter()
    model, tokenizer = build(dataset, args.dry_run, getattr(torch, args.dtype))
    encoder = PromptEncoder(tokenizer, dataset.titles, PromptTemplate(dataset.domain), 1024)
    trie = build_trie(tokenizer, dataset.titles)
    prompts, _ = encode_split(dataset, "test", encoder, max(args.users), seed=0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    B = args.beam_width
    warm_ids, warm_mask = (t.to(device()) for t in left_pad(prompts[:2], pad))
    constrained_beam_search(model, warm_ids, warm_mask, trie, beam_width=B)  # kernels, caches, allocator
    hf_generate(model, warm_ids, warm_mask, trie, B, 2, pad)
    record.done("load", {"model": "tiny" if args.dry_run else "smollm2-135m", "items": trie.num_items,
                         "trie_nodes": trie.num_nodes, "longest_title_tokens": trie.max_length,
                         "seconds": time.perf_counter() - start})
    last = 0.0  # seconds of the count before: a lower bound on the next one's
    for n in args.users:
        deadline.require(last, f"{n} users")
        ids, mask = (t.to(device()) for t in left_pad(prompts[:n], pad))
        ours_s, ours = timed(lambda: constrained_beam_search(model, ids, mask, trie, beam_width=B, batch_size=n),
                             args.repeat)
        hf_s, (hf_items, hf_scores), hf_batch = hf_timed(model, ids, mask, trie, B, pad)
        last = ours_s * args.repeat + hf_s
        record.done(f"{n} users", {"users": n, "beam_width": B, "dtype": args.dtype, "hf_batch": hf_batch,
                                   "mean_prompt_tokens": float(mask.sum(1).float().mean()),
                                   "ours_users_per_s": n / ours_s, "hf_users_per_s": n / hf_s,
                                   "speedup_vs_hf": hf_s / ours_s, "seconds": last,
                                   **agreement(ours.item_ids, ours.scores, hf_items, hf_scores)})


def table(steps: dict, users: list[int], model: str, dtype: str) -> str:
    lines = ["| model | users | ours users/s | HF users/s | ratio | identical lists | max score diff | "
             "HF users per call |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in users:
        r = steps.get(f"{n} users")
        if r is None:
            lines.append(f"| {model} {dtype} | {n} | not measured (budget) | | | | | |")
            continue
        diff = r["max_score_diff_identical"]
        lines.append(f"| {model} {dtype} | {n} | {r['ours_users_per_s']:.1f} | {r['hf_users_per_s']:.1f} | "
                     f"**{r['speedup_vs_hf']:.1f}x** | {r['identical_lists']} | "
                     f"{'n/a' if diff is None else f'{diff:.1e}'} | {r['hf_batch']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, budget_s=130.0, margin_s=5.0)
    p.add_argument("--users", default="8,32,128", help="comma-separated user counts (each one batch)")
    p.add_argument("--beam-width", type=int, default=10)
    p.add_argument("--repeat", type=int, default=2, help="timed runs of ours (the best counts)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--data", type=Path, help=f"dataset folder [default: STATE/data/{DATASET}]")
    args = p.parse_args(argv)
    if args.dry_run:  # CPU-sized defaults, in fp32 so that the lists must be equal; explicit flags still win
        p.set_defaults(users="2,4", repeat=1, dtype="float32")
        args = p.parse_args(argv)
    if args.out is None:
        p.error("--out is required")
    args.users = [int(u) for u in args.users.split(",")]
    record = Record("step2", args, sys.argv if argv is None else ["step2_decoding.py", *argv])
    use_state(record.state)
    data = args.data or record.state / "data" / DATASET
    model = record.state / "cache" / "smollm2-135m" / "config.json"
    if not (data / "dataset.json").is_file() or not (args.dry_run or model.is_file()):
        raise SystemExit(f"{record.state}: no dataset or no SmolLM2 on this machine: command 1 prepares them "
                         "(a machine that went back starts bare)")
    import transformers

    from bearrec.data.dataset import RecDataset

    transformers.logging.disable_progress_bar()
    record.data["steps"] = {}  # every call measures afresh
    try:
        with Deadline(args.budget_s, args.margin_s) as deadline:
            deadline.require(LOAD_S, "loading the model")
            bench(record, deadline, RecDataset.load(data), args)
        record.save(complete=True, stopped=None)
    except Stopped as stop:
        record.save(complete=False, stopped=f"safe point: {stop}")
    except KeyboardInterrupt:
        record.save(complete=False, stopped="interrupted at the budget")
    md = table(record.steps, args.users, "tiny" if args.dry_run else "SmolLM2-135M", args.dtype)
    (record.out / "step2.md").write_text(md)
    record.log(md + ("complete" if record.call["complete"] else f"not complete: {record.call['stopped']}"))
    return record.data


if __name__ == "__main__":
    main()
