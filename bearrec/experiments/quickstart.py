"""The quickstart: SFT, MSL and BEAR on a synthetic catalog where beam search prunes, with the exact ranking (every
item ranked by its probability, nothing pruned) beside them; the tiny model, end to end on a laptop CPU."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bearrec.config import ExperimentConfig, TrainConfig
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.evaluation.evaluate import EvalSettings
from bearrec.evaluation.report import bar_chart, markdown_table, pruning_markdown
from bearrec.io import check_replaceable, discarded_on_disk_error, folder_lock, mark, write_json, write_text
from bearrec.lm.models import TINY
from bearrec.objectives import registry
from bearrec.objectives.bear import BEARConfig
from bearrec.runs import evaluate_run, train_run


@dataclass
class QuickstartConfig:
    seed: int = 0
    model: str = TINY
    users: int = 600  # synthetic users (each gives one test example)
    epochs: int = 3
    batch_size: int = 32
    lr: float | None = None  # None: 1e-3 for the tiny model, 1e-4 with LoRA
    beam_width: int = 10
    weight: float = BEARConfig.weight  # BEAR lambda (the authors' 0.25)
    temperature: float = BEARConfig.temperature  # BEAR xi (the authors' 2.75)
    eval_users: int | None = None  # subsample of test users (None: all)
    pruning_pressure: float = SyntheticConfig.pruning_pressure  # the generator's knob (data/synthetic.py)
    objectives: tuple[str, ...] = ("sft", "msl", "bear")  # each with its own default decoding scoring


def run_quickstart(out_dir: str | Path, config: QuickstartConfig | None = None, console=None) -> dict:
    """Generate data, train every objective from the same seed, evaluate each by beam search with the exact
    ranking beside it (the gap and its parts), write the report into ``out_dir``."""
    with folder_lock(out_dir, "quickstart"), discarded_on_disk_error(out_dir):  # a rerun makes it anew anyway
        return _run_quickstart(Path(out_dir), config or QuickstartConfig(), console)


def _run_quickstart(out: Path, cfg: QuickstartConfig, console) -> dict:
    configs = {objective: ExperimentConfig(
        data=str(out / "data"), model=cfg.model,
        train=TrainConfig(objective=objective, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                          valid_beam_width=cfg.beam_width),
    ) for objective in cfg.objectives}
    for config in configs.values():
        config.sections["bear"] = BEARConfig(beam_width=cfg.beam_width, weight=cfg.weight, temperature=cfg.temperature)
    for config in configs.values():  # every setting is checked before anything is written
        config.validate()
    synthetic = SyntheticConfig(seed=cfg.seed, num_users=cfg.users, pruning_pressure=cfg.pruning_pressure)
    synthetic.validate()
    if cfg.eval_users is not None and cfg.eval_users < 1:
        raise ValueError(f"eval_users must be at least 1 (or unset for all), got {cfg.eval_users}")
    settings = EvalSettings(split="test", beam_width=cfg.beam_width, max_users=cfg.eval_users, seed=cfg.seed)
    settings.validate("quickstart")
    check_replaceable(out, "quickstart", also=registry.names())  # a new or empty folder, or an earlier quickstart
    started = time.perf_counter()
    dataset = generate_synthetic(synthetic)
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "quickstart")
    data_dir = dataset.save(out / "data")
    if console:
        console.print(f"synthetic data: {dataset.summary()} -> {data_dir}")

    runs: dict[str, dict] = {}
    for objective, config in configs.items():
        log = train_run(config, out / objective, overwrite=True, dataset=dataset, console=console)
        result = evaluate_run(out / objective, settings, data=dataset, console=console)
        runs[objective] = {**result, "seconds_per_epoch": log["seconds_per_epoch"], "train_log": log["epochs"]}

    title = (f"{', '.join(o.upper() for o in cfg.objectives)}, synthetic catalog ({len(dataset.items)} items, pruning "
             f"pressure {cfg.pruning_pressure:g}), model {cfg.model}, B={cfg.beam_width}")
    results = {
        "title": title,
        "config": asdict(cfg),
        "dataset": dataset.summary(),
        "runs": runs,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
        "total_seconds": time.perf_counter() - started,
    }
    write_json(out / "results.json", results)
    md = (f"# {title}\n\n{markdown_table(runs)}\n"
          "N/H/MRR: of beam search (its list ordered by log P / length ** length_penalty); exact N/H: of the exact "
          "ranking (every item ranked by log P, nothing pruned); gap N@10: exact minus beam on the same users, "
          "which is no ceiling: gap = lost - gained - reordered (lost: positives beam search pruned; gained: "
          "positives it kept, lifted above higher-scored negatives it pruned; reordered: its length-normalised "
          "order); PR@K: share of top-K positives (by exact probability) that beam search pruned, lower is better; "
          "Cov, Gini, Tail: RecBole's ItemCoverage, GiniIndex and TailPercentage@10 (tail: the 10 % least popular "
          "train items). "
          "Decoding scoring per objective: " + ", ".join(f"{o} {r['scoring']}" for o, r in runs.items()) + ".\n\n"
          f"## Pruning attribution (paper Figure 4)\n\n{pruning_markdown(runs)}")
    write_text(out / "results.md", md)
    bar_chart(runs, out / "results.png", title)
    if console:
        console.print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'} "
                      f"({results['total_seconds']:.0f} s in all)")
    return results
