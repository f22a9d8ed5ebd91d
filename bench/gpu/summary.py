#!/usr/bin/env python3
"""Prints check.sh's closing table from the benchmark JSON files (missing ones are fine).

  summary.py AMPD_JSON TORCH_JSON [STATUS_LINE ...]
"""
import json
import os
import sys


def load(path):
    recs = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        recs.append(json.loads(line))
                    except ValueError:
                        pass
    return recs


def main() -> int:
    ampd = load(sys.argv[1] if len(sys.argv) > 1 else "")
    torch = load(sys.argv[2] if len(sys.argv) > 2 else "")
    status = sys.argv[3:]

    def by(recs, kind, key):
        return {r.get(key): r for r in recs if r.get("kind") == kind}

    a_mlp, t_mlp = by(ampd, "mlp", "precision"), by(torch, "mlp", "precision")
    a_peak, t_peak = by(ampd, "peak", "dtype"), by(torch, "peak", "dtype")
    dev = next((r["description"] for r in ampd + torch if r.get("kind") == "device"), "?")
    bf16_peak = a_peak.get("bf16", {}).get("tflops")

    print("=" * 96)
    print(f"ampd CUDA backend check on {dev}")
    for s in status:
        print("  " + s)
    peaks = []
    for name, recs in (("ampd/cuBLASLt", a_peak), ("torch", t_peak)):
        for dt in ("bf16", "f16", "f32"):
            if dt in recs:
                peaks.append(f"{name} {dt} {recs[dt]['tflops']:.0f}")
    if peaks:
        size = next(iter(a_peak.values() or t_peak.values()))["size"] if (a_peak or t_peak) else "?"
        print(f"  matmul peak at {size}^3 (TFLOP/s): " + ", ".join(peaks))
    shape = next(iter(a_mlp.values() or t_mlp.values()), None)
    if shape:
        print(f"  MLP: {shape['layers']} x Linear({shape['width']}, {shape['width']}) + GELU, "
              f"batch {shape['batch']}, softmax cross-entropy, AdamW")
    hdr = (f"{'precision':<9} {'ampd ms':>9} {'vs fp32':>8} {'TFLOP/s':>8} {'% bf16 pk':>9} "
           f"{'torch ms':>9} {'torch/ampd':>10} {'ampd loss':>16}")
    print(hdr)
    print("-" * len(hdr))
    fp32 = a_mlp.get("fp32", {}).get("step_ms")
    for p in ("fp32", "fp16", "bf16"):
        a, t = a_mlp.get(p), t_mlp.get(p)
        ms = a["step_ms"] if a else None
        cells = [f"{p:<9}",
                 f"{ms:9.2f}" if ms else f"{'-':>9}",
                 f"{fp32 / ms:7.2f}x" if ms and fp32 else f"{'-':>8}",
                 f"{a['matmul_tflops']:8.0f}" if a else f"{'-':>8}",
                 f"{100 * a['matmul_tflops'] / bf16_peak:8.0f}%" if a and bf16_peak else f"{'-':>9}",
                 f"{t['step_ms']:9.2f}" if t else f"{'-':>9}",
                 f"{t['step_ms'] / ms:9.2f}x" if t and ms else f"{'-':>10}",
                 f"{a['loss_first']:7.3f}->{a['loss_last']:7.3f}" if a else f"{'-':>16}"]
        print(" ".join(cells))
    # The targets.
    checks = []
    for p in ("fp16", "bf16"):
        if p in a_mlp and fp32:
            sp = fp32 / a_mlp[p]["step_ms"]
            checks.append(f"{p} >= 2.5x fp32: {'PASS' if sp >= 2.5 else 'FAIL'} ({sp:.2f}x)")
    if "bf16" in a_mlp and bf16_peak:
        pct = 100 * a_mlp["bf16"]["matmul_tflops"] / bf16_peak
        checks.append(f"bf16 >= 60% of bf16 peak: {'PASS' if pct >= 60 else 'FAIL'} ({pct:.0f}%)")
    for p in ("fp16", "bf16"):
        if p in a_mlp and p in t_mlp:
            r = t_mlp[p]["step_ms"] / a_mlp[p]["step_ms"]
            checks.append(f"{p} faster than torch AMP: {'PASS' if r > 1 else 'FAIL'} ({r:.2f}x)")
    for c in checks:
        print("  target " + c)
    if not a_mlp:
        print("  (no ampd benchmark results: see bench.log)")
    if not t_mlp:
        print("  (no PyTorch results: see torch.log)")
    print("=" * 96)
    return 0


if __name__ == "__main__":
    sys.exit(main())
