#!/usr/bin/env python3
"""Writes the two ampd Grafana dashboards (deploy/grafana/dashboards/*.json).

The JSON files are committed; edit this script and rerun it rather than editing them:

    python3 deploy/grafana/generate_dashboards.py

ampd-fleet.json: every server (template variable `instance`, multi-select).
ampd-job.json:   one job (variables `instance` and `job`, the latter from ampd_job_info's
                 job_id label: Prometheus itself owns the `job` label).
tests/observability/check_dashboards.py runs every expression against a live Prometheus.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
FLEET = 'instance=~"$instance"'
JOB = 'instance=~"$instance",job_id="$job"'
RI = "$__rate_interval"


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}


class Layout:
    def __init__(self):
        self.x, self.y, self.row_h, self.next_id = 0, 0, 0, 1

    def place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos


def panel(layout, title, targets, unit="short", kind="timeseries", w=12, h=8,
          description="", log_y=False, stacked=False):
    p = {
        "id": layout.next_id,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": layout.place(w, h),
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    layout.next_id += 1
    if kind == "timeseries":
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        if log_y:
            custom["scaleDistribution"] = {"type": "log", "log": 2}
        if stacked:
            custom["stacking"] = {"mode": "normal", "group": "A"}
        p["fieldConfig"]["defaults"]["custom"] = custom
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}}
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                          "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    elif kind == "table":
        p["options"] = {"showHeader": True}
        for t in p["targets"]:
            t["format"] = "table"
            t["instant"] = True
    return p


def variables(with_job):
    v = [{
        "name": "datasource", "type": "datasource", "query": "prometheus",
        "label": "Data source", "current": {}, "hide": 0, "refresh": 1,
    }, {
        "name": "instance", "type": "query", "datasource": DS, "label": "Instance",
        "query": {"query": "label_values(ampd_build_info, instance)", "refId": "instance"},
        "definition": "label_values(ampd_build_info, instance)",
        "refresh": 2, "includeAll": True, "multi": not with_job, "allValue": ".*",
        "current": {}, "sort": 1,
    }]
    if with_job:
        v.append({
            "name": "job", "type": "query", "datasource": DS, "label": "Job",
            "query": {"query": 'label_values(ampd_job_info{instance=~"$instance"}, job_id)',
                      "refId": "job"},
            "definition": 'label_values(ampd_job_info{instance=~"$instance"}, job_id)',
            "refresh": 2, "includeAll": False, "multi": False, "current": {}, "sort": 2,
        })
    return v


def dashboard(uid, title, description, panels, with_job):
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["ampd"], "timezone": "browser", "schemaVersion": 39, "version": 1,
        "editable": True, "graphTooltip": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables(with_job)},
        "annotations": {"list": []},
        "links": [{"title": "ampd dashboards", "type": "dashboards", "tags": ["ampd"],
                   "asDropdown": False}],
        "panels": panels,
    }


def quantiles(metric, selector, by):
    return [(f"histogram_quantile({q}, sum by (le{by}) (rate({metric}_bucket{{{selector}}}[{RI}])))",
             f"p{int(q * 100)}" + ("".join(" {{%s}}" % b.strip(", ") for b in by.split(",")
                                           if b.strip())))
            for q in (0.5, 0.9, 0.99)]


def fleet():
    L = Layout()
    panels = [
        panel(L, "Jobs by state", [(f"sum by (state) (ampd_jobs{{{FLEET}}})", "{{state}}")],
              kind="stat", w=8, h=5, description="Jobs in the servers' stores, by state."),
        panel(L, "Queue depth", [(f"sum by (instance) (ampd_queue_depth{{{FLEET}}})",
                                  "{{instance}}")],
              w=8, h=5, description="Jobs waiting behind the running one."),
        panel(L, "Jobs finished (1h)",
              [(f"sum by (state) (increase(ampd_jobs_finished_total{{{FLEET}}}[1h]))",
                "{{state}}")],
              kind="stat", w=8, h=5),
        panel(L, "Throughput", [(
            f"sum by (instance, precision) (rate(ampd_training_samples_total{{{FLEET}}}[{RI}]))",
            "{{instance}} {{precision}}")], unit="short",
            description="Training examples per second."),
        panel(L, "Step time quantiles",
              quantiles("ampd_training_step_duration_seconds", FLEET, ", precision"), unit="s",
              description="Wall time of one training step (forward, backward, optimizer)."),
        panel(L, "Overflow-skipped steps", [(
            f"sum by (instance, precision) "
            f"(increase(ampd_training_overflow_skipped_steps_total{{{FLEET}}}[{RI}]))",
            "{{instance}} {{precision}}")],
            description="Steps skipped for inf/NaN gradients (FP16 loss-scale backoffs)."),
        panel(L, "Steps per second", [(
            f"sum by (instance, precision) (rate(ampd_training_steps_total{{{FLEET}}}[{RI}]))",
            "{{instance}} {{precision}}")]),
        panel(L, "Device memory", [
            (f"ampd_device_memory_used_bytes{{{FLEET}}}", "used {{instance}}"),
            (f"ampd_device_memory_peak_bytes{{{FLEET}}}", "peak {{instance}}"),
            (f"ampd_device_memory_capacity_bytes{{{FLEET}}}", "capacity {{instance}}")],
            unit="bytes", description="Capacity is 0 on the CPU backend (unknown)."),
        panel(L, "gRPC requests", [(
            f"sum by (method, code) (rate(ampd_grpc_requests_total{{{FLEET}}}[{RI}]))",
            "{{method}} {{code}}")], unit="reqps"),
        panel(L, "gRPC error ratio", [(
            f'(sum(rate(ampd_grpc_requests_total{{{FLEET},code!="OK"}}[{RI}])) or vector(0))'
            f" / sum(rate(ampd_grpc_requests_total{{{FLEET}}}[{RI}]))", "non-OK")],
            unit="percentunit",
            description="Share of calls that did not end OK (includes client errors such as "
                        "NOT_FOUND and INVALID_ARGUMENT)."),
        panel(L, "gRPC latency", quantiles("ampd_grpc_request_duration_seconds", FLEET,
                                           ", method")[1:2], unit="s",
              description="p90 per method; WatchJob and uploads are long streams."),
        panel(L, "Servers", [(f"ampd_build_info{{{FLEET}}}", "")], kind="table", w=24, h=5,
              description="Version, backend and device of each server."),
    ]
    return dashboard("ampd-fleet", "ampd / fleet",
                     "All ampd servers: jobs, queue, throughput, step time, memory, gRPC.",
                     panels, with_job=False)


def job():
    L = Layout()
    panels = [
        panel(L, "Progress", [(f"ampd_job_step{{{JOB}}} / ampd_job_total_steps{{{JOB}}}",
                               "done")], unit="percentunit", kind="stat", w=6, h=5),
        panel(L, "Step", [(f"ampd_job_step{{{JOB}}}", "step")], kind="stat", w=6, h=5),
        panel(L, "Validation accuracy", [(f"ampd_job_val_accuracy{{{JOB}}}", "val_accuracy")],
              unit="percentunit", kind="stat", w=6, h=5,
              description="At the last evaluation (training.eval_every)."),
        panel(L, "Job", [(f"ampd_job_info{{{JOB}}}", "")], kind="table", w=6, h=5),
        panel(L, "Loss", [(f"ampd_job_loss{{{JOB}}}", "train"),
                          (f"ampd_job_val_loss{{{JOB}}}", "validation")],
              description="Training loss: mean over the last progress window."),
        panel(L, "Loss scale", [(f"ampd_job_loss_scale{{{JOB}}}", "scale")], log_y=True,
              description="Dynamic loss scale (FP16); 1 in BF16/FP32."),
        panel(L, "Learning rate", [(f"ampd_job_learning_rate{{{JOB}}}", "lr")]),
        panel(L, "Throughput", [
            (f"rate(ampd_job_samples_total{{{JOB}}}[{RI}])", "samples/s"),
            (f"ampd_job_samples_per_second{{{JOB}}}", "samples/s (trainer window)")]),
        panel(L, "Step time quantiles",
              quantiles("ampd_training_step_duration_seconds", 'instance=~"$instance"', ""),
              unit="s",
              description="The instance's step-time histogram: a server runs one job at a "
                          "time, so this is the selected job's while it runs."),
        panel(L, "Overflow-skipped steps", [(f"ampd_job_overflow_skipped_steps{{{JOB}}}",
                                             "skipped")]),
        panel(L, "FP16 underflow to zero, by tensor",
              [(f"ampd_job_grad_fp16_zero_ratio{{{JOB}}}", "{{tensor}}")], unit="percentunit",
              description="Telemetry (training.telemetry_every): share of gradient elements "
                          "with 0 < |g * scale| <= 2^-25, which FP16 rounds to zero."),
        panel(L, "FP16 subnormal gradients, by tensor",
              [(f"ampd_job_grad_fp16_subnormal_ratio{{{JOB}}}", "{{tensor}}")],
              unit="percentunit",
              description="Telemetry: share with 2^-25 < |g * scale| < 2^-14 (FP16 "
                          "subnormal: precision lost)."),
        panel(L, "Largest |gradient|, by tensor",
              [(f"ampd_job_grad_max_abs{{{JOB}}}", "{{tensor}}")], log_y=True,
              description="Telemetry: max |g| (unscaled). Near 65504 / scale means near "
                          "overflow."),
        panel(L, "Loss drift vs FP32", [(f"ampd_job_loss_drift_ratio{{{JOB}}}", "drift"),
                                        ], unit="percentunit",
              description="Telemetry: |loss - FP32 loss| / |FP32 loss| on the same batch, the "
                          "FP32 forward using the master weights."),
        panel(L, "Device memory", [
            (f'ampd_device_memory_used_bytes{{instance=~"$instance"}}', "used"),
            (f'ampd_device_memory_peak_bytes{{instance=~"$instance"}}', "peak")],
            unit="bytes"),
        panel(L, "gRPC error ratio", [(
            f'(sum(rate(ampd_grpc_requests_total{{instance=~"$instance",code!="OK"}}[{RI}]))'
            f" or vector(0))"
            f' / sum(rate(ampd_grpc_requests_total{{instance=~"$instance"}}[{RI}]))', "non-OK")],
            unit="percentunit"),
    ]
    return dashboard("ampd-job", "ampd / job",
                     "One training job: loss, loss scale, throughput, step time, overflow "
                     "skips, FP16 underflow, drift against FP32.", panels, with_job=True)


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")
    for name, d in (("ampd-fleet.json", fleet()), ("ampd-job.json", job())):
        with open(os.path.join(out, name), "w") as f:
            json.dump(d, f, indent=2, sort_keys=False)
            f.write("\n")


if __name__ == "__main__":
    main()
