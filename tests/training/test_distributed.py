"""Training and evaluation under ``accelerate launch --num_processes 2 --cpu`` (gloo): both processes agree,
the run folder is written once, and sharded validation and evaluation equal one process's.

The test launches this file as the worker (``python -m accelerate.commands.launch ... test_distributed.py
--worker DATA OUT``): every process trains the tiny model for one epoch (DDP), validates and evaluates with the
users split between the processes, and writes what it saw to ``OUT/rank<k>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bearrec.evaluation.evaluate import EvalSettings

ROOT = Path(__file__).resolve().parents[2]
# Two CPU processes with gloo. `accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.x
# (its simple launcher spawns several only through mpirun); --multi_gpu launches through torchrun, and
# ACCELERATE_USE_CPU (what --cpu sets) keeps the Trainer and bearrec on the CPU with the gloo backend.
LAUNCH = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
EVAL = EvalSettings(split="test", beam_width=10, pruning_rate=True, seed=0)


def _config(data: Path):
    from bearrec.config import ExperimentConfig, TrainConfig

    # select_best off: the final in-memory weights are each process's own (not re-read from a checkpoint)
    return ExperimentConfig(data=str(data), train=TrainConfig(epochs=1, batch_size=8, max_train_examples=64,
                                                              valid_users=16, logging_steps=1, select_best=False))


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def worker(data: Path, out: Path) -> None:
    import bearrec.runs
    from bearrec import distributed
    from bearrec.runs import evaluate_run, train_run

    trained = {}
    original = bearrec.runs.train_model

    def spy(model, space, *args, **kwargs):  # keeps this process's model and tokenizer after training
        log = original(model, space, *args, **kwargs)
        trained.update(model=model, vocab=json.dumps(sorted(space.tokenizer.get_vocab().items())))
        return log

    bearrec.runs.train_model = spy
    log = train_run(_config(data), out / "run")
    result = evaluate_run(out / "run", EVAL)
    shared = distributed.state()
    share = distributed.share(result["users"])
    record = {"rank": shared.process_index, "world": shared.num_processes, "share": [share.start, share.stop],
              "weights": _digest(trained["model"].state_dict()),
              "vocab": hashlib.sha256(trained["vocab"].encode()).hexdigest(),
              "valid": [{k: v for k, v in e.items() if k != "seconds"} for e in log["epochs"]],
              "losses": [h["loss"] for h in log["log_history"] if "loss" in h],
              "metrics": result["metrics"], "retrieved_rank": result["retrieved_rank"], "users": result["users"]}
    (out / f"rank{shared.process_index}.json").write_text(json.dumps(record))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    from bearrec.data.synthetic import SyntheticConfig, generate_synthetic

    tmp = tmp_path_factory.mktemp("ddp")
    generate_synthetic(SyntheticConfig(num_users=40, num_categories=3, items_per_category=12)).save(tmp / "data")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp / "hf"), "TOKENIZERS_PARALLELISM": "false",
           "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH, "--main_process_port", str(_free_port()),
           __file__, "--worker", str(tmp / "data"), str(tmp / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp / "out" / f"rank{r}.json").read_text()) for r in range(2)]
    return tmp, ranks


@pytest.mark.slow
def test_both_processes_train_the_same_model(launched):
    tmp, (r0, r1) = launched
    assert (r0["rank"], r1["rank"], r0["world"], r1["world"]) == (0, 1, 2, 2)
    assert r0["vocab"] == r1["vocab"]  # the tiny model's tokenizer, trained on the data by each process
    assert r0["weights"] == r1["weights"]  # DDP kept the replicas identical
    assert r0["losses"] and r0["losses"] == r1["losses"]
    assert r0["valid"] == r1["valid"] and "NDCG@10" in r0["valid"][0]
    # the users were split, not duplicated: contiguous halves
    assert r0["share"] == [0, r0["users"] // 2 + r0["users"] % 2] and r1["share"] == [r0["share"][1], r1["users"]]
    # the run folder was written once, completely, with nothing left beside it
    from bearrec.io import folder_kind

    run = tmp / "out" / "run"
    assert folder_kind(run) == "run" and (run / "model").is_dir() and (run / "train_log.json").is_file()
    assert (run / "eval_test.json").is_file()
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["rank0.json", "rank1.json", "run"]


@pytest.mark.slow
def test_sharded_evaluation_and_validation_equal_one_process(launched):
    from bearrec.evaluation.evaluate import evaluate
    from bearrec.runs import evaluate_run, item_space, load_run

    tmp, (r0, r1) = launched
    assert r0["metrics"] == r1["metrics"] and r0["retrieved_rank"] == r1["retrieved_rank"]
    single = evaluate_run(tmp / "out" / "run", EVAL)
    assert single["users"] == r0["users"] == 40
    assert single["metrics"] == r0["metrics"]
    assert single["retrieved_rank"] == r0["retrieved_rank"]
    assert single["pruning"]["ranked_users"] == 40  # exact ranks of every user, gathered from both processes
    # validation: the epoch's sharded NDCG/HR@K equal one process decoding the same users with the final model
    model, tokenizer, dataset, config = load_run(tmp / "out" / "run")
    valid = evaluate(model, item_space(tokenizer, dataset, config), dataset,
                     EvalSettings(split="valid", max_users=config.train.valid_users, seed=config.train.seed,
                                  pruning_rate=False), config.decoding.with_scoring(config.scoring))
    logged = r0["valid"][-1]
    for key in ("NDCG@5", "NDCG@10", "HR@5", "HR@10"):
        assert logged[key] == pytest.approx(valid["metrics"][key], abs=1e-12), key


def test_one_process_is_left_alone():
    """Without a launcher nothing of torch.distributed is touched and every helper is a pass-through."""
    import torch

    from bearrec import distributed

    assert distributed.state() is None and not distributed.sharded_weights()
    assert distributed.share(5) == slice(0, 5) and distributed.on_main(lambda: 3) == 3
    seen = []
    out = distributed.map_users(lambda x, scale, progress=None: (progress(len(x)), x * scale)[1], torch.arange(4),
                                scale=2, progress=seen.append)
    assert out.tolist() == [0, 2, 4, 6] and seen == [4]
    assert not torch.distributed.is_initialized()


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(Path(sys.argv[2]), Path(sys.argv[3]))
