"""Step 2, on the GPU machine: decoding speed on the office-bear catalog, ours against Hugging Face, same run.

For each model and each user count (default 8, 32 and 128 test users of office-bear; ours decodes all of them in one
batch, HF in batches of at most ``--hf-batch`` users, 32 by default, as larger ones run out of memory; B = 10, full
scoring, length_penalty 0):

* our ``constrained_beam_search`` and ``generate(num_beams=10, num_return_sequences=10,
  prefix_allowed_tokens_fn=<trie walk>)`` (benchmarks/bench_decoding.py's ``hf_generate``), users per second and
  the ratio, and whether the item lists agree (identical lists; the largest score difference on them; the mean
  overlap of the lists where they differ, which in bf16 happens where a near-tie flipped a prefix);
* the bare-forwards floor (one prefill, then one forward of B rows per user per step up to the longest
  title, standard KV cache; bench_decoding.py's ``bare_forwards``);
* exact top-K (``exact_top_k``, with a node budget per user: the certified share is reported) and L2D
  (``latent_decode`` after ``item_memory`` over the train split, its build time apart).

Models: ``llama-1b`` is a Llama-3.2-1B-shaped model (16 layers, hidden 2048, 32 heads, 8 KV heads, vocabulary
128,256, tied embeddings) with random weights in bf16, fed with SmolLM2's tokenizer (its ids fit the larger
vocabulary), so no download is needed; ``smollm2-135m`` is the pretrained SmolLM2 (converted by step 0), in bf16.
Timings: CUDA synchronised, one warm-up call per model, the best of ``--repeat`` runs for ours and the floor,
one run for HF (its time is long and steady).

Usage (GPU machine, after step 0 has all parts):  python3 benchmarks/gpu/step2_decoding.py --out $OUT
Writes OUT/step2.json (every number), OUT/step2.md (the table for docs/benchmarks.md) and OUT/step2.log.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Step, device, parser, synchronize  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

# Llama-3.2-1B's shape (its config.json), random weights
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True)


def build(name: str, dataset, dtype):
    """(model, tokenizer) for a model name of this benchmark, on the device, in ``dtype``, in eval mode."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bearrec.items.prompts import PromptTemplate
    from bearrec.lm.models import SMOLLM2, load_model, smollm2_folder, train_tokenizer
    from bearrec.runs import tokenizer_corpus

    if name == "smollm2-135m":
        model, tokenizer = load_model(SMOLLM2, dtype=dtype)
        return model.to(device()).eval(), tokenizer
    if name == "llama-1b":
        tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())  # SmolLM2's tokenizer; its ids fit 128,256
        shape = dict(LLAMA_1B)
    elif name == "tiny":  # the dry run: the same code with a small random Llama and a tokenizer trained on the data
        tokenizer = train_tokenizer(tokenizer_corpus(dataset, PromptTemplate(dataset.domain)), 1024)
        shape = dict(TINY, vocab_size=len(tokenizer))
    else:
        raise SystemExit(f"unknown model {name!r}: llama-1b, smollm2-135m or tiny")
    config = LlamaConfig(**shape, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    with torch.device(device()):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval(), tokenizer


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


def agreement(ours_items, ours_scores, hf_items, hf_scores) -> dict:
    same = (ours_items == hf_items).all(dim=1)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / a.numel() for a, b in zip(ours_items[~same], hf_items[~same])]
    return {"identical_lists": f"{int(same.sum())}/{len(same)}",
            "max_score_diff_identical": float((ours_scores[same] - hf_scores[same]).abs().max()) if same.any() else None,
            "mean_overlap_where_different": sum(overlap) / len(overlap) if overlap else None}


def bench_model(step: Step, name: str, dataset, args, dtype) -> list[dict]:
    import torch
    from bench_decoding import bare_forwards, hf_generate

    from bearrec.decoding import constrained_beam_search, exact_top_k, item_memory, latent_decode
    from bearrec.items.prompts import PromptEncoder, PromptTemplate, encode_split
    from bearrec.items.trie import build_trie
    from bearrec.lm.forward import left_pad

    start = time.perf_counter()
    model, tokenizer = build(name, dataset, dtype)
    encoder = PromptEncoder(tokenizer, dataset.titles, PromptTemplate(dataset.domain), 1024)
    trie = build_trie(tokenizer, dataset.titles)
    prompts, _ = encode_split(dataset, "test", encoder, max(args.users), seed=0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    B = args.beam_width
    step.log(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {trie.num_items} items, "
             f"{trie.num_nodes} trie nodes, longest title {trie.max_length} tokens, loaded in {time.perf_counter() - start:.0f} s")
    warm_ids, warm_mask = (t.to(device()) for t in left_pad(prompts[:2], pad))
    constrained_beam_search(model, warm_ids, warm_mask, trie, beam_width=B)  # kernels, caches, allocator
    hf_generate(model, warm_ids, warm_mask, trie, B, 2, pad)
    memory, memory_seconds = None, None
    rows = []
    for n in args.users:
        if step.elapsed() > args.budget_s:
            step.log(f"{name} {n} users: skipped (time budget of {args.budget_s:.0f} s spent)")
            rows.append({"model": name, "users": n, "skipped": "time budget"})
            continue
        ids, mask = (t.to(device()) for t in left_pad(prompts[:n], pad))
        row = {"model": name, "dtype": str(dtype).removeprefix("torch."), "users": n, "beam_width": B,
               "mean_prompt_tokens": float(mask.sum(1).float().mean())}
        bare_s, _ = timed(lambda: bare_forwards(model, ids, mask, trie.max_length, B, n), args.repeat)
        ours_s, ours = timed(lambda: constrained_beam_search(model, ids, mask, trie, beam_width=B, batch_size=n),
                             args.repeat)
        hf_batch = min(n, args.hf_batch)
        hf_s, (hf_items, hf_scores) = timed(lambda: hf_generate(model, ids, mask, trie, B, hf_batch, pad), 1)
        row.update(hf_batch=hf_batch, ours_users_per_s=n / ours_s, hf_users_per_s=n / hf_s, speedup_vs_hf=hf_s / ours_s,
                   bare_forwards_users_per_s=n / bare_s, ours_vs_bare_time=ours_s / bare_s,
                   **agreement(ours.item_ids, ours.scores, hf_items, hf_scores))
        if n <= args.exact_users:
            exact_s, exact = timed(lambda: exact_top_k(model, ids, mask, trie, k=B, node_budget=args.node_budget,
                                                       batch_size=min(n, 16)), 1)
            row.update(exact_users_per_s=n / exact_s, exact_certified=f"{int(exact.certified.sum())}/{n}",
                       exact_node_budget=args.node_budget,
                       exact_top1_equals_beam_top1=f"{int((exact.item_ids[:, 0].cpu() == ours.item_ids[:, 0]).sum())}/{n}")
        if memory is None and step.elapsed() < args.budget_s:
            synchronize()
            t0 = time.perf_counter()
            memory, _ = item_memory(model, encoder, dataset, None, args.memory_batch)
            synchronize()
            memory_seconds = time.perf_counter() - t0
        if memory is not None:
            latent_s, _ = timed(lambda: latent_decode(model, ids, mask, memory, k=B, batch_size=n), args.repeat)
            row.update(l2d_users_per_s=n / latent_s, l2d_memory_seconds=memory_seconds,
                       l2d_memory_examples=int(memory.targets.numel()))
        rows.append(row)
        step.log(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    model = memory = None  # free the GPU memory before the next model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    head = ("| model | users | ours users/s | HF users/s | ratio | identical lists | max score diff | ours / bare "
            "forwards | bare forwards users/s | exact top-10 users/s (certified) | L2D users/s (memory s) |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | {r['users']} | not measured ({r['skipped']}) | | | | | | | | |")
            continue
        exact = f"{r['exact_users_per_s']:.1f} ({r['exact_certified']})" if "exact_users_per_s" in r else "not run"
        l2d = f"{r['l2d_users_per_s']:.0f} ({r['l2d_memory_seconds']:.0f})" if "l2d_users_per_s" in r else "not run"
        diff = r["max_score_diff_identical"]
        lines.append(f"| {r['model']} {r['dtype']} | {r['users']} | {r['ours_users_per_s']:.1f} | {r['hf_users_per_s']:.1f} | "
                     f"**{r['speedup_vs_hf']:.1f}x** | {r['identical_lists']} | {'n/a' if diff is None else f'{diff:.1e}'} | "
                     f"{r['ours_vs_bare_time']:.2f} | {r['bare_forwards_users_per_s']:.1f} | {exact} | {l2d} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__)
    p.add_argument("--models", default="llama-1b,smollm2-135m", help="comma-separated: llama-1b, smollm2-135m, tiny")
    p.add_argument("--users", default="8,32,128", help="comma-separated user counts (each one batch)")
    p.add_argument("--beam-width", type=int, default=10)
    p.add_argument("--repeat", type=int, default=2, help="timed runs of ours and of the floor (the best counts)")
    p.add_argument("--hf-batch", type=int, default=32,
                   help="users per generate() call: HF expands every prompt B times before its prefill, so 128 users of "
                        "a 1B model at once (1,280 rows of ~330 tokens) run out of an 80 GB GPU")
    p.add_argument("--exact-users", type=int, default=32, help="exact top-K only up to this many users")
    p.add_argument("--node-budget", type=int, default=20000, help="exact top-K: trie nodes expanded per user at most")
    p.add_argument("--memory-batch", type=int, default=64, help="L2D item memory: prompts per forward")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--budget-s", type=float, default=420.0, help="start no new measurement after this many seconds")
    p.add_argument("--data", type=Path, help="dataset folder [default: STATE/data/office-bear]")
    args = p.parse_args(argv)
    if args.dry_run:  # CPU-sized defaults; explicit flags still win
        p.set_defaults(models="tiny", users="2,4", exact_users=4, repeat=1, node_budget=2000)
        args = p.parse_args(argv)
    args.users = [int(u) for u in args.users.split(",")]
    step = Step("step2", args)
    step.require(data=args.data is None, model=any(m in args.models for m in ("llama-1b", "smollm2-135m")))
    import torch
    import transformers

    from bearrec.data.dataset import RecDataset

    transformers.logging.disable_progress_bar()
    dataset = RecDataset.load(args.data or step.data)
    rows = []
    for name in args.models.split(","):
        rows += bench_model(step, name.strip(), dataset, args, getattr(torch, args.dtype))
    md = table(rows)
    (step.out / "step2.md").write_text(md)
    step.write({"rows": rows, "command": " ".join(sys.argv)})
    step.log(md)
    return {"rows": rows}


if __name__ == "__main__":
    main()
