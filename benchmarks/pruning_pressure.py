"""What the synthetic generator's ``pruning_pressure`` does to trained models: PR@10 of SFT and BEAR, BEAR's
NDCG@10 gain over SFT and the beam-vs-exact gap, over a grid of pressures and seeds (docs/pruning.md).

Each point is one quickstart (``bearrec.experiments.quickstart.run_quickstart``: synthetic data from the seed, the tiny
model trained from the same seed with every objective, beam search with the exact ranking beside it), kept in
``OUT/p<pressure>/seed<k>/`` and skipped when its ``results.json`` exists, so an interrupted sweep resumes.
The generator's own oracle PR@10 (``bearrec.data.synthetic.oracle_pruning``: a model that knows the true
distribution, decoded word by word) is reported beside the trained models.

Usage (about 2 CPU-minutes per point on the default sizes):
    python benchmarks/pruning_pressure.py --out runs/pruning-pressure
    python benchmarks/pruning_pressure.py --pressures 0,0.5,1 --seeds 1 --out runs/pp-small   # a quick look
Writes OUT/pruning_pressure.json, OUT/pruning_pressure.md and OUT/pruning_pressure.png.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pressures", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="first seed; several processes may fill one --out with disjoint seeds, then a last call "
                             "over all of them (finished points are read back) writes the summary")
    parser.add_argument("--objectives", default="sft,bear")
    parser.add_argument("--users", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    from bearrec.data.synthetic import SyntheticConfig, oracle_pruning
    from bearrec.experiments.quickstart import QuickstartConfig, run_quickstart
    from bearrec.io import check_replaceable, folder_kind, mark, write_json, write_text

    pressures = [float(p) for p in args.pressures.split(",")]
    objectives = tuple(o.strip() for o in args.objectives.split(","))
    if "sft" not in objectives or "bear" not in objectives:
        raise SystemExit("--objectives must include sft and bear (the curves compare them)")
    if folder_kind(args.out) != "experiment":  # a new folder; one of ours is resumed
        check_replaceable(args.out, "experiment")
    args.out.mkdir(parents=True, exist_ok=True)
    mark(args.out, "experiment")
    points = []
    oracles = {p: oracle_pruning(SyntheticConfig(pruning_pressure=p, num_users=args.users))["PR@10"] for p in pressures}
    for seed in range(args.seed_offset, args.seed_offset + args.seeds):  # seed-major: each pressure early
        for pressure in pressures:
            folder = args.out / f"p{pressure:g}" / f"seed{seed}"
            done = folder / "results.json"
            if done.is_file():
                runs = json.loads(done.read_text())["runs"]
            else:
                print(f"pressure {pressure:g}, seed {seed}", flush=True)
                cfg = QuickstartConfig(seed=seed, users=args.users, epochs=args.epochs, pruning_pressure=pressure,
                                       objectives=objectives)
                runs = run_quickstart(folder, cfg)["runs"]
            points.append({"pressure": pressure, "seed": seed, "oracle_PR@10": oracles[pressure],
                           **{f"{o}_{m}": runs[o]["metrics"].get(m, math.nan) for o in objectives
                              for m in ("NDCG@10", "exact_NDCG@10", "gap_NDCG@10", "PR@10")}})
    write_json(args.out / "pruning_pressure.json", {"args": {k: str(v) for k, v in vars(args).items()}, "points": points})
    rows = _summary(points, pressures, objectives)
    write_text(args.out / "pruning_pressure.md", _markdown(rows, objectives, args.seeds))
    _figure(rows, objectives, args.out / "pruning_pressure.png", args.seeds)
    print((args.out / "pruning_pressure.md").read_text())


def _summary(points: list[dict], pressures: list[float], objectives) -> list[dict]:
    """Per pressure: mean and std over seeds of every column, and BEAR - SFT NDCG@10 per seed (paired)."""
    rows = []
    for pressure in pressures:
        group = [p for p in points if p["pressure"] == pressure]
        row = {"pressure": pressure, "seeds": len(group), "oracle_PR@10": group[0]["oracle_PR@10"]}
        columns = [f"{o}_{m}" for o in objectives for m in ("NDCG@10", "exact_NDCG@10", "gap_NDCG@10", "PR@10")]
        for column in columns:
            values = np.array([p[column] for p in group], dtype=float)
            row[column] = (float(np.nanmean(values)) if np.isfinite(values).any() else math.nan,
                           float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else math.nan)
        gain = np.array([p["bear_NDCG@10"] - p["sft_NDCG@10"] for p in group])
        row["bear-sft_NDCG@10"] = (float(gain.mean()), float(gain.std(ddof=1)) if len(gain) > 1 else math.nan)
        rows.append(row)
    return rows


def _cell(pair) -> str:
    mean, std = pair
    return "n/a" if math.isnan(mean) else f"{mean:.4f}" + ("" if math.isnan(std) else f" ± {std:.4f}")


def _markdown(rows: list[dict], objectives, seeds: int) -> str:
    head = ["pressure", "oracle PR@10"] + [f"{o} PR@10" for o in objectives] + [
        f"{o} N@10" for o in objectives] + ["BEAR - SFT N@10"] + [f"{o} gap N@10" for o in objectives]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [f"{r['pressure']:g}", f"{r['oracle_PR@10']:.3f}"] + [_cell(r[f"{o}_PR@10"]) for o in objectives] + [
            _cell(r[f"{o}_NDCG@10"]) for o in objectives] + [_cell(r["bear-sft_NDCG@10"])] + [
            _cell(r[f"{o}_gap_NDCG@10"]) for o in objectives]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMean ± std over {seeds} seeds (data and model seeds together).\n"


def _figure(rows: list[dict], objectives, path: Path, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["pressure"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [("PR@10 (pruned share of top-10 positives)", [(f"{o} PR@10", f"{o}_PR@10") for o in objectives]),
              ("BEAR - SFT NDCG@10 (beam search)", [("BEAR - SFT", "bear-sft_NDCG@10")]),
              ("beam-vs-exact gap: exact NDCG@10 - beam's", [(f"{o}", f"{o}_gap_NDCG@10") for o in objectives])]
    for ax, (title, lines) in zip(axes, panels):
        for label, key in lines:
            mean = [r[key][0] for r in rows]
            std = [0.0 if math.isnan(r[key][1]) else r[key][1] for r in rows]
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label)
        if title.startswith("PR"):
            ax.plot(x, [r["oracle_PR@10"] for r in rows], linestyle=":", color="gray", label="oracle (true distribution)")
        else:
            ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_xlabel("pruning_pressure")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"Synthetic catalog, tiny model, B = 10; mean ± std over {seeds} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
