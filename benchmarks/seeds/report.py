"""The report of issue 32's runs finished so far, from what the repository keeps (docs/results/seeds/<data>-sid/:
the experiment's plan and each finished run's result.json, from any machine), written by `bearrec compare`'s own
report code, so that the tables, tests and figures are the ones the finished experiment will print.

    python3 benchmarks/seeds/report.py office|beauty [--docs docs/results.md]   # after benchmarks/seeds/harvest.sh
    python3 benchmarks/seeds/report.py office|beauty --pruning [--docs docs/results.md]   # after pruning.sh

Writes docs/results/seeds/<data>-sid/results.md (headed by how many of the planned runs it holds), results.json
and the figures, and prints the per-seed table; with --docs, that table also replaces the one between the
markers `<!-- seeds:<data> -->` and `<!-- /seeds:<data> -->` in the given page. The prepared dataset
(runs/data/<data>-sid, which run.sh prepares) gives the catalog and users.
Once every planned run has finished, the experiment's own report (harvest.sh copies it) says the same.

--pruning reports instead the pruning statistics over every test user (benchmarks/seeds/pruning.sh), where the
runs' own PR@K counts only the first 300 users: from each LM run's kept result.json and its all-user evaluation
(pruning/<label>/seed<N>/eval_test.json: the same model, decoding and users, every user ranked exactly), after
checking that the two agree on beam search's metrics, it prints per label beam search against the exact ranking at
K = 10 (gap = lost - gained - reordered) and the pruning attribution (paper Figure 4) at K = 10 and 20, with a
Fisher exact test of each label's pooled PR@10 against CE's (the positives taken as independent: an indication, as
the users overlap); with --docs, that text replaces the one between `<!-- pruning:<data> -->` and
`<!-- /pruning:<data> -->`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from scipy.stats import fisher_exact

from bearrec.config import from_dict
from bearrec.data.dataset import DataError, RecDataset
from bearrec.evaluation.evaluate import EvalSettings
from bearrec.evaluation.report import pruning_markdown, summary_markdown, summary_runs
from bearrec.experiments.plan import BASELINE, RunSpec
from bearrec.experiments.report import write_report
from bearrec.experiments.statistics import p_text, summarize
from bearrec.training.callbacks import EpochLog

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "benchmarks/seeds/run.sh {data}  (bearrec compare, benchmarks/seeds/run.sh)"
BEAM_METRICS = ("NDCG@10", "HR@10", "MRR@10", "NDCG@20", "HR@20")  # computed alike by both evaluations


def finished(kept: Path) -> tuple[dict, list[dict], int]:
    """The recorded plan, the results of its finished runs in plan order, and the number of planned runs.

    A run's seconds_per_epoch is read from its kept per-epoch log (epochs.json) where there is one, as the trainer
    now reads it (:meth:`EpochLog.seconds_per_epoch`, the median): the pinned code wrote the mean, which counts in
    full an epoch that ran through a pause (SIGSTOP during CI)."""
    plan = json.loads((kept / "experiment.json").read_text())
    specs = [RunSpec(r["label"], r["seed"], r.get("overrides") or {}) for r in plan["runs"]]
    results = []
    for spec in specs:
        folder = kept / "runs" / spec.folder
        if not (folder / "result.json").is_file():
            continue
        result = json.loads((folder / "result.json").read_text())
        if (log := folder / EpochLog.FILE).is_file():
            result["seconds_per_epoch"] = EpochLog.seconds_per_epoch(json.loads(log.read_text()))
        results.append(result)
    return plan, results, len(specs)


def per_seed_table(results: list[dict], planned: list[tuple[str, int]]) -> str:
    """Test Recall@10 / NDCG@10 of every finished run, a row per planned label (in plan order) and a column per
    planned seed; a planned run not finished yet shows as a dash, a seed not planned for a label as an empty cell
    (Beauty's LMs have 3 seeds, its baselines 5)."""
    seeds = sorted({seed for _, seed in planned})
    cell = {(r["label"], r["seed"]): f"{r['metrics']['HR@10']:.4f} / {r['metrics']['NDCG@10']:.4f}" for r in results}
    lines = ["| Recall@10 / NDCG@10 | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---:|" * len(seeds)]
    for label in dict.fromkeys(label for label, _ in planned):
        cells = [cell.get((label, s), "-") if (label, s) in planned else "" for s in seeds]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def marked(page: Path, section: str) -> tuple[str, str]:
    """The page before and after its marked `section` (`seeds:<data>`, `pruning:<data>`), markers included; one
    clear line if they are amiss."""
    start, end = f"<!-- {section} -->", f"<!-- /{section} -->"
    if not page.is_file():
        raise SystemExit(f"{page}: no such page (--docs)")
    text = page.read_text()
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise SystemExit(f"{page}: needs one '{start}' followed by one '{end}' around the section it replaces")
    before, rest = text.split(start)
    return before + start + "\n\n", "\n" + end + rest.split(end, 1)[1]  # blank lines keep a table a table


def with_all_users(kept: Path) -> list[dict]:
    """Every LM run with an all-user evaluation (pruning.sh): its result.json with that evaluation's metrics and
    pruning summary; one clear line naming a run whose beam search metrics disagree, or whose users were not all
    ranked exactly."""
    results = []
    for evaluation in sorted((kept / "pruning").glob("*/seed*/eval_test.json")):
        name = evaluation.parent.relative_to(kept / "pruning")
        own = kept / "runs" / name / "result.json"
        if not own.is_file():
            raise SystemExit(f"{evaluation}: its run's result.json is not kept yet; run benchmarks/seeds/harvest.sh")
        run = json.loads(own.read_text())
        full = json.loads(evaluation.read_text())
        for metric in BEAM_METRICS:
            if not math.isclose(run["metrics"][metric], full["metrics"][metric], abs_tol=1e-6):
                raise SystemExit(f"{evaluation}: beam search {metric} {full['metrics'][metric]:.6f} differs from the "
                                 f"run's own {run['metrics'][metric]:.6f} (runs/{name}/result.json): not the same "
                                 "model, decoding or users")
        if full["users"] != run["users"] or full["pruning"]["ranked_users"] != full["users"]:
            raise SystemExit(f"{evaluation}: not every one of the run's {run['users']} users was ranked exactly")
        results.append({**run, "metrics": full["metrics"], "pruning": full["pruning"]})
    return sorted(results, key=lambda r: r["label"] != BASELINE)  # CE first, as in the experiment's report


def fisher_lines(rows: dict, k: int = 10) -> list[str]:
    """Each label's pooled PR@k against CE's (SFT's label): Fisher's exact test on pruned / kept top-k positives."""
    base = rows.get(BASELINE, {}).get("pruning")
    lines = []
    for label, row in rows.items():
        pooled = row["pruning"]
        if base is None or label == BASELINE or not pooled:
            continue
        counts = [[s[f"pruned@{k}"], s[f"top{k}_positives"] - s[f"pruned@{k}"]] for s in (pooled, base)]
        lines.append(f"- {label}: PR@{k} {pooled[f'PR@{k}']:.3f} ({pooled[f'pruned@{k}']} of "
                     f"{pooled[f'top{k}_positives']}) against {BASELINE}'s {base[f'PR@{k}']:.3f} ({base[f'pruned@{k}']} "
                     f"of {base[f'top{k}_positives']}), Fisher exact p {p_text(fisher_exact(counts).pvalue)}")
    return lines


def pruning_report(results: list[dict]) -> str:
    """Markdown: the runs counted, beam search against the exact ranking, the pruning attribution and the tests."""
    rows = summarize(results, ks=(5, 10, 20))  # counts pooled at K = 20 too
    counted = "; ".join(f"{label} seed{'s' * (len(row['seeds']) > 1)} {', '.join(str(s) for s in row['seeds'])}"
                        for label, row in rows.items())
    lines = [f"Every one of the {results[0]['users']:,} test users ranked exactly in each run ({counted}); mean "
             "± std over seeds, the counts and PR@K pooled over them.", "",
             summary_markdown(rows, ks=(10,)), pruning_markdown(summary_runs(rows), ks=(10, 20))]
    return "\n".join(lines + fisher_lines(rows)) + "\n"


def main(argv: list[str] | None = None) -> dict | str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", choices=("office", "beauty"))
    p.add_argument("--pruning", action="store_true", help="the pruning statistics over every test user (pruning.sh)")
    p.add_argument("--docs", type=Path, help="a page whose marked section to replace (docs/results.md)")
    args = p.parse_args(argv)
    kept = ROOT / "docs" / "results" / "seeds" / f"{args.data}-sid"
    section = f"{'pruning' if args.pruning else 'seeds'}:{args.data}"
    page = marked(args.docs, section) if args.docs else None  # checked before any work
    if args.pruning:
        results = with_all_users(kept)
        if not results:
            raise SystemExit(f"{kept / 'pruning'}: no all-user evaluation yet; run benchmarks/seeds/pruning.sh {args.data}")
        text = pruning_report(results)
        print(text)
        if page:
            args.docs.write_text(page[0] + text + page[1])
        return text
    if not (kept / "experiment.json").is_file():
        raise SystemExit(f"{kept}: no experiment.json; run benchmarks/seeds/run.sh {args.data}, then harvest.sh")
    plan, results, planned = finished(kept)
    if not results:
        raise SystemExit(f"{kept}: no finished run yet")
    base = from_dict(plan["base_config"])
    try:
        dataset = RecDataset.load(ROOT / base.data)
    except DataError as e:  # a new machine: the catalog and users are prepared by run.sh, not kept
        raise SystemExit(f"{e} (benchmarks/seeds/run.sh {args.data} prepares it)") from None
    rows = write_report(kept, results, base, EvalSettings(**plan["eval"]), plan["kind"],
                        COMMAND.format(data=args.data), dataset=dataset)
    report = kept / "results.md"
    status = (f"**{len(results)} of {planned} planned runs finished** "
              f"({'complete' if len(results) == planned else 'partial: the runs go on, benchmarks/seeds/run.sh'}).\n\n")
    report.write_text(status + report.read_text())
    print(f"{report}: {len(results)} of {planned} runs\n")
    table = per_seed_table(results, [(r["label"], r["seed"]) for r in plan["runs"]])
    print(table)
    if page:
        args.docs.write_text(page[0] + table + page[1])
    return rows


if __name__ == "__main__":
    main()
