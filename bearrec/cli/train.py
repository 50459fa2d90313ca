"""`bearrec train`: one run, from a dataset folder, an experiment YAML, flags and `--set`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from bearrec.cli.app import _cli_errors, _flag_sets, app, console, out


def _objective_help() -> str:
    from bearrec.objectives import registry

    return "; ".join(f"{o.name}: {o.help}" for o in registry.REGISTRY.values()) + " [default: sft]"


class Formulation(str, Enum):
    official = "official"
    paper = "paper"


class Candidates(str, Enum):
    vocab = "vocab"
    trie = "trie"


class Surrogate(str, Enum):
    paper = "paper"
    softplus = "softplus"


@app.command()
@_cli_errors
def train(
    data: Annotated[Optional[Path], typer.Argument(help="dataset folder from `bearrec prepare` [default: 'data' of --config]")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="experiment YAML (see configs/); flags and --set override it")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="override any config field: section.field=value, e.g. train.grad_accum_steps=4")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path("runs/run"),
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from its last complete checkpoint (its saved config is used)")] = False,
    objective: Annotated[Optional[str], typer.Option(help=_objective_help())] = None,
    model: Annotated[Optional[str], typer.Option(help="'tiny' (built from a config, tokenizer trained on the data) or a Hugging Face model folder / hub name [default: tiny]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="training epochs (the paper: 10) [default: 3]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate [default: 1e-3 for tiny, 1e-4 with LoRA as in the paper]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="examples per device and step [default: 32]")] = None,
    beam_width: Annotated[Optional[int], typer.Option(help="B of the objective; match the decoding beam width (paper: 10)")] = None,
    weight: Annotated[Optional[float], typer.Option(help="lambda, regulariser strength (paper range 0.1-5) [default: 0.25 for bear/sdpo-bear, 1 for beam-sim]")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="xi, sigmoid temperature (paper range 0.25-3) [default: 2.75 for bear/sdpo-bear, 1 for beam-sim]")] = None,
    surrogate: Annotated[Optional[Surrogate], typer.Option(help="bear --formulation paper and beam-sim: paper = log sigmoid (eq. 3.4); softplus = only violated tokens pay")] = None,
    formulation: Annotated[Optional[Formulation], typer.Option(help="bear/sdpo-bear: official = the authors' released loss (masked softmax, detached beta and weights); paper = eq. 3.4 as printed [default: official]")] = None,
    candidates: Annotated[Optional[Candidates], typer.Option(help="bear --formulation paper: top-B among the whole vocabulary or the trie-valid tokens [default: vocab]")] = None,
    tau: Annotated[Optional[float], typer.Option(help="softmax temperature of the masked softmax (bear official, msl, sdpo-bear) [default: 1]")] = None,
    ats: Annotated[Optional[bool], typer.Option("--ats/--no-ats", help="msl: adaptive temperature (ATS of the MSL repo; --tau is its start) [default: off]")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="sdpo/sdpo-bear: run folder of the reference SFT model (the policy starts from it)")] = None,
    negatives: Annotated[Optional[int], typer.Option(help="sdpo/sdpo-bear: sampled negative items per example (S-DPO: 3); apao-pairwise: uniform negatives (APAO: 100)")] = None,
    beta: Annotated[Optional[float], typer.Option(help="sdpo/sdpo-bear: DPO beta (S-DPO: 1); apao-*: weight of the prefix term (APAO: 0.1)")] = None,
    lora: Annotated[Optional[bool], typer.Option("--lora/--full", help="LoRA adapters or full fine-tuning [default: full for tiny, LoRA otherwise]")] = None,
    lora_rank: Annotated[Optional[int], typer.Option(help="LoRA rank (paper: 8)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="[default: 0]")] = None,
    max_train_examples: Annotated[Optional[int], typer.Option(help="train on a seeded random subsample")] = None,
    max_prompt_tokens: Annotated[Optional[int], typer.Option(help="longer prompts drop their oldest history items [default: 1024]")] = None,
):
    """Fine-tune a model with SFT, BEAR, beam-sim, MSL or S-DPO through the Hugging Face Trainer; keeps the best validation NDCG@10.

    Several GPUs: `accelerate launch -m bearrec.cli train ...` or `torchrun --nproc-per-node N -m bearrec.cli train ...`.
    """
    from bearrec.config import load_config
    from bearrec.objectives import registry
    from bearrec.runs import train_run
    from bearrec.yamlfiles import read_yaml

    if resume:
        cfg = None
    else:
        raw = read_yaml(config) if config is not None else None  # read once: --config may be a pipe
        # the objective's own flags go to the section of the objective trained, which --config may name
        if objective is not None and objective not in registry.REGISTRY:
            raise ValueError(f"--objective {objective!r}: unknown; choose one of {', '.join(registry.names())}")
        # (with the model flags, which decide what the --set values may be)
        name = objective or load_config(config, _flag_sets({"model": model, "lora": lora}) + list(overrides or []),
                                        raw).train.objective
        section = registry.get(name).section
        own = {"beam_width": beam_width, "weight": weight, "temperature": temperature,
               "surrogate": surrogate.value if surrogate else None,
               "formulation": formulation.value if formulation else None,
               "candidates": candidates.value if candidates else None, "tau": tau,
               "num_negatives" if section == "apao" else "negatives": negatives, "beta": beta}
        given = [key for key, value in own.items() if value is not None]
        known = set(registry.get(name).fields())
        for key in given:
            if key not in known:
                flag = "negatives" if key == "num_negatives" else key.replace("_", "-")
                raise ValueError(f"--{flag}: objective {name} has no such setting")
        flags = {
            "data": str(data) if data else None, "model": model, "lora": lora, "lora_settings.rank": lora_rank,
            "train.objective": objective, "train.epochs": epochs, "train.lr": lr,
            "train.batch_size": batch_size, "train.seed": seed, "train.max_train_examples": max_train_examples,
            "train.max_prompt_tokens": max_prompt_tokens, **{f"{section}.{key}": own[key] for key in given},
            "msl.ats": ats, "sdpo.reference": str(reference) if reference else None,
        }
        cfg = load_config(config, _flag_sets(flags) + list(overrides or []), raw)
    log = train_run(cfg, out_dir, resume=resume, console=console)
    if log["truncated_prompts"]:
        console.print(f"[yellow]warning:[/yellow] {log['truncated_prompts']} prompts exceeded the token limit and lost their oldest items")
    best = log.get("best_valid_ndcg10")
    out.print(f"wrote {out_dir} ({log['seconds_per_epoch']:.1f} s/epoch" + (f", best valid NDCG@10 {best:.4f}" if best is not None else "") + ")")
