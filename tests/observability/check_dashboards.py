#!/usr/bin/python3
"""ctest observability_dashboards: a real `ampd serve` scraped by a real Prometheus.

Starts `ampd serve` (CPU, loopback, free ports), submits a short job (it finishes) and a
long FP16 job with numerics telemetry on, starts /usr/bin/prometheus with a temporary
config scraping /metrics every second, then:
  1. `promtool check metrics` on a live scrape taken while the telemetry job runs;
  2. every panel expression of deploy/grafana/dashboards/*.json (template variables
     substituted: $instance, $job, $__rate_interval) returns data through Prometheus'
     HTTP API (/api/v1/query);
  3. after the long job is cancelled, its per-job series (job_id label) are gone from
     /metrics and the aggregates are still there.
Every process is stopped by PID. Exits 77 (skipped) when prometheus is not installed.

    check_dashboards.py AMPD AMPCTL SOURCE_DIR
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
DEADLINE_S = 45  # for all panels to have data, after Prometheus starts


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_for(what, fn, timeout):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except (OSError, urllib.error.URLError, ValueError) as e:
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what} (last error: {last})")


class Procs:
    """Child processes, stopped by PID (TERM, then KILL) whatever happens."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, log_path):
        log = open(log_path, "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        self.procs.append((name, p, log_path))
        return p

    def stop_all(self):
        for name, p, _ in reversed(self.procs):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=25)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()

    def logs(self):
        out = []
        for name, _, path in self.procs:
            with open(path) as f:
                out.append(f"---- {name} log ----\n{f.read()[-4000:]}")
        return "\n".join(out)


def panel_expressions(source_dir):
    out = []
    d = os.path.join(source_dir, "deploy", "grafana", "dashboards")
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(d, name)) as f:
            dash = json.load(f)
        for panel in dash["panels"]:
            targets = panel.get("targets", [])
            if not targets:
                raise AssertionError(f"{name}: panel '{panel['title']}' has no query")
            for t in targets:
                out.append((name, panel["title"], t["expr"]))
    return out


def substitute(expr, instance, job_id):
    return (expr.replace("$__rate_interval", "30s").replace("$instance", instance)
            .replace("$job", job_id))


def query(prom, expr):
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(http_get(url))
    if body.get("status") != "success":
        raise AssertionError(f"query failed: {expr}: {body}")
    return body["data"]["result"]


def ampctl(ampctl_bin, server, *args):
    r = subprocess.run([ampctl_bin, "--server", server, *args], capture_output=True, text=True,
                       timeout=30)
    return r.returncode, r.stdout, r.stderr


def submit(ampctl_bin, server, work, name, spec):
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f:
        json.dump(spec, f)
    rc, out, err = ampctl(ampctl_bin, server, "submit", "-f", path, "-o", "json")
    if rc != 0:
        raise AssertionError(f"submit {name}: rc {rc}: {out}{err}")
    return json.loads(out)["id"]


def job_spec(name, max_steps, telemetry_every=0):
    return {
        "name": name,
        "data": {"digits": {}, "batch_size": 32},
        "model": {"layers": [{"linear": {"out_features": 32}}, {"relu": {}},
                             {"linear": {"out_features": 10}}]},
        "optimizer": {"adamw": {"lr": 0.003}},
        "precision": "fp16",
        "training": {"max_steps": max_steps, "report_every": 10, "eval_every": 50,
                     "checkpoint_every": 100000, "telemetry_every": telemetry_every},
    }


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    ampd, ampctl_bin, source_dir = sys.argv[1:]
    if not (os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK)):
        print(f"SKIPPED: {PROMETHEUS} / {PROMTOOL} not installed (apt-get install prometheus)")
        return 77
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="ampd-obs-")
    procs = Procs()
    ok = False
    try:
        grpc_addr = f"127.0.0.1:{free_port()}"
        metrics_port = free_port()
        metrics_addr = f"127.0.0.1:{metrics_port}"
        server = procs.start("ampd serve", [
            ampd, "serve", "--grpc-addr", grpc_addr, "--metrics-addr", metrics_addr,
            "--state-dir", os.path.join(work, "state"), "--backend", "cpu", "--threads", "1",
            "--shutdown-timeout", "10s"], os.path.join(work, "ampd.log"))
        metrics_url = f"http://{metrics_addr}/metrics"
        wait_for("ampd /metrics", lambda: "ampd_build_info" in http_get(metrics_url), 30)
        wait_for("ampd gRPC", lambda: ampctl(ampctl_bin, grpc_addr, "info")[0] == 0, 30)

        # A job that finishes, then one that runs until cancelled (telemetry every 5 steps),
        # and a call that fails (NOT_FOUND) for the error-ratio panels.
        submit(ampctl_bin, grpc_addr, work, "short", job_spec("short", 30))
        long_id = submit(ampctl_bin, grpc_addr, work, "long",
                         job_spec("long", 100000000, telemetry_every=5))
        ampctl(ampctl_bin, grpc_addr, "get", "j-0000000000000000")

        prom_port = free_port()
        prom = f"127.0.0.1:{prom_port}"
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: ampd\n    static_configs:\n"
                    f"      - targets: ['{metrics_addr}']\n")
        procs.start("prometheus", [
            PROMETHEUS, f"--config.file={config}",
            f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
            f"--web.listen-address={prom}"], os.path.join(work, "prometheus.log"))

        # 1. The live scrape passes promtool's linter (telemetry series included).
        scrape = wait_for("telemetry metrics for the long job", lambda: (
            lambda s: s if f'ampd_job_grad_fp16_zero_ratio{{job_id="{long_id}"' in s
            and f'ampd_job_val_loss{{job_id="{long_id}"' in s else None)(http_get(metrics_url)),
            40)
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape, capture_output=True,
                              text=True)
        if lint.returncode != 0:
            raise AssertionError("promtool check metrics failed:\n" + lint.stdout + lint.stderr)
        print(f"promtool check metrics: ok ({len(scrape.splitlines())} lines)")

        # 2. Every panel has data.
        instance = metrics_addr
        exprs = panel_expressions(source_dir)
        wait_for("Prometheus ready",
                 lambda: query(prom, f'up{{instance="{instance}"}}'), 30)
        end = time.monotonic() + DEADLINE_S
        missing = exprs
        while missing and time.monotonic() < end:
            missing = [(d, t, e) for d, t, e in missing
                       if not query(prom, substitute(e, instance, long_id))]
            if missing:
                time.sleep(1)
        if missing:
            raise AssertionError("panels without data:\n" + "\n".join(
                f"  {d} / {t}: {substitute(e, instance, long_id)}" for d, t, e in missing))
        print(f"all {len(exprs)} panel expressions returned data "
              f"({time.monotonic() - t0:.1f} s)")

        # 3. Per-job series leave with the job; aggregates stay.
        rc, out, err = ampctl(ampctl_bin, grpc_addr, "cancel", long_id)
        if rc != 0:
            raise AssertionError(f"cancel: rc {rc}: {out}{err}")

        def job_series_gone():
            s = http_get(metrics_url)
            return s if f'job_id="{long_id}"' not in s else None
        after = wait_for("the long job's series to be removed", job_series_gone, 15)
        for needle in ('ampd_training_steps_total{precision="fp16"}',
                       'ampd_jobs_finished_total{state="cancelled"} 1',
                       'ampd_jobs_finished_total{state="succeeded"} 1',
                       'ampd_grpc_requests_total{code="NOT_FOUND",method="GetJob"} 1'):
            if needle not in after:
                raise AssertionError(f"missing after cancel: {needle}\n{after}")
        print("per-job series removed after the job ended; aggregates kept")

        procs.stop_all()
        if server.returncode != 0:
            raise AssertionError(f"ampd serve exited with {server.returncode}")
        ok = True
        print(f"observability_dashboards: ok ({time.monotonic() - t0:.1f} s)")
        return 0
    except Exception as e:  # report with the logs, then clean up
        print(f"FAILED: {e}")
        print(procs.logs())
        return 1
    finally:
        procs.stop_all()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"(work dir kept: {work})")


if __name__ == "__main__":
    sys.exit(main())
