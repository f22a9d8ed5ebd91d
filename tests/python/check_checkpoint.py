#!/usr/bin/env python3
"""Reads an ampd checkpoint with numpy alone and checks that it is a usable model.

usage: check_checkpoint.py CHECKPOINT DIGITS_CSV_GZ [MIN_ACCURACY]

Parses the safetensors header by hand (8-byte little-endian length, JSON), checks the
metadata ampd promises (step, scaler state, RNG, spec, precision, standardization), then
rebuilds the MLP from the FP32 master weights in PyTorch's nn.Linear layout
(y = x W^T + b) and measures its accuracy on the digits data.
"""
import gzip
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    data = blob[8 + n :]
    tensors = {}
    end_max = 0
    for name, info in header.items():
        assert info["dtype"] == "F32", (name, info["dtype"])
        b, e = info["data_offsets"]
        end_max = max(end_max, e)
        arr = np.frombuffer(data[b:e], dtype="<f4").reshape(info["shape"])
        tensors[name] = arr
    assert end_max == len(data), "tensor bytes do not cover the buffer"
    return tensors, meta


def main():
    path, digits, min_acc = sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.95
    tensors, meta = read_safetensors(path)
    for key in ("ampd.format", "ampd.step", "ampd.scaler", "ampd.rng", "ampd.spec",
                "ampd.precision", "ampd.checksum", "ampd.header_checksum"):
        assert key in meta, f"metadata lacks {key}"
    assert meta["ampd.format"] == "ampd-checkpoint-v2"
    scaler = json.loads(meta["ampd.scaler"])
    assert "scale" in scaler and "growth_tracker" in scaler, scaler
    spec = json.loads(meta["ampd.spec"])
    step = int(meta["ampd.step"])
    assert step > 0

    rows = np.loadtxt(gzip.open(digits, "rt"), delimiter=",", dtype=np.float64)
    x, labels = rows[:, :-1].astype(np.float32), rows[:, -1].astype(np.int64)
    if "ampd.standardization" in meta:
        st = json.loads(meta["ampd.standardization"])
        x = (x - np.array(st["mean"], np.float32)) / np.array(st["stddev"], np.float32)

    h = x
    for i, layer in enumerate(spec["model"]["layers"]):
        (kind,) = layer.keys()
        if kind == "linear":
            w = tensors[f"{i}.weight"]
            h = h @ w.T
            if f"{i}.bias" in tensors:
                h = h + tensors[f"{i}.bias"]
        elif kind == "relu":
            h = np.maximum(h, 0)
        elif kind == "tanh":
            h = np.tanh(h)
        elif kind == "dropout":
            pass
        else:
            raise SystemExit(f"check_checkpoint.py does not model layer kind {kind}")
    acc = float((h.argmax(axis=1) == labels).mean())
    print(f"checkpoint {path}: step {step}, precision {meta['ampd.precision']}, "
          f"scale {scaler['scale']}, {len(tensors)} tensors, numpy accuracy on digits {acc:.4f}")
    assert acc >= min_acc, f"accuracy {acc} < {min_acc}"


if __name__ == "__main__":
    main()
