#!/usr/bin/python3
"""ctest deploy_files: the deployment files, checked without Docker or a cluster.

  * deploy/docker/Dockerfile: multi-stage, CUDA from NVIDIA's repository, a non-root
    USER, HEALTHCHECK, EXPOSE 50051 9464, builds ampd + ampctl + the CUDA plugin.
  * docker-compose.yml: ampd / prometheus / grafana with healthchecks, volumes, the GPU
    reservation, mounts that exist; `docker compose config` too when the docker CLI has
    the compose plugin (it needs no engine).
  * deploy/prometheus: `promtool check config` and `promtool check rules`.
  * deploy/grafana: provisioning (datasource uid, dashboard provider path = the compose
    mount) and the dashboards (every panel has a query; template variables).

    check_deploy.py SOURCE_DIR
"""
import json
import os
import re
import shutil
import subprocess
import sys

import yaml

ROOT = sys.argv[1] if len(sys.argv) > 1 else "."
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def dockerfile():
    text = read("deploy/docker/Dockerfile")
    # Join continuation lines, drop comments.
    lines = [l for l in re.sub(r"\\\n", " ", text).splitlines()
             if l.strip() and not l.lstrip().startswith("#")]
    instr = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l.strip() else "")
             for l in lines]
    froms = [a for i, a in instr if i == "FROM"]
    check(len(froms) >= 2, "Dockerfile: multi-stage (two FROMs)")
    check(any(" AS build" in f for f in froms), "Dockerfile: a build stage")
    users = [a.strip() for i, a in instr if i == "USER"]
    check(users and users[-1].split(":")[0] not in ("root", "0"),
          f"Dockerfile: final USER is non-root (got {users})")
    check(any(i == "HEALTHCHECK" for i, _ in instr), "Dockerfile: HEALTHCHECK")
    exposed = " ".join(a for i, a in instr if i == "EXPOSE").split()
    check("50051" in exposed and "9464" in exposed, f"Dockerfile: EXPOSE 50051 9464 ({exposed})")
    check(any(i == "ENTRYPOINT" and "ampd" in a for i, a in instr), "Dockerfile: ENTRYPOINT ampd")
    check("ampd_backend_cuda" in text and "-DAMPD_WITH_CUDA=ON" in text,
          "Dockerfile: builds the CUDA plugin")
    check("cuda-nvcc" in text and "libcublas" in text, "Dockerfile: CUDA toolkit from apt")
    check("-DAMPD_FAULT_INJECTION=OFF" in text,
          "Dockerfile: release build without fault injection (engine/write_faults.h)")
    check("AMPD_METRICS_ADDR=0.0.0.0:9464" in text and "AMPD_GRPC_ADDR=0.0.0.0:50051" in text,
          "Dockerfile: listens on all interfaces")
    # Every apt package of install-deps.sh's build list is installed in the build stage.
    deps = read("scripts/install-deps.sh")
    for pkg in ("libgrpc++-dev", "prometheus-cpp-dev", "libdnnl-dev", "libsqlite3-dev",
                "libyaml-cpp-dev", "libcli11-dev", "nlohmann-json3-dev", "libssl-dev"):
        check(pkg in deps and pkg in text, f"Dockerfile: installs {pkg}")
    check(os.path.exists(os.path.join(ROOT, ".dockerignore")), ".dockerignore exists")


def compose():
    c = yaml.safe_load(read("docker-compose.yml"))
    svcs = c.get("services", {})
    for name in ("ampd", "prometheus", "grafana"):
        check(name in svcs, f"compose: service {name}")
        check("healthcheck" in svcs.get(name, {}), f"compose: {name} has a healthcheck")
    a = svcs.get("ampd", {})
    devices = (a.get("deploy", {}).get("resources", {}).get("reservations", {})
               .get("devices", []))
    check(any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
              for d in devices), "compose: ampd reserves an nvidia GPU")
    check(a.get("build", {}).get("dockerfile") == "deploy/docker/Dockerfile",
          "compose: ampd builds deploy/docker/Dockerfile")
    env = a.get("environment", {})
    check(all(k.startswith("AMPD_") for k in env), "compose: ampd configured by AMPD_* env")
    check(any("/var/lib/ampd" in v for v in a.get("volumes", [])), "compose: ampd state volume")
    grace = str(a.get("stop_grace_period", "10s"))
    check(grace.endswith("s") and int(grace[:-1]) > 20,
          "compose: stop_grace_period longer than the 20 s drain")
    named = set(c.get("volumes", {}))
    for s in svcs.values():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                check(os.path.exists(os.path.join(ROOT, src)), f"compose: mount {src} exists")
            else:
                check(src in named, f"compose: named volume {src} declared")
    ports = " ".join(a.get("ports", []))
    check("50051" in ports and "9464" in ports, "compose: ampd publishes 50051 and 9464")
    cpu = yaml.safe_load(read("deploy/docker/compose.cpu.yml").replace("!reset", ""))
    check("ampd" in cpu.get("services", {}), "compose.cpu.yml: overrides ampd")
    docker = shutil.which("docker")
    if docker:
        r = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if r.returncode == 0:
            r = subprocess.run([docker, "compose", "-f", os.path.join(ROOT, "docker-compose.yml"),
                                "config", "--quiet"], capture_output=True, text=True)
            check(r.returncode == 0, f"docker compose config: {r.stderr.strip()}")
            print("docker compose config: checked")
        else:
            print("docker compose config: not checked (the docker CLI has no compose plugin)")


def prometheus():
    promtool = shutil.which("promtool")
    if not promtool:
        print("promtool: not installed; Prometheus config not checked")
        return
    for args in (["check", "config", "deploy/prometheus/prometheus.yml"],
                 ["check", "rules", "deploy/prometheus/alerts.yml"]):
        r = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True)
        check(r.returncode == 0, f"promtool {' '.join(args)}: {r.stdout}{r.stderr}")
    p = yaml.safe_load(read("deploy/prometheus/prometheus.yml"))
    targets = [t for sc in p["scrape_configs"] for s in sc.get("static_configs", [])
               for t in s["targets"]]
    check("ampd:9464" in targets, "prometheus.yml scrapes ampd:9464")


def grafana():
    ds = yaml.safe_load(read("deploy/grafana/provisioning/datasources/prometheus.yml"))
    d0 = ds["datasources"][0]
    check(d0["type"] == "prometheus" and d0["url"] == "http://prometheus:9090",
          "grafana datasource points at the compose prometheus")
    prov = yaml.safe_load(read("deploy/grafana/provisioning/dashboards/ampd.yml"))
    path = prov["providers"][0]["options"]["path"]
    c = yaml.safe_load(read("docker-compose.yml"))
    mounts = c["services"]["grafana"]["volumes"]
    check(any(m.split(":")[1] == path and m.startswith("./deploy/grafana/dashboards")
              for m in mounts), "grafana provider path is where compose mounts the dashboards")
    ddir = os.path.join(ROOT, "deploy/grafana/dashboards")
    uids = set()
    for name in sorted(os.listdir(ddir)):
        d = json.load(open(os.path.join(ddir, name)))
        uids.add(d["uid"])
        names = [v["name"] for v in d["templating"]["list"]]
        check("instance" in names, f"{name}: template variable instance")
        ids = [p["id"] for p in d["panels"]]
        check(len(ids) == len(set(ids)), f"{name}: unique panel ids")
        for p in d["panels"]:
            check(p.get("targets") and all(t.get("expr") for t in p["targets"]),
                  f"{name}: panel {p.get('title')} has queries")
            for t in p["targets"]:
                for var in re.findall(r"\$(\w+)", t["expr"]):
                    check(var in names or var == "__rate_interval",
                          f"{name}: {p['title']}: unknown variable ${var}")
    check({"ampd-fleet", "ampd-job"} <= uids, "dashboards ampd-fleet and ampd-job")
    job = json.load(open(os.path.join(ddir, "ampd-job.json")))
    check("job" in [v["name"] for v in job["templating"]["list"]],
          "ampd-job.json: template variable job")


def main():
    for f in (dockerfile, compose, prometheus, grafana):
        f()
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("deploy files: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
