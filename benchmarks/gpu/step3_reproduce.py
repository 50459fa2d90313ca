"""Step 3 (and after), on the GPU machine: the office-bear reproduction with SmolLM2-135M, across as many
10-minute calls as it needs.

It runs ``bearrec compare`` (SFT, MSL and BEAR official, LoRA rank 8 by default, ``--epochs`` each with the best
validation epoch kept, then SASRec and BERT4Rec; every run evaluated on the whole test split, PR@K and the
exact ranking's NDCG/HR@K on the first ``--pruning-users`` users) into ``STATE/runs/<name>``. Every call runs
the same command: finished runs are kept and an interrupted one resumes from its last checkpoint (the
Trainer's, written at each epoch's end). So that a call loses no work, the command is stopped at a safe point
instead of being killed by the 10-minute limit: right after a checkpoint (or a finished run) when the time
left in ``--budget-s`` would not hold another epoch (or the next evaluation), judged from the epochs and
evaluations already timed.

After each call it writes what exists so far: OUT/step3.json (per run: state, epochs, seconds per epoch and per
step, tokens per second, the step-time ratios to SFT, NDCG/HR/PR@K and the beam-vs-exact gap), OUT/step3.md,
and, once the experiment is complete, its results.md and results.json (copied to OUT/step3_results.*).

Usage (GPU machine, after step 0 has all parts; run again until OUT/step3.json says "complete": true):
    python3 benchmarks/gpu/step3_reproduce.py --out $OUT                       # LoRA (the paper's setting)
    python3 benchmarks/gpu/step3_reproduce.py --out $OUT --fine-tuning full    # full fine-tuning, if time is left
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Step, parser, run_until  # noqa: E402

# Guesses used until this experiment has timed the real thing (seconds on an H100)
BEAM_EVAL_GUESS_S = 30.0  # a test evaluation's beam search over every test user (measured: 10 s)
EXACT_GUESS_S_PER_USER = 2.5  # its exact ranks, per --pruning-users user (measured: about 2.1 s, 20,000-node budget)
EPOCH_GUESS_S = 90.0  # a training epoch
VALID_GUESS_S = 15.0  # the validation after each epoch (not in the epoch's timed seconds)
BASELINE_GUESS_S = 120.0  # SASRec or BERT4Rec, start to finish
BASELINES = ("sasrec", "bert4rec")


def command(args, data: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "bearrec.cli", "compare", "--data", str(data), "--model", args.model,
           "--objectives", args.objectives, "--epochs", str(args.epochs), "--baselines", args.baselines,
           "--pruning-users", str(args.pruning_users), "--out", str(out), "--set", f"train.batch_size={args.batch_size}"]
    if args.pruning_node_budget:
        cmd += ["--pruning-node-budget", str(args.pruning_node_budget)]
    if args.fine_tuning == "full":
        cmd += ["--set", "lora=false", "--set", f"train.lr={args.full_lr}"]
    for item in args.set or []:
        cmd += ["--set", item]
    return cmd


def run_states(exp: Path) -> list[dict]:
    """Every planned run's progress, read from its folder (plan order)."""
    plan = json.loads((exp / "experiment.json").read_text()) if (exp / "experiment.json").is_file() else {"runs": []}
    states = []
    for spec in plan["runs"]:
        folder = exp / "runs" / spec["folder"]
        row = {"label": spec["label"], "seed": spec["seed"], "folder": spec["folder"]}
        epochs_file = folder / "checkpoints" / "epochs.json"
        epochs = json.loads(epochs_file.read_text()) if epochs_file.is_file() else []
        log = json.loads((folder / "train_log.json").read_text()) if (folder / "train_log.json").is_file() else None
        result = json.loads((folder / "result.json").read_text()) if (folder / "result.json").is_file() else None
        row["state"] = "done" if result else "trained" if log else f"{len(epochs)} epochs" if epochs else "not started"
        row["epoch_seconds"] = [round(e["seconds"], 1) for e in epochs] or ([round(log["seconds_per_epoch"], 1)]
                                                                            if log and "seconds_per_epoch" in log else [])
        row["checkpoints"] = sorted(p.name for p in (folder / "checkpoints").glob("checkpoint-*")
                                    if (p / "trainer_state.json").is_file()) if (folder / "checkpoints").is_dir() else []
        if log and log.get("global_step"):
            row["seconds_per_step"] = sum(e["seconds"] for e in log["epochs"]) / log["global_step"]
            tokens = [h["tokens_per_second"] for h in log["log_history"] if "tokens_per_second" in h]
            row["tokens_per_second"] = sum(tokens) / len(tokens) if tokens else None
            row["best_valid_ndcg10"] = log.get("best_valid_ndcg10")
            row["epochs_trained"] = len(log["epochs"])
            row["nonfinite_skipped"] = log.get("nonfinite_skipped", 0)  # steps dropped for NaN/inf gradients
            row["nonfinite_first"] = log.get("nonfinite_first")
        saved = folder / "eval_test.json"
        if saved.is_file():
            ev = json.loads(saved.read_text())
            row["eval_seconds"] = ev.get("beam_search_seconds", 0) + ev.get("exact_rank_seconds", 0)
        if result:
            m = result["metrics"]
            row.update({k: m.get(k) for k in ("NDCG@5", "NDCG@10", "HR@5", "HR@10", "PR@5", "PR@10",
                                             "exact_NDCG@10", "exact_HR@10")},
                       users=result.get("users"), wall_seconds=result.get("wall_seconds"))
            if result.get("pruning"):
                row["pr_ranked_users"] = result["pruning"].get("ranked_users")
        states.append(row)
    sft = next((r for r in states if r["label"] == "sft" and r.get("seconds_per_step")), None)
    for r in states:
        if sft and r.get("seconds_per_step"):
            r["step_time_vs_sft"] = r["seconds_per_step"] / sft["seconds_per_step"]
    return states


class SafePoint:
    """Stop right after a checkpoint or a finished run when what comes next would not fit in the time left:
    another epoch (the longest timed so far, plus validation), a test evaluation (the longest timed so far),
    or a conventional baseline (trained in one go, no checkpoints)."""

    def __init__(self, step: Step, exp: Path, deadline: float, epochs: int, pruning_users: int):
        self.step, self.exp, self.deadline, self.epochs = step, exp, deadline, epochs
        self.eval_guess = BEAM_EVAL_GUESS_S + EXACT_GUESS_S_PER_USER * pruning_users
        self.seen = self.marks()

    def marks(self) -> set:
        runs = self.exp / "runs"
        if not runs.is_dir():
            return set()
        return ({str(p) for p in runs.glob("*/seed*/checkpoints/checkpoint-*") if (p / "trainer_state.json").is_file()}
                | {str(p) for p in runs.glob("*/seed*/result.json")})

    def __call__(self) -> bool:
        marks = self.marks()
        new, self.seen = marks - self.seen, marks
        if not new:
            return False
        states = run_states(self.exp)
        current = next((r for r in states if r["state"] != "done"), None)
        if current is None:
            return False  # every run is done: the report is being written
        epoch = max((s for r in states for s in r["epoch_seconds"]), default=EPOCH_GUESS_S) + VALID_GUESS_S
        evaluation = max((r["eval_seconds"] for r in states if r.get("eval_seconds")), default=self.eval_guess)
        if current["label"] in BASELINES:
            need, what = BASELINE_GUESS_S, f"training {current['label']}"
        elif current["state"] == "trained" or len(current["epoch_seconds"]) >= self.epochs:
            need, what = evaluation, f"evaluating {current['label']}"
        else:
            need, what = epoch, f"an epoch of {current['label']}"
        left = self.deadline - self.step.elapsed()
        if left < 1.15 * need + 10:
            self.step.log(f"safe point: {left:.0f} s left, {what} needs about {need:.0f} s: stopping here")
            return True
        return False


def table(states: list[dict]) -> str:
    lines = ["| run | state | epochs (s each) | s/step | step time / SFT | tokens/s | best valid N@10 | N@10 | H@10 | "
             "PR@10 (users) | exact N@10 | steps skipped (non-finite) |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else "n/a"

    for r in states:
        lines.append(f"| {r['label']} | {r['state']} | {', '.join(map(str, r['epoch_seconds'])) or '-'} | "
                     f"{f(r.get('seconds_per_step'), '.3f')} | {f(r.get('step_time_vs_sft'), '.3f')} | "
                     f"{f(r.get('tokens_per_second'), '.0f')} | {f(r.get('best_valid_ndcg10'), '.4f')} | "
                     f"{f(r.get('NDCG@10'), '.4f')} | {f(r.get('HR@10'), '.4f')} | "
                     f"{f(r.get('PR@10'), '.4f')} ({r.get('pr_ranked_users', 'n/a')}) | {f(r.get('exact_NDCG@10'), '.4f')} | "
                     f"{r.get('nonfinite_skipped', 'n/a')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__)
    p.add_argument("--fine-tuning", choices=["lora", "full"], default="lora")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--objectives", default="sft,msl,bear")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--full-lr", type=float, default=5e-5, help="learning rate of full fine-tuning (LoRA keeps 1e-4)")
    p.add_argument("--baselines", default="sasrec,bert4rec")
    p.add_argument("--pruning-users", type=int, default=100,
                   help="PR@K and the exact ranking on this many users (SmolLM2 on an H100: about 2 s per user)")
    p.add_argument("--pruning-node-budget", type=int, default=20000, help="trie nodes per user for its exact rank")
    p.add_argument("--set", action="append", help="more config overrides for every run (section.field=value)")
    p.add_argument("--budget-s", type=float, default=510.0, help="stop at a safe point before this many seconds")
    p.add_argument("--stop-after-checkpoint", action="store_true", help="stop at the first safe point (tests)")
    p.add_argument("--data", type=Path, help="dataset folder [default: STATE/data/office-bear]")
    args = p.parse_args(argv)
    if args.dry_run:  # CPU-sized defaults; explicit flags still win
        p.set_defaults(model="tiny", epochs=2, batch_size=16, baselines="sasrec", pruning_users=8,
                       pruning_node_budget=2000, set=["train.max_train_examples=48", "train.valid_users=8",
                                                      "sasrec.epochs=2", "train.logging_steps=1"])
        args = p.parse_args(argv)
    step = Step("step3", args)
    step.require(data=args.data is None, model=args.model == "smollm2-135m")
    exp = step.state / "runs" / f"office-bear-{args.fine_tuning}"
    before = {r["folder"]: r["state"] for r in run_states(exp)}
    stop = SafePoint(step, exp, args.budget_s, args.epochs, args.pruning_users)
    stop_now = (lambda: bool(stop.marks() - stop.seen)) if args.stop_after_checkpoint else stop
    outcome = run_until(command(args, args.data or step.data, exp), step, args.budget_s + 45, stop_now,
                        poll=0.2 if args.stop_after_checkpoint else 1.0)  # the dry run's epochs take a second
    states = run_states(exp)
    complete = (exp / "results.md").is_file() and all(r["state"] == "done" for r in states)
    for name in ("results.md", "results.json"):
        if complete and (exp / name).is_file() and (exp / name).stat().st_size < 15 * 2**20:
            shutil.copyfile(exp / name, step.out / f"step3_{name}")
    md = table(states)
    (step.out / "step3.md").write_text(md)
    step.write({"experiment": str(exp), "fine_tuning": args.fine_tuning, "complete": complete, "call": outcome,
                "runs_before": before, "runs": states, "command": " ".join(command(args, args.data or step.data, exp)),
                "finished_at": time.strftime("%H:%M:%S")})
    step.log(md)
    step.log("complete" if complete else "not complete: run the same command again in the next call")
    return {"complete": complete, "runs": states, "call": outcome}


if __name__ == "__main__":
    main()
