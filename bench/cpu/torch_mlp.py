"""PyTorch side of `make bench`: the same MLP step as `ampd_bench steps`.

784-W-W-10 (ReLU), cross-entropy, AdamW(lr=1e-3, weight_decay=0.01; PyTorch's default
implementation for CPU tensors), synthetic data held in memory, batch B, fixed threads.
Precision: fp32; bf16 = autocast("cpu", bfloat16); fp16 = autocast("cpu", float16) with
torch.amp.GradScaler("cpu") (reported as an error if this PyTorch has neither).
Prints one JSON line: median step time over `steps` after `warmup`.
device=cuda runs the same step on the GPU (autocast("cuda"), GradScaler("cuda"), AdamW's
default implementation there, foreach): bench/gpu/engine_check.sh sets it beside `ampd_bench backend=cuda`.
"""
import json
import sys
import time

import torch


def main(args: dict) -> None:
    precision = args.get("precision", "fp32")
    width, batch = int(args.get("width", 1024)), int(args.get("batch", 256))
    steps, warmup = int(args.get("steps", 40)), int(args.get("warmup", 5))
    threads = int(args.get("threads", 2))
    device = args.get("device", "cpu")
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, width), torch.nn.ReLU(),
        torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, 10)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = 8
    x = torch.randn(batches * batch, 784, device=device)
    y = torch.randint(0, 10, (batches * batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = None
    if precision == "fp16":
        scaler = torch.amp.GradScaler(device)
    times = []
    for s in range(warmup + steps):
        i = s % batches
        xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if dtype is None:
            loss = loss_fn(model(xb), yb)
        else:
            with torch.autocast(device, dtype=dtype):
                loss = loss_fn(model(xb), yb)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        float(loss.detach())  # the step's result reaches the host, as ampd's flags do
        if s >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    n = len(times)
    med = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    print(json.dumps({
        "mode": "torch", "device": device, "precision": precision, "width": width, "batch": batch,
        "threads": torch.get_num_threads(), "steps": n, "step_ms_median": med * 1e3,
        "step_ms_min": times[0] * 1e3, "torch": torch.__version__,
        "loss": float(loss.detach())}))


if __name__ == "__main__":
    # precision, width and batch may each be a comma list: every combination runs in this
    # one process (one interpreter and CUDA start-up), one JSON line each.
    base = dict(a.split("=", 1) for a in sys.argv[1:])
    for w in base.get("width", "1024").split(","):
        for b in base.get("batch", "256").split(","):
            for p in base.get("precision", "fp32").split(","):
                args = dict(base, width=w, batch=b, precision=p)
                try:
                    main(args)
                except Exception as e:  # noqa: BLE001 - reported in the table, not fatal
                    print(json.dumps({"mode": "torch", "precision": p, "width": int(w),
                                      "batch": int(b),
                                      "error": f"{type(e).__name__}: {e}"[:300],
                                      "torch": torch.__version__}))
                sys.stdout.flush()
