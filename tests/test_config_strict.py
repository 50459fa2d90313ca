"""Config files and ``--set`` values are read strictly: duplicate keys and the numbers YAML 1.1 reads otherwise
than YAML 1.2 are one-line errors naming the row and the key; a pipe is a config file; counts that overflow
where they meet numpy or torch are refused with their field named."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from cli_helpers import one_line_error, run_cli

from bearrec.config import INT64_MAX, ExperimentConfig, TrainConfig, load_config
from bearrec.yamlfiles import MAX_CONFIG_BYTES, parse_value, read_yaml

CONFIGS = Path(__file__).parent.parent / "configs"
needs_dev_fd = pytest.mark.skipif(not Path("/dev/fd").is_dir(), reason="needs /dev/fd")


@pytest.fixture(scope="module")
def syn(tiny_data) -> Path:
    return tiny_data


def _error(tmp_path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}, row ")
    return message


# ---------------------------------------------------------------------------------- duplicate keys
@pytest.mark.parametrize("text,message", [
    ("train:\n  epochs: 1\nbear:\n  weight: 1\ntrain:\n  lr: 0.1\n", "row 5: duplicate key 'train' (first at row 1)"),
    ("train:\n  epochs: 1\n  seed: 2\n  epochs: 2\n", "row 4: duplicate key 'train.epochs' (first at row 2)"),
    ("train:\n  epochs: 1\n  'epochs': 2\n", "row 3: duplicate key 'train.epochs' (first at row 2)"),
    ("train: {epochs: 1, epochs: 2}\n", "row 1: duplicate key 'train.epochs' (first at row 1)"),
    ("model: tiny\nmodel: tiny\n", "row 2: duplicate key 'model' (first at row 1)"),
])
def test_duplicate_keys_are_refused(tmp_path, text, message):
    assert message in _error(tmp_path, text)


def test_a_merge_key_is_not_a_duplicate(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  <<: {epochs: 2, seed: 5}\n  epochs: 4\n")
    assert read_yaml(path) == {"train": {"epochs": 4, "seed": 5}}


# ---------------------------------------------------------------------------------- YAML 1.1-only numbers
@pytest.mark.parametrize("text,needles", [
    ("train:\n  epochs: 1:00\n", ["row 2", "train.epochs: 1:00 is read as 60", "write 60, or quote it"]),
    ("train:\n  lr: 0:00.5\n", ["row 2", "train.lr: 0:00.5 is read as 0.5", "base 60"]),
    ("train:\n  epochs: 010\n", ["row 2", "train.epochs: 010 is read as 8", "write 8, or 10 without the leading zero"]),
    ("train:\n  seed: -010\n", ["train.seed: -010 is read as -8", "or -10"]),
    ("train:\n  seed: 00\n", ["train.seed: 00 is read as 0", "write 0, or quote"]),
    ("train:\n  epochs: 1_0\n", ["row 2", "train.epochs: 1_0 is read as 10", "write 10, or quote it"]),
    ("bear:\n  weight: 1_0.5\n", ["bear.weight: 1_0.5 is read as 10.5", "underscores"]),
    ("model: 010\n", ["row 1", "model: 010 is read as 8"]),  # text fields too: model "8" today
    ("data: 1:30\n", ["data: 1:30 is read as 90"]),
    ("train:\n  epochs: !!int 010\n", ["train.epochs: 010 is read as 8"]),
    ("lora_settings:\n  target_modules: [q_proj, 1_0]\n", ["row 2", "lora_settings.target_modules[1]: 1_0"]),
])
def test_yaml11_numbers_are_refused(tmp_path, text, needles):
    message = _error(tmp_path, text)
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("-3", -3), ("0.5", 0.5), ("-0.5", -0.5), (".5", 0.5), (".inf", float("inf")), ("-.inf", float("-inf")),
    ("0x1f", 31), ("0b11", 3), ("1.0e-4", 1e-4),
    ("1e-4", 1e-4), ("-.5", "-.5"),  # an exponent is a number (as in --set); -.5 stays text as in YAML 1.1
    ("0o10", "0o10"), ("09", "09"), ("'1:00'", "1:00"), ('"010"', "010"), ("'1_0'", "1_0"), ("1.2.3", "1.2.3"),
])
def test_plain_numbers_and_quoted_text_keep_their_values(tmp_path, text, value):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"x: {text}\n")
    assert read_yaml(path) == {"x": value}


@pytest.mark.parametrize("text,needle", [
    ("train:\n  epochs: !!int x\n", "row 2: not valid YAML ('x' is not a valid int)"),
    ("train:\n  lr: !!float x\n", "row 2: not valid YAML ('x' is not a valid float)"),
    ("train:\n  lora: !!bool maybe\n", "row 2: not valid YAML ('maybe' is not a valid bool)"),
    ("data: !!timestamp x\n", "row 1: not valid YAML ('x' is not a valid timestamp)"),
    ("train:\n  epochs: 0x_\n", "row 2: not valid YAML ('0x_' is not a valid int)"),
])
def test_a_scalar_that_does_not_fit_its_tag_is_a_yaml_error(tmp_path, text, needle):
    assert needle in _error(tmp_path, text)


def test_shipped_configs_and_saved_configs_read_strictly(tmp_path):
    for path in sorted(CONFIGS.glob("*.yaml")):
        load_config(path)
    config = ExperimentConfig(data="1:00", model="010", train=TrainConfig(seed=2**32 - 1))
    config.save(tmp_path / "config.yaml")  # text that looks like a refused number is quoted
    assert load_config(tmp_path / "config.yaml") == config


# ---------------------------------------------------------------------------------- --set values
@pytest.mark.parametrize("item,needle", [
    ("train.epochs=1_0", "--set 'train.epochs=1_0': 1_0 is read as 10 (YAML 1.1 drops underscores): write 10"),
    ("train.epochs=1:00", "--set 'train.epochs=1:00': 1:00 is read as 60"),
    ("train.epochs=010", "--set 'train.epochs=010': 010 is read as 8"),
    ("train.lr=1_0e-5", "train: lr must be a number or null, got '1_0e-5'"),  # float("1_0e-5") was 1e-4
    ("train.lr=nan", "train: lr must be a number or null, got 'nan'"),
    ("train.epochs=09", "train: epochs must be an integer, got '09'"),
    ("train.epochs=!!int x", "--set 'train.epochs=!!int x': not a valid value ('x' is not a valid int)"),
    ("train.epochs={a: 1, a: 2}", "--set 'train.epochs={a: 1, a: 2}': duplicate key 'a'"),
])
def test_set_values_are_read_strictly(item, needle):
    with pytest.raises(ValueError) as err:
        load_config(None, [item])
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("-3", -3), ("0.5", 0.5), ("1e-4", 1e-4), ("3E5", 3e5), ("1.0e5", 1e5), ("-.5", -0.5),
    (".inf", float("inf")), ("0x1f", 31), ("'1:00'", "1:00"), ("paper", "paper"), ("null", None), ("true", True), ("09", "09"),
])
def test_set_values_that_keep_working(text, value):
    assert parse_value(text) == value


# ---------------------------------------------------------------------------------- ranges that overflow
@pytest.mark.parametrize("item,needle", [
    ("train.seed=99999999999999999999999", "train.seed must be in [0, 4294967295]"),
    (f"train.seed={2**32}", "train.seed must be in [0, 4294967295]"),
    ("train.seed=-1", "train.seed must be in [0, 4294967295]"),
    (f"train.batch_size={2**63}", f"train.batch_size must be at most {INT64_MAX}"),
    (f"decoding.node_budget={2**64}", f"decoding.node_budget must be in [1, {INT64_MAX}], or null"),
    (f"decoding.latent_neighbors={2**63}", f"decoding.latent_neighbors must be in [1, {INT64_MAX}]"),
])
def test_counts_that_would_overflow_name_their_field(item, needle):
    with pytest.raises(ValueError, match=r"^" + needle.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [item])


def test_the_largest_counts_that_fit_are_accepted():
    config = load_config(None, [f"train.seed={2**32 - 1}", f"train.batch_size={INT64_MAX}",
                                f"decoding.node_budget={INT64_MAX}", f"decoding.latent_neighbors={INT64_MAX}"])
    assert config.train.seed == 2**32 - 1 and config.decoding.node_budget == INT64_MAX


# ---------------------------------------------------------------------------------- what --config may name
def test_missing_path_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        read_yaml(tmp_path / "nope.yaml")
    (tmp_path / "file").write_text("x: 1\n")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        read_yaml(tmp_path / "file" / "cfg.yaml")
    with pytest.raises(ValueError, match=r"is a folder, not a config file$"):
        read_yaml(tmp_path)


@needs_dev_fd
def test_a_pipe_is_read_once():
    read_end, write_end = os.pipe()
    os.write(write_end, b"train:\n  epochs: 1\n")
    os.close(write_end)
    try:
        assert load_config(f"/dev/fd/{read_end}").train.epochs == 1
    finally:
        os.close(read_end)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_a_named_fifo_is_read(tmp_path):
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=("train:\n  epochs: 2\n",))
    writer.start()
    try:
        assert read_yaml(fifo) == {"train": {"epochs": 2}}
    finally:
        unblock = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a writer that nothing read from can finish
        writer.join()
        os.close(unblock)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_stream_is_refused():
    assert read_yaml("/dev/null") == {}
    with pytest.raises(ValueError, match=f"over {MAX_CONFIG_BYTES >> 20} MiB"):
        read_yaml("/dev/zero")


# ---------------------------------------------------------------------------------- through the command line
@needs_dev_fd
def test_cli_reads_a_pipe_and_names_its_row(syn, tmp_path):
    read_end, write_end = os.pipe()
    os.write(write_end, b"train:\n  epochs: 1:00\n")
    os.close(write_end)
    try:
        result = run_cli("train", syn, "--objective", "sft", "--config", f"/dev/fd/{read_end}", "--out", tmp_path / "r")
    finally:
        os.close(read_end)
    one_line_error(result, f"/dev/fd/{read_end}, row 2", "train.epochs: 1:00 is read as 60", "write 60")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,needles", [
    (["--set", "train.epochs=1_0"], ["--set 'train.epochs=1_0'", "write 10"]),
    (["--set", "train.seed=99999999999999999999999"], ["train.seed", "[0, 4294967295]"]),
    (["--config", "{dup}"], ["dup.yaml, row 3", "duplicate key 'train' (first at row 1)"]),
    (["--config", "{folder}"], ["is a folder, not a config file"]),
])
def test_cli_one_line_errors(syn, tmp_path, args, needles):
    (tmp_path / "dup.yaml").write_text("train:\n  epochs: 1\ntrain:\n  epochs: 2\n")
    (tmp_path / "folder").mkdir()
    args = [a.format(dup=tmp_path / "dup.yaml", folder=tmp_path / "folder") for a in args]
    one_line_error(run_cli("train", syn, "--out", tmp_path / "r", *args), *needles)
    assert not (tmp_path / "r").exists()


def test_exponent_floats_are_numbers_in_files_too(tmp_path):
    """YAML 1.1 reads `1e-3` (no dot) as text; a config file, like --set, reads it as the number people mean."""
    from bearrec.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 1.5e-2\n")
    config = load_config(path)
    assert config.train.lr == 1e-3 and config.train.weight_decay == 0.015
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3
