#!/usr/bin/python3
"""Checks a file written by tests/engine/safetensors_write_sample against the safetensors
format, reading it with nothing but the standard library and numpy; when the `safetensors`
package is importable, it loads the file with it as well (and with torch when that is too).

Usage: check_safetensors.py FILE.safetensors
Exit status: 0 when every check passes, 1 on a mismatch, 77 when numpy is missing (ctest
reports the test as skipped).
"""

import json
import struct
import sys
import zlib

try:
    import numpy as np
except ImportError:
    print("SKIP: numpy is not importable by", sys.executable)
    sys.exit(77)

# What safetensors_write_sample.cc writes: name -> (dtype, shape, values as float64/int).
EXPECTED = {
    "fc1.weight": ("F32", [2, 3], [0.0, 1.0, -2.5, 3.25, float(np.float32(1e-3)), -65504.0]),
    "fc1.bias": ("F32", [3], [0.5, -0.5, 7.0]),
    "half": ("F16", [2, 3], [1.0, -2.0, 0.5, 65504.0, 2.0**-24, -0.0]),
    "brain": ("BF16", [2, 2], [1.0, -2.0, 3.140625, 0.5]),
    "labels": ("I32", [4], [0, -1, 2147483647, -2147483648]),
    "mask": ("U8", [5], [0, 1, 127, 128, 255]),
    "scale": ("F32", [], [65536.0]),
}
# The writer lays tensors out by element size (4, 2, then 1 byte), in order within a size.
LAYOUT = ["fc1.weight", "fc1.bias", "labels", "scale", "half", "brain", "mask"]
EXPECTED_METADATA = {
    "step": "1234",
    "scaler": '{"scale":65536.0,"growth_tracker":7}',
    "note": "h\u00e9llo \u2713",
    "ampd.format": "ampd-checkpoint-v1",
}
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "U8": 1}

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def decode(dtype, raw):
    """Tensor bytes -> float64/int64 numpy array, by hand from the little-endian bytes."""
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float64)
    if dtype == "BF16":  # the high half of an FP32
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    if dtype == "I32":
        return np.frombuffer(raw, dtype="<i4").astype(np.int64)
    if dtype == "U8":
        return np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    raise ValueError("unexpected dtype " + dtype)


def same(got, want):
    """Exact equality, sign of zero included."""
    want = np.asarray(want, dtype=got.dtype)
    return got.shape == want.shape and bool(
        np.all((got == want) & (np.signbit(got) == np.signbit(want)))
    )


def check_by_hand(path):
    data = open(path, "rb").read()
    check(len(data) >= 8, "file has the 8-byte prefix")
    (n,) = struct.unpack("<Q", data[:8])
    check(n % 8 == 0, "header size %d is a multiple of 8" % n)
    check(8 + n <= len(data), "header fits in the file")
    text = data[8 : 8 + n].decode("utf-8")
    check(text.startswith("{") and text.rstrip(" ").endswith("}"), "header is {...} + spaces")
    header = json.loads(text)
    buffer = data[8 + n :]

    keys = list(header.keys())
    check(keys[0] == "__metadata__", "__metadata__ comes first")
    check(keys[1:] == LAYOUT, "tensor keys in layout order: %s" % keys[1:])

    meta = header["__metadata__"]
    for k, v in EXPECTED_METADATA.items():
        check(meta.get(k) == v, "metadata %s = %r (got %r)" % (k, v, meta.get(k)))
    check(
        set(meta) == set(EXPECTED_METADATA) | {"ampd.checksum", "ampd.header_checksum"},
        "metadata keys %s" % sorted(meta),
    )
    want_crc = "crc32:%08x" % (zlib.crc32(buffer) & 0xFFFFFFFF)
    got_crc = meta.get("ampd.checksum")
    check(got_crc == want_crc, "checksum %s (got %s)" % (want_crc, got_crc))
    # ampd.header_checksum: CRC-32 of the parsed header in canonical form (engine/safetensors.h):
    # metadata sorted by key (UTF-8 bytes), key NUL value NUL, minus both checksums; then 0x01;
    # then per tensor in offset order: name NUL dtype NUL dims joined by "," NUL begin,end NUL.
    canon = b""
    for k in sorted(meta, key=lambda k: k.encode("utf-8")):
        if k not in ("ampd.checksum", "ampd.header_checksum"):
            canon += k.encode("utf-8") + b"\0" + meta[k].encode("utf-8") + b"\0"
    canon += b"\x01"
    entries = sorted(
        ((v["data_offsets"], k, v) for k, v in header.items() if k != "__metadata__"),
        key=lambda e: tuple(e[0]),
    )
    for (begin, end), k, v in entries:
        canon += k.encode("utf-8") + b"\0" + v["dtype"].encode() + b"\0"
        canon += ",".join(str(d) for d in v["shape"]).encode() + b"\0"
        canon += ("%d,%d" % (begin, end)).encode() + b"\0"
    want_hcrc = "crc32:%08x" % (zlib.crc32(canon) & 0xFFFFFFFF)
    got_hcrc = meta.get("ampd.header_checksum")
    check(got_hcrc == want_hcrc, "header checksum %s (got %s)" % (want_hcrc, got_hcrc))

    pos = 0
    for name in LAYOUT:
        dtype, shape, values = EXPECTED[name]
        entry = header[name]
        check(entry["dtype"] == dtype, "%s dtype %s" % (name, entry["dtype"]))
        check(entry["shape"] == shape, "%s shape %s" % (name, entry["shape"]))
        begin, end = entry["data_offsets"]
        check(begin == pos, "%s starts where the previous tensor ended" % name)
        check(begin % ITEMSIZE[dtype] == 0, "%s aligned to its element size" % name)
        numel = int(np.prod(shape, dtype=np.int64))
        check(end - begin == ITEMSIZE[dtype] * numel, "%s size" % name)
        got = decode(dtype, buffer[begin:end])
        check(same(got, values), "%s values %s (got %s)" % (name, values, got.tolist()))
        pos = end
    check(pos == len(buffer), "tensors cover the buffer")


def check_with_package(path):
    try:
        import safetensors
    except ImportError:
        print("note: the safetensors package is not importable; checked by hand only")
        return
    print("also checking with safetensors", getattr(safetensors, "__version__", "?"))
    # numpy has no bfloat16: the numpy framework reads every other dtype.
    with safetensors.safe_open(path, framework="np") as f:
        meta = f.metadata()
        for k, v in EXPECTED_METADATA.items():
            check(meta.get(k) == v, "safetensors: metadata %s" % k)
        check(sorted(f.keys()) == sorted(EXPECTED), "safetensors: keys %s" % sorted(f.keys()))
        for name, (dtype, shape, values) in EXPECTED.items():
            if dtype == "BF16":
                continue
            t = f.get_tensor(name)
            check(list(t.shape) == shape, "safetensors: %s shape" % name)
            wide = np.float64 if dtype[0] == "F" else np.int64
            check(same(t.reshape(-1).astype(wide), values), "safetensors: %s values" % name)
    try:
        import torch
        from safetensors.torch import load_file
    except ImportError:
        return
    print("also checking with safetensors.torch", torch.__version__)
    tensors = load_file(path)
    for name, (dtype, shape, values) in EXPECTED.items():
        t = tensors[name]
        check(list(t.shape) == shape, "torch: %s shape" % name)
        flat = t.reshape(-1).to(torch.float64 if t.is_floating_point() else torch.int64).numpy()
        check(same(flat, values), "torch: %s values" % name)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    check_by_hand(sys.argv[1])
    check_with_package(sys.argv[1])
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("OK: %s matches the safetensors format and the expected values" % sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
