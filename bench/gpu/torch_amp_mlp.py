#!/usr/bin/env python3
"""The ampd GPU benchmark's model in PyTorch, for comparison (bench/gpu/mlp_bench.cc).

`layers` nn.Linear(width, width) with GELU (exact erf form) between them, cross-entropy over
`width` classes, AdamW (fused, FP32 parameters), batch resident on the GPU, in three modes:
  fp32  plain FP32, TF32 disabled (torch.backends.cuda.matmul.allow_tf32 = False)
  fp16  torch.autocast(float16) + torch.amp.GradScaler (init scale 2^16)
  bf16  torch.autocast(bfloat16), no scaler
Each step: zero_grad(set_to_none), forward under autocast, loss, backward, (unscale +
inf check), optimizer step; GradScaler.step reads its found-inf flag on the host, the same
sync point as ampd's flags download. Timing: CUDA events around each step, median of
`steps` after `warmup`. Also the bf16 / fp16 torch.matmul peak at peak^3 on the same card.

Writes one JSON object per line to --json (and prints a summary).
"""
import argparse
import json
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak", type=int, default=8192)
    ap.add_argument("--precisions", default="fp32,fp16,bf16")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("torch_amp_mlp: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = open(args.json, "w") if args.json else None

    def emit(obj):
        if out:
            out.write(json.dumps(obj) + "\n")
            out.flush()

    name = torch.cuda.get_device_name(0)
    print(f"torch {torch.__version__}, device {name}")
    emit({"kind": "device", "description": name, "torch": torch.__version__})

    # matmul peak (random data, never zeros)
    for dt_name, dt in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        s = args.peak
        a = torch.randn(s, s, device=dev, dtype=dt)
        b = torch.randn(s, s, device=dev, dtype=dt)
        for _ in range(3):
            torch.matmul(a, b)
        torch.cuda.synchronize()
        runs = []
        for _ in range(3):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                torch.matmul(a, b)
            stop.record()
            stop.synchronize()
            runs.append(2.0 * s**3 / (start.elapsed_time(stop) / 10 * 1e-3) * 1e-12)
        tf = statistics.median(runs)
        print(f"torch matmul peak {dt_name} {s}^3: {tf:.1f} TFLOP/s")
        emit({"kind": "peak", "dtype": dt_name, "size": s, "tflops": tf})
        del a, b

    B, W, L = args.batch, args.width, args.layers
    flop = (3 * L - 1) * 2.0 * B * W * W
    for prec in args.precisions.split(","):
        torch.manual_seed(0)
        mods = []
        for i in range(L):
            mods.append(nn.Linear(W, W))
            if i < L - 1:
                mods.append(nn.GELU())
        model = nn.Sequential(*mods).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
        x = torch.rand(B, W, device=dev) * 4 - 2
        y = torch.randint(0, W, (B,), device=dev)
        amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec)
        scaler = torch.amp.GradScaler("cuda", init_scale=65536.0, enabled=prec == "fp16")

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return loss

        torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            first = step()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.steps):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            last = step()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        ms = statistics.median(times)
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
        rec = {
            "kind": "mlp",
            "precision": prec,
            "batch": B,
            "width": W,
            "layers": L,
            "step_ms": ms,
            "mean_ms": sum(times) / len(times),
            "matmul_tflops": flop / (ms * 1e-3) * 1e-12,
            "loss_first": float(first),
            "loss_last": float(last),
            "peak_gib": peak_gib,
        }
        print(
            f"torch mlp {prec}: step {ms:.3f} ms, matmul {rec['matmul_tflops']:.1f} TFLOP/s, "
            f"loss {rec['loss_first']:.4f} -> {rec['loss_last']:.4f}, peak memory {peak_gib:.2f} GiB"
        )
        emit(rec)
        del model, opt, x, y
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print(f"torch_amp_mlp: {time.time() - t0:.1f} s")
    sys.exit(rc)
