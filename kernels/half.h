// Scalar IEEE binary16 (FP16) and bfloat16 (BF16) storage types and their exact
// conversions to and from FP32.
//
// Numerics (docs/ARCHITECTURE.md, Numerics):
//   * FP32 -> FP16 / BF16 rounds to nearest, ties to even, on the full FP32 value
//     (never double rounding). FP16 keeps subnormals (down to 2^-24); values whose
//     magnitude rounds past 65504 become +-inf. BF16 keeps FP32's exponent range, so
//     only values above 0x1.fep127 (after rounding) overflow.
//   * FP16 / BF16 -> FP32 is exact (both are subsets of FP32).
//   * NaN stays NaN in every direction and always comes out quiet: the payload bits
//     that fit are kept and the quiet bit is set, which is what x86 F16C
//     (vcvtps2ph / vcvtph2ps) and AVX-512 BF16 (vcvtneps2bf16) do with NaNs.
//     F16C also matches these functions on subnormals (it ignores MXCSR DAZ/FTZ), but
//     vcvtneps2bf16 treats FP32 subnormal inputs as zero: convert.cc redoes those lanes
//     with the integer rounding below, so the bulk conversions stay bit-identical.
//
// Header-only and constexpr so that the CUDA plugin, the reference backend and the
// tests can all use the same definition.
#pragma once

#include <bit>
#include <cstdint>

#include "kernels/host_device.h"

namespace ampd {

// ---- FP16 ------------------------------------------------------------------------

AMPD_HOST_DEVICE constexpr uint16_t f32_to_f16_bits(float value) {
  const uint32_t x = std::bit_cast<uint32_t>(value);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) {  // NaN: keep the top payload bits, force quiet.
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  // 65520 = 65504 + half an ulp: the tie rounds to the even neighbour 65536 = inf.
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (abs < 0x38800000u) {  // below 2^-14: FP16 subnormal or zero
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 -> 0
    // value = m * 2^(e-150); in units of 2^-24 that is m >> (126 - e).
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;  // may carry into 0x400 = 2^-14
    return static_cast<uint16_t>(sign | r);
  }
  // Normal: rebias the exponent (127 -> 15) and round away the 13 low mantissa bits.
  uint32_t r = abs - 0x38000000u;
  r += 0x0fffu + ((r >> 13) & 1u);
  return static_cast<uint16_t>(sign | (r >> 13));
}

AMPD_HOST_DEVICE constexpr float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) {
    if (mant == 0) return std::bit_cast<float>(sign | 0x7f800000u);
    return std::bit_cast<float>(sign | 0x7fc00000u | (mant << 13));  // quiet NaN
  }
  if (exp == 0) {
    // Subnormal or zero: mant * 2^-24, exact in FP32.
    const float mag = static_cast<float>(mant) * 0x1p-24f;
    return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(mag));
  }
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

// ---- BF16 ------------------------------------------------------------------------

AMPD_HOST_DEVICE constexpr uint16_t f32_to_bf16_bits(float value) {
  const uint32_t x = std::bit_cast<uint32_t>(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) {  // NaN: truncate the payload, force quiet.
    return static_cast<uint16_t>((x >> 16) | 0x0040u);
  }
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

AMPD_HOST_DEVICE constexpr float bf16_bits_to_f32(uint16_t b) {
  uint32_t x = static_cast<uint32_t>(b) << 16;
  if ((x & 0x7fffffffu) > 0x7f800000u) x |= 0x00400000u;  // quiet NaN
  return std::bit_cast<float>(x);
}

// ---- storage types -----------------------------------------------------------------
// Plain 16-bit storage with explicit conversions: arithmetic is always done in FP32
// (or wider) by the caller, so that every rounding step is visible in the code.

struct fp16 {
  uint16_t bits = 0;
  AMPD_HOST_DEVICE constexpr fp16() = default;
  AMPD_HOST_DEVICE constexpr explicit fp16(float f) : bits(f32_to_f16_bits(f)) {}
  AMPD_HOST_DEVICE static constexpr fp16 from_bits(uint16_t b) {
    fp16 h;
    h.bits = b;
    return h;
  }
  AMPD_HOST_DEVICE constexpr explicit operator float() const { return f16_bits_to_f32(bits); }
  AMPD_HOST_DEVICE constexpr float to_float() const { return f16_bits_to_f32(bits); }
};

struct bf16 {
  uint16_t bits = 0;
  AMPD_HOST_DEVICE constexpr bf16() = default;
  AMPD_HOST_DEVICE constexpr explicit bf16(float f) : bits(f32_to_bf16_bits(f)) {}
  AMPD_HOST_DEVICE static constexpr bf16 from_bits(uint16_t b) {
    bf16 h;
    h.bits = b;
    return h;
  }
  AMPD_HOST_DEVICE constexpr explicit operator float() const { return bf16_bits_to_f32(bits); }
  AMPD_HOST_DEVICE constexpr float to_float() const { return bf16_bits_to_f32(bits); }
};

static_assert(sizeof(fp16) == 2 && sizeof(bf16) == 2);

// FP16 limits, used by the loss scaler and the numerics telemetry.
inline constexpr float kF16Max = 65504.0f;
inline constexpr float kF16MinNormal = 0x1p-14f;
inline constexpr float kF16MinSubnormal = 0x1p-24f;

// Compile-time spot checks of the hand-derived cases (the tests cover every pattern).
static_assert(f32_to_f16_bits(65504.0f) == 0x7bff);
static_assert(f32_to_f16_bits(65519.996f) == 0x7bff);  // just below the overflow edge
static_assert(f32_to_f16_bits(65520.0f) == 0x7c00);    // the tie rounds to even = inf
static_assert(f32_to_f16_bits(0x1p-24f) == 0x0001);    // smallest subnormal
static_assert(f32_to_f16_bits(0x1p-25f) == 0x0000);    // tie between 0 and 2^-24 -> 0
static_assert(f32_to_f16_bits(0x1.8p-25f) == 0x0001);
static_assert(f32_to_f16_bits(1.0f + 0x1p-11f) == 0x3c00);      // tie -> even (down)
static_assert(f32_to_f16_bits(1.0f + 3 * 0x1p-11f) == 0x3c02);  // tie -> even (up)
static_assert(f32_to_bf16_bits(1.0f + 0x1p-8f) == 0x3f80);      // tie -> even (down)
static_assert(f32_to_bf16_bits(1.0f + 3 * 0x1p-8f) == 0x3f82);  // tie -> even (up)
static_assert(f16_bits_to_f32(0x0001) == 0x1p-24f);
static_assert(bf16_bits_to_f32(0x7f7f) == 0x1.fep127f);

}  // namespace ampd
