"""benchmarks/bench_gpu.py --smoke: every benchmark code path on tiny models on the CPU.

Not a timing test (numbers go in benchmarks, not in tests): it checks that the script runs end
to end, records every measurement, and that ldmkit and diffusers compute the same function
with the same weights (UNet, VAE, and the whole CFG + DPM-Solver++(2M) + decode loop).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _bench_module():
    saved = list(sys.path)  # bench_gpu.py puts its own folder first to import its helpers
    try:
        spec = importlib.util.spec_from_file_location("bench_gpu_under_test", BENCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path[:] = saved


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    _bench_module().main(["--smoke", "--out", str(out), *args])
    return json.loads(out.read_text())


@pytest.mark.slow
def test_smoke_runs_every_config_and_sides_agree(tmp_path, capsys):
    data = _run(tmp_path, "--sides", "peer-eager,peer-graphs,ldmkit")
    assert data["errors"] == [], data["errors"]
    done = {(r["config"], r["measure"], r["side"]) for r in data["records"]}
    for config, measure in [("C1", "train"), ("C1", "fwd"), ("C2", "train"), ("C2", "fwd"),
                            ("C3", "encode"), ("C3", "decode"), ("E1", "gen"), ("E2", "gen")]:
        assert {(config, measure, "peer-eager"), (config, measure, "ldmkit")} <= done
    assert ("E2", "gen", "peer-graphs") in done
    for r in data["records"]:
        assert r["median_s"] > 0 and r["img_per_s"] > 0
        if r["measure"] == "gen" and r["side"] == "ldmkit":
            # same weights, same noise, same schedule and solver: the same images (fp32)
            assert r["images_vs_peer"]["rel_l2"] < 1e-4
        if r["measure"] in ("train", "fwd"):
            assert r["gflop_per_iter"] > 0
    for config in ("C1", "C2", "C3", "E1", "E2"):
        models = data["configs"][config]["models"]
        assert models["same_weights"] and models["params_peer"] == models["params_ldmkit"]
    for config, name in [("C1", "unet"), ("C2", "unet"), ("C3", "encode"), ("C3", "decode")]:
        assert data["configs"][config][f"agreement_{name}"]["agree"]
    table = capsys.readouterr().out.rstrip().splitlines()
    assert any(line.startswith("E2 1 image") for line in table[-16:])  # the table comes last


def test_smoke_bf16_weights_generation(tmp_path):
    data = _run(tmp_path, "--smoke-bf16", "--only", "E2", "--sides", "peer-eager,ldmkit")
    assert data["errors"] == [], [e["error"] for e in data["errors"]]
    assert {r["side"] for r in data["records"]} == {"peer-eager", "ldmkit"}
