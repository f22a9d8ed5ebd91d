"""Turns bench/cpu/run.sh's results.jsonl into the Markdown table printed last."""
import json
import sys


def load(path):
    rows = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def find(rows, mode, **kw):
    for r in rows:
        if r.get("mode") == mode and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def main():
    rows = load(sys.argv[1])
    env = find(rows, "env") or {}
    print(f"\n## ampd vs PyTorch vs oneDNN: MLP 784-1024-1024-10, batch 256, AdamW, "
          f"{env.get('threads')} threads, {env.get('cpu')}; torch: {env.get('torch_how')}\n")
    print("| precision | ampd step ms | torch step ms | ampd/torch | step GFLOP/s | "
          "raw matmul ms | raw matmul GFLOP/s | step/raw | act bytes | act vs fp32 | "
          "fwd/bwd/unscale/opt ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = find(rows, "steps", precision="fp32", width=1024, batch=256)
    for p in ("fp32", "bf16", "fp16"):
        s = find(rows, "steps", precision=p, width=1024, batch=256) or {}
        t = find(rows, "torch", precision=p, width=1024, batch=256) or {}
        m = find(rows, "matmul", precision=p, width=1024, batch=256) or {}
        ph = (find(rows, "phases", precision=p, width=1024, batch=256) or {}).get("phase_ms", {})
        sm, tm = s.get("step_ms_median"), t.get("step_ms_median")
        torch_cell = fmt(tm) if tm else ("error: " + t["error"][:60] if "error" in t else "-")
        ratio = sm / tm if sm and tm else None
        eff = m["matmul_ms_median"] / sm if sm and m.get("matmul_ms_median") else None
        act = s.get("activation_bytes")
        actr = act / base["activation_bytes"] if act and base else None
        phs = "/".join(fmt(ph.get(k)) for k in ("forward", "backward", "unscale_check",
                                                "optimizer"))
        print(f"| {p} | {fmt(sm)} | {torch_cell} | {fmt(ratio)} | {fmt(s.get('gflops'), '.1f')} "
              f"| {fmt(m.get('matmul_ms_median'))} | {fmt(m.get('gflops'), '.1f')} "
              f"| {fmt(eff and eff * 100, '.0f')}% | {act or '-'} | {fmt(actr)} | {phs} |")
    print("\n### Scaling (ampd step ms / share of raw matmul time)\n")
    print("| precision | width | batch | step ms | raw matmul ms | step/raw | step GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("mode") != "steps":
            continue
        m = find(rows, "matmul", precision=r["precision"], width=r["width"], batch=r["batch"])
        mm = m and m["matmul_ms_median"]
        print(f"| {r['precision']} | {r['width']} | {r['batch']} | {fmt(r['step_ms_median'])} "
              f"| {fmt(mm)} | {fmt(mm and mm / r['step_ms_median'] * 100, '.0f')}% "
              f"| {fmt(r['gflops'], '.1f')} |")
    svc = find(rows, "service") or {}
    print("\n### Service overhead (fp32 job, 50 watchers, /metrics scraped every second)\n")
    if "error" in svc:
        print(f"not measured: {svc['error']}")
    else:
        print("| round | in-process samples/s | served samples/s | ratio | p90 window in-process "
              "| p90 served | p90 ratio | server training CPU s | server other CPU s "
              "| watchers+scraper CPU s | CPU-bound ratio |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for i, (a, b, r) in enumerate(zip(svc.get("inproc_sps", []), svc.get("served_sps", []),
                                          svc.get("ratios", []))):
            pa = (svc.get("inproc_p90") or [None] * (i + 1))[i]
            pb = (svc.get("served_p90") or [None] * (i + 1))[i]
            tr = (svc.get("server_train_cpu_s") or [None] * (i + 1))[i]
            ot = (svc.get("server_other_cpu_s") or [None] * (i + 1))[i]
            wc = (svc.get("watcher_cpu_s") or [None] * (i + 1))[i]
            bound = tr / (tr + ot + wc) if None not in (tr, ot, wc) and tr else None
            print(f"| {i + 1} | {fmt(a, '.0f')} | {fmt(b, '.0f')} | {fmt(r, '.3f')} | {fmt(pa, '.0f')} "
                  f"| {fmt(pb, '.0f')} | {fmt(pa and pb and pb / pa, '.3f')} | {fmt(tr, '.2f')} "
                  f"| {fmt(ot, '.2f')} | {fmt(wc, '.3f')} | {fmt(bound, '.3f')} |")
        print(f"\nmedian ratio {fmt(svc.get('ratio'), '.3f')}, p90 ratio "
              f"{fmt(svc.get('ratio_p90'), '.3f')}, CPU-bound ratio "
              f"{fmt(svc.get('cpu_bound_ratio'), '.3f')} (bench/cpu/service.sh explains the "
              f"three); {svc.get('scrapes_ok')}/"
              f"{svc.get('scrapes')} scrapes answered; stream errors {svc.get('stream_errors')}; "
              f"fewest events a watcher got {svc.get('watch_events_min')}")


if __name__ == "__main__":
    main()
