"""The report of issue 32's runs finished so far, from what the repository keeps (docs/results/seeds/<data>-sid/:
the experiment's plan and each finished run's result.json, from any machine), written by `bearrec compare`'s own
report code, so that the tables, tests and figures are the ones the finished experiment will print.

    python3 benchmarks/seeds/report.py office|beauty [--docs docs/results.md]   # after benchmarks/seeds/harvest.sh

Writes docs/results/seeds/<data>-sid/results.md (headed by how many of the planned runs it holds), results.json
and the figures, and prints the per-seed table; with --docs, that table also replaces the one between the
markers `<!-- seeds:<data> -->` and `<!-- /seeds:<data> -->` in the given page. The prepared dataset
(runs/data/<data>-sid, which run.sh prepares) gives the catalog and users.
Once every planned run has finished, the experiment's own report (harvest.sh copies it) says the same.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bearrec.config import from_dict
from bearrec.data.dataset import RecDataset
from bearrec.evaluation.evaluate import EvalSettings
from bearrec.experiments.plan import RunSpec
from bearrec.experiments.report import write_report
from bearrec.training.callbacks import EpochLog

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "benchmarks/seeds/run.sh {data}  (bearrec compare, benchmarks/seeds/run.sh)"


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


def marked(page: Path, data: str) -> tuple[str, str]:
    """The page before and after its per-seed table for `data`, markers included; one clear line if they are amiss."""
    start, end = f"<!-- seeds:{data} -->", f"<!-- /seeds:{data} -->"
    if not page.is_file():
        raise SystemExit(f"{page}: no such page (--docs)")
    text = page.read_text()
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise SystemExit(f"{page}: needs one '{start}' followed by one '{end}' around the per-seed table")
    before, rest = text.split(start)
    return before + start + "\n\n", "\n" + end + rest.split(end, 1)[1]  # blank lines keep the table a table


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", choices=("office", "beauty"))
    p.add_argument("--docs", type=Path, help="a page whose marked per-seed table to replace (docs/results.md)")
    args = p.parse_args(argv)
    kept = ROOT / "docs" / "results" / "seeds" / f"{args.data}-sid"
    if not (kept / "experiment.json").is_file():
        raise SystemExit(f"{kept}: no experiment.json; run benchmarks/seeds/run.sh {args.data}, then harvest.sh")
    page = marked(args.docs, args.data) if args.docs else None  # checked before any work
    plan, results, planned = finished(kept)
    if not results:
        raise SystemExit(f"{kept}: no finished run yet")
    base = from_dict(plan["base_config"])
    dataset = RecDataset.load(ROOT / base.data)
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
