#include "kernels/convert.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/half.h"

// The SIMD paths need GCC: clang (14) rejects "f16c" and "avx512bf16" in
// __builtin_cpu_supports, so a clang build uses the scalar path.
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
#define AMPD_CONVERT_X86 1
// GCC 12's AVX-512 headers build "undefined" vectors as `__m512i __Y = __Y;`, which
// -Wmaybe-uninitialized reports wherever the intrinsics are inlined (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

namespace ampd {
namespace {

// ---- scalar: the definition every other implementation must match bit for bit -------

void f32_to_f16_scalar(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = f32_to_f16_bits(src[i]);
}
void f16_to_f32_scalar(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = f16_bits_to_f32(src[i]);
}
void f32_to_bf16_scalar(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = f32_to_bf16_bits(src[i]);
}
void bf16_to_f32_scalar(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_f32(src[i]);
}

constexpr ConversionImpl kScalar{"scalar", f32_to_f16_scalar, f16_to_f32_scalar, f32_to_bf16_scalar,
                                 bf16_to_f32_scalar};

#if AMPD_CONVERT_X86

// What the hardware does, and why it matches half.h (checked by tests/kernels/test_convert.cc,
// over all 2^32 FP32 inputs with AMPD_EXHAUSTIVE_CONVERT=1):
//  * vcvtps2ph with an immediate rounding mode of 0 rounds to nearest even whatever
//    MXCSR.RC says. A NaN keeps its sign and the top 10 payload bits and gets the quiet
//    bit (0x0200). FP32 subnormals round to +-0 in FP16 anyway, so whether DAZ applies to
//    them cannot change a result, and FP16 subnormal results are never flushed (FTZ does
//    not apply to this instruction).
//  * vcvtph2ps is exact, turns FP16 subnormals into normal FP32 whatever MXCSR.DAZ says,
//    and quiets NaNs (payload << 13, quiet bit 0x00400000).
//  * vcvtneps2bf16 rounds to nearest even and quiets NaNs (x >> 16 | 0x0040) exactly as
//    half.h does, but it never consults MXCSR and always treats subnormal inputs as zero:
//    e.g. 0x007fffff (just below 2^-126) comes out +0 instead of 0x0080 (2^-126). Lanes
//    with a zero exponent and a non-zero mantissa are therefore redone with the integer
//    rounding below; for them it needs no NaN or overflow handling.
//  * BF16 -> FP32 is a 16-bit shift; only NaNs need the quiet bit set.

#define AMPD_TARGET_AVX2 __attribute__((target("avx2,f16c")))
#define AMPD_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,f16c")))

// ---- F16C + AVX2: 8 lanes ---------------------------------------------------------------

AMPD_TARGET_AVX2 void f32_to_f16_avx2(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  // Clear the upper vector state before running non-VEX code: without it every
  // SSE instruction that follows pays a false dependency (measured 6x slower loops).
  _mm256_zeroupper();
  f32_to_f16_scalar(src + i, dst + i, n - i);
}

AMPD_TARGET_AVX2 void f16_to_f32_avx2(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  // Clear the upper vector state before running non-VEX code: without it every
  // SSE instruction that follows pays a false dependency (measured 6x slower loops).
  _mm256_zeroupper();
  f16_to_f32_scalar(src + i, dst + i, n - i);
}

// FP32 -> BF16 without AVX512_BF16: half.h's integer round to nearest even, 8 lanes.
// Adding 0x7fff plus the lowest kept bit (bit 16) carries into the kept bits exactly when
// the dropped 16 bits are above half, or exactly half with an odd kept part; a carry out
// of the mantissa bumps the exponent, which is how 0x7f7f8000.. becomes inf. NaNs (which
// that addition could turn into anything) are blended with (x >> 16) | 0x0040.
AMPD_TARGET_AVX2 void f32_to_bf16_avx2(const float* src, uint16_t* dst, size_t n) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  const __m256i inf = _mm256_set1_epi32(0x7f800000);
  const __m256i bias = _mm256_set1_epi32(0x7fff);
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i quiet = _mm256_set1_epi32(0x0040);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i x = _mm256_castps_si256(_mm256_loadu_ps(src + i));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), one);
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(bias, lsb)), 16);
    const __m256i nan_bits = _mm256_or_si256(_mm256_srli_epi32(x, 16), quiet);
    // Signed compare is fine: both sides are below 2^31.
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, abs_mask), inf);
    const __m256i r = _mm256_blendv_epi8(rounded, nan_bits, is_nan);
    // Every lane is now in [0, 0xffff], so the unsigned-saturating pack is exact.
    const __m128i packed =
        _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), packed);
  }
  // Clear the upper vector state before running non-VEX code: without it every
  // SSE instruction that follows pays a false dependency (measured 6x slower loops).
  _mm256_zeroupper();
  f32_to_bf16_scalar(src + i, dst + i, n - i);
}

AMPD_TARGET_AVX2 void bf16_to_f32_avx2(const uint16_t* src, float* dst, size_t n) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  const __m256i inf = _mm256_set1_epi32(0x7f800000);
  const __m256i quiet = _mm256_set1_epi32(0x00400000);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m256i x = _mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16);
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, abs_mask), inf);
    const __m256i r = _mm256_or_si256(x, _mm256_and_si256(is_nan, quiet));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(r));
  }
  // Clear the upper vector state before running non-VEX code: without it every
  // SSE instruction that follows pays a false dependency (measured 6x slower loops).
  _mm256_zeroupper();
  bf16_to_f32_scalar(src + i, dst + i, n - i);
}

// ---- AVX-512 (F, BW, VL, BF16): 16 lanes ----------------------------------------------

AMPD_TARGET_AVX512 void f32_to_f16_avx512(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), h);
  }
  // Clear the upper vector state before running non-VEX code: without it every
  // SSE instruction that follows pays a false dependency (measured 6x slower loops).
  _mm256_zeroupper();
  f32_to_f16_scalar(src + i, dst + i, n - i);
}

AMPD_TARGET_AVX512 void f16_to_f32_avx512(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
  }
  // Clear the upper vector state before running non-VEX code: without it every
  // SSE instruction that follows pays a false dependency (measured 6x slower loops).
  _mm256_zeroupper();
  f16_to_f32_scalar(src + i, dst + i, n - i);
}

AMPD_TARGET_AVX512 void f32_to_bf16_avx512(const float* src, uint16_t* dst, size_t n) {
  const __m512i exp_mask = _mm512_set1_epi32(0x7f800000);
  const __m512i mant_mask = _mm512_set1_epi32(0x007fffff);
  const __m512i bias = _mm512_set1_epi32(0x7fff);
  const __m512i one = _mm512_set1_epi32(1);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(src + i);
    __m256i r = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
    // Subnormal lanes (exponent 0, mantissa != 0) were flushed to +-0: redo them.
    const __m512i x = _mm512_castps_si512(v);
    const __mmask16 subnormal =
        _mm512_testn_epi32_mask(x, exp_mask) & _mm512_test_epi32_mask(x, mant_mask);
    if (subnormal != 0) {
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), one);
      const __m512i rounded =
          _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(bias, lsb)), 16);
      r = _mm256_mask_blend_epi16(subnormal, r, _mm512_cvtepi32_epi16(rounded));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), r);
  }
  // Clear the upper vector state before running non-VEX code: without it every
  // SSE instruction that follows pays a false dependency (measured 6x slower loops).
  _mm256_zeroupper();
  f32_to_bf16_scalar(src + i, dst + i, n - i);
}

AMPD_TARGET_AVX512 void bf16_to_f32_avx512(const uint16_t* src, float* dst, size_t n) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i inf = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet = _mm512_set1_epi32(0x00400000);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m512i x = _mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16);
    const __mmask16 is_nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, abs_mask), inf);
    _mm512_storeu_si512(dst + i, _mm512_mask_or_epi32(x, is_nan, x, quiet));
  }
  // Clear the upper vector state before running non-VEX code: without it every
  // SSE instruction that follows pays a false dependency (measured 6x slower loops).
  _mm256_zeroupper();
  bf16_to_f32_scalar(src + i, dst + i, n - i);
}

constexpr ConversionImpl kAvx2{"f16c+avx2", f32_to_f16_avx2, f16_to_f32_avx2, f32_to_bf16_avx2,
                               bf16_to_f32_avx2};
constexpr ConversionImpl kAvx512{"avx512bf16+f16c", f32_to_f16_avx512, f16_to_f32_avx512,
                                 f32_to_bf16_avx512, bf16_to_f32_avx512};

// __builtin_cpu_supports also checks that the OS saves the AVX / AVX-512 register state.
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bf16");
}

#endif  // AMPD_CONVERT_X86

ConversionImpl pick_impl() {
  const std::vector<ConversionImpl> impls = available_conversion_impls();
  if (const char* forced = std::getenv("AMPD_CONVERT_ISA"); forced != nullptr && *forced) {
    for (const ConversionImpl& impl : impls) {
      if (std::strcmp(impl.name, forced) == 0) return impl;
    }
    std::fprintf(stderr, "ampd: AMPD_CONVERT_ISA=%s is not available here; using %s\n", forced,
                 impls.front().name);
  }
  return impls.front();
}

// Chosen once, on first use; C++ guarantees the initialisation is thread-safe.
const ConversionImpl& active() {
  static const ConversionImpl impl = pick_impl();
  return impl;
}

}  // namespace

std::vector<ConversionImpl> available_conversion_impls() {
  std::vector<ConversionImpl> impls;
#if AMPD_CONVERT_X86
  if (cpu_has_avx512()) impls.push_back(kAvx512);
  if (cpu_has_avx2()) impls.push_back(kAvx2);
#endif
  impls.push_back(kScalar);
  return impls;
}

const char* conversion_isa() {
  return active().name;
}

void convert_f32_to_f16(const float* src, uint16_t* dst, size_t n) {
  active().f32_to_f16(src, dst, n);
}
void convert_f16_to_f32(const uint16_t* src, float* dst, size_t n) {
  active().f16_to_f32(src, dst, n);
}
void convert_f32_to_bf16(const float* src, uint16_t* dst, size_t n) {
  active().f32_to_bf16(src, dst, n);
}
void convert_bf16_to_f32(const uint16_t* src, float* dst, size_t n) {
  active().bf16_to_f32(src, dst, n);
}

void convert(const void* src, DType src_type, void* dst, DType dst_type, size_t n) {
  if (n == 0) return;
  if (src_type == dst_type) {
    if (src != dst) std::memmove(dst, src, n * dtype_size(src_type));
    return;
  }
  if (!is_floating(src_type) || !is_floating(dst_type)) {
    std::fprintf(stderr, "ampd::convert: no conversion from %.*s to %.*s\n",
                 static_cast<int>(dtype_name(src_type).size()), dtype_name(src_type).data(),
                 static_cast<int>(dtype_name(dst_type).size()), dtype_name(dst_type).data());
    std::abort();
  }
  const ConversionImpl& impl = active();
  if (src_type == DType::kF32) {
    const auto* s = static_cast<const float*>(src);
    auto* d = static_cast<uint16_t*>(dst);
    (dst_type == DType::kF16 ? impl.f32_to_f16 : impl.f32_to_bf16)(s, d, n);
    return;
  }
  const auto* s = static_cast<const uint16_t*>(src);
  auto* const widen = src_type == DType::kF16 ? impl.f16_to_f32 : impl.bf16_to_f32;
  if (dst_type == DType::kF32) {
    widen(s, static_cast<float*>(dst), n);
    return;
  }
  // F16 <-> BF16: widening to FP32 is exact, so narrowing rounds the original value once.
  auto* const narrow = dst_type == DType::kF16 ? impl.f32_to_f16 : impl.f32_to_bf16;
  auto* d = static_cast<uint16_t*>(dst);
  constexpr size_t kChunk = 256;
  float buffer[kChunk];
  for (size_t i = 0; i < n; i += kChunk) {
    const size_t m = n - i < kChunk ? n - i : kChunk;
    widen(s + i, buffer, m);
    narrow(buffer, d + i, m);
  }
}

}  // namespace ampd
