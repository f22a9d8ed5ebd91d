// Scalar FP16 / BF16 conversions of kernels/half.h: every 16-bit pattern, hand-derived
// rounding cases, and a large FP32 sample checked against a brute-force oracle that
// shares no code with half.h.

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "kernels/half.h"

namespace ampd {
namespace {

uint32_t bits_of(float f) {
  return std::bit_cast<uint32_t>(f);
}
float from_bits(uint32_t b) {
  return std::bit_cast<float>(b);
}

bool is_f16_nan(uint16_t h) {
  return (h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0;
}
bool is_bf16_nan(uint16_t b) {
  return (b & 0x7f80u) == 0x7f80u && (b & 0x007fu) != 0;
}

// ---- an independent oracle -------------------------------------------------------------
// A binary format with 1 sign bit, `exp_bits` exponent bits and `mant_bits` stored mantissa
// bits, decoded with ldexp straight from the IEEE 754 definition.
struct Format {
  int exp_bits;
  int mant_bits;
  uint32_t inf_bits() const { return ((1u << exp_bits) - 1u) << mant_bits; }
  uint32_t sign_bit() const { return 1u << (exp_bits + mant_bits); }
};
constexpr Format kF16Format{5, 10};
constexpr Format kBF16Format{8, 7};

// Magnitude of a non-negative pattern. The all-ones exponent with a zero mantissa (inf) is
// decoded as if the exponent range went on: 2^(emax+1), the value the round-to-nearest
// overflow rule compares against (IEEE 754 §4.3: round as if the exponent were unbounded;
// a result of 2^(emax+1) or more becomes inf).
double decode_magnitude(uint32_t mag, Format f) {
  const int bias = (1 << (f.exp_bits - 1)) - 1;
  const uint32_t e = mag >> f.mant_bits;
  const uint32_t m = mag & ((1u << f.mant_bits) - 1u);
  if (e == 0) return std::ldexp(static_cast<double>(m), 1 - bias - f.mant_bits);
  return std::ldexp(static_cast<double>((1u << f.mant_bits) | m),
                    static_cast<int>(e) - bias - f.mant_bits);
}

// Nearest pattern to a non-NaN float, ties to the even pattern, by brute force over a
// table of every non-negative value up to (and including) the inf pattern.
class Oracle {
 public:
  explicit Oracle(Format f) : format_(f) {
    for (uint32_t mag = 0; mag <= f.inf_bits(); ++mag) values_.push_back(decode_magnitude(mag, f));
  }

  uint16_t round(float x) const {
    const uint32_t sign = std::signbit(x) ? format_.sign_bit() : 0u;
    const double a = std::fabs(static_cast<double>(x));  // exact
    if (a >= values_.back()) return static_cast<uint16_t>(sign | format_.inf_bits());
    // Largest lo with values_[lo] <= a; then values_[lo] <= a < values_[lo + 1].
    uint32_t lo = 0, hi = format_.inf_bits();
    while (hi - lo > 1) {
      const uint32_t mid = lo + (hi - lo) / 2;
      (values_[mid] <= a ? lo : hi) = mid;
    }
    // |a - lo| < |hi - a|  <=>  a < (lo + hi) / 2. The midpoint has one significant bit
    // more than the format, so it is exact in double and this comparison is exact; the
    // subtraction hi - a would not be (2^-24 - 2^-149 needs 126 bits).
    const double midpoint = (values_[lo] + values_[hi]) / 2;
    uint32_t r;
    if (a < midpoint) {
      r = lo;
    } else if (a > midpoint) {
      r = hi;
    } else {
      r = (lo % 2 == 0) ? lo : hi;  // tie: the even mantissa
    }
    return static_cast<uint16_t>(sign | r);
  }

  // The exact value of a finite pattern, or +-2^(emax+1) for inf.
  double value(uint16_t bits) const {
    const double v = values_[bits & (format_.sign_bit() - 1u)];
    return (bits & format_.sign_bit()) ? -v : v;
  }

 private:
  Format format_;
  std::vector<double> values_;
};

// FP32 patterns on and around every boundary of the format: each representable value and
// each midpoint between neighbours, +-3 FP32 ulps, both signs.
std::vector<uint32_t> boundary_sample(const Oracle& oracle, Format f) {
  std::vector<uint32_t> out;
  auto around = [&](double v) {
    const uint32_t b = bits_of(static_cast<float>(v));  // exact: v has <= 12 bits
    for (int d = -3; d <= 3; ++d) {
      const uint32_t p = b + static_cast<uint32_t>(d);
      out.push_back(p);
      out.push_back(p ^ 0x80000000u);
    }
  };
  for (uint32_t mag = 0; mag < f.inf_bits(); ++mag) {
    around(oracle.value(static_cast<uint16_t>(mag)));
    around(
        (oracle.value(static_cast<uint16_t>(mag)) + oracle.value(static_cast<uint16_t>(mag + 1))) /
        2);
  }
  return out;
}

// Stride of the sweep over all FP32 patterns on top of the boundary sample: every 1021st
// pattern, or every pattern with AMPD_EXHAUSTIVE_CONVERT=1 (minutes).
uint64_t sweep_stride() {
  const char* exhaustive = std::getenv("AMPD_EXHAUSTIVE_CONVERT");
  return (exhaustive != nullptr && std::string(exhaustive) == "1") ? 1 : 1021;
}

// ---- every 16-bit pattern --------------------------------------------------------------

TEST(HalfTest, EveryF16PatternWidensExactlyAndRoundTrips) {
  const Oracle oracle(kF16Format);
  for (uint32_t i = 0; i <= 0xffff; ++i) {
    const auto h = static_cast<uint16_t>(i);
    const float f = f16_bits_to_f32(h);
    const uint16_t back = f32_to_f16_bits(f);
    if (is_f16_nan(h)) {
      // Quiet NaN, sign and the 10-bit payload moved to the top of FP32's mantissa.
      const uint32_t want = ((h & 0x8000u) << 16) | 0x7fc00000u | ((h & 0x03ffu) << 13);
      ASSERT_EQ(bits_of(f), want) << std::hex << i;
      ASSERT_EQ(back, h | 0x0200u) << std::hex << i;
    } else {
      if ((h & 0x7fffu) == 0x7c00u) {
        ASSERT_TRUE(std::isinf(f)) << std::hex << i;
      } else {
        ASSERT_EQ(static_cast<double>(f), oracle.value(h)) << std::hex << i;
      }
      ASSERT_EQ(std::signbit(f), (h & 0x8000u) != 0) << std::hex << i;  // +-0 and +-inf too
      ASSERT_EQ(back, h) << std::hex << i;
    }
  }
}

TEST(HalfTest, EveryBF16PatternWidensExactlyAndRoundTrips) {
  for (uint32_t i = 0; i <= 0xffff; ++i) {
    const auto b = static_cast<uint16_t>(i);
    const float f = bf16_bits_to_f32(b);
    const uint16_t back = f32_to_bf16_bits(f);
    if (is_bf16_nan(b)) {
      ASSERT_EQ(bits_of(f), (i << 16) | 0x00400000u) << std::hex << i;
      ASSERT_EQ(back, b | 0x0040u) << std::hex << i;
    } else {
      // BF16 is the top half of FP32, subnormals included.
      ASSERT_EQ(bits_of(f), i << 16) << std::hex << i;
      ASSERT_EQ(back, b) << std::hex << i;
    }
  }
}

// ---- hand-derived cases ----------------------------------------------------------------

struct Case {
  uint32_t f32_bits;
  uint16_t want;
  const char* why;
};

// FP16: exponent bias 15, 10 mantissa bits. In [1, 2) one ulp is 2^-10; subnormals are
// k * 2^-24 for k < 1024; the largest finite value is (2 - 2^-10) * 2^15 = 65504, whose
// mantissa (0x3ff) is odd.
const Case kF16Cases[] = {
    {bits_of(1.0f), 0x3c00, "1 = 2^0: exponent 15 -> 0x3c00"},
    {bits_of(1.0f + 0x1p-11f), 0x3c00, "1 + ulp/2: tie of 0x3c00 (even) and 0x3c01 -> 0x3c00"},
    {bits_of(1.0f + 0x1p-11f) + 1, 0x3c01, "one FP32 ulp above that tie -> up"},
    {bits_of(1.0f + 3 * 0x1p-11f), 0x3c02, "1 + 1.5 ulp: tie of 0x3c01 and 0x3c02 (even) -> up"},
    {bits_of(1.0f + 3 * 0x1p-11f) - 1, 0x3c01, "one FP32 ulp below that tie -> down"},
    {bits_of(-(1.0f + 0x1p-11f)), 0xbc00, "negative tie -> even magnitude, sign kept"},
    {bits_of(-(1.0f + 3 * 0x1p-11f)), 0xbc02, "negative tie -> even magnitude, sign kept"},
    {bits_of(65504.0f), 0x7bff, "65504 = (2 - 2^-10) * 2^15, the largest finite FP16"},
    {0x477fefff, 0x7bff,
     "65519.996 = 65520 - 2^-8 (FP32 ulp at 2^15 is 2^-8): below the midpoint of 65504 "
     "and 2^16 -> 65504"},
    {bits_of(65520.0f), 0x7c00,
     "65520 = 65504 + 16 = the midpoint of 65504 (odd) and 2^16 (even, past the range) -> "
     "ties to even = inf"},
    {bits_of(-65520.0f), 0xfc00, "the same, negative -> -inf"},
    {bits_of(1.0e6f), 0x7c00, "far above the range -> inf"},
    {bits_of(std::numeric_limits<float>::max()), 0x7c00, "FLT_MAX -> inf"},
    {bits_of(0x1p-14f), 0x0400, "2^-14, the smallest normal: exponent 1, mantissa 0"},
    {bits_of(0x1p-14f + 0x1p-25f), 0x0400,
     "2^-14 + 2^-25 (ulp/2 at 2^-14 is 2^-25): tie of 0x0400 (even) and 0x0401 -> down"},
    {bits_of(1023.5f * 0x1p-24f), 0x0400,
     "1023.5 * 2^-24: tie of 0x03ff (largest subnormal, odd) and 0x0400 -> carries into "
     "the exponent"},
    {bits_of(1023.25f * 0x1p-24f), 0x03ff, "1023.25 * 2^-24 -> the largest subnormal"},
    {bits_of(0x1p-24f), 0x0001, "2^-24, the smallest subnormal"},
    {bits_of(0x1p-25f), 0x0000, "2^-25: tie of 0 (even) and 2^-24 (odd) -> 0"},
    {bits_of(-0x1p-25f), 0x8000, "-2^-25 -> -0"},
    {bits_of(0x1p-25f) + 1, 0x0001, "just above 2^-25 -> 2^-24"},
    {bits_of(0x1.8p-25f), 0x0001, "1.5 * 2^-25 = 0.75 * 2^-24 -> 2^-24"},
    {bits_of(0x1p-26f), 0x0000, "2^-26 = 0.25 * 2^-24 -> 0"},
    {bits_of(2.5f * 0x1p-24f), 0x0002, "2.5 * 2^-24: tie of 2 (even) and 3 -> 2"},
    {bits_of(3.5f * 0x1p-24f), 0x0004, "3.5 * 2^-24: tie of 3 and 4 (even) -> 4"},
    {bits_of(-3.5f * 0x1p-24f), 0x8004, "the same, negative"},
    {0x00000001, 0x0000, "2^-149, the smallest FP32 subnormal -> +0"},
    {0x807fffff, 0x8000, "the largest FP32 subnormal, negative -> -0"},
    {bits_of(0.0f), 0x0000, "+0"},
    {bits_of(-0.0f), 0x8000, "-0 keeps its sign"},
    {0x7f800000, 0x7c00, "+inf"},
    {0xff800000, 0xfc00, "-inf"},
    {0x7fc00000, 0x7e00, "the default quiet NaN"},
    {0xffc00000, 0xfe00, "negative quiet NaN keeps its sign"},
    {0x7f800001, 0x7e00, "signaling NaN, payload only in the dropped low bits -> quiet NaN"},
    {0x7fa00000, 0x7f00, "signaling NaN 0x200000: payload bit kept (>> 13), quiet bit set"},
    {0x7f802000, 0x7e01, "signaling NaN with only bit 13 set: lowest kept payload bit"},
    {0x7fffffff, 0x7fff, "all-ones payload"},
};

// BF16: the top 16 bits of FP32 (exponent bias 127, 7 mantissa bits). In [1, 2) one ulp is
// 2^-7; the largest finite value is 0x7f7f = (2 - 2^-7) * 2^127 = 0x1.fep127 (odd); the
// subnormals are FP32's, k * 2^-133 for k < 128.
const Case kBF16Cases[] = {
    {bits_of(1.0f), 0x3f80, "1 = 2^0"},
    {bits_of(1.0f + 0x1p-8f), 0x3f80, "1 + ulp/2: tie of 0x3f80 (even) and 0x3f81 -> down"},
    {bits_of(1.0f + 0x1p-8f) + 1, 0x3f81, "just above that tie -> up"},
    {bits_of(1.0f + 3 * 0x1p-8f), 0x3f82, "1 + 1.5 ulp: tie of 0x3f81 and 0x3f82 (even) -> up"},
    {bits_of(1.0f + 3 * 0x1p-8f) - 1, 0x3f81, "just below that tie -> down"},
    {bits_of(-(1.0f + 3 * 0x1p-8f)), 0xbf82, "negative tie -> even magnitude"},
    {bits_of(0x1.fep127f), 0x7f7f, "0x1.fep127, the largest finite BF16"},
    {0x7f7f7fff, 0x7f7f, "just below the midpoint of 0x1.fep127 and 2^128 -> finite"},
    {0x7f7f8000, 0x7f80,
     "0x1.ffp127, the midpoint of 0x1.fep127 (odd) and 2^128 (even, past the range) -> "
     "inf"},
    {0xff7f8000, 0xff80, "the same, negative -> -inf"},
    {bits_of(std::numeric_limits<float>::max()), 0x7f80, "FLT_MAX = 0x1.fffffep127 -> inf"},
    {0x00800000, 0x0080, "2^-126, the smallest normal"},
    {0x007fffff, 0x0080,
     "the largest FP32 subnormal, 2^-126 - 2^-149: above the midpoint of 0x007f and 0x0080 "
     "-> rounds up to the smallest normal (not flushed)"},
    {0x807fffff, 0x8080, "the same, negative"},
    {0x00400000, 0x0040, "2^-127, a subnormal kept exactly"},
    {0x00010000, 0x0001, "2^-133, the smallest BF16 subnormal"},
    {0x00008000, 0x0000, "2^-134: tie of 0 (even) and 2^-133 -> 0"},
    {0x00008001, 0x0001, "just above that tie -> 2^-133"},
    {0x00018000, 0x0002, "1.5 * 2^-133: tie of 0x0001 and 0x0002 (even) -> up"},
    {0x00028000, 0x0002, "2.5 * 2^-133: tie of 0x0002 (even) and 0x0003 -> down"},
    {0x00000001, 0x0000, "2^-149 -> +0"},
    {0x80000001, 0x8000, "-2^-149 -> -0"},
    {bits_of(-0.0f), 0x8000, "-0"},
    {0x7f800000, 0x7f80, "+inf"},
    {0xff800000, 0xff80, "-inf"},
    {0x7fc00000, 0x7fc0, "the default quiet NaN"},
    {0x7f800001, 0x7fc0, "signaling NaN, payload only in the dropped bits -> quiet NaN"},
    {0xff812345, 0xffc1, "signaling NaN: top payload bits kept, quiet bit 0x40 set"},
    {0x7fbf0000, 0x7fff, "signaling NaN with the full 6-bit kept payload"},
    {0x7fffffff, 0x7fff, "all-ones payload: rounding must not carry into the sign"},
};

TEST(HalfTest, F32ToF16HandDerivedCases) {
  for (const Case& c : kF16Cases) {
    EXPECT_EQ(f32_to_f16_bits(from_bits(c.f32_bits)), c.want)
        << std::hex << "0x" << c.f32_bits << ": " << c.why;
  }
}

TEST(HalfTest, F32ToBF16HandDerivedCases) {
  for (const Case& c : kBF16Cases) {
    EXPECT_EQ(f32_to_bf16_bits(from_bits(c.f32_bits)), c.want)
        << std::hex << "0x" << c.f32_bits << ": " << c.why;
  }
}

TEST(HalfTest, OracleAgreesWithHandDerivedCases) {
  // The oracle is only trusted below because it reproduces the hand derivations.
  const Oracle f16(kF16Format), bf16(kBF16Format);
  for (const Case& c : kF16Cases) {
    if (std::isnan(from_bits(c.f32_bits))) continue;
    EXPECT_EQ(f16.round(from_bits(c.f32_bits)), c.want) << c.why;
  }
  for (const Case& c : kBF16Cases) {
    if (std::isnan(from_bits(c.f32_bits))) continue;
    EXPECT_EQ(bf16.round(from_bits(c.f32_bits)), c.want) << c.why;
  }
}

// ---- FP32 sweeps against the oracle ----------------------------------------------------

void check_against_oracle(Format f, uint16_t (*convert)(float)) {
  const Oracle oracle(f);
  size_t checked = 0, nans = 0, failures = 0;
  auto check = [&](uint32_t p) {
    ++checked;
    const float x = from_bits(p);
    const uint16_t got = convert(x);
    uint16_t want;
    if (std::isnan(x)) {
      ++nans;
      // The NaN rule of half.h: sign, the top payload bits that fit, quiet bit set.
      const uint32_t drop = 23 - f.mant_bits;
      const uint32_t quiet = 1u << (f.mant_bits - 1);
      want = static_cast<uint16_t>(((p >> 31) ? f.sign_bit() : 0u) | f.inf_bits() | quiet |
                                   ((p & 0x7fffffu) >> drop));
    } else {
      want = oracle.round(x);
    }
    if (got != want && ++failures <= 10) {
      ADD_FAILURE() << std::hex << "0x" << p << " (" << x << "): got 0x" << got << ", want 0x"
                    << want;
    }
  };
  for (const uint32_t p : boundary_sample(oracle, f)) check(p);
  const uint64_t stride = sweep_stride();
  for (uint64_t p = 0; p <= 0xffffffffu; p += stride) check(static_cast<uint32_t>(p));
  EXPECT_EQ(failures, 0u);
  EXPECT_GT(checked, 4'000'000u);
  EXPECT_GT(nans, 0u);  // the sweep hits NaN patterns too
}

TEST(HalfTest, F32ToF16MatchesBruteForceOracle) {
  check_against_oracle(kF16Format, f32_to_f16_bits);
}

TEST(HalfTest, F32ToBF16MatchesBruteForceOracle) {
  check_against_oracle(kBF16Format, f32_to_bf16_bits);
}

// ---- storage types and constants -------------------------------------------------------

TEST(HalfTest, StorageTypesUseTheScalarConversions) {
  EXPECT_EQ(fp16(1.0f + 3 * 0x1p-11f).bits, 0x3c02);
  EXPECT_EQ(bf16(1.0f + 3 * 0x1p-8f).bits, 0x3f82);
  EXPECT_EQ(static_cast<float>(fp16::from_bits(0x7bff)), 65504.0f);
  EXPECT_EQ(bf16::from_bits(0x0001).to_float(), 0x1p-133f);
  EXPECT_EQ(fp16().bits, 0);
  EXPECT_EQ(bf16().bits, 0);
}

TEST(HalfTest, F16Limits) {
  EXPECT_EQ(f32_to_f16_bits(kF16Max), 0x7bff);
  EXPECT_EQ(f32_to_f16_bits(kF16MinNormal), 0x0400);
  EXPECT_EQ(f32_to_f16_bits(kF16MinSubnormal), 0x0001);
  EXPECT_EQ(f16_bits_to_f32(0x7bff), kF16Max);
}

}  // namespace
}  // namespace ampd
