"""Training through the Trainer: configs, validation model selection, checkpoints and resume."""

import json
import math
import shutil

import pytest
import torch
import yaml
from training_helpers import crash_after_saving

from bearrec.config import ExperimentConfig, TrainConfig, load_config
from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
from bearrec.evaluation.evaluate import EvalSettings
from bearrec.runs import train_run
from bearrec.training.checkpoints import last_checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "synthetic"
    generate_synthetic(SyntheticConfig(num_users=40, num_categories=3, items_per_category=12)).save(folder)
    return folder


def _config(data_dir, **train):
    defaults = dict(epochs=2, batch_size=16, valid_users=20, logging_steps=2)
    return ExperimentConfig(data=str(data_dir), train=TrainConfig(**(defaults | train)))


def test_yaml_config_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        yaml.safe_dump({"model": "tiny", "train": {"objective": "bear", "epochs": 4}, "bear": {"weight": 0.5}})
    )
    config = load_config(path, ["train.epochs=7", "bear.temperature=2.5", "beam_sim.surrogate=softplus"])
    assert (config.train.objective, config.train.epochs, config.bear.weight, config.bear.temperature) == (
        "bear",
        7,
        0.5,
        2.5,
    )
    assert config.beam_sim.surrogate == "softplus" and config.learning_rate == 1e-3 and not config.use_lora
    config.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config
    with pytest.raises(ValueError, match="unknown field.*epoch"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ValueError, match="objective"):
        load_config(None, ["train.objective=dpo"])
    path.write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match="row"):
        load_config(path)


@pytest.mark.slow
def test_best_checkpoint_selection_and_logs(data_dir, tmp_path):
    log = train_run(_config(data_dir, objective="bear", epochs=3, patience=0), tmp_path / "run")
    epochs_ndcg = [e["NDCG@10"] for e in log["epochs"]]
    assert len(epochs_ndcg) == 3 and log["best_valid_ndcg10"] == pytest.approx(max(epochs_ndcg))
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["objective"] == "bear"
    assert any("loss_regulariser" in h for h in log["log_history"])
    assert list((tmp_path / "run" / "checkpoints" / "runs").rglob("events.out.tfevents*")), "TensorBoard logs"


@pytest.mark.slow
def test_resume_after_crash_reaches_the_same_metrics(data_dir, tmp_path):
    full = train_run(_config(data_dir, select_best=False), tmp_path / "full")
    crash_after_saving(_config(data_dir, select_best=False), tmp_path / "crashed", epoch=1)
    run = tmp_path / "crashed"
    per_epoch = full["global_step"] // 2
    assert last_checkpoint(run / "checkpoints").endswith(f"checkpoint-{per_epoch}") and not (run / "model").exists()
    # a checkpoint killed while saving (trainer_state.json cut short) is set aside with a warning, not deleted
    broken = run / "checkpoints" / "checkpoint-99"
    shutil.copytree(run / "checkpoints" / f"checkpoint-{per_epoch}", broken)
    (broken / "trainer_state.json").write_text('{"truncated')
    with pytest.warns(UserWarning, match="checkpoint-99: damaged"):
        resumed = train_run(None, run, resume=True)
    assert not broken.exists() and (run / "checkpoints" / "damaged-checkpoint-99" / "model.safetensors").is_file()
    assert resumed["global_step"] == full["global_step"]
    final = lambda log: [h for h in log["log_history"] if "loss" in h][-1]["loss"]  # noqa: E731
    assert final(resumed) == pytest.approx(final(full), rel=1e-4)
    metrics = json.loads((run / "train_log.json").read_text())["epochs"][-1]
    assert metrics["NDCG@10"] == pytest.approx(full["epochs"][-1]["NDCG@10"], abs=1e-6)


@pytest.mark.slow
def test_min_epochs_holds_early_stopping_back_also_after_a_resume(data_dir, tmp_path):
    """With a learning rate too small to move the validation score, patience 1 stops a run after epoch 2;
    ``min_epochs`` 4 holds it to epoch 4, also when a run stopped earlier is resumed under the setting (the
    Trainer restores the patience count; the setting comes from the run's config)."""
    config = _config(data_dir, epochs=6, patience=1, lr=1e-12)
    stopped = train_run(config, tmp_path / "run")
    assert [e["epoch"] for e in stopped["epochs"]] == [1, 2]
    assert len({e["NDCG@10"] for e in stopped["epochs"]}) == 1  # the score never improves
    config.train.min_epochs = 4
    held = train_run(config, tmp_path / "held")
    assert [e["epoch"] for e in held["epochs"]] == [1, 2, 3, 4]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    saved["train"]["min_epochs"] = 4  # the stopped run, declared under the setting and resumed
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    resumed = train_run(None, tmp_path / "run", resume=True)
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3, 4]
    assert resumed["global_step"] == held["global_step"]
    with pytest.raises(ValueError, match="train.min_epochs"):
        load_config(None, ["train.min_epochs=7", "train.epochs=6"]).validate()


@pytest.mark.slow
def test_resume_with_sampled_negatives_reaches_identical_weights(data_dir, tmp_path):
    """APAO pairwise (like S-DPO) draws negatives from the collator's own generator, which the Trainer's RNG
    checkpoint does not hold: the resumed run must draw epoch 2's negatives, not epoch 1's again."""
    from safetensors.torch import load_file

    config = _config(data_dir, objective="apao-pairwise", select_best=False)
    config.apao.num_negatives = 4
    train_run(config, tmp_path / "full")
    crash_after_saving(config, tmp_path / "crashed", epoch=1)
    assert list((tmp_path / "crashed" / "checkpoints").glob("checkpoint-*/collator_rng*.pth"))
    train_run(None, tmp_path / "crashed", resume=True)
    full, resumed = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("full", "crashed"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.slow
def test_t5_resume_reaches_identical_weights(data_dir, tmp_path):
    """An encoder-decoder resumes exactly too: its checkpoint stores the shared embedding once (the encoder's,
    decoder's and output embeddings are tied to it), and the resumed run ends at the uninterrupted run's weights.
    Neither run prints transformers' false alarms: tied weights "missing" from the checkpoint (transformers#27972)
    and a model config whose special tokens differ from the tokenizer's."""
    import transformers
    from safetensors.torch import load_file
    from transformers.testing_utils import CaptureLogger

    from bearrec.config import TinyConfig

    config = _config(data_dir, select_best=False)
    config.tiny = TinyConfig(
        architecture="t5",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        head_size=16,
    )
    # on the library's own logger, which does not propagate to pytest's capture
    with CaptureLogger(transformers.logging.get_logger("transformers")) as logged:
        train_run(config, tmp_path / "full")
        crash_after_saving(config, tmp_path / "crashed", epoch=1)
        train_run(None, tmp_path / "crashed", resume=True)
    assert "missing keys" not in logged.out and "PAD/BOS/EOS" not in logged.out
    full, resumed = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("full", "crashed"))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.slow
def test_resume_keeps_the_early_stopping_count(data_dir, tmp_path):
    """A run stopped by patience stops at the same epoch when it was interrupted and resumed in between: the
    resumed Trainer restores the checkpoint's early-stopping count instead of counting from zero."""
    # lr 1e-12 leaves the weights unchanged: validation never improves on epoch 1, so patience 2 stops at epoch 3
    config = _config(data_dir, epochs=6, lr=1e-12, patience=2, save_total_limit=10)
    full = train_run(config, tmp_path / "full")
    assert len(full["epochs"]) == 3
    crash_after_saving(config, tmp_path / "crashed", epoch=2)  # its checkpoint holds an early-stopping count of 1
    resumed = train_run(None, tmp_path / "crashed", resume=True)
    assert [e["epoch"] for e in resumed["epochs"]] == [e["epoch"] for e in full["epochs"]] == [1, 2, 3]
    assert resumed["global_step"] == full["global_step"]


def test_flush_denormals_sets_the_mode_and_restores_the_callers():
    from bearrec.training.diagnostics import flush_denormals, flushing_denormals

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats")
    try:
        for before in (False, True):
            for enabled in (False, True):
                torch.set_flush_denormal(before)
                assert flushing_denormals() == before
                with flush_denormals(enabled):
                    assert flushing_denormals() == enabled
                    subnormal = torch.tensor([1e-39]) * 1.0
                    assert (subnormal.item() == 0.0) == enabled
                assert flushing_denormals() == before
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.slow
def test_training_runs_in_the_configured_denormal_mode(data_dir, tmp_path, monkeypatch):
    """``train.flush_denormal`` holds while the model trains (off by default) and the caller's mode comes back."""
    import bearrec.runs
    from bearrec.training.diagnostics import flushing_denormals

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats")
    seen, original = [], bearrec.runs.train_model

    def recording(*args, **kwargs):
        seen.append(flushing_denormals())
        return original(*args, **kwargs)

    monkeypatch.setattr(bearrec.runs, "train_model", recording)
    assert not TrainConfig().flush_denormal
    for flush in (True, False):
        train_run(_config(data_dir, epochs=1, valid_users=0, flush_denormal=flush), tmp_path / f"flush-{flush}")
        assert not flushing_denormals()
    assert seen == [True, False]


@pytest.mark.parametrize(
    "path", sorted((__import__("pathlib").Path(__file__).parents[2] / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.train.objective in ("sft", "bear", "beam-sim")


@pytest.mark.slow
def test_lora_on_a_pretrained_folder_trains_saves_and_reloads(data_dir, tmp_path):
    """A 'pretrained' model from a local folder gets LoRA adapters; the run saves only them and reloads."""
    from bearrec.data.dataset import RecDataset
    from bearrec.lm.models import build_tiny_model, train_tokenizer
    from bearrec.runs import evaluate_run

    titles = RecDataset.load(data_dir).titles
    tokenizer = train_tokenizer(titles * 5, vocab_size=300)
    base = tmp_path / "base"
    build_tiny_model(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    config = ExperimentConfig(
        data=str(data_dir),
        model=str(base),
        train=TrainConfig(epochs=1, batch_size=16, valid_users=10, objective="bear"),
    )
    assert config.use_lora and config.learning_rate == 1e-4
    log = train_run(config, tmp_path / "run")
    assert log["parameters"]["trainable"] < log["parameters"]["total"] / 5
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "adapter_model.safetensors").is_file() and not (model_dir / "model.safetensors").exists()
    result = evaluate_run(tmp_path / "run", EvalSettings(split="valid", max_users=5, pruning_rate=False))
    assert result["users"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["exact", "latent"])
def test_validation_decodes_with_the_runs_decoder(data_dir, tmp_path, decoder):
    """Model selection sees the lists the run will serve: with decoding.decoder exact or latent, validation
    decodes with it, and evaluate_run defaults to it too."""
    from bearrec.decoding.config import DecodingConfig
    from bearrec.runs import evaluate_run

    config = _config(data_dir, epochs=1)
    config.decoding = DecodingConfig(decoder=decoder)
    log = train_run(config, tmp_path / "run")
    assert 0 <= log["epochs"][0]["NDCG@10"] <= 1
    result = evaluate_run(tmp_path / "run", EvalSettings(split="valid", max_users=20))
    assert result["decoder"] == decoder and (tmp_path / "run" / f"eval_valid_{decoder}.json").is_file()
    assert result["metrics"]["NDCG@10"] == pytest.approx(log["epochs"][0]["NDCG@10"])  # the same users, model, lists


@pytest.mark.slow
def test_a_nonfinite_step_is_skipped_and_diagnosed(data_dir, tmp_path, monkeypatch):
    """A batch whose forward turns NaN inside one layer (as a bf16 overflow would) must not reach the weights:
    the step is skipped, counted, and the diagnosis names the layer; training goes on with finite weights."""
    import torch
    from safetensors.torch import load_file

    import bearrec.training.trainer as train_module

    calls = {"n": 0}
    original = train_module.answer_logits

    def poison(module, args, output):  # training forward 3, then the diagnosis's two re-runs of that batch
        return output * float("nan") if calls["n"] in (3, 4, 5) else output

    def spy(model, *args, **kwargs):
        if calls["n"] == 0:
            layer = next(m for n, m in model.named_modules() if n.endswith("layers.0.mlp"))
            layer.register_forward_hook(poison)
        calls["n"] += 1
        return original(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "answer_logits", spy)
    log = train_run(_config(data_dir, epochs=1, select_best=False, logging_steps=1), tmp_path / "run")
    assert calls["n"] > 6, "training went on after the poisoned step"
    assert log["nonfinite_skipped"] == 1
    first = log["nonfinite_first"]
    assert first["step"] == 3 and first["first_nonfinite_module"].endswith("layers.0.mlp")
    assert first["first_nonfinite_module_autocast_off"].endswith("layers.0.mlp") and first["loss"] != first["loss"]
    assert first["nonfinite_grad_parameters"] and len(first["lengths"]) == first["batch"][0]
    dump = load_file(first["dump"])  # the batch and the weights it met, to replay it
    assert dump["input.attention_mask"].sum(1).tolist() == first["lengths"]
    assert any(k.startswith("weight.") and k.endswith("mlp.up_proj.weight") for k in dump)

    # the GPU probe replays it per attention kernel; here, unpoisoned, every available variant is finite
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "nan_probe", Path(__file__).parents[2] / "benchmarks/gpu/nan_probe.py"
    )
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    report = probe.main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "probe")])
    rows = {r["variant"]: r for r in report["variants"]}
    assert set(rows) == set(probe.VARIANTS) and rows["eager"]["available"] and rows["sdpa-math"]["available"]
    available = [r for r in rows.values() if r["available"]]
    assert all(r["grads_finite"] and r["loss"] > 0 for r in available)
    assert len({round(r["loss"], 4) for r in available}) == 1, "every kernel computes the same loss"
    assert (tmp_path / "probe" / "nan_probe.json").is_file()
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    losses = [h["loss"] for h in log["log_history"] if h["step"] > 3]
    assert losses and all(math.isfinite(x) and x > 0 for x in losses)


def test_a_model_with_nonfinite_weights_is_refused(tmp_path):
    """Evaluating a diverged model would report exact NDCG 1.0 (every NaN score ties first): loading refuses it."""
    import torch

    from bearrec.lm.models import build_tiny_model, load_model, train_tokenizer

    tokenizer = train_tokenizer(["red pen", "blue pen", "green ink"] * 5, vocab_size=300)
    model = build_tiny_model(tokenizer)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.up_proj\.weight holds NaN"):
        load_model(tmp_path / "m")
