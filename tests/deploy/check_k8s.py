"""deploy/k8s: kubernetes-validate --strict on every built-in kind (and a broken copy must
fail, so that a validator that accepts anything is caught), a minimal schema of our own for
the ServiceMonitor (a CRD: kubernetes-validate has no schema for it), and the
deployment's invariants: GPU limit, gRPC probes on 50051, grace period vs the drain, PVC,
Service ports, AMPD_* configuration.

    python check_k8s.py SOURCE_DIR KUBERNETES_VALIDATE
"""
import copy
import os
import re
import subprocess
import sys
import tempfile

import jsonschema
import yaml

ROOT, KV = sys.argv[1], sys.argv[2]
K8S = os.path.join(ROOT, "deploy", "k8s")
VERSIONS = ["1.29.0", None]  # the oldest we claim (native gRPC probes are GA in 1.27), and the newest known
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def validate(path):
    outs = []
    for v in VERSIONS:
        args = [KV, "--strict", "--quiet"] + (["-k", v] if v else []) + [path]
        r = subprocess.run(args, capture_output=True, text=True)
        outs.append((v, r.returncode, r.stdout + r.stderr))
    return outs


docs = {}
for name in sorted(os.listdir(K8S)):
    if not name.endswith(".yaml") or name == "kustomization.yaml":
        continue
    path = os.path.join(K8S, name)
    for d in yaml.safe_load_all(open(path)):
        docs[(d["kind"], d["metadata"]["name"])] = d
    if name == "servicemonitor.yaml":
        continue
    for v, rc, out in validate(path):
        check(rc == 0, f"kubernetes-validate {name} (k8s {v or 'latest'}): {out.strip()}")

# Negative control: an unknown field in the pod spec must be rejected.
sts = docs[("StatefulSet", "ampd")]
broken = copy.deepcopy(sts)
broken["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {}
with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    yaml.safe_dump(broken, f)
try:
    check(all(rc != 0 for _, rc, _ in validate(f.name)),
          "kubernetes-validate accepted a StatefulSet with an unknown field")
finally:
    os.unlink(f.name)

# ServiceMonitor (monitoring.coreos.com/v1): the fields we use, typed as the operator's CRD.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object",
                                                   "additionalProperties": {"type": "string"}},
                                   "matchExpressions": {"type": "array"}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string",
                                              "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}
sm = docs[("ServiceMonitor", "ampd")]
try:
    jsonschema.validate(sm, SERVICE_MONITOR)
except jsonschema.ValidationError as e:
    failures.append(f"ServiceMonitor: {e.message}")

# Invariants.
svc = docs[("Service", "ampd")]
ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
check(ports == {"grpc": 50051, "metrics": 9464}, f"Service ports: {ports}")
check(all(svc["metadata"]["labels"].get(k) == v
          for k, v in sm["spec"]["selector"]["matchLabels"].items()),
      "the ServiceMonitor selects the ampd Service")
check(any(e["port"] == "metrics" for e in sm["spec"]["endpoints"]),
      "the ServiceMonitor scrapes the metrics port")
pod = sts["spec"]["template"]["spec"]
c = pod["containers"][0]
check(c["resources"]["limits"].get("nvidia.com/gpu") in ("1", 1), "GPU limit nvidia.com/gpu")
for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
    check(c.get(probe, {}).get("grpc", {}).get("port") == 50051, f"{probe}: grpc on 50051")
cm = docs[("ConfigMap", "ampd-config")]
check(all(k.startswith("AMPD_") for k in cm["data"]), "ConfigMap keys are AMPD_*")
check(any(e.get("configMapRef", {}).get("name") == "ampd-config" for e in c.get("envFrom", [])),
      "the container takes its env from ampd-config")
m = re.fullmatch(r"(\d+)s", cm["data"]["AMPD_SHUTDOWN_TIMEOUT"])
drain = int(m.group(1)) if m else 0
pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
pre_s = int(pre[-1]) if pre and pre[0] == "sleep" else 0
grace = pod["terminationGracePeriodSeconds"]
check(drain > 0 and grace >= pre_s + drain + 5,
      f"terminationGracePeriodSeconds {grace} >= preStop {pre_s} + drain {drain} + 5")
check(pod["securityContext"].get("runAsNonRoot") is True, "runAsNonRoot")
mounts = {v["mountPath"]: v["name"] for v in c["volumeMounts"]}
check(mounts.get(cm["data"]["AMPD_STATE_DIR"]) in
      [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]],
      "the state dir is on the PersistentVolumeClaim")

if failures:
    print("FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print(f"deploy/k8s: ok ({len(docs)} objects; kubernetes-validate --strict, "
      f"ServiceMonitor against its minimal schema)")
