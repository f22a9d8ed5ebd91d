#!/usr/bin/env python3
"""Submit a job file to an ampd server and watch it: a Python client of ampd.v1.Trainer.

    python3 client/python/ampd_client.py examples/digits-fp16.yaml
    python3 client/python/ampd_client.py --server gpu-box:50051 job.yaml
    python3 client/python/ampd_client.py --server gpu-box:50051 --ca-cert ca.crt \
        --token-file ~/.ampd-token job.yaml        # a server with TLS and a token

The gRPC stubs are generated from proto/ampd/v1/*.proto with protoc and Debian's
grpc_python_plugin (python3-grpcio has no grpc_tools): into a temporary directory on every
run, or once into --gen-dir (see README.md). The job file is YAML (PyYAML) or JSON, read
into a dict and parsed into ampd.v1.JobSpec by protobuf's json_format.ParseDict: the same
protobuf JSON mapping the server and ampctl use.

Exit status: 0 the job succeeded, 1 it failed or was cancelled, 2 bad job file or rejected
spec (or an unreadable token or CA file), 3 server unreachable (or the TLS handshake failed),
4 job not found, 7 not authenticated (wrong or missing token), 130 Ctrl-C (the job keeps
running).
"""

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTOS = ("ampd/v1/job.proto", "ampd/v1/trainer.proto")


def generate_stubs(proto_dir, out_dir, plugin="/usr/bin/grpc_python_plugin"):
    """Runs protoc: ampd/v1/{job,trainer}_pb2.py and trainer_pb2_grpc.py under out_dir."""
    protoc = shutil.which("protoc")
    if protoc is None:
        sys.exit("ampd_client: protoc not found (apt-get install protobuf-compiler)")
    if not os.path.exists(plugin):
        sys.exit(f"ampd_client: {plugin} not found (apt-get install protobuf-compiler-grpc)")
    os.makedirs(out_dir, exist_ok=True)
    cmd = [protoc, f"--plugin=protoc-gen-grpc_python={plugin}", f"--python_out={out_dir}",
           f"--grpc_python_out={out_dir}", "-I", proto_dir]
    cmd += [os.path.join(proto_dir, p) for p in PROTOS]
    subprocess.run(cmd, check=True)


def load_stubs(proto_dir, gen_dir=None):
    """Imports the generated modules, generating them first when gen_dir lacks them."""
    if gen_dir is None:
        gen_dir = tempfile.mkdtemp(prefix="ampd-stubs-")
        atexit.register(shutil.rmtree, gen_dir, True)
    if not os.path.exists(os.path.join(gen_dir, "ampd", "v1", "trainer_pb2_grpc.py")):
        generate_stubs(proto_dir, gen_dir)
    sys.path.insert(0, gen_dir)
    from ampd.v1 import job_pb2, trainer_pb2, trainer_pb2_grpc  # noqa: E402 (generated)
    return job_pb2, trainer_pb2, trainer_pb2_grpc


def normalize(value, descriptor):
    """Makes a YAML-loaded dict read like the C++ parser reads YAML (client/job_spec_io.cc).

    An empty value given to a message field is that message with its defaults (`- relu:`
    is {}), a plain scalar given to a string field is a string (`name: 2024`), and a
    number written as PyYAML leaves it (YAML 1.1 reads `1e-5` as a string) is a number.
    Unknown keys pass through for ParseDict to report.
    """
    if not isinstance(value, dict):
        return value
    from google.protobuf.descriptor import FieldDescriptor as F
    out = {}
    for key, v in value.items():
        field = descriptor.fields_by_name.get(key) or next(
            (f for f in descriptor.fields if f.json_name == key), None)
        if field is None:
            out[key] = v
            continue
        repeated = field.label == F.LABEL_REPEATED
        items = v if repeated and isinstance(v, list) else None

        def one(x):
            if field.type == F.TYPE_MESSAGE:
                return {} if x is None else normalize(x, field.message_type)
            if field.type == F.TYPE_STRING and isinstance(x, (bool, int, float)):
                return str(x).lower() if isinstance(x, bool) else str(x)
            if field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE) and isinstance(x, str):
                try:
                    return float(x)
                except ValueError:
                    return x
            return x

        if items is not None:
            out[key] = [one(x) for x in items]
        elif repeated and v is None:
            out[key] = []
        else:
            out[key] = one(v)
    return out


def read_job_spec(path, job_pb2):
    """YAML or JSON file -> ampd.v1.JobSpec (syntax and schema only; the server validates)."""
    from google.protobuf import json_format
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml  # python3-yaml
        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("expected a mapping of JobSpec fields at the top level")
    spec = job_pb2.JobSpec()
    json_format.ParseDict(normalize(data, spec.DESCRIPTOR), spec)
    return spec


def describe_event(event, job_pb2):
    kind = event.WhichOneof("kind")
    if kind == "progress":
        p = event.progress
        return (f"step {p.step}/{p.total_steps}  epoch {p.epoch}  loss {p.loss:.4f}  "
                f"lr {p.learning_rate:.2e}  scale {p.loss_scale:g}  "
                f"skipped {p.overflow_skipped_steps}  {p.samples_per_second:.0f} samples/s")
    if kind == "evaluation":
        e = event.evaluation
        return (f"eval at step {e.step}: val_loss {e.val_loss:.4f}  "
                f"val_accuracy {e.val_accuracy:.4f}")
    if kind == "overflow":
        o = event.overflow
        return (f"overflow at step {o.step}: loss scale {o.scale_before:g} -> "
                f"{o.scale_after:g}, step skipped ({', '.join(o.tensors)})")
    if kind == "checkpoint":
        return f"checkpoint at step {event.checkpoint.step}: {event.checkpoint.path}"
    if kind == "state_change":
        s = event.state_change
        name = job_pb2.JobState.Name(s.state)
        return f"job {event.job_id} {name}" + (f": {s.reason}" if s.reason else "")
    return None


def read_token(args):
    """The bearer token, as ampctl finds it: --token, --token-file, AMPD_TOKEN,
    AMPD_TOKEN_FILE. Returns (token or "", where it came from, error message or None)."""
    if args.token:
        return args.token.strip(), "--token", None
    path, source = args.token_file, "--token-file"
    if not path:
        if os.environ.get("AMPD_TOKEN"):
            return os.environ["AMPD_TOKEN"].strip(), "AMPD_TOKEN", None
        path, source = os.environ.get("AMPD_TOKEN_FILE", ""), "AMPD_TOKEN_FILE"
    if not path:
        return "", "", None
    try:
        with open(path, encoding="ascii") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        return "", source, f"{source} {path}: cannot read: {getattr(e, 'strerror', None) or e}"
    if not token:
        return "", source, f"{source} {path}: the token is empty"
    return token, f"{source} {path}", None


def make_channel(args, grpc):
    """A TLS channel (grpc.ssl_channel_credentials) when --tls or --ca-cert, else plaintext."""
    if not (args.tls or args.ca_cert or args.tls_server_name):
        return grpc.insecure_channel(args.server)
    roots = None
    if args.ca_cert:
        with open(args.ca_cert, "rb") as f:
            roots = f.read()
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(args.server, grpc.ssl_channel_credentials(root_certificates=roots),
                               options=options)


def main():
    parser = argparse.ArgumentParser(
        description="Submit a job file to ampd and watch it until it ends.",
        epilog="Example: python3 client/python/ampd_client.py examples/digits-fp16.yaml")
    parser.add_argument("job_file", help="job spec, YAML or JSON (ampd.v1.JobSpec)")
    parser.add_argument("--server", default=os.environ.get("AMPD_SERVER", "127.0.0.1:50051"),
                        help="ampd's gRPC address (env AMPD_SERVER; default %(default)s)")
    parser.add_argument("--token", default="",
                        help="bearer token, if the server requires one (env AMPD_TOKEN; "
                             "visible in `ps`: prefer --token-file)")
    parser.add_argument("--token-file", default="",
                        help="read the bearer token from this file (env AMPD_TOKEN_FILE)")
    parser.add_argument("--tls", action="store_true",
                        default=os.environ.get("AMPD_TLS", "") not in ("", "0", "false"),
                        help="connect with TLS, trusting the system's CAs unless --ca-cert "
                             "(env AMPD_TLS)")
    parser.add_argument("--ca-cert", default=os.environ.get("AMPD_CA_CERT", ""),
                        help="trust server certificates signed by this PEM CA (implies --tls; "
                             "env AMPD_CA_CERT)")
    parser.add_argument("--tls-server-name", default=os.environ.get("AMPD_TLS_SERVER_NAME", ""),
                        help="the name the server certificate must carry, if not the host "
                             "(implies --tls; env AMPD_TLS_SERVER_NAME)")
    parser.add_argument("--request-id", default="",
                        help="idempotency key: a retry with the same ID returns the same job")
    parser.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR,
                        help="where ampd/v1/*.proto are (default: this repository's proto/)")
    parser.add_argument("--gen-dir", default=os.environ.get("AMPD_PY_STUBS"),
                        help="generated stubs (made here if missing; default: a temp dir)")
    parser.add_argument("--reconnects", type=int, default=10,
                        help="reconnect this many times when the stream drops")
    parser.add_argument("--timeout", type=float, default=30, help="seconds per unary call")
    args = parser.parse_args()

    job_pb2, trainer_pb2, trainer_pb2_grpc = load_stubs(args.proto_dir, args.gen_dir)
    import grpc  # python3-grpcio

    try:
        spec = read_job_spec(args.job_file, job_pb2)
    except Exception as e:  # yaml, json and json_format errors alike
        print(f"ampd_client: {args.job_file}: {e}", file=sys.stderr)
        return 2

    token, token_source, error = read_token(args)
    if error:
        print(f"ampd_client: {error}", file=sys.stderr)
        return 2
    # Per-call metadata rather than call credentials: it works on plaintext channels too
    # (a token without TLS on loopback).
    metadata = [("authorization", f"Bearer {token}")] if token else []
    try:
        channel = make_channel(args, grpc)
    except OSError as e:
        print(f"ampd_client: --ca-cert {args.ca_cert}: cannot read: {e.strerror}", file=sys.stderr)
        return 2
    stub = trainer_pb2_grpc.TrainerStub(channel)

    def fail(err, what):
        code = err.code()
        print(f"ampd_client: {what}: {code.name}: {err.details()}", file=sys.stderr)
        if code == grpc.StatusCode.UNAVAILABLE:
            print(f"  cannot reach ampd at {args.server} - is `ampd serve` running? "
                  "set --server or AMPD_SERVER; a server with TLS needs --ca-cert (or --tls), "
                  "one without refuses it", file=sys.stderr)
            return 3
        if code == grpc.StatusCode.UNAUTHENTICATED:
            sent = f"the token from {token_source}" if token else "no token"
            print(f"  the client sent {sent}: give the server's token with --token-file "
                  "(or AMPD_TOKEN_FILE, AMPD_TOKEN)", file=sys.stderr)
            return 7
        return {grpc.StatusCode.INVALID_ARGUMENT: 2, grpc.StatusCode.NOT_FOUND: 4}.get(code, 10)

    try:
        job = stub.SubmitJob(
            trainer_pb2.SubmitJobRequest(spec=spec, client_request_id=args.request_id),
            timeout=args.timeout, metadata=metadata)
    except grpc.RpcError as e:
        return fail(e, f"submit {args.job_file}")
    print(f"submitted job {job.id} ({job.spec.name}): {job_pb2.JobState.Name(job.state)}",
          flush=True)

    # Watch: replay from the start, then live; on a dropped stream, resume after the last
    # sequence number seen, a bounded number of times.
    last_seq, failures = 0, 0
    while True:
        try:
            stream = stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id, since_seq=last_seq),
                                   metadata=metadata)
            for event in stream:
                if event.seq <= last_seq:
                    continue
                last_seq, failures = event.seq, 0
                line = describe_event(event, job_pb2)
                if line:
                    print(line, flush=True)
            job = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id), timeout=args.timeout,
                              metadata=metadata)
            if job.state in (job_pb2.SUCCEEDED, job_pb2.FAILED, job_pb2.CANCELLED):
                break
            reason = "the stream ended before the job did"
        except KeyboardInterrupt:
            print(f"\nstopped watching job {job.id} (it keeps running)", file=sys.stderr)
            return 130
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                return fail(e, f"watch job {job.id}")
            if failures >= args.reconnects:
                return fail(e, f"watch job {job.id} (gave up after {failures} reconnects)")
            reason = e.details()
        failures += 1
        delay = min(5.0, 0.5 * 2 ** (failures - 1))
        print(f"connection lost ({reason}); reconnecting from event {last_seq} in {delay:g} s",
              file=sys.stderr, flush=True)
        time.sleep(delay)

    m = job.metrics
    print(f"\n{job_pb2.JobState.Name(job.state)}  job {job.id}  ({job.precision} on {job.backend})")
    if job.failure_reason:
        print(f"  reason:        {job.failure_reason}")
    print(f"  steps:         {job.step}/{job.total_steps}")
    print(f"  train_loss:    {m.train_loss:.4f}")
    print(f"  val_loss:      {m.val_loss:.4f}")
    print(f"  val_accuracy:  {m.val_accuracy:.4f}")
    print(f"  loss_scale:    {job.loss_scale:g}")
    print(f"  skipped steps: {job.overflow_skipped_steps}")
    print(f"  checkpoint:    {job.checkpoint or '-'}")
    return 0 if job.state == job_pb2.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
