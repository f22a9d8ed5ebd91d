#!/usr/bin/env python3
"""Checks ampd's FP16 / BF16 conversions against numpy.float16 and ml_dtypes.bfloat16.

Usage: check_conversions.py DUMP_DIR   (DUMP_DIR written by the conversion_dump tool)

For every implementation conversion_dump found on the CPU:
  * FP32 -> FP16 and FP32 -> BF16 of every input: bit-exact where the reference result is
    not NaN (so rounding, ties, signed zeros, subnormals and overflow to inf all count);
    where it is NaN, ampd's result must be a quiet NaN. NaN payloads are not compared:
    numpy's software FP32 -> FP16 keeps signaling NaNs signaling, its SIMD path quiets
    them, and ml_dtypes does its own thing; ampd's payload rule is tested in C++.
  * FP16 -> FP32 and BF16 -> FP32 of all 65536 patterns, the same way.
Plus the generic convert() for FP16 <-> BF16 (through FP32, rounded once).
Exit status 0 when everything matches, 1 otherwise.
"""

import pathlib
import sys

import ml_dtypes
import numpy as np

MAX_REPORTED = 10


def load(path, dtype):
    return np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<"))


def nan_mask(bits, exp_mask, mant_mask):
    return ((bits & exp_mask) == exp_mask) & ((bits & mant_mask) != 0)


class Checker:
    def __init__(self):
        self.failures = 0
        self.checks = 0

    def compare(self, what, inputs, got, want, exp_mask, mant_mask, quiet_bit):
        """got / want: unsigned bit patterns of the same width; inputs for messages."""
        self.checks += 1
        if len(got) != len(want):
            print(f"  {what}: {len(got)} values in the dump, {len(want)} expected")
            self.failures += 1
            return
        got = got.astype(np.uint64)
        want = want.astype(np.uint64)
        want_nan = nan_mask(want, exp_mask, mant_mask)
        got_quiet_nan = nan_mask(got, exp_mask, mant_mask) & ((got & quiet_bit) != 0)
        # Not NaN in the reference: every bit counts (a NaN from ampd differs too).
        bad = np.flatnonzero((~want_nan & (got != want)) | (want_nan & ~got_quiet_nan))
        n_bad = len(bad)
        status = "ok" if n_bad == 0 else f"{n_bad} MISMATCHES"
        print(f"  {what}: {len(got)} values ({int(want_nan.sum())} NaN): {status}")
        for i in bad[:MAX_REPORTED]:
            print(f"    input 0x{int(inputs[i]):08x}: ampd 0x{int(got[i]):x}, "
                  f"reference 0x{int(want[i]):x}")
        self.failures += n_bad


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = pathlib.Path(sys.argv[1])
    print(f"numpy {np.__version__}, ml_dtypes {ml_dtypes.__version__}")

    inputs = load(d / "inputs_f32.bin", np.uint32)
    patterns = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    with np.errstate(all="ignore"):  # overflow to inf and NaN casts are expected
        x = inputs.view(np.float32)
        ref_f16 = x.astype(np.float16).view(np.uint16)
        ref_bf16 = x.astype(ml_dtypes.bfloat16).view(np.uint16)
        ref_f16_to_f32 = patterns.view(np.float16).astype(np.float32).view(np.uint32)
        ref_bf16_to_f32 = patterns.view(ml_dtypes.bfloat16).astype(np.float32).view(np.uint32)
        # FP16 <-> BF16 as defined: widen exactly to FP32, round once.
        ref_f16_to_bf16 = (patterns.view(np.float16).astype(np.float32)
                           .astype(ml_dtypes.bfloat16).view(np.uint16))
        ref_bf16_to_f16 = (patterns.view(ml_dtypes.bfloat16).astype(np.float32)
                           .astype(np.float16).view(np.uint16))

    f16 = dict(exp_mask=0x7C00, mant_mask=0x03FF, quiet_bit=0x0200)
    bf16 = dict(exp_mask=0x7F80, mant_mask=0x007F, quiet_bit=0x0040)
    f32 = dict(exp_mask=0x7F800000, mant_mask=0x007FFFFF, quiet_bit=0x00400000)

    c = Checker()
    impls = (d / "impls.txt").read_text().split()
    if not impls:
        print("no implementations in the dump", file=sys.stderr)
        return 1
    for impl in impls:
        print(f"{impl}:")
        c.compare("f32 -> f16 vs numpy.float16", inputs,
                  load(d / impl / "f32_to_f16.bin", np.uint16), ref_f16, **f16)
        c.compare("f32 -> bf16 vs ml_dtypes.bfloat16", inputs,
                  load(d / impl / "f32_to_bf16.bin", np.uint16), ref_bf16, **bf16)
        c.compare("f16 -> f32 vs numpy", patterns, load(d / impl / "f16_to_f32.bin", np.uint32),
                  ref_f16_to_f32, **f32)
        c.compare("bf16 -> f32 vs ml_dtypes", patterns,
                  load(d / impl / "bf16_to_f32.bin", np.uint32), ref_bf16_to_f32, **f32)
    print("convert():")
    c.compare("f16 -> bf16", patterns, load(d / "convert_f16_to_bf16.bin", np.uint16),
              ref_f16_to_bf16, **bf16)
    c.compare("bf16 -> f16", patterns, load(d / "convert_bf16_to_f16.bin", np.uint16),
              ref_bf16_to_f16, **f16)

    if c.failures:
        print(f"check_conversions: {c.failures} mismatches in {c.checks} comparisons")
        return 1
    print(f"check_conversions: all {c.checks} comparisons match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
