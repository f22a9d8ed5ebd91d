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


def find_all(rows, mode, **kw):
    return [r for r in rows
            if r.get("mode") == mode and all(r.get(k) == v for k, v in kw.items())]


def time_of(r):
    if "phase_ms" in r:
        return sum(r["phase_ms"].values())
    return r.get("step_ms_median") or r.get("matmul_ms_median") or 0.0


def find(rows, mode, **kw):
    """The matching row; with repeats (BENCH_REPEATS), the one with the median time."""
    found = sorted(find_all(rows, mode, **kw), key=time_of)
    return found[(len(found) - 1) // 2] if found else None


def median(values):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def paired(rows, precision, num_mode, num_key, den_mode, den_key):
    """num/den of each repeat: the k-th run of one beside the k-th of the other (run.sh
    interleaves them, so both saw the same minute of this machine)."""
    a = find_all(rows, num_mode, precision=precision, width=1024, batch=256)
    b = find_all(rows, den_mode, precision=precision, width=1024, batch=256)
    return [x[num_key] / y[den_key] for x, y in zip(a, b)
            if x.get(num_key) and y.get(den_key)]


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


GPT_TARGETS = {"fp32": 0.7, "bf16": 0.5}  # ampd step / PyTorch step (the issue's targets)


def gpt_report(rows, env):
    """The character-level GPT: step vs PyTorch, vs oneDNN's raw matmuls, per-op
    breakdown, convergence. Empty when run.sh did not run it."""
    if not (find_all(rows, "gpt_steps") or find_all(rows, "gpt_train")):
        return
    g = (find_all(rows, "gpt_steps") or find_all(rows, "gpt_train"))[0]
    print(f"\n## Character-level GPT (examples/shakespeare-char-*.yaml): {g.get('layers')} "
          f"layers, {g.get('heads')} heads, n_embd {g.get('embd')}, block {g.get('block')}, "
          f"batch {g.get('batch')}, vocab {g.get('vocab')}; AdamW, clip 1.0; "
          f"{env.get('threads')} threads, {env.get('cpu')}\n")
    print("| precision | ampd step ms | torch step ms | ampd/torch (per repeat) | target | "
          "step GFLOP/s | raw matmul ms (linear + attention) | raw GFLOP/s | step/raw (paired) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in ("fp32", "bf16"):
        a = find_all(rows, "gpt_steps", precision=p)
        t = find_all(rows, "torch_gpt", precision=p)
        if not a:
            continue
        ratios = [x["step_ms_median"] / y["step_ms_median"] for x, y in zip(a, t)
                  if x.get("step_ms_median") and y.get("step_ms_median")]
        r = median(ratios)
        am = median(x.get("step_ms_median") for x in a)
        tm = median(y.get("step_ms_median") for y in t)
        terr = next((y["error"] for y in t if "error" in y), None)
        mm = find(rows, "gpt_matmul", precision=p) or {}
        eff = median(x.get("raw_over_step_median") for x in find_all(rows, "gpt_paired", precision=p))
        tgt = GPT_TARGETS[p]
        verdict = "-" if r is None else ("met" if r <= tgt else "**missed**")
        gflops = a[0]["step_gflop"] / am * 1e3 if am else None
        per = ", ".join(fmt(x) for x in ratios)
        tcell = fmt(tm) if tm else ("error: " + terr[:60] if terr else "-")
        print(f"| {p} | {fmt(am)} | {tcell} | **{fmt(r)}** ({per}) | <= {tgt} ({verdict}) "
              f"| {fmt(gflops, '.1f')} | {fmt(mm.get('matmul_ms_median'))} "
              f"({fmt(mm.get('linear_ms_median'))} + {fmt(mm.get('attention_ms_median'))}) "
              f"| {fmt(mm.get('gflops'), '.1f')} | **{fmt(eff and eff * 100, '.0f')}%** |")
    a0 = find(rows, "gpt_steps", precision="fp32") or {}
    m0 = find(rows, "gpt_matmul", precision="fp32") or {}
    if a0:
        print(f"\nStep FLOPs (matrix products only, forward + backward): "
              f"{fmt(a0.get('step_gflop'), '.3f')} GFLOP = 6 x params in matmuls x tokens "
              f"({fmt(m0.get('linear_gflop'), '.3f')}) + attention's Q K^T and P V x 3 "
              f"({fmt(m0.get('attention_gflop'), '.3f')}, the full T x T square). "
              "step/raw = the raw oneDNN time of the same products / the step time "
              "(= the step's FLOP rate as a share of oneDNN's at these shapes), median over "
              "steps of `gpt_paired` pairs, median over repeats. ampd/torch: each repeat's own "
              "ratio (runs seconds apart), median over repeats.")
    for p in ("fp32", "bf16"):
        o = find(rows, "gpt_ops", precision=p)
        if not o:
            continue
        print(f"\n### Where ampd's {p} GPT step goes (`gpt_ops`: every backend op timed; "
              f"medians over {o['steps']} steps of each one's ms in a step; step "
              f"{fmt(o['step_ms_median'])} ms median ({fmt(o['step_ms_min'])} min) on the "
              f"timing wrapper, all ops {fmt(o['ops_ms'])}, host work between ops "
              f"{fmt(o['other_ms'])})\n")
        print("| op kind | ms/step | calls/step | share of ops |")
        print("|---|---|---|---|")
        for k, ms, calls in o["by_kind"][:12]:
            print(f"| {k} | {fmt(ms)} | {fmt(calls, '.0f')} | "
                  f"{fmt(ms / o['ops_ms'] * 100, '.0f')}% |")
        print("\n| top ops (shapes) | ms/step | calls/step |")
        print("|---|---|---|")
        for label, ms, calls in o["ops"][:15]:
            print(f"| `{label}` | {fmt(ms)} | {fmt(calls, '.0f')} |")
    conv_a = {r["precision"]: r for r in find_all(rows, "gpt_train")}
    conv_t = {r["precision"]: r for r in find_all(rows, "torch_gpt_train")}
    if conv_a or conv_t:
        print("\n### GPT convergence: 2000 iterations, val loss = mean over the validation "
              "batches\n")
        print("| precision | ampd val loss | torch val loss | ampd - torch | ampd train s "
              "| torch train s | ampd val loss at evaluations |")
        print("|---|---|---|---|---|---|---|")
        for p in ("fp32", "bf16"):
            a, t = conv_a.get(p, {}), conv_t.get(p, {})
            if not a and not t:
                continue
            d = a.get("val_loss") - t.get("val_loss") if a.get("val_loss") and t.get(
                "val_loss") else None
            ev = ", ".join(f"{s}: {v:.3f}" for s, v in a.get("evals", []))
            print(f"| {p} | {fmt(a.get('val_loss'), '.4f')} | {fmt(t.get('val_loss'), '.4f')} "
                  f"| {fmt(d, '+.4f')} | {fmt(a.get('train_s'), '.1f')} "
                  f"| {fmt(t.get('train_s'), '.1f')} | {ev or '-'} |")


def main():
    rows = load(sys.argv[1])
    env = find(rows, "env") or {}
    if not find_all(rows, "steps"):  # BENCH_ONLY=gpt
        gpt_report(rows, env)
        return
    print(f"\n## ampd vs PyTorch vs oneDNN: MLP 784-1024-1024-10, batch 256, AdamW, "
          f"{env.get('threads')} threads, {env.get('cpu')}; torch: {env.get('torch_how')}\n")
    print("| precision | ampd step ms | torch step ms | ampd/torch | step GFLOP/s | "
          "raw matmul ms | raw matmul GFLOP/s | step/raw | act bytes | act vs fp32 | "
          "load/fwd/bwd/unscale/opt ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = find(rows, "steps", precision="fp32", width=1024, batch=256)
    for p in ("fp32", "bf16", "fp16"):
        s = find(rows, "steps", precision=p, width=1024, batch=256) or {}
        t = find(rows, "torch", precision=p, width=1024, batch=256) or {}
        m = find(rows, "matmul", precision=p, width=1024, batch=256) or {}
        ph = (find(rows, "phases", precision=p, width=1024, batch=256) or {}).get("phase_ms", {})
        sm, tm = s.get("step_ms_median"), t.get("step_ms_median")
        torch_cell = fmt(tm) if tm else ("error: " + t["error"][:60] if "error" in t else "-")
        # Ratios: the median over repeats of each repeat's own ratio.
        ratio = median(paired(rows, p, "steps", "step_ms_median", "torch", "step_ms_median"))
        # Step vs raw matmul: `paired` runs the matmuls right after every step, so each
        # pair saw the same minute of this machine; median over steps, then over repeats.
        eff = median(r.get("raw_over_step_median") for r in
                     find_all(rows, "paired", precision=p, width=1024, batch=256))
        if eff is None:  # results from before the paired mode
            eff = median(paired(rows, p, "matmul", "matmul_ms_median", "steps", "step_ms_median"))
        act = s.get("activation_bytes")
        actr = act / base["activation_bytes"] if act and base else None
        phs = "/".join(fmt(ph.get(k)) for k in ("load_batch", "forward", "backward", "unscale_check",
                                                "optimizer"))
        print(f"| {p} | {fmt(sm)} | {torch_cell} | {fmt(ratio)} | {fmt(s.get('gflops'), '.1f')} "
              f"| {fmt(m.get('matmul_ms_median'))} | {fmt(m.get('gflops'), '.1f')} "
              f"| {fmt(eff and eff * 100, '.0f')}% | {act or '-'} | {fmt(actr)} | {phs} |")
    reps = len(find_all(rows, "steps", precision="fp32", width=1024, batch=256))
    if reps > 1:
        print(f"\nMedian of {reps} interleaved repeats (step, torch, matmul, phases in turn); "
              "the ratios are the median of each repeat's own ratio. Per repeat:")
        for p in ("fp32", "bf16", "fp16"):
            r1 = paired(rows, p, "steps", "step_ms_median", "torch", "step_ms_median")
            r2 = [r["raw_over_step_median"] for r in
                  find_all(rows, "paired", precision=p, width=1024, batch=256)]
            r3 = paired(rows, p, "matmul", "matmul_ms_median", "steps", "step_ms_median")
            if r1 or r2:
                print(f"- {p}: ampd/torch {', '.join(fmt(x) for x in r1) or '-'}; "
                      f"step/raw paired {', '.join(fmt(x * 100, '.0f') + '%' for x in r2) or '-'}"
                      f" (separate runs: {', '.join(fmt(x * 100, '.0f') + '%' for x in r3)})")
    print("\n### Scaling (`paired`: each step beside its raw matmuls, medians)\n")
    print("| precision | width | batch | step ms | raw matmul ms | step/raw | step GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    seen = set()
    for r0 in rows:
        key = (r0.get("precision"), r0.get("width"), r0.get("batch"))
        if r0.get("mode") != "paired" or key in seen:
            continue
        seen.add(key)
        r = find(rows, "paired", precision=key[0], width=key[1], batch=key[2])
        eff = median(x.get("raw_over_step_median") for x in
                     find_all(rows, "paired", precision=key[0], width=key[1], batch=key[2]))
        flops = 0.0
        ls = [(784, key[1]), (key[1], key[1]), (key[1], 10)]
        for i, (a_, b_) in enumerate(ls):
            flops += 2.0 * key[2] * a_ * b_ * (2 if i == 0 else 3)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {fmt(r['step_ms_median'])} "
              f"| {fmt(r['matmul_ms_median'])} | {fmt(eff and eff * 100, '.0f')}% "
              f"| {fmt(flops / r['step_ms_median'] * 1e-6, '.1f')} |")
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
    gpt_report(rows, env)


if __name__ == "__main__":
    main()
