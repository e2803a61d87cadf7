"""The end of bench_gpu.py: the summary of parameter counts, agreement checks, profiles and
errors, and the final table of ratios against the issue's targets; merging result files.
"""

from __future__ import annotations

import json

import harness as H

# The final table: the targets (ratio >= target, against the peer's best mode).
ROWS = [
    H.Row("C1 train step, b256", "C1", "train", "img_per_s", "img/s", True, 1.5, ">=1.5x"),
    H.Row("C1 train TFLOP/s", "C1", "train", "tflops", "TFLOP/s"),
    H.Row("C1 train peak memory", "C1", "train", "peak_mem_gib", "GiB", False, 1.0, "<=peer"),
    H.Row("C1 train peak reserved", "C1", "train", "peak_reserved_gib", "GiB", False),
    H.Row("C1 forward, b256", "C1", "fwd", "img_per_s", "img/s", True, 1.3, ">=1.3x"),
    H.Row("C2 train step, b32", "C2", "train", "img_per_s", "img/s", True, 1.3, ">=1.3x"),
    H.Row("C2 train TFLOP/s", "C2", "train", "tflops", "TFLOP/s"),
    H.Row("C2 train peak memory", "C2", "train", "peak_mem_gib", "GiB", False, 1.0, "<=peer"),
    H.Row("C2 train peak reserved", "C2", "train", "peak_reserved_gib", "GiB", False),
    H.Row("C2 forward, b16", "C2", "fwd", "img_per_s", "img/s", True, 1.3, ">=1.3x"),
    H.Row("C3 encode, b32", "C3", "encode", "img_per_s", "img/s"),
    H.Row("C3 decode, b32", "C3", "decode", "img_per_s", "img/s", True, 1.2, ">=1.2x"),
    H.Row("E1 64 images end to end", "E1", "gen", "img_per_s", "img/s", True, 1.5, ">=1.5x"),
    H.Row("E1 UNet loop", "E1", "gen", "unet_it_s", "it/s"),
    H.Row("E2 1 image, 25 steps + decode", "E2", "gen", "s_per_image", "s", False, 1.3, ">=1.3x"),
    H.Row("E2 UNet loop", "E2", "gen", "unet_it_s", "it/s"),
]


def print_summary(rec: H.Recorder) -> None:
    for config, info in rec.data["configs"].items():
        models = info.get("models", {})
        if models:
            print(f"{config}: params diffusers {models.get('params_peer', 0):,} / ldmkit "
                  f"{models.get('params_ldmkit', 0):,}; same weights {models.get('same_weights')}"
                  + (f" ({models.get('why')})" if models.get("why") else "")
                  + (f"; preset differs: {models['preset_diff']}" if models.get("preset_diff") else ""))
        for key, value in info.items():
            if key.startswith("agreement_") and isinstance(value, dict):
                parts = [f"{k} max|diff|/std {v['max_abs_diff_rel_std']:.2e}" for k, v in value.items()
                         if isinstance(v, dict)]
                print(f"  {key[10:]}: {'; '.join(parts)} -> {'OK' if value.get('agree') else 'DIFFERENT'}")
    for r in rec.data["records"]:
        if "images_vs_peer" in r:
            a = r["images_vs_peer"]
            print(f"  {r['config']} [{r['side']}] images vs peer: max|diff|/std {a['max_abs_diff_rel_std']:.2e}, "
                  f"relL2 {a['rel_l2']:.2e}")
        if r.get("graph_breaks"):
            print(f"  {r['config']}.{r['measure']} [{r['side']}] graph breaks: {r['graph_breaks']}")
        if r.get("syncs_in_loop") is not None:
            print(f"  {r['config']} [{r['side']}] host-device syncs in the sampling loop: {r['syncs_in_loop']}")
    for r in rec.data["records"]:
        if r.get("profile_top"):
            print(f"  profile {r['config']}.{r['measure']} [{r['side']}]: " + "; ".join(
                f"{p['name'][:48]} {p['ms_per_iter']:.2f}ms ({p['share']:.0%})" for p in r["profile_top"][:6]))
        if r.get("profile_categories"):
            total = r["profile_gpu_ms"]
            kinds = "; ".join(f"{k} {ms:.1f} ms ({ms / total:.0%})" for k, ms in r["profile_categories"].items())
            print(f"  GPU time per call by kernel kind {r['config']}.{r['measure']} [{r['side']}] "
                  f"({total:.1f} ms): {kinds}")
    for e in rec.data["errors"]:
        print(f"ERROR {e['config']}.{e['measure']} [{e['side']}]: {e['error'][:300]}")
    meta = rec.data["meta"]
    print(f"\n{meta.get('gpu', meta.get('device'))}, torch {meta.get('torch')}, diffusers "
          f"{meta.get('diffusers')}, {meta.get('date')}")
    print(H.render_table(rec, ROWS), flush=True)


def merge_tables(paths: list[str], out: str | None) -> H.Recorder:
    rec = H.Recorder(out, {})
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        rec.data["meta"] = rec.data["meta"] or data["meta"]
        rec.data.setdefault("runs", []).append({"file": path, "meta": data["meta"]})
        for config, info in data["configs"].items():
            rec.data["configs"].setdefault(config, {}).update(info)
        rec.data["records"].extend(data["records"])
        rec.data["errors"].extend(data["errors"])
    rec.save()
    return rec
