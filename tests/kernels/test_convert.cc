// Bulk conversions of kernels/convert.h: every implementation the CPU supports must be
// bit-identical to the scalar definitions of kernels/half.h, for every 16-bit pattern and a
// large FP32 sample, at lengths and offsets that exercise the vector bodies and the scalar
// tails, and whatever MXCSR says.

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/convert.h"
#include "kernels/half.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define AMPD_TEST_MXCSR 1
#endif

namespace ampd {
namespace {

constexpr size_t kLengths[] = {0, 1, 7, 15, 16, 17, 31, 33, 1000, 4099};
constexpr size_t kOffsets[] = {0, 1, 3};  // elements: breaks 16/32/64-byte alignment
constexpr uint16_t kGuard16 = 0xa5a5;
constexpr uint32_t kGuard32 = 0xdeadbeef;

// Specials, subnormals, every FP16 / BF16 value and midpoint +-2 FP32 ulps (both signs),
// and seeded random patterns: ~1.6M FP32 bit patterns.
const std::vector<uint32_t>& f32_sample() {
  static const std::vector<uint32_t> sample = [] {
    std::vector<uint32_t> s;
    s.insert(s.end(), {0x00000000, 0x80000000, 0x7f800000, 0xff800000});  // +-0, +-inf
    s.insert(s.end(), {0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fa00000, 0x7fbfffff,
                       0x7fffffff, 0xffffffff, 0x7f802000, 0x7f801fff});  // quiet / signaling
    s.insert(s.end(), {0x00000001, 0x80000001, 0x007fffff, 0x807fffff});  // FP32 subnormals
    s.insert(s.end(), {0x00400000, 0x00008000, 0x00018000, 0x00010000});  // BF16 subnormal ties
    s.insert(s.end(), {0x00800000, 0x7f7fffff, 0x7f7f8000, 0x7f7f7fff});  // FP32 / BF16 edges
    s.insert(s.end(), {0x477fe000, 0x477fefff, 0x477ff000, 0x477ff001});  // 65504 .. 65520
    s.insert(s.end(), {0x33000000, 0x33000001, 0x33400000, 0x38800000});  // 2^-25 .. 2^-14
    auto around = [&s](uint32_t b) {
      for (int d = -2; d <= 2; ++d) {
        s.push_back(b + static_cast<uint32_t>(d));
        s.push_back((b + static_cast<uint32_t>(d)) ^ 0x80000000u);
      }
    };
    for (uint32_t h = 0; h < 0x7c00; ++h) {  // FP16 values and the midpoints above them
      const float v = f16_bits_to_f32(static_cast<uint16_t>(h));
      const float next = f16_bits_to_f32(static_cast<uint16_t>(h + 1));
      around(std::bit_cast<uint32_t>(v));
      // The midpoint has 12 significant bits: exact in FP32. Past 65504 the next value
      // is inf, so the overflow midpoint 65520 is added by hand below.
      if (h + 1 < 0x7c00) around(std::bit_cast<uint32_t>((v + next) / 2));
    }
    around(0x477ff000);                      // 65520, midpoint of 65504 and 2^16
    for (uint32_t b = 0; b < 0x7f80; ++b) {  // BF16 values and midpoints
      around(b << 16);
      around((b << 16) | 0x8000u);
    }
    std::mt19937 rng(20240611);
    for (int i = 0; i < 400'000; ++i) s.push_back(static_cast<uint32_t>(rng()));
    // Random NaN payloads of both kinds.
    for (int i = 0; i < 10'000; ++i) {
      const uint32_t payload = (static_cast<uint32_t>(rng()) & 0x007fffffu) | 1u;
      s.push_back(0x7f800000u | payload | (static_cast<uint32_t>(rng()) & 0x80000000u));
    }
    return s;
  }();
  return sample;
}

std::vector<float> sample_floats() {
  const std::vector<uint32_t>& bits = f32_sample();
  std::vector<float> out(bits.size());
  std::memcpy(out.data(), bits.data(), bits.size() * sizeof(float));
  return out;
}

std::vector<uint16_t> all_16bit_patterns() {
  std::vector<uint16_t> v(65536);
  for (uint32_t i = 0; i < v.size(); ++i) v[i] = static_cast<uint16_t>(i);
  return v;
}

std::vector<ConversionImpl> simd_impls() {
  std::vector<ConversionImpl> impls = available_conversion_impls();
  impls.pop_back();  // scalar, the reference
  return impls;
}

uint32_t bits_of(float f) {
  return std::bit_cast<uint32_t>(f);
}

// Runs a narrowing conversion over src[offset .. offset + n) into a guarded buffer, and
// checks it against the scalar definition and that nothing outside [0, n) was written.
void check_narrow(const char* what, void (*fn)(const float*, uint16_t*, size_t),
                  uint16_t (*scalar)(float), const std::vector<float>& src, size_t offset,
                  size_t n) {
  std::vector<uint16_t> dst(n + 2 * 16 + offset, kGuard16);
  uint16_t* out = dst.data() + 16 + offset;
  fn(src.data() + offset, out, n);
  size_t failures = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint16_t want = scalar(src[offset + i]);
    if (out[i] != want && ++failures <= 5) {
      ADD_FAILURE() << what << " n=" << n << " offset=" << offset << " input 0x" << std::hex
                    << bits_of(src[offset + i]) << ": got 0x" << out[i] << ", want 0x" << want;
    }
  }
  EXPECT_EQ(failures, 0u) << what << " n=" << n << " offset=" << offset;
  for (size_t i = 0; i < 16 + offset; ++i) ASSERT_EQ(dst[i], kGuard16) << what << " wrote before";
  for (size_t i = 16 + offset + n; i < dst.size(); ++i) {
    ASSERT_EQ(dst[i], kGuard16) << what << " wrote past the end, n=" << n;
  }
}

void check_widen(const char* what, void (*fn)(const uint16_t*, float*, size_t),
                 float (*scalar)(uint16_t), const std::vector<uint16_t>& src, size_t offset,
                 size_t n) {
  std::vector<uint32_t> dst(n + 2 * 16 + offset, kGuard32);
  uint32_t* out = dst.data() + 16 + offset;
  fn(src.data() + offset, reinterpret_cast<float*>(out), n);
  size_t failures = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t want = bits_of(scalar(src[offset + i]));
    if (out[i] != want && ++failures <= 5) {
      ADD_FAILURE() << what << " n=" << n << " offset=" << offset << " input 0x" << std::hex
                    << src[offset + i] << ": got 0x" << out[i] << ", want 0x" << want;
    }
  }
  EXPECT_EQ(failures, 0u) << what << " n=" << n << " offset=" << offset;
  for (size_t i = 0; i < 16 + offset; ++i) ASSERT_EQ(dst[i], kGuard32) << what << " wrote before";
  for (size_t i = 16 + offset + n; i < dst.size(); ++i) {
    ASSERT_EQ(dst[i], kGuard32) << what << " wrote past the end, n=" << n;
  }
}

// Every implementation over a whole input, then over windows of every length in kLengths at
// every offset, with the windows spread over the input so that all of it passes through
// tails as well as vector bodies.
void check_impl_narrow(const ConversionImpl& impl, const std::vector<float>& src) {
  check_narrow("f32_to_f16", impl.f32_to_f16, f32_to_f16_bits, src, 0, src.size());
  check_narrow("f32_to_bf16", impl.f32_to_bf16, f32_to_bf16_bits, src, 0, src.size());
  size_t start = 0;
  for (const size_t n : kLengths) {
    for (const size_t offset : kOffsets) {
      start = (start + 7919) % (src.size() - 4200);
      std::vector<float> window(src.begin() + start, src.begin() + start + n + offset);
      check_narrow("f32_to_f16", impl.f32_to_f16, f32_to_f16_bits, window, offset, n);
      check_narrow("f32_to_bf16", impl.f32_to_bf16, f32_to_bf16_bits, window, offset, n);
    }
  }
}

void check_impl_widen(const ConversionImpl& impl, const std::vector<uint16_t>& src) {
  check_widen("f16_to_f32", impl.f16_to_f32, f16_bits_to_f32, src, 0, src.size());
  check_widen("bf16_to_f32", impl.bf16_to_f32, bf16_bits_to_f32, src, 0, src.size());
  size_t start = 0;
  for (const size_t n : kLengths) {
    for (const size_t offset : kOffsets) {
      start = (start + 7919) % (src.size() - 4200);
      std::vector<uint16_t> window(src.begin() + start, src.begin() + start + n + offset);
      check_widen("f16_to_f32", impl.f16_to_f32, f16_bits_to_f32, window, offset, n);
      check_widen("bf16_to_f32", impl.bf16_to_f32, bf16_bits_to_f32, window, offset, n);
    }
  }
}

// ---- the implementations -------------------------------------------------------------------

TEST(ConvertTest, ScalarIsAlwaysAvailableAndLast) {
  const std::vector<ConversionImpl> impls = available_conversion_impls();
  ASSERT_FALSE(impls.empty());
  EXPECT_STREQ(impls.back().name, "scalar");
  for (const ConversionImpl& impl : impls) {
    EXPECT_TRUE(impl.f32_to_f16 && impl.f16_to_f32 && impl.f32_to_bf16 && impl.bf16_to_f32);
  }
}

TEST(ConvertTest, PicksTheBestImplementationUnlessForced) {
  const char* forced = std::getenv("AMPD_CONVERT_ISA");
  const std::vector<ConversionImpl> impls = available_conversion_impls();
  std::string want = impls.front().name;
  for (const ConversionImpl& impl : impls) {
    if (forced != nullptr && want != forced && std::string(impl.name) == forced) want = forced;
  }
  EXPECT_EQ(conversion_isa(), want);
  std::string names;
  for (const ConversionImpl& impl : impls) names += std::string(" ") + impl.name;
  std::printf("conversion_isa() = %s; available:%s\n", conversion_isa(), names.c_str());
}

TEST(ConvertTest, EnvironmentForcesScalar) {
  // The choice is made once per process, so look at it in a fresh one: the threadsafe
  // death-test style re-executes this binary for the statement.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  ASSERT_EQ(setenv("AMPD_CONVERT_ISA", "scalar", 1), 0);
  EXPECT_EXIT(std::exit(std::strcmp(conversion_isa(), "scalar") == 0 ? 0 : 1),
              testing::ExitedWithCode(0), "");
  ASSERT_EQ(setenv("AMPD_CONVERT_ISA", "no-such-isa", 1), 0);
  const std::string best = available_conversion_impls().front().name;
  EXPECT_EXIT(std::exit(conversion_isa() == best ? 0 : 1), testing::ExitedWithCode(0),
              "AMPD_CONVERT_ISA=no-such-isa is not available");
  ASSERT_EQ(unsetenv("AMPD_CONVERT_ISA"), 0);
}

TEST(ConvertTest, EveryImplementationMatchesScalarOnEvery16BitPattern) {
  const std::vector<uint16_t> patterns = all_16bit_patterns();
  for (const ConversionImpl& impl : available_conversion_impls()) {
    SCOPED_TRACE(impl.name);
    check_impl_widen(impl, patterns);
  }
}

TEST(ConvertTest, EveryImplementationMatchesScalarOnFp32Sample) {
  const std::vector<float> src = sample_floats();
  ASSERT_GT(src.size(), 1'000'000u);
  for (const ConversionImpl& impl : available_conversion_impls()) {
    SCOPED_TRACE(impl.name);
    check_impl_narrow(impl, src);
  }
}

// Strided sweep of the whole FP32 space in chunks; AMPD_EXHAUSTIVE_CONVERT=1 makes the
// stride 1, i.e. all 2^32 patterns (about a minute per implementation on one core).
TEST(ConvertTest, SimdMatchesScalarOnStridedFp32Space) {
  const char* exhaustive = std::getenv("AMPD_EXHAUSTIVE_CONVERT");
  const uint64_t stride = (exhaustive != nullptr && std::string(exhaustive) == "1") ? 1 : 251;
  constexpr size_t kChunk = 1 << 16;
  std::vector<float> src(kChunk);
  std::vector<uint16_t> want16(kChunk), wantbf(kChunk), got(kChunk);
  const std::vector<ConversionImpl> impls = simd_impls();
  if (impls.empty()) GTEST_SKIP() << "no SIMD implementation on this CPU";
  for (uint64_t base = 0; base < (1ull << 32);) {
    size_t n = 0;
    for (; n < kChunk && base < (1ull << 32); ++n, base += stride) {
      src[n] = std::bit_cast<float>(static_cast<uint32_t>(base));
    }
    for (size_t i = 0; i < n; ++i) {
      want16[i] = f32_to_f16_bits(src[i]);
      wantbf[i] = f32_to_bf16_bits(src[i]);
    }
    for (const ConversionImpl& impl : impls) {
      impl.f32_to_f16(src.data(), got.data(), n);
      ASSERT_TRUE(std::equal(got.begin(), got.begin() + n, want16.begin()))
          << impl.name << " f32_to_f16 differs in the chunk ending at 0x" << std::hex << base;
      impl.f32_to_bf16(src.data(), got.data(), n);
      ASSERT_TRUE(std::equal(got.begin(), got.begin() + n, wantbf.begin()))
          << impl.name << " f32_to_bf16 differs in the chunk ending at 0x" << std::hex << base;
    }
  }
}

#if AMPD_TEST_MXCSR
// Results must not depend on MXCSR: flush-to-zero, denormals-are-zero and every rounding
// mode. (The FP16 subnormals 0x0001..0x03ff and FP32 inputs that round to them are the
// cases DAZ / FTZ could touch.)
TEST(ConvertTest, ResultsDoNotDependOnMxcsr) {
  const std::vector<float> src = sample_floats();
  const std::vector<uint16_t> patterns = all_16bit_patterns();
  const unsigned saved = _mm_getcsr();
  constexpr unsigned kDaz = 0x0040, kFtz = 0x8000;
  const unsigned kRounding[] = {_MM_ROUND_NEAREST, _MM_ROUND_DOWN, _MM_ROUND_UP,
                                _MM_ROUND_TOWARD_ZERO};
  for (const unsigned rounding : kRounding) {
    for (const unsigned flags : {0u, kDaz | kFtz}) {
      SCOPED_TRACE(testing::Message()
                   << "MXCSR rounding 0x" << std::hex << rounding << " flags 0x" << flags);
      // The references come from half.h under the default MXCSR; every implementation,
      // scalar included, then runs under the modified one.
      std::vector<uint16_t> want16(src.size()), wantbf(src.size());
      std::vector<uint32_t> want16w(patterns.size()), wantbfw(patterns.size());
      for (size_t i = 0; i < src.size(); ++i) {
        want16[i] = f32_to_f16_bits(src[i]);
        wantbf[i] = f32_to_bf16_bits(src[i]);
      }
      for (size_t i = 0; i < patterns.size(); ++i) {
        want16w[i] = bits_of(f16_bits_to_f32(patterns[i]));
        wantbfw[i] = bits_of(bf16_bits_to_f32(patterns[i]));
      }
      _mm_setcsr((saved & ~(0x6000u | kDaz | kFtz)) | rounding | flags);
      std::vector<uint16_t> got16(src.size()), gotbf(src.size());
      std::vector<uint32_t> got16w(patterns.size()), gotbfw(patterns.size());
      std::vector<std::string> mismatches;
      for (const ConversionImpl& impl : available_conversion_impls()) {
        impl.f32_to_f16(src.data(), got16.data(), src.size());
        impl.f32_to_bf16(src.data(), gotbf.data(), src.size());
        impl.f16_to_f32(patterns.data(), reinterpret_cast<float*>(got16w.data()), 65536);
        impl.bf16_to_f32(patterns.data(), reinterpret_cast<float*>(gotbfw.data()), 65536);
        if (got16 != want16) mismatches.push_back(std::string(impl.name) + " f32_to_f16");
        if (gotbf != wantbf) mismatches.push_back(std::string(impl.name) + " f32_to_bf16");
        if (got16w != want16w) mismatches.push_back(std::string(impl.name) + " f16_to_f32");
        if (gotbfw != wantbfw) mismatches.push_back(std::string(impl.name) + " bf16_to_f32");
      }
      _mm_setcsr(saved);
      for (const std::string& m : mismatches) ADD_FAILURE() << m << " depends on MXCSR";
    }
  }
}
#endif

// ---- the dispatched entry points and the generic convert() ---------------------------------

TEST(ConvertTest, DispatchedFunctionsMatchScalar) {
  const std::vector<float> src = sample_floats();
  const std::vector<uint16_t> patterns = all_16bit_patterns();
  check_narrow("convert_f32_to_f16", convert_f32_to_f16, f32_to_f16_bits, src, 1, 4099);
  check_narrow("convert_f32_to_bf16", convert_f32_to_bf16, f32_to_bf16_bits, src, 1, 4099);
  check_widen("convert_f16_to_f32", convert_f16_to_f32, f16_bits_to_f32, patterns, 0, 65536);
  check_widen("convert_bf16_to_f32", convert_bf16_to_f32, bf16_bits_to_f32, patterns, 0, 65536);
}

// The expected value of one element of convert(src_type -> dst_type), as raw bits, from
// the scalar definitions (F16 <-> BF16 through FP32).
uint32_t expected_bits(DType src_type, DType dst_type, uint32_t in) {
  float f = 0;
  switch (src_type) {
    case DType::kF32: f = std::bit_cast<float>(in); break;
    case DType::kF16: f = f16_bits_to_f32(static_cast<uint16_t>(in)); break;
    default: f = bf16_bits_to_f32(static_cast<uint16_t>(in)); break;
  }
  if (src_type == dst_type) return in;  // a copy: even NaN payloads are untouched
  switch (dst_type) {
    case DType::kF32: return bits_of(f);
    case DType::kF16: return f32_to_f16_bits(f);
    default: return f32_to_bf16_bits(f);
  }
}

TEST(ConvertTest, GenericConvertCoversAllNinePairs) {
  const DType kTypes[] = {DType::kF32, DType::kF16, DType::kBF16};
  const std::vector<uint32_t>& f32 = f32_sample();
  for (const DType s : kTypes) {
    for (const DType d : kTypes) {
      SCOPED_TRACE(testing::Message() << dtype_name(s) << " -> " << dtype_name(d));
      // Inputs as raw bits: the FP32 sample, or every 16-bit pattern.
      std::vector<uint32_t> in;
      if (s == DType::kF32) {
        in = f32;
      } else {
        for (uint32_t i = 0; i <= 0xffff; ++i) in.push_back(i);
      }
      const size_t n = in.size();
      std::vector<unsigned char> src(n * dtype_size(s)), dst(n * dtype_size(d), 0xa5);
      for (size_t i = 0; i < n; ++i) {
        if (dtype_size(s) == 4) {
          std::memcpy(&src[4 * i], &in[i], 4);
        } else {
          const auto h = static_cast<uint16_t>(in[i]);
          std::memcpy(&src[2 * i], &h, 2);
        }
      }
      convert(src.data(), s, dst.data(), d, n);
      size_t failures = 0;
      for (size_t i = 0; i < n; ++i) {
        uint32_t got = 0;
        if (dtype_size(d) == 4) {
          std::memcpy(&got, &dst[4 * i], 4);
        } else {
          uint16_t h;
          std::memcpy(&h, &dst[2 * i], 2);
          got = h;
        }
        const uint32_t want = expected_bits(s, d, in[i]);
        if (got != want && ++failures <= 5) {
          ADD_FAILURE() << std::hex << "input 0x" << in[i] << ": got 0x" << got << ", want 0x"
                        << want;
        }
      }
      EXPECT_EQ(failures, 0u);
    }
  }
}

TEST(ConvertTest, GenericConvertOfNothingTouchesNothing) {
  convert(nullptr, DType::kF16, nullptr, DType::kBF16, 0);
  convert(nullptr, DType::kF32, nullptr, DType::kF32, 0);
  convert_f32_to_f16(nullptr, nullptr, 0);
  convert_bf16_to_f32(nullptr, nullptr, 0);
}

TEST(ConvertTest, GenericConvertCopiesSameNonFloatingType) {
  const int32_t src[3] = {1, -2, 3};
  int32_t dst[3] = {};
  convert(src, DType::kI32, dst, DType::kI32, 3);
  EXPECT_EQ(std::memcmp(src, dst, sizeof(src)), 0);
}

TEST(ConvertDeathTest, GenericConvertRejectsIntegerToFloat) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const int32_t src[1] = {1};
  float dst[1];
  EXPECT_DEATH(convert(src, DType::kI32, dst, DType::kF32, 1), "no conversion from i32 to f32");
}

}  // namespace
}  // namespace ampd
