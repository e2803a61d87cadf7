"""Print Q1's table from `ldm eval` reports, and check BENCHMARKS.md's curve condition.

    python benchmarks/quality/q1_table.py OUT/A-linear/report_ldmkit.json ... --peer OUT/peer/report_peer_cfg*.json

Each ldmkit report holds one result per guidance scale (and the VAE floor); each peer report
one scale. The curve check: for every peer point (class accuracy a, distance d), ldmkit's
distance at accuracy a, read off its curve by linear interpolation between its two points
that bracket a, must be below d. A peer point outside the accuracy range ldmkit's curve spans
cannot be checked and counts as not met.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ("FD_classifier", "KID_classifier", "precision", "recall", "class_accuracy")


def points(report: dict) -> list[dict]:
    """One row per guidance scale: cfg and the model's value of each metric."""
    rows = []
    for result in report["results"]:
        metrics = result["metrics"]
        rows.append({"cfg": result.get("cfg"), **{m: metrics[m]["model"] for m in METRICS if m in metrics}})
    return rows


def distance_at(curve: list[dict], accuracy: float) -> float | None:
    """ldmkit's Frechet distance at `accuracy`, linear between the bracketing points (None outside)."""
    ordered = sorted(curve, key=lambda r: r["class_accuracy"])
    for lo, hi in zip(ordered, ordered[1:]):
        if lo["class_accuracy"] <= accuracy <= hi["class_accuracy"]:
            span = hi["class_accuracy"] - lo["class_accuracy"]
            w = 0.0 if span == 0 else (accuracy - lo["class_accuracy"]) / span
            return lo["FD_classifier"] + w * (hi["FD_classifier"] - lo["FD_classifier"])
    if ordered and ordered[-1]["class_accuracy"] == accuracy:
        return ordered[-1]["FD_classifier"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ldmkit", nargs="+", help="ldmkit report.json files (one per variant)")
    parser.add_argument("--peer", nargs="+", required=True, help="the peer's report files (one per scale)")
    args = parser.parse_args()
    peer = [row for path in args.peer for row in points(json.loads(Path(path).read_text()))]
    for row, path in zip(peer, args.peer):
        if row["cfg"] is None:  # reports of --samples carry no scale: read it off the file name
            row["cfg"] = float(Path(path).stem.rsplit("cfg", 1)[-1])
    peer.sort(key=lambda r: r["cfg"])
    header = f"{'side':<28} {'CFG':>4} {'FD':>7} {'KID':>8} {'prec':>6} {'recall':>6} {'acc':>6}"
    print(header)
    print("-" * len(header))

    def show(name: str, row: dict) -> None:
        print(f"{name:<28} {row['cfg']:>4} {row['FD_classifier']:>7.3f} {row['KID_classifier']:>8.5f} "
              f"{row['precision']:>6.3f} {row['recall']:>6.3f} {row['class_accuracy']:>6.3f}")

    for row in peer:
        show("peer", row)
    for path in args.ldmkit:
        report = json.loads(Path(path).read_text())
        name = Path(path).resolve().parent.name
        curve = points(report)
        for row in curve:
            show(name, row)
        floor = (report.get("vae") or {}).get("reconstruction_vs_real")
        if floor:
            print(f"{name + ' VAE floor':<28} {'-':>4} {floor['FD_classifier']:>7.3f} {floor['KID_classifier']:>8.5f} "
                  f"{floor['precision']:>6.3f} {floor['recall']:>6.3f}      -  (PSNR {report['vae']['psnr']:.2f} dB)")
        verdicts = []
        for p in peer:
            d = distance_at(curve, p["class_accuracy"])
            ok = d is not None and d < p["FD_classifier"]
            verdicts.append(ok)
            where = "outside ldmkit's range" if d is None else f"ldmkit {d:.3f}"
            print(f"  curve at peer CFG {p['cfg']} (acc {p['class_accuracy']:.3f}, FD {p['FD_classifier']:.3f}): "
                  f"{where} -> {'below' if ok else 'NOT below'}")
        best = {m: max(r[m] for r in curve) for m in ("precision", "recall")}
        peer_best = {m: max(r[m] for r in peer) for m in ("precision", "recall")}
        print(f"  {name}: curve below the peer's everywhere: {all(verdicts)}; best precision {best['precision']:.3f} "
              f"vs {peer_best['precision']:.3f}, best recall {best['recall']:.3f} vs {peer_best['recall']:.3f}")


if __name__ == "__main__":
    main()
