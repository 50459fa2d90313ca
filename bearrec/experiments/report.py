"""An experiment's report: ``results.json`` (every run, the summaries and the machine), ``results.md`` and the
figures."""

from __future__ import annotations

import platform
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch

from bearrec.config import ExperimentConfig
from bearrec.data.dataset import RecDataset
from bearrec.evaluation.evaluate import EvalSettings
from bearrec.evaluation.report import (
    EXACT_FIGURE,
    beam_vs_exact_figure,
    efficiency_figure,
    pr_figure,
    pruning_comparison_figure,
    pruning_markdown,
    summary_markdown,
    summary_runs,
    sweep_figure,
    training_markdown,
)
from bearrec.experiments.plan import BASELINE
from bearrec.experiments.statistics import p_text, seed_noise_text, summarize, verdict
from bearrec.io import write_json, write_text


def environment() -> dict:
    """Library versions and machine, for results.json."""
    versions = {}
    for package in ("bearrec", "torch", "transformers", "peft", "accelerate", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"versions": versions, "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_report(out_dir: str | Path, results: list[dict], base: ExperimentConfig, settings: EvalSettings,
                 kind: str, command: str, grid: dict[str, list] | None = None, selection: dict | None = None,
                 dataset: RecDataset | None = None) -> dict:
    """``results.json``, ``results.md`` and the figures of an experiment folder; returns the summary rows.

    ``selection`` (a sweep's :func:`evaluate_chosen_on_test`) adds the chosen point and its test results.
    ``dataset`` is ``base.data`` already loaded; None loads it."""
    out = Path(out_dir)
    rows = summarize(results)
    dataset = dataset if dataset is not None else RecDataset.load(base.data)
    users = results[0]["users"] if results else 0
    title = (f"{kind}: {Path(base.data).name}, model {base.model}, {users} {settings.split} users, "
             f"B={settings.beam_width}")
    write_json(out / "results.json", {
        "title": title, "command": command, "kind": kind, "dataset": dataset.summary(), "eval": asdict(settings),
        "grid": grid, "base_config": base.to_dict(), "summary": rows, "selection": selection,
        "environment": environment(),
        "runs": [{k: v for k, v in r.items() if k != "retrieved_rank"} for r in results],
    })
    figures = _figures(out, rows, results, grid, Path(base.data).name)
    lines = [f"# {title}", "", f"Command: `{command}`", ""] + _setup_lines(results, base, settings, dataset)
    lines += _result_sections(rows, settings, selection)
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    write_text(out / "results.md", "\n".join(lines))
    return rows


def _figures(out: Path, rows: dict, results: list[dict], grid: dict[str, list] | None, name: str) -> list[str]:
    """Draw the figures the results allow into ``out`` (``name``: the dataset's); returns their file names."""
    figures = []
    if any(row["pruning"] for row in rows.values()):
        pr_figure(rows, out / "pr_at_k.png", f"Pruning rate (paper Fig. 6), {name}")
        pruning_comparison_figure(rows, out / "pruning.png", f"Pruning attribution (paper Fig. 4), {name}")
        figures += ["pr_at_k.png", "pruning.png"]
    if any("exact_NDCG@10" in row["mean"] for row in rows.values()):
        beam_vs_exact_figure(rows, out / EXACT_FIGURE, f"Beam search vs the exact ranking, {name}")
        figures.append(EXACT_FIGURE)
    efficiency_figure(rows, out / "efficiency.png", f"Training time vs NDCG@10 (paper Fig. 9), {name}")
    figures.append("efficiency.png")
    if grid:
        points = {r["label"]: {k: r["overrides"][k] for k in grid} for r in results if r["label"] != BASELINE}
        sweep_figure(rows, points, out / "sweep.png", f"Sensitivity (paper Fig. 8), {name}")
        figures.append("sweep.png")
    return figures


def _setup_lines(results: list[dict], base: ExperimentConfig, settings: EvalSettings, dataset: RecDataset) -> list[str]:
    """The bullet list under the title: data and users, model, training, what the columns mean, decoding."""
    users = results[0]["users"] if results else 0
    first = next((r for r in results if r["kind"] == "lm"), None)
    subsample = (f"{users} of {results[0]['of_users']} {settings.split} rows (seeded subsample, seed {settings.seed})"
                 if results and users < results[0]["of_users"] else f"all {users} {settings.split} rows")
    train_examples = first.get("train_examples") if first else None
    valid_users = base.train.valid_users if base.train.valid_users is not None else "all"
    parameters = (f" ({first['parameters']['total']:,} parameters, {first['parameters']['trainable']:,} trained)"
                  if first and first.get("parameters") else "")
    decoders = {r["label"]: f"{r.get('decoder', 'beam')}" + (f", {r['scoring']} scoring" if r.get("scoring") else "")
                for r in results if r["kind"] == "lm"}
    return [f"- data: `{base.data}` ({dataset.summary()['items']} items); evaluated on {subsample}",
            f"- model: {base.model}" + parameters,
            f"- training: {train_examples if train_examples is not None else '?'} examples, up to {base.train.epochs} "
            f"epochs, best validation NDCG@10 kept ({valid_users} validation users)",
            "- N = NDCG, H = HR, MRR (beam search, B = {}, its list ordered by log P / length ** length_penalty); "
            "exact N/H = the exact ranking's (every item ranked by log P, its summed log-probability under the "
            "run's step scoring, nothing pruned) and gap N@10 = exact N@10 minus beam search's on the same users, "
            "no ceiling: gap = lost - gained - reordered (lost: positives beam search pruned; gained: positives it "
            "kept, lifted above the higher-scored negatives it pruned; reordered: its length-normalised order); "
            "PR = pruning rate (lower is better); Cov, Gini, Tail = RecBole's ItemCoverage, GiniIndex and "
            "TailPercentage of the top 10 (tail: the 10 % least popular items of the train split); "
            "mean ± std over seeds".format(settings.beam_width),
            "- decoding: " + ", ".join(f"{label} {how}" for label, how in decoders.items())
            + f"; length_penalty {base.decoding.length_penalty:g}"]


def _result_sections(rows: dict, settings: EvalSettings, selection: dict | None) -> list[str]:
    """The summary table and the sections after it: at K = B, training, significance, the sweep's choice, pruning."""
    lines = ["", summary_markdown(rows)]
    if settings.beam_width > 10:
        lines += [f"## At K = {settings.beam_width}", "", summary_markdown(rows, ks=(settings.beam_width,)), ""]
    lines += ["## Training", "", training_markdown(rows), ""]
    verdicts = [verdict(label, row) for label, row in rows.items() if "vs_sft" in row]
    if verdicts:
        lines += ["## Is the difference real?", ""] + [f"- {v}" for v in verdicts] + [""]
        lines += _seed_lines(rows)
    if selection:
        lines += _selection_lines(selection)
    if any(row["pruning"] for row in rows.values()):
        lines += _pruning_lines(rows, settings)
    return lines


def _seed_lines(rows: dict) -> list[str]:
    """Per label against SFT: NDCG@10 minus SFT's of the same seed, for each seed, and both seed-noise tests."""
    compared = {label: row for label, row in rows.items() if "vs_sft" in row}
    seeds = sorted({int(s) for row in compared.values() for s in row["vs_sft"].get("seed_differences", {})})
    if not seeds:
        return []
    lines = ["### NDCG@10 minus SFT's, seed by seed", "",
             "Runs of one seed share the initial weights and the batch order, so the paired t-test compares each "
             "seed with SFT's run of the same seed; Welch's compares the two sets of seeds as independent.", "",
             "| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | paired t-test | Welch t-test | |",
             "|---|" + "---:|" * (len(seeds) + 3) + "---|"]
    for label, row in compared.items():
        vs = row["vs_sft"]
        diffs = vs.get("seed_differences", {})
        cells = [f"{diffs[str(s)]:+.4f}" if str(s) in diffs else "n/a" for s in seeds]
        tests = [f"p {p_text(vs[t]['p_value'])}" if t in vs else "n/a" for t in ("paired_seed_test", "seed_test")]
        plain = seed_noise_text(vs, len(row["seeds"])).split(" (")[0]
        lines.append(f"| {label} | " + " | ".join(cells + [f"{vs['ndcg10_difference']:+.4f}"] + tests + [plain]) + " |")
    return lines + [""]


def _selection_lines(selection: dict) -> list[str]:
    """A sweep's point chosen on validation and its test results."""
    chosen = selection["chosen"]
    lines = ["## Chosen on validation, reported on test", "",
             f"Selection: {selection['criterion']}: **{chosen}** (validation NDCG@10 "
             f"{selection['valid_ndcg10']:.4f}). Only it and SFT were evaluated on the test split "
             f"({selection['test_users']} users); no other grid point ever was.", "",
             summary_markdown(selection["test"]), ""]
    if "vs_sft" in selection["test"].get(chosen, {}):
        lines += [f"- test: {verdict(chosen, selection['test'][chosen])}", ""]
    return lines


def _pruning_lines(rows: dict, settings: EvalSettings) -> list[str]:
    """The pruning attribution table (paper Figure 4) and which users it counts."""
    ranked = {label: row["pruning"]["ranked_users"] for label, row in rows.items() if row["pruning"]}
    first_users = f" (the first {settings.pruning_users} evaluated users per run)" if settings.pruning_users else ""
    undecided = (f" Users whose rank was still undecided after {settings.pruning_node_budget} expanded trie nodes "
                 "are left out: " + ", ".join(f"{row['pruning']['unranked_users']} ({label})"
                                              for label, row in rows.items() if row["pruning"]) + "."
                 if settings.pruning_node_budget else "")
    return ["## Pruning attribution (paper Figure 4, users pooled over seeds)", "",
            "PR@K and this table come from the exact ranks of "
            + ", ".join(f"{n} users ({label})" for label, n in ranked.items()) + first_users + "." + undecided, "",
            pruning_markdown({k: v for k, v in summary_runs(rows).items() if v["pruning"]}), ""]
