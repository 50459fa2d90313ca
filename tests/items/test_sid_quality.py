"""The SID quality report: its numbers on a hand-made example, in dataset.json, and `bearrec sids report`."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bearrec.items.sid_quality import level_quality, sid_quality

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_report_counts_shared_items_utilisation_entropy_and_the_largest_code():
    codes = np.array([[0, 1], [0, 1], [0, 2], [1, 1], [0, 1]])  # items 0, 1, 4 share (0, 1)
    report = sid_quality(codes, codebook_size=4)
    assert report["items_sharing_codes"] == 3 and report["shared_share"] == pytest.approx(0.6)
    assert report["largest_group"] == 3 and report["distinct_codes"] == 3 and report["levels"] == 2
    first = report["per_level"][0]  # codes 0 (4 items) and 1 (1 item) of 4
    assert first["codes_used"] == 2 and first["utilisation"] == 0.5 and first["max_items_per_code"] == 4
    entropy = -(0.8 * math.log2(0.8) + 0.2 * math.log2(0.2))
    assert first["entropy_bits"] == pytest.approx(entropy) and first["normalised_entropy"] == pytest.approx(entropy / 2)
    uniform = level_quality(np.arange(8) % 4, 4)
    assert uniform["normalised_entropy"] == pytest.approx(1.0) and uniform["utilisation"] == 1.0
    assert level_quality(np.array([2, 2]))["codebook_size"] == 3  # unknown K: largest code + 1
    assert level_quality(np.array([], dtype=np.int64))["codes_used"] == 0  # no items: no code, no error
    assert sid_quality(np.array([[0], [1]]))["items_sharing_codes"] == 0


def test_attach_semantic_ids_keeps_the_report_in_dataset_json(tmp_path):
    from bearrec.data.synthetic import SyntheticConfig, generate_synthetic
    from bearrec.items.semantic_ids import attach_semantic_ids

    ds = generate_synthetic(SyntheticConfig(num_users=5, num_categories=2, items_per_category=4))  # 8 items
    codes = np.array([[i % 3, 0] for i in range(len(ds.items))])
    attach_semantic_ids(ds, codes, {"source": "test"}, codebook_size=4).save(tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())["semantic_ids"]
    assert meta["quality"] == json.loads(json.dumps(sid_quality(codes, 4)))
    assert meta["quality"]["items_sharing_codes"] == meta["items_sharing_codes"] == 8


def _codes_file(path, rows):
    path.write_text("item_id,codes\n" + "".join(f'{i},"{json.dumps(c)}"\n' for i, c in rows))
    return path


def test_sids_report_command_table_json_and_errors(tmp_path):
    from bearrec.cli import app

    path = _codes_file(tmp_path / "sid.csv", [("a", [0, 1]), ("b", [0, 1]), ("c", [3, 2])])
    runner = CliRunner()
    table = runner.invoke(app, ["sids", "report", str(path), "--codebook-size", "4"])
    assert table.exit_code == 0, table.output
    assert "2 items (66.67 %) share all codes" in table.output and "50.0 %" in table.output
    as_json = runner.invoke(app, ["sids", "report", str(path), "--json"])
    report = json.loads(as_json.output)
    assert report["items_sharing_codes"] == 2 and report["per_level"][0]["codebook_size"] == 4  # K = 3 + 1
    bad = _codes_file(tmp_path / "bad.csv", [("a", [0, 1]), ("b", [0])])
    result = runner.invoke(app, ["sids", "report", str(bad)])
    assert result.exit_code == 2 and "row 3, field 'codes'" in result.output
    small = runner.invoke(app, ["sids", "report", str(path), "--codebook-size", "2"])
    assert small.exit_code == 2 and "holds code 3" in small.output
    one = runner.invoke(app, ["sids", "report", str(path), "--codebook-size", "1"])
    assert one.exit_code == 2 and "--codebook-size must be at least 2, got 1" in one.output


@pytest.mark.skipif(not (SHARED / "office" / "semantic_ids.csv").is_file(), reason=f"real data not found at {SHARED}")
def test_report_on_apao_office_codes():
    """APAO's released Office codes: 5 pairs share all four codes (../shared/data/README.md)."""
    from bearrec.items.semantic_ids import read_code_rows

    report = sid_quality(np.array(list(read_code_rows(SHARED / "office" / "semantic_ids.csv").values())), 256)
    assert report["items_sharing_codes"] == 10 and report["largest_group"] == 2
    assert report["per_level"][0]["codes_used"] == 256
