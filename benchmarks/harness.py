"""Measuring tools for the GPU benchmark: timing, FLOP counting, memory, agreement checks,
the results record and the final table. Nothing here knows about diffusers or ldmkit.

Protocol (docs: /work/shared/BENCHMARKS.md): warm up first (compilation and CUDA-graph
recording stay out of the numbers), then the median of >= 10 timed iterations, each between
two CUDA events; FLOPs from `torch.utils.flop_counter.FlopCounterMode` on the eager model.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

# bf16 dense matmul ceiling of one H100 SXM measured in this workplace (BENCHMARKS.md).
PEAK_TFLOPS = 790.0
GIB = 1024**3


# ----------------------------------------------------------------------------- device setup


def setup_backends(device: torch.device, cudnn_benchmark_limit: int | None = None) -> None:
    """TF32 on and cuDNN autotuning, as the protocol allows (both sides share them).
    `cudnn_benchmark_limit`: how many algorithms cuDNN times per convolution (0 = all; None
    leaves PyTorch's default, 10)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if cudnn_benchmark_limit is not None:
            torch.backends.cudnn.benchmark_limit = cudnn_benchmark_limit


@contextlib.contextmanager
def exact_fp32():
    """TF32 off for the duration: the agreement check in fp32 must not see TF32 rounding."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
           torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[:2]
        torch.set_float32_matmul_precision(old[2])


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast context (a no-op context when disabled, e.g. in --smoke)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    """Drop compiled graphs (and their CUDA-graph pools) and cached blocks between runs."""
    if not torch.cuda.is_available():
        return  # CPU (--smoke): nothing compiled, and a full gc.collect costs ~0.2 s a call
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


def take_graph_breaks() -> dict[str, int]:
    """torch.compile graph breaks since the last call (reason -> count), then forget them."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # pragma: no cover
        return {}
    breaks = {str(k)[:160]: int(v) for k, v in counters["graph_break"].items()}
    counters.clear()
    return breaks


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- measuring


@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    iters: int
    first_call_s: float  # the first warm-up call: compilation (and autotuning) for compiled runs
    peak_mem_gib: float | None = None  # allocated, warm-up (compile, graph capture) and timed calls
    peak_mem_timed_gib: float | None = None  # allocated, timed calls only (misses CUDA-graph pools)
    peak_reserved_gib: float | None = None  # the caching allocator's reserve, whole run
    times_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def time_fn(fn: Callable[[], Any], device: torch.device, *, warmup: int = 3, iters: int = 10,
            track_memory: bool = False) -> Timing:
    """Median wall time of `fn()` on the device.

    On CUDA each iteration sits between two events recorded on the current stream and the
    host does not wait between iterations, so launch overhead counts only where the GPU
    would otherwise idle (which is what a user sees). The peak memory, when asked for, covers
    the warm-up too: a CUDA graph's memory pool is allocated while it is captured and replays
    allocate nothing, so a peak of the timed calls alone would leave the pool out.
    """
    tracking = track_memory and device.type == "cuda"
    if tracking:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        fn()
    synchronize(device)
    warm_alloc = warm_reserved = 0.0
    if tracking:
        warm_alloc = torch.cuda.max_memory_allocated(device) / GIB
        warm_reserved = torch.cuda.max_memory_reserved(device) / GIB
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    memory: dict[str, float] = {}
    if tracking:
        timed = torch.cuda.max_memory_allocated(device) / GIB
        memory = dict(peak_mem_gib=max(warm_alloc, timed), peak_mem_timed_gib=timed,
                      peak_reserved_gib=max(warm_reserved, torch.cuda.max_memory_reserved(device) / GIB))
    return Timing(median_s=statistics.median(times), min_s=min(times), max_s=max(times),
                  iters=iters, first_call_s=first, **memory,
                  times_ms=[round(t * 1e3, 4) for t in times])


def time_each_ms(fn: Callable[[], Any], iters: int, warmup: int) -> float:
    """Median CUDA-event time of `fn()` in ms, the host waiting for each call: a kernel
    microbenchmark's time per call, with no overlap between calls (unlike `time_fn`)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` as PyTorch's FlopCounterMode counts them (matmul, conv,
    SDPA, forward and backward; elementwise work and the optimizer are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@torch.no_grad()
def agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """max |a - b| relative to the reference's std (and the relative L2 error)."""
    a, b = reference.detach().double(), other.detach().double()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a - b).abs()
    std = a.std().item() or 1.0
    return {"max_abs_diff": diff.max().item(), "ref_std": std,
            "max_abs_diff_rel_std": diff.max().item() / std,
            "rel_l2": ((a - b).norm() / a.norm().clamp_min(1e-30)).item(),
            "finite": bool(torch.isfinite(b).all().item())}


# ----------------------------------------------------------------------------- the record


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__,
        "device": str(device), "hostname": platform.node(), "argv": sys.argv,
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except Exception as err:  # pragma: no cover
        info["diffusers"] = f"unavailable: {err}"
    try:
        import ldmkit

        info["ldmkit"] = ldmkit.__version__
    except Exception as err:  # pragma: no cover
        info["ldmkit"] = f"unavailable: {err}"
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    # where ldmkit's GroupNorm + SiLU Triton kernels run ("auto", "train", "all" or "0") and
    # how its UpSample computes (set by bench_gpu.py --ldm-upsample before this runs)
    import ldmkit.nn.resample
    from ldmkit.nn.norm_channels_last import ENABLED as CHANNELS_LAST_GROUPNORM
    from ldmkit.nn.norm_silu import FUSED_MODE

    info["ldmkit_fused_groupnorm"] = FUSED_MODE
    info["ldmkit_upsample"] = ldmkit.nn.resample.UPSAMPLE_FORM
    info["ldmkit_channels_last_groupnorm"] = CHANNELS_LAST_GROUPNORM
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), gpu_mem_gib=props.total_memory / GIB,
                    sm_count=props.multi_processor_count)
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, text=True,
                                            capture_output=True, timeout=5).stdout.strip() or None
    except Exception:
        info["git_commit"] = None
    return info


class Recorder:
    """Collects every raw number; rewrites the JSON file after each record, so a command
    killed at its time limit still leaves what it measured."""

    def __init__(self, out_path: str | None, meta: dict[str, Any]):
        self.out_path = out_path
        self.data: dict[str, Any] = {"meta": meta, "configs": {}, "records": [], "errors": []}
        self.t_start = time.perf_counter()

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t_start:7.1f}s] {msg}", flush=True)

    def info(self, config: str, key: str, value: Any) -> None:
        self.data["configs"].setdefault(config, {})[key] = value
        self.save()

    def add(self, config: str, measure: str, side: str, **values: Any) -> dict[str, Any]:
        rec = {"config": config, "measure": measure, "side": side, **values}
        self.data["records"].append(rec)
        shown = {k: v for k, v in values.items() if k not in ("times_ms", "profile_top", "profile_categories")}
        self.log(f"{config}.{measure} [{side}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
        self.save()
        return rec

    def error(self, config: str, measure: str, side: str, err: BaseException) -> None:
        tb = traceback.format_exc(limit=8)
        self.data["errors"].append({"config": config, "measure": measure, "side": side,
                                    "error": f"{type(err).__name__}: {err}"[:2000], "traceback": tb})
        self.data["records"].append({"config": config, "measure": measure, "side": side,
                                     "error": f"{type(err).__name__}: {str(err)[:300]}"})
        self.log(f"FAILED {config}.{measure} [{side}]: {type(err).__name__}: {str(err)[:500]}")
        print(tb, file=sys.stderr, flush=True)
        self.save()

    def get(self, config: str, measure: str, side: str) -> dict[str, Any] | None:
        for rec in reversed(self.data["records"]):
            if (rec["config"], rec["measure"], rec["side"]) == (config, measure, side):
                return rec
        return None

    def save(self) -> None:
        if not self.out_path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.out_path)), exist_ok=True)
        tmp = self.out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.out_path)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ----------------------------------------------------------------------------- the table


@dataclass
class Row:
    """One line of the final table. `key` picks the number out of each record;
    `higher_better` says which way the ratio points; `target` is the issue's goal."""

    label: str
    config: str
    measure: str
    key: str
    unit: str
    higher_better: bool = True
    target: float | None = None  # ratio the issue asks for (>= target), None: report only
    target_text: str = ""
    peer_best: tuple[str, ...] = ("peer-eager", "peer-compiled", "peer-graphs")  # ratio against the best


PEER_COLUMNS = ("peer-eager", "peer-compiled", "peer-graphs")
LDM_COLUMNS = ("ldmkit-eager", "ldmkit")


def render_table(rec: Recorder, rows: list[Row]) -> str:
    header = ["measurement", "unit", "peer eager", "peer compiled", "peer graphs",
              "ldmkit eager", "ldmkit", "ratio", "target", "met"]
    lines = []
    for row in rows:
        cells = {}
        any_value = False
        for side in PEER_COLUMNS + LDM_COLUMNS:
            r = rec.get(row.config, row.measure, side)
            if r is None:
                cells[side] = "-"
            elif "error" in r:
                cells[side] = "ERR"
                any_value = True
            elif r.get(row.key) is None:
                cells[side] = "-"
            else:
                cells[side] = _num(r[row.key])
                any_value = True
        if not any_value:
            continue
        ratio, met = _ratio(rec, row)
        lines.append([row.label, row.unit, *(cells[s] for s in PEER_COLUMNS + LDM_COLUMNS),
                      "-" if ratio is None else f"{ratio:.2f}x", row.target_text or "-",
                      "" if met is None else ("yes" if met else "NO")])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)] if lines else []
    out = []
    if lines:
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
        out.append(fmt.format(*header))
        out.append("  ".join("-" * w for w in widths))
        out.extend(fmt.format(*line) for line in lines)
    out.append("ratio = ldmkit against the peer's best mode (the best of its eager, compiled and "
               "CUDA-graph columns), > 1 = ldmkit better; time and memory rows: best peer / ldmkit.")
    return "\n".join(out)


def _ratio(rec: Recorder, row: Row) -> tuple[float | None, bool | None]:
    mine = rec.get(row.config, row.measure, "ldmkit")
    if mine is None or mine.get(row.key) is None:
        return None, None
    peers = [rec.get(row.config, row.measure, s) for s in row.peer_best]
    vals = [p[row.key] for p in peers if p is not None and p.get(row.key) is not None]
    if not vals:
        return None, None
    best = max(vals) if row.higher_better else min(vals)
    if mine[row.key] == 0 or best == 0:
        return None, None
    ratio = mine[row.key] / best if row.higher_better else best / mine[row.key]
    met = None if row.target is None else ratio >= row.target
    return ratio, met


def _num(x: float) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        return str(x)
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"
