"""benchmarks/bench_gpu.py --smoke: every benchmark code path on tiny models on the CPU.

Not a timing test (numbers go in benchmarks, not in tests): it checks that the script runs end
to end, records every measurement, and that ldmkit and diffusers compute the same function
with the same weights (UNet, VAE, and the whole CFG + DPM-Solver++(2M) + decode loop).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from script_module import load_script

pytest.importorskip("diffusers")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _bench_module():
    return load_script(BENCH)  # bench_gpu.py puts its own folder first to import its helpers


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


def test_compile_arguments_follow_the_product_paths():
    """ldmkit's training steps compile as `ldm train` does (NCHW modules, inductor's layout
    optimisation forced on, the mode's own options kept); the peer and inference keep the mode."""
    bench = _bench_module()
    args = bench.parse_args([])
    train = bench.compile_kwargs(args, "reduce-overhead", "ldmkit", training=True)
    assert "mode" not in train  # torch.compile refuses a mode beside options
    assert train["options"]["force_layout_optimization"] is True
    assert train["options"]["triton.cudagraphs"] is True  # what mode="reduce-overhead" sets
    assert bench.compile_kwargs(args, "default", "ldmkit") == {"dynamic": False}
    assert bench.compile_kwargs(args, "reduce-overhead", "peer-graphs", training=True) == {
        "dynamic": False, "mode": "reduce-overhead"}
    tuned = bench.parse_args(["--ldm-layout-opt", "none", "--ldm-inductor", "coordinate_descent_tuning=true",
                              "--ldm-inductor", "triton.max_tiles=3"])
    options = bench.compile_kwargs(tuned, "default", "ldmkit", training=True)["options"]
    assert options == {"coordinate_descent_tuning": True, "triton.max_tiles": 3}
    assert bench.compile_kwargs(tuned, "default", "peer-compiled", training=True) == {"dynamic": False}
    peer_tuned = bench.parse_args(["--peer-inductor", "combo_kernels=true"])
    peer = bench.compile_kwargs(peer_tuned, "reduce-overhead", "peer-graphs")
    assert peer["options"]["combo_kernels"] is True and peer["options"]["triton.cudagraphs"] is True
    assert "force_layout_optimization" not in peer["options"]  # ldmkit's own switch stays ldmkit's
    assert "options" not in bench.compile_kwargs(peer_tuned, "default", "ldmkit")


def test_kernel_kinds_from_names():
    kind = _bench_module().kernel_profile.kernel_category
    assert kind("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "convolution"
    assert kind("nvjet_sm90_tst_64x64_64x13_2x1_v_bz_splitK_NTT") == "matmul"
    assert kind("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16") == "attention"
    assert kind("triton_red_fused__to_copy_native_group_norm_silu_3").startswith("triton")
    assert kind("_grad_sums_kernel") == kind("_apply_kernel") == "triton (ldmkit GroupNorm kernels)"
    assert kind("_geglu_backward_kernel") == "triton (ldmkit GEGLU kernel)"
    assert kind("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert kind("void at::native::elementwise_kernel<128, 4>") == "other"


def test_a_long_kernel_name_keeps_its_end():
    # v6/v7 profiles cut PyTorch's copy kernels before the functor that says what they copy.
    tail = _bench_module().kernel_profile.kernel_name_tail
    name = "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<" + "x" * 60 \
        + "at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}>"
    assert tail(name)["name_tail"].endswith("direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}>")
    assert len(tail(name)["name_tail"]) == 160
    assert tail("triton_poi_fused_add_0") == {}


def test_profile_records_time_by_kernel_kind(tmp_path):
    data = _run(tmp_path, "--only", "C1.fwd", "--sides", "ldmkit", "--profile")
    (record,) = data["records"]
    kinds = record["profile_categories"]
    assert kinds and record["profile_top"]
    assert sum(kinds.values()) == pytest.approx(record["profile_gpu_ms"])


def test_forwards_check_the_compiled_output_and_profile_top_limits_the_rows(tmp_path):
    data = _run(tmp_path, "--only", "C1.fwd", "--sides", "ldmkit", "--profile", "--profile-top", "2")
    (record,) = data["records"]
    assert len(record["profile_top"]) == 2
    assert record["compiled_vs_eager_rel_l2"] < 1e-3  # fp32 on the CPU: the same function


def test_attention_benchmark_shapes_are_the_unets():
    path = BENCH.with_name("attention_backends.py")
    module = load_script(path)
    rows = {name: (b, h, n, m, d) for name, b, h, n, m, d in module.shapes(256, 128, 32, 2)}
    assert rows["C2 self 64x64"] == (32, 8, 4096, 4096, 40)  # SD 1.x: 320 channels, 8 heads
    assert rows["E2 cross 32x32"] == (2, 8, 1024, 77, 80)  # 640 channels, 77 text tokens
    assert rows["C1 self 16x16"] == (256, 4, 256, 256, 64)  # C1: 256 channels, 64 per head
    # QK^T and PV are 2*n*m*d FLOPs each per head (n*m*d multiply-adds); the backward does 2.5x the forward
    assert module.attention_flops(1, 1, 3, 5, 7, backward=False) == 4 * 3 * 5 * 7
    assert module.attention_flops(2, 3, 3, 5, 7, backward=True) == 3.5 * 4 * 6 * 3 * 5 * 7


def test_e2_computes_the_context_keys_once_per_generation(tmp_path, monkeypatch):
    """ldmkit's E2 side keeps the cross-attentions' keys and values of the prompt context per
    generation (as `ldm generate`'s CompiledUNet), and still draws the peer's images."""
    from ldmkit.nn import context_kv

    computed = []
    real = context_kv.refresh
    monkeypatch.setattr(context_kv, "refresh", lambda m, c: computed.append(real(m, c)) or computed[-1])
    data = _run(tmp_path, "--only", "E2", "--sides", "peer-eager,ldmkit")
    (ldm,) = [r for r in data["records"] if r["side"] == "ldmkit"]
    assert ldm["images_vs_peer"]["rel_l2"] < 1e-4
    steps = ldm["steps"]
    assert computed and computed.count(True) * steps <= len(computed)  # at most once per generation


def test_split_k_convolution_of_the_small_conv_benchmark():
    """benchmarks/conv_splitk.py (the split-K experiment of NOTES v11) in Triton's interpreter."""
    import torch
    import torch.nn.functional as F

    pytest.importorskip("triton")
    sys.path.insert(0, str(BENCH.parent))
    try:
        from conv_splitk import conv2d_splitk_partials, gemm_weight
    finally:
        sys.path.remove(str(BENCH.parent))
    g = torch.Generator().manual_seed(0)
    for kernel, split in [(3, 3), (1, 2)]:
        x = torch.randn(2, 32, 5, 7, generator=g).contiguous(memory_format=torch.channels_last)
        w = torch.randn(24, 32, kernel, kernel, generator=g)
        parts = conv2d_splitk_partials(x, gemm_weight(w), kernel, split, block_m=16, block_n=16, block_k=16)
        assert parts.shape == (split, 2 * 5 * 7, 24)
        out = parts.sum(0).view(2, 5, 7, 24).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, F.conv2d(x, w, padding=kernel // 2), rtol=1e-4, atol=1e-4)


def test_transformer_block_probe_smoke(tmp_path):
    """benchmarks/transformer_block_probe.py --smoke: every variant (each in its own process,
    with its switches) writes its record, ldmkit's and diffusers' blocks the same size."""
    import subprocess

    probe = BENCH.parent / "transformer_block_probe.py"
    subprocess.run([sys.executable, str(probe), "--smoke", "--out-dir", str(tmp_path),
                    "--only", "ldmkit-neither,peer"], check=True, capture_output=True)
    ldm, peer = (json.loads((tmp_path / f"{v}.json").read_text()) for v in ("ldmkit-neither", "peer"))
    assert ldm["env"] == {"LDMKIT_GEGLU_KERNEL": "0", "LDMKIT_ATTENTION_OP": "0"}
    assert ldm["params"] == peer["params"] > 0


def test_step_graph_check_and_cache_spread_smoke(tmp_path):
    """benchmarks/step_graph_check.py and cache_spread.py --smoke (CPU, eager): each writes its
    rows; the two trainers of the check, built from one seed, take the same steps."""
    import subprocess

    subprocess.run([sys.executable, str(BENCH.parent / "step_graph_check.py"), "--smoke", "--repeat-plain",
                    "--out", str(tmp_path / "check.json")], check=True, capture_output=True)
    plain, graphed, again = json.loads((tmp_path / "check.json").read_text())["rows"]
    assert (plain["step_graph"], graphed["step_graph"], again["step_graph"]) == (False, True, False)
    assert len(plain["losses"]) == 3 and again["repeat"]
    assert graphed["losses"] == plain["losses"] == again["losses"] and again["update_rel_l2"] == 0.0
    subprocess.run([sys.executable, str(BENCH.parent / "step_graph_check.py"), "--smoke", "--stage", "vae",
                    "--out", str(tmp_path / "vae.json")], check=True, capture_output=True)
    plain, graphed = json.loads((tmp_path / "vae.json").read_text())["rows"]
    assert plain["stage"] == graphed["stage"] == "vae" and graphed["losses"] == plain["losses"]
    assert len(set(plain["losses"])) == 3 and graphed["update_rel_l2"] == 0.0

    # the tiny preset trains in fp32: the emoji preset's bf16 took ~4x as long on a CPU without bf16 arithmetic
    # one process (each is a train_speed.py run): the variant whose environment differs from plain's
    subprocess.run([sys.executable, str(BENCH.parent / "cache_spread.py"), "--smoke", "--preset", "tiny",
                    "--order", "no-aot",
                    "--out", str(tmp_path / "spread.json")], check=True, capture_output=True)
    rows = json.loads((tmp_path / "spread.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["no-aot"] and rows[0]["ms_per_step"] > 0
    assert rows[0]["env"] == {"TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}


def test_step_graph_check_under_torchrun_smoke(tmp_path):
    """step_graph_check.py under torchrun (2 gloo processes on the CPU), the VAE stage with its GAN:
    rank 0 writes the rows, and the ranks' autoencoders and discriminators agree."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    str(BENCH.parent / "step_graph_check.py"), "--smoke", "--stage", "vae", "--gan",
                    "--out", str(tmp_path / "gan.json")], check=True, capture_output=True, env=env)
    rows = json.loads((tmp_path / "gan.json").read_text())["rows"]
    assert [(r["ranks"], r["ranks_agree"], r["captured"]) for r in rows] == [(2, True, False)] * 2
    assert len(set(rows[0]["losses"])) == 3


def test_exit_probe_smoke():
    """benchmarks/exit_probe.py --smoke (the tiny preset on the CPU), ending as `ldm` does: its
    stamps in order, after the command's last line."""
    import subprocess

    done = subprocess.run([sys.executable, str(BENCH.parent / "exit_probe.py"), "--ldm-exit", "--smoke"],
                          check=True, capture_output=True, text=True)
    stamps = [line.split()[1:-1] for line in done.stderr.splitlines() if line.startswith("exit_probe ")]
    assert stamps == [["start"], ["main", "returned"], ["finish"], ["first", "atexit", "handler"],
                      ["last", "atexit", "handler"]]
    assert done.stderr.index("diffusion stage done") < done.stderr.index("exit_probe main returned")


def test_decode_chunks_smoke(tmp_path):
    """benchmarks/decode_chunks.py --smoke (CPU, tiny VAEs, batch 2): every variant runs on both
    sides, and the decoder run a chunk at a time gives the whole batch's images (the same function)."""
    import subprocess

    subprocess.run([sys.executable, str(BENCH.parent / "decode_chunks.py"), "--smoke", "--variants", "4:32,2:1,1:1",
                    "--peer-variants", "4:32,1:1", "--out", str(tmp_path / "dc.json")], check=True, capture_output=True)
    rows = json.loads((tmp_path / "dc.json").read_text())["results"]
    assert [(r["side"], r["chunk"]) for r in rows] == [("ldmkit", 32), ("ldmkit", 1), ("ldmkit", 1),
                                                       ("peer", 32), ("peer", 1)]
    assert all("error" not in r and r["ms"] > 0 for r in rows), rows
    assert all(r["rel_l2_vs_first"] < 1e-5 for r in rows)
