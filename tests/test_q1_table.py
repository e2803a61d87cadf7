"""benchmarks/quality/q1_table.py: the curve check that decides Q1 (distance at equal accuracy)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality" / "q1_table.py"
spec = importlib.util.spec_from_file_location("q1_table_under_test", SCRIPT)
q1_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(q1_table)


def _result(cfg, fd, acc, precision=0.8, recall=0.7):
    values = {"FD_classifier": fd, "KID_classifier": 0.001, "precision": precision, "recall": recall,
              "class_accuracy": acc}
    return {"cfg": cfg, "metrics": {k: {"model": v, "baseline": 0.0} for k, v in values.items()}}


CURVE = [{"class_accuracy": 0.8, "FD_classifier": 0.6}, {"class_accuracy": 0.9, "FD_classifier": 0.3},
         {"class_accuracy": 1.0, "FD_classifier": 0.5}]


@pytest.mark.parametrize("accuracy, expected", [(0.85, 0.45), (0.9, 0.3), (0.95, 0.4), (1.0, 0.5), (0.8, 0.6)])
def test_distance_at_interpolates_between_the_bracketing_points(accuracy, expected):
    assert q1_table.distance_at(list(reversed(CURVE)), accuracy) == pytest.approx(expected)


def test_distance_outside_the_curve_cannot_be_read():
    assert q1_table.distance_at(CURVE[:2], 0.95) is None
    assert q1_table.distance_at(CURVE, 0.7) is None


def test_points_reads_one_row_per_scale():
    rows = q1_table.points({"results": [_result(1.0, 0.3, 0.9), _result(2.0, 0.2, 0.98)]})
    assert [r["cfg"] for r in rows] == [1.0, 2.0] and rows[1]["FD_classifier"] == 0.2


def test_the_script_says_whether_the_curve_is_below_the_peers(tmp_path):
    ours = tmp_path / "ours" / "report_ldmkit.json"
    ours.parent.mkdir()
    ours.write_text(json.dumps({"results": [_result(1.0, 0.4, 0.85), _result(2.0, 0.2, 0.95)]}))
    peers = []
    for cfg, fd, acc in [(1.0, 0.5, 0.88), (2.0, 0.25, 0.94)]:  # ours at those accuracies: 0.28, 0.22
        path = tmp_path / f"report_peer_cfg{cfg}.json"
        path.write_text(json.dumps({"results": [_result(None, fd, acc)]}))
        peers.append(str(path))
    run = lambda: subprocess.run([sys.executable, str(SCRIPT), str(ours), "--peer", *peers],  # noqa: E731
                                 capture_output=True, text=True, check=True).stdout
    assert "curve below the peer's everywhere: True" in run()
    Path(peers[1]).write_text(json.dumps({"results": [_result(None, 0.21, 0.94)]}))  # now ours (0.22) is above
    out = run()
    assert "curve below the peer's everywhere: False" in out and "peer CFG 2.0" in out
