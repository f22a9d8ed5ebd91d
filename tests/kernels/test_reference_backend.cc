// Tests of the reference backend against mathematics that does not share its code:
// naive loops on exactly representable data, hand-computed examples, closed-form values,
// and finite differences of its own forward ops for every backward op.
//
// Finite-difference checks run in double on FP32 inputs lying on a 2^-8 grid, so x +- h
// (h = 2^-7) is exact. Their error is h^2 f'''/6 (~1e-5) plus the FP32 rounding of the
// forward outputs divided by 2h (~15 elements * 2^-24 * O(1) / 2^-6 ~ 1e-4), so a
// tolerance of 2e-3 absolute + 2e-3 relative separates correct gradients from wrong ones
// (a wrong term is O(1)).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/dropout_hash.h"
#include "kernels/half.h"
#include "kernels/reference/reference_backend.h"
#include "tests/kernels/test_util.h"

namespace ampd {
namespace {

using test::central_difference;
using test::device_filled;
using test::device_tensor;
using test::DeviceTensor;
using test::expect_close;
using test::fill_integers;
using test::fill_normal;
using test::HostTensor;
using test::kExact;
using test::Rng;
using test::round_to;
using test::Tolerance;

constexpr double kGrid = 0x1p-8;  // inputs of finite-difference checks lie on this grid
constexpr double kH = 0x1p-7;     // finite-difference step
constexpr Tolerance kFdTol{2e-3, 2e-3};
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One ulp of slack for FP32 results compared with a double computed another way.
constexpr Tolerance kF32Ulp{0.0, 0x1p-23};

double weighted_sum(const HostTensor& y, const HostTensor& w) {
  double s = 0.0;
  for (int64_t i = 0; i < y.numel(); ++i) s += y.get(i) * w.get(i);
  return s;
}

double sum(const HostTensor& y) {
  double s = 0.0;
  for (int64_t i = 0; i < y.numel(); ++i) s += y.get(i);
  return s;
}

HostTensor random_f32(Rng& rng, int64_t rows, int64_t cols, double stddev = 1.0) {
  HostTensor t(DType::kF32, rows, cols);
  fill_normal(t, rng, 0.0, stddev, kGrid);
  return t;
}

class ReferenceBackendTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> owner_ = make_reference_backend();
  Backend& be = *owner_;

  DeviceTensor dev(const HostTensor& h) { return test::to_device(be, h); }
  HostTensor host(const Tensor& t) { return test::to_host(be, t); }
  DeviceTensor empty(DType dt, int64_t rows, int64_t cols) {
    return device_tensor(be, dt, rows, cols);
  }
};

// =====================================================================================
// double -> float / fp16 / bf16 rounding
// =====================================================================================

double f16_value(uint16_t bits) {
  return f16_bits_to_f32(bits);
}
double bf16_value(uint16_t bits) {
  return bf16_bits_to_f32(bits);
}

TEST(F64Rounding, AgreesWithHalfHOnRandomFloats) {
  // A double that is exactly a float must round like the float does in half.h, NaNs
  // included (payload and sign kept, made quiet).
  Rng rng(1);
  for (int i = 0; i < 1'000'000; ++i) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(rng.engine()()));
    const double d = f;
    ASSERT_EQ(f64_to_f16_bits(d), f32_to_f16_bits(f)) << std::hexfloat << f;
    ASSERT_EQ(f64_to_bf16_bits(d), f32_to_bf16_bits(f)) << std::hexfloat << f;
    // Widening a signaling NaN to double quiets it, so NaNs come back quiet.
    const uint32_t fbits = std::bit_cast<uint32_t>(f);
    ASSERT_EQ(std::bit_cast<uint32_t>(f64_to_f32(d)), std::isnan(f) ? fbits | 0x00400000u : fbits)
        << std::hexfloat << f;
  }
}

// Walks every pair of neighbouring non-negative finite values (a, b) of a 16-bit format,
// plus (largest, next power of two = inf), and checks the exact representation, the
// midpoint (ties to even) and the doubles just beside the midpoint.
void check_every_midpoint(uint16_t (*round)(double), double (*value)(uint16_t), uint16_t largest,
                          double beyond_largest, uint16_t inf) {
  for (uint32_t a = 0; a <= largest; ++a) {
    const uint16_t lo = static_cast<uint16_t>(a);
    const uint16_t hi = a == largest ? inf : static_cast<uint16_t>(a + 1);
    const double va = value(lo);
    const double vb = a == largest ? beyond_largest : value(hi);
    const double mid = 0.5 * (va + vb);  // exact in double
    const uint16_t even = (lo & 1u) == 0 ? lo : hi;
    ASSERT_EQ(round(va), lo) << std::hexfloat << va;
    ASSERT_EQ(round(mid), even) << "midpoint " << std::hexfloat << mid;
    ASSERT_EQ(round(std::nextafter(mid, 0.0)), lo) << "below " << std::hexfloat << mid;
    ASSERT_EQ(round(std::nextafter(mid, kInf)), hi) << "above " << std::hexfloat << mid;
    ASSERT_EQ(round(-mid), static_cast<uint16_t>(even | 0x8000u)) << std::hexfloat << -mid;
  }
}

TEST(F64Rounding, EveryF16MidpointRoundsToNearestEven) {
  check_every_midpoint(f64_to_f16_bits, f16_value, 0x7bff, 65536.0, 0x7c00);
}

TEST(F64Rounding, EveryBf16MidpointRoundsToNearestEven) {
  check_every_midpoint(f64_to_bf16_bits, bf16_value, 0x7f7f, 0x1p128, 0x7f80);
}

TEST(F64Rounding, AvoidsDoubleRoundingThroughFloat) {
  // 1 + 2^-11 is the midpoint between the FP16 neighbours 1 and 1 + 2^-10. The extra
  // 2^-40 puts x just above it, so the correct FP16 is 1 + 2^-10 (0x3c01); but x rounds to
  // float as exactly the midpoint, which then ties to even: 1.0 (0x3c00).
  const double x = 1.0 + 0x1p-11 + 0x1p-40;
  EXPECT_EQ(f32_to_f16_bits(static_cast<float>(x)), 0x3c00);  // double rounding: wrong
  EXPECT_EQ(f64_to_f16_bits(x), 0x3c01);                      // correct
  const double y = 1.0 + 0x1p-8 + 0x1p-40;                    // same for BF16
  EXPECT_EQ(f32_to_bf16_bits(static_cast<float>(y)), 0x3f80);
  EXPECT_EQ(f64_to_bf16_bits(y), 0x3f81);
  EXPECT_EQ(f64_to_f16_bits(-x), 0xbc01);
}

TEST(F64Rounding, SpecialValues) {
  EXPECT_EQ(f64_to_f16_bits(kInf), 0x7c00);
  EXPECT_EQ(f64_to_f16_bits(-kInf), 0xfc00);
  EXPECT_EQ(f64_to_f16_bits(0.0), 0x0000);
  EXPECT_EQ(f64_to_f16_bits(-0.0), 0x8000);
  EXPECT_EQ(f64_to_f16_bits(1e300), 0x7c00);
  EXPECT_EQ(f64_to_f16_bits(1e-300), 0x0000);
  EXPECT_EQ(f64_to_f16_bits(65519.99999), 0x7bff);
  EXPECT_EQ(f64_to_f16_bits(kNaN) & 0x7e00, 0x7e00);  // quiet NaN
  EXPECT_EQ(f64_to_bf16_bits(kInf), 0x7f80);
  EXPECT_EQ(f64_to_bf16_bits(0x1p-133), 0x0001);  // smallest BF16 subnormal
  EXPECT_EQ(f64_to_bf16_bits(0x1p-134), 0x0000);  // tie between 0 and 2^-133 -> 0
  EXPECT_EQ(f64_to_bf16_bits(kNaN) & 0x7fc0, 0x7fc0);
  EXPECT_EQ(f64_to_f32(0x1.ffffffp127), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f64_to_f32(0x1.fffffefp127), std::numeric_limits<float>::max());
  EXPECT_EQ(f64_to_f32(-1e300), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f64_to_f32(kNaN)));
  EXPECT_EQ(f64_to_f32(1.0 + 0x1p-24 + 0x1p-40), 1.0f + 0x1p-23f);  // just above the tie
}

// =====================================================================================
// identity and memory
// =====================================================================================

TEST_F(ReferenceBackendTest, Identity) {
  EXPECT_EQ(be.name(), "reference");
  EXPECT_NE(be.device_description().find("FP64"), std::string::npos);
  EXPECT_TRUE(be.supports(DType::kF32));
  EXPECT_TRUE(be.supports(DType::kF16));
  EXPECT_TRUE(be.supports(DType::kBF16));
  EXPECT_FALSE(be.prefers_bf16());
}

TEST_F(ReferenceBackendTest, AllocationIsAlignedAndCounted) {
  {
    StatusOr<Buffer> a = be.allocate(3);
    ASSERT_TRUE(a.ok()) << a.status().to_string();
    StatusOr<Buffer> b = be.allocate(100);
    ASSERT_TRUE(b.ok()) << b.status().to_string();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % 64, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % 64, 0u);
    EXPECT_EQ(be.memory_stats().in_use_bytes, 103u);
    EXPECT_GE(be.memory_stats().peak_bytes, 103u);
  }
  EXPECT_EQ(be.memory_stats().in_use_bytes, 0u);
}

TEST_F(ReferenceBackendTest, UploadDownloadCopyRoundTrip) {
  Rng rng(2);
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    HostTensor h(dt, 3, 7);
    fill_normal(h, rng);
    DeviceTensor d = dev(h);
    DeviceTensor e = empty(dt, 7, 3);
    AMPD_ASSERT_OK(be.copy(e, d));  // same numel, other shape
    EXPECT_EQ(host(e).bytes, h.bytes);
    EXPECT_EQ(host(d).bytes, h.bytes);
  }
}

TEST_F(ReferenceBackendTest, FillRoundsOnce) {
  DeviceTensor h = device_filled(be, DType::kF16, 2, 2, 1.0f + 0x1p-11f + 0x1p-23f);
  EXPECT_EQ(host(h).bits16(3), 0x3c01);  // just above the midpoint: rounds up
  DeviceTensor b = device_filled(be, DType::kBF16, 1, 1, -3.0f);
  EXPECT_EQ(host(b).get(0), -3.0);
  DeviceTensor i = device_filled(be, DType::kI32, 1, 1, 2.5f);
  EXPECT_EQ(host(i).get(0), 2.0);  // ties to even
  DeviceTensor u = device_filled(be, DType::kU8, 1, 1, 300.0f);
  EXPECT_EQ(host(u).get(0), 255.0);  // saturates
}

// =====================================================================================
// matmul
// =====================================================================================

// op(A) is M x K: A is stored K x M when transposed.
HostTensor stored(DType dt, bool trans, int64_t rows, int64_t cols) {
  return trans ? HostTensor(dt, cols, rows) : HostTensor(dt, rows, cols);
}
double op_at(const HostTensor& t, bool trans, int64_t i, int64_t j) {
  return trans ? t.get(j, i) : t.get(i, j);
}

TEST_F(ReferenceBackendTest, MatmulMatchesNaiveLoopOnIntegers) {
  // Small integers: every product and sum is exact in every dtype involved, so the
  // comparison with a plain triple loop is exact.
  constexpr int64_t M = 3, K = 5, N = 4;
  Rng rng(3);
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (DType cdt : {DType::kF32, dt}) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          SCOPED_TRACE(std::string(dtype_name(dt)) + " -> " + std::string(dtype_name(cdt)) +
                       " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
          HostTensor a = stored(dt, ta, M, K);
          HostTensor b = stored(dt, tb, K, N);
          HostTensor c0(cdt, M, N);
          HostTensor bias(cdt, 1, N);
          fill_integers(a, rng, -4, 4);
          fill_integers(b, rng, -4, 4);
          fill_integers(c0, rng, -4, 4);
          fill_integers(bias, rng, -4, 4);
          const double alpha = 2.0, beta = -1.0;
          std::vector<double> expected(M * N);
          for (int64_t i = 0; i < M; ++i) {
            for (int64_t j = 0; j < N; ++j) {
              double acc = 0.0;
              for (int64_t k = 0; k < K; ++k) acc += op_at(a, ta, i, k) * op_at(b, tb, k, j);
              expected[i * N + j] = alpha * acc + beta * c0.get(i, j) + bias.get(j);
            }
          }
          DeviceTensor da = dev(a), db = dev(b), dc = dev(c0), dbias = dev(bias);
          AMPD_ASSERT_OK(be.matmul({.a = da,
                                    .b = db,
                                    .c = dc,
                                    .trans_a = ta,
                                    .trans_b = tb,
                                    .alpha = 2.0f,
                                    .beta = -1.0f,
                                    .bias = dbias}));
          expect_close(host(dc), expected, kExact, "C");
        }
      }
    }
  }
}

TEST_F(ReferenceBackendTest, MatmulBetaZeroIgnoresOldC) {
  // As in BLAS: beta == 0 means C is write-only, so NaN garbage there does not leak.
  HostTensor a = HostTensor::from(DType::kF32, 1, 2, {1, 2});
  HostTensor b = HostTensor::from(DType::kF32, 2, 1, {3, 4});
  DeviceTensor da = dev(a), db = dev(b);
  DeviceTensor dc = dev(HostTensor::from(DType::kF32, 1, 1, {kNaN}));
  AMPD_ASSERT_OK(be.matmul({.a = da, .b = db, .c = dc, .bias = {}}));
  EXPECT_EQ(host(dc).get(0), 11.0);
}

TEST_F(ReferenceBackendTest, MatmulRoundsOnceToLowPrecisionC) {
  // A = [1, u, 2^-15], B = [1, 1, 2^-15]^T: the exact product is 1 + u + 2^-30.
  // With u = 2^-11 that is just above the FP16 midpoint between 1 and 1 + 2^-10, so
  // the correctly rounded FP16 is 1 + 2^-10. An FP32 accumulator would hold exactly
  // 1 + 2^-11 (2^-30 is below half an FP32 ulp at 1) and round the tie to even: 1.0.
  // Same construction for BF16 with u = 2^-8, and for an FP32 C with u = 2^-24 and
  // tiny = 2^-20 (1 + 2^-24 + 2^-40: above the FP32 midpoint 1 + 2^-24, still exact in
  // the FP64 accumulator; an FP32 accumulator ties to 1.0 again). The reference is exact
  // only down to its FP64 accumulator: a tiny term below 2^-53 relative would be lost.
  struct Case {
    DType dt;
    double u, tiny;
    uint32_t expected_bits;
  };
  for (const Case& c :
       {Case{DType::kF16, 0x1p-11, 0x1p-15, 0x3c01}, Case{DType::kBF16, 0x1p-8, 0x1p-15, 0x3f81},
        Case{DType::kF32, 0x1p-24, 0x1p-20, 0x3f800001}}) {
    SCOPED_TRACE(dtype_name(c.dt));
    HostTensor a = HostTensor::from(c.dt, 1, 3, {1.0, c.u, c.tiny});
    HostTensor b = HostTensor::from(c.dt, 3, 1, {1.0, 1.0, c.tiny});
    ASSERT_EQ(a.get(2) * b.get(2), c.tiny * c.tiny);  // representable inputs
    DeviceTensor da = dev(a), db = dev(b), dc = empty(c.dt, 1, 1);
    AMPD_ASSERT_OK(be.matmul({.a = da, .b = db, .c = dc, .bias = {}}));
    const HostTensor out = host(dc);
    const uint32_t bits = c.dt == DType::kF32
                              ? std::bit_cast<uint32_t>(static_cast<float>(out.get(0)))
                              : out.bits16(0);
    EXPECT_EQ(bits, c.expected_bits);
  }
}

TEST_F(ReferenceBackendTest, MatmulGradientIdentities) {
  // L(A, B) = sum W .* (A B)  =>  dL/dA = W B^T,  dL/dB = A^T W. Computed with the
  // backend's own transposed matmuls and checked against finite differences of the
  // forward matmul. L is linear in each argument, so a large step has no truncation error.
  Rng rng(4);
  const HostTensor a = random_f32(rng, 3, 4), b = random_f32(rng, 4, 2), w = random_f32(rng, 3, 2);
  auto loss = [&](const HostTensor& ha, const HostTensor& hb) {
    DeviceTensor da = dev(ha), db = dev(hb), dc = empty(DType::kF32, 3, 2);
    AMPD_EXPECT_OK(be.matmul({.a = da, .b = db, .c = dc, .bias = {}}));
    return weighted_sum(host(dc), w);
  };
  const auto fd_a = central_difference(a, 0.25, [&](const HostTensor& x) { return loss(x, b); });
  const auto fd_b = central_difference(b, 0.25, [&](const HostTensor& x) { return loss(a, x); });
  DeviceTensor da = dev(a), db = dev(b), dw = dev(w);
  DeviceTensor dA = empty(DType::kF32, 3, 4), dB = empty(DType::kF32, 4, 2);
  AMPD_ASSERT_OK(be.matmul({.a = dw, .b = db, .c = dA, .trans_b = true, .bias = {}}));
  AMPD_ASSERT_OK(be.matmul({.a = da, .b = dw, .c = dB, .trans_a = true, .bias = {}}));
  expect_close(host(dA), fd_a, kFdTol, "dA = W B^T");
  expect_close(host(dB), fd_b, kFdTol, "dB = A^T W");
}

// =====================================================================================
// cast, bias, scale, accumulate
// =====================================================================================

TEST_F(ReferenceBackendTest, BatchedMatmulMatchesNaiveLoopOnHeadViews) {
  // Attention's products on (B, H, T, D) head views of a fused (B, T, 3C) buffer, against
  // loops that index the flat buffers directly (not through tensor.h or the batched
  // geometry). Small integers: every sum is exact in every dtype involved.
  constexpr int64_t B = 2, T = 5, H = 3, D = 3, C = H * D;
  Rng rng(9);
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (DType cdt : {DType::kF32, dt}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " -> " + std::string(dtype_name(cdt)));
      HostTensor qkv(dt, B * T, 3 * C), p(dt, B * H * T, T), y0(cdt, B * T, C);
      fill_integers(qkv, rng, -4, 4);
      fill_integers(p, rng, -4, 4);
      fill_integers(y0, rng, -4, 4);
      auto x = [&](int64_t part, int64_t b, int64_t h, int64_t t, int64_t d) {
        return qkv.get((b * T + t) * 3 * C + part * C + h * D + d);
      };
      std::vector<double> s_expected(B * H * T * T), y_expected(B * T * C);
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t i = 0; i < T; ++i) {
            for (int64_t j = 0; j < T; ++j) {  // S = Q K^T
              double acc = 0.0;
              for (int64_t d = 0; d < D; ++d) acc += x(0, b, h, i, d) * x(1, b, h, j, d);
              s_expected[((b * H + h) * T + i) * T + j] = acc;
            }
            for (int64_t d = 0; d < D; ++d) {  // y = 2 P V - y
              double acc = 0.0;
              for (int64_t j = 0; j < T; ++j) {
                acc += p.get(((b * H + h) * T + i) * T + j) * x(2, b, h, j, d);
              }
              const int64_t at = (b * T + i) * C + h * D + d;
              y_expected[at] = 2.0 * acc - y0.get(at);
            }
          }
        }
      }
      DeviceTensor dqkv = dev(qkv), dp = dev(p), dy = dev(y0);
      DeviceTensor ds =
          dev(HostTensor::from(cdt, B * H * T, T, std::vector<double>(B * H * T * T, kNaN)));
      const Tensor fused = dqkv.tensor.view({B, T, 3 * C});
      auto head = [&](int64_t part) {
        return fused.narrowed(-1, part * C, C).split(-1, H, D).transposed(1, 2);
      };
      AMPD_ASSERT_OK(be.batched_matmul(
          {.a = head(0), .b = head(1), .c = ds.tensor.view({B, H, T, T}), .trans_b = true}));
      expect_close(host(ds), s_expected, kExact, "S = Q K^T");
      AMPD_ASSERT_OK(
          be.batched_matmul({.a = dp.tensor.view({B, H, T, T}),
                             .b = head(2),
                             .c = dy.tensor.view({B, T, C}).split(-1, H, D).transposed(1, 2),
                             .alpha = 2.0f,
                             .beta = -1.0f}));
      expect_close(host(dy), y_expected, kExact, "y = 2 P V - y");
    }
  }
}

TEST_F(ReferenceBackendTest, CastRoundsOnceBetweenFloatDtypes) {
  Rng rng(5);
  HostTensor src(DType::kF32, 4, 8);
  fill_normal(src, rng, 0.0, 100.0);
  src.set(0, 1.0 + 0x1p-11 + 0x1p-23);  // just above an FP16 midpoint
  src.set(1, 70000.0);                  // FP16 overflow -> inf
  src.set(2, kNaN);
  const DType dts[] = {DType::kF32, DType::kF16, DType::kBF16};
  for (DType from : dts) {
    for (DType to : dts) {
      SCOPED_TRACE(std::string(dtype_name(from)) + " -> " + std::string(dtype_name(to)));
      HostTensor in(from, 4, 8);
      for (int64_t i = 0; i < in.numel(); ++i) in.set(i, src.get(i));
      std::vector<double> expected;
      for (double v : in.values()) expected.push_back(round_to(to, v));
      DeviceTensor din = dev(in), dout = empty(to, 8, 4);
      AMPD_ASSERT_OK(be.cast(din, dout));
      expect_close(host(dout), expected, kExact, "cast");
    }
  }
  // F16 -> BF16: 1 + 2^-8 + 2^-10 is above the BF16 midpoint 1 + 2^-8: rounds up.
  DeviceTensor h = dev(HostTensor::from(DType::kF16, 1, 1, {1.0 + 0x1p-8 + 0x1p-10}));
  DeviceTensor bf = empty(DType::kBF16, 1, 1);
  AMPD_ASSERT_OK(be.cast(h, bf));
  EXPECT_EQ(host(bf).bits16(0), 0x3f81);
}

TEST_F(ReferenceBackendTest, AddBiasBroadcastsOverRowsAndRoundsOnce) {
  HostTensor x = HostTensor::from(DType::kF16, 2, 3, {1, 2, 3, 4, 5, 6});
  // The F32 bias 2^-11 + 2^-30 makes 1 + bias land just above an FP16 midpoint.
  HostTensor bias = HostTensor::from(DType::kF32, 1, 3, {0x1p-11 + 0x1p-30, -2, 0.5});
  DeviceTensor dx = dev(x), db = dev(bias);
  AMPD_ASSERT_OK(be.add_bias(dx, db));
  const HostTensor out = host(dx);
  EXPECT_EQ(out.bits16(0), 0x3c01);
  expect_close(out, {1 + 0x1p-10, 0, 3.5, 4, 3, 6.5}, kExact, "x + bias");
}

TEST_F(ReferenceBackendTest, BiasGradSumsColumnsWithBeta) {
  Rng rng(6);
  HostTensor dy(DType::kBF16, 5, 3);
  fill_integers(dy, rng, -8, 8);
  HostTensor old = HostTensor::from(DType::kF32, 1, 3, {1, -2, 4});
  std::vector<double> expected(3);
  for (int64_t j = 0; j < 3; ++j) {
    expected[j] = 0.5 * old.get(j);
    for (int64_t i = 0; i < 5; ++i) expected[j] += dy.get(i, j);
  }
  DeviceTensor ddy = dev(dy), db = dev(old);
  AMPD_ASSERT_OK(be.bias_grad(ddy, db, 0.5f));
  expect_close(host(db), expected, kExact, "dbias, beta 0.5");
  // beta == 0 does not read the old contents (NaN there does not propagate).
  DeviceTensor dnan = dev(HostTensor::from(DType::kF32, 1, 3, {kNaN, kNaN, kNaN}));
  AMPD_ASSERT_OK(be.bias_grad(ddy, dnan));
  for (int64_t j = 0; j < 3; ++j) expected[j] -= 0.5 * old.get(j);
  expect_close(host(dnan), expected, kExact, "dbias, beta 0");
}

TEST_F(ReferenceBackendTest, ScaleAndAccumulateRoundOnce) {
  DeviceTensor x = dev(HostTensor::from(DType::kF16, 1, 3, {1, -3, 65504}));
  AMPD_ASSERT_OK(be.scale(x, 0.5f));
  expect_close(host(x), {0.5, -1.5, 32752}, kExact, "scale");
  AMPD_ASSERT_OK(be.scale(x, 4.0f));
  expect_close(host(x), {2, -6, kInf}, kExact, "scale overflow");

  // F32 x into an F16 y: 1 + (2^-11 + 2^-30) is just above an FP16 midpoint.
  DeviceTensor a = dev(HostTensor::from(DType::kF32, 1, 2, {0x1p-11 + 0x1p-30, 0.25}));
  DeviceTensor y = dev(HostTensor::from(DType::kF16, 1, 2, {1, 2}));
  AMPD_ASSERT_OK(be.accumulate(a, y));
  EXPECT_EQ(host(y).bits16(0), 0x3c01);
  EXPECT_EQ(host(y).get(1), 2.25);
  // F16 x into F32 y is exact.
  DeviceTensor z = dev(HostTensor::from(DType::kF32, 1, 2, {1e-3, 7}));
  AMPD_ASSERT_OK(be.accumulate(y, z));
  expect_close(host(z), {round_to(DType::kF32, double{1e-3f} + (1 + 0x1p-10)), 9.25}, kExact,
               "z + y");
}

// =====================================================================================
// activations
// =====================================================================================

TEST_F(ReferenceBackendTest, ActivationForwardKnownValues) {
  // Phi(1) = 0.8413447460685429, Phi(2) = 0.9772498680518208 (standard normal CDF), so
  // GELU(1) = Phi(1), GELU(-1) = -(1 - Phi(1)), GELU(2) = 2 Phi(2).
  const std::vector<double> x = {-2, -1, -0.5, 0, 0.5, 1, 2};
  const std::vector<double> relu = {0, 0, 0, 0, 0.5, 1, 2};
  const std::vector<double> gelu = {
      -2 * (1 - 0.9772498680518208), -(1 - 0.8413447460685429), -0.15426876936299347,  0,
      0.34573123063700656,           0.8413447460685429,        2 * 0.9772498680518208};
  const std::vector<double> tanh = {
      -0.9640275800758169, -0.7615941559557649, -0.46211715726000974, 0,
      0.46211715726000974, 0.7615941559557649,  0.9640275800758169};
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (auto [act, expected] :
         {std::pair{Activation::kReLU, &relu}, std::pair{Activation::kGELU, &gelu},
          std::pair{Activation::kTanh, &tanh}}) {
      SCOPED_TRACE(std::string(activation_name(act)) + " " + std::string(dtype_name(dt)));
      DeviceTensor dx = dev(HostTensor::from(dt, 1, 7, x)), dy = empty(dt, 1, 7);
      AMPD_ASSERT_OK(be.activation_forward(act, dx, dy));
      std::vector<double> rounded;
      for (double v : *expected) rounded.push_back(round_to(dt, v));
      // Correctly rounded values of 16-digit constants: exact unless a constant sits within
      // 1e-16 of a midpoint (none does).
      expect_close(host(dy), rounded, kExact, "y");
    }
  }
}

TEST_F(ReferenceBackendTest, ReluPropagatesNanAndHasZeroDerivativeAtZero) {
  DeviceTensor x = dev(HostTensor::from(DType::kF32, 1, 4, {kNaN, -0.0, 0.0, 1.0}));
  DeviceTensor y = empty(DType::kF32, 1, 4);
  AMPD_ASSERT_OK(be.activation_forward(Activation::kReLU, x, y));
  const HostTensor hy = host(y);
  EXPECT_TRUE(std::isnan(hy.get(0)));
  EXPECT_EQ(hy.get(1), 0.0);
  DeviceTensor dy = dev(HostTensor::from(DType::kF32, 1, 4, {5, 5, 5, 5}));
  DeviceTensor dx = empty(DType::kF32, 1, 4);
  AMPD_ASSERT_OK(be.activation_backward(Activation::kReLU, x, dy, dx));
  expect_close(host(dx), {0, 0, 0, 5}, kExact, "relu' at 0 is 0");
  // GELU'(0) = 1/2, GELU'(1) = Phi(1) + phi(1) = 0.8413447460685429 + 0.24197072451914337.
  DeviceTensor g = dev(HostTensor::from(DType::kF32, 1, 2, {0, 1}));
  DeviceTensor ones = dev(HostTensor::from(DType::kF32, 1, 2, {1, 1}));
  DeviceTensor dg = empty(DType::kF32, 1, 2);
  AMPD_ASSERT_OK(be.activation_backward(Activation::kGELU, g, ones, dg));
  expect_close(host(dg), {0.5, 1.0833154705876864}, kF32Ulp, "gelu'");
}

TEST_F(ReferenceBackendTest, ActivationBackwardMatchesFiniteDifferences) {
  for (Activation act : {Activation::kReLU, Activation::kGELU, Activation::kTanh}) {
    SCOPED_TRACE(activation_name(act));
    Rng rng(7);
    HostTensor x = random_f32(rng, 3, 5, 1.5);
    for (int64_t i = 0; i < x.numel(); ++i) {  // keep ReLU's kink out of reach of +-h
      if (std::fabs(x.get(i)) < 2 * kH) x.set(i, 0.25);
    }
    const HostTensor w = random_f32(rng, 3, 5);
    const auto fd = central_difference(x, kH, [&](const HostTensor& xp) {
      DeviceTensor dx = dev(xp), dy = empty(DType::kF32, 3, 5);
      AMPD_EXPECT_OK(be.activation_forward(act, dx, dy));
      return weighted_sum(host(dy), w);
    });
    DeviceTensor dx = dev(x), dw = dev(w);
    AMPD_ASSERT_OK(be.activation_backward(act, dx, dw, dw));  // dx aliases dy
    expect_close(host(dw), fd, kFdTol, "dx");
  }
}

// =====================================================================================
// LayerNorm
// =====================================================================================

TEST_F(ReferenceBackendTest, LayerNormForwardMatchesDefinition) {
  // Independent formula: var = E[x^2] - mean^2 (fine in double for these values).
  constexpr int64_t N = 4, C = 6;
  constexpr float kEps = 1e-5f;
  Rng rng(8);
  for (DType dt : {DType::kF32, DType::kF16}) {
    SCOPED_TRACE(dtype_name(dt));
    HostTensor x(dt, N, C);
    fill_normal(x, rng, 1.0, 2.0);
    const HostTensor gamma = random_f32(rng, 1, C), beta = random_f32(rng, 1, C);
    std::vector<double> ey, emean, erstd;
    for (int64_t i = 0; i < N; ++i) {
      double s = 0, s2 = 0;
      for (int64_t j = 0; j < C; ++j) {
        s += x.get(i, j);
        s2 += x.get(i, j) * x.get(i, j);
      }
      const double mean = s / C;
      const double rstd = 1 / std::sqrt(s2 / C - mean * mean + static_cast<double>(kEps));
      for (int64_t j = 0; j < C; ++j) {
        ey.push_back(round_to(dt, (x.get(i, j) - mean) * rstd * gamma.get(j) + beta.get(j)));
      }
      emean.push_back(mean);
      erstd.push_back(rstd);
    }
    DeviceTensor dx = dev(x), dg = dev(gamma), db = dev(beta), dy = empty(dt, N, C);
    DeviceTensor dm = empty(DType::kF32, 1, N), dr = empty(DType::kF32, 1, N);
    AMPD_ASSERT_OK(be.layernorm_forward(dx, dg, db, dy, dm, dr, kEps));
    // y is the FP64 value rounded once; only a value within ~1e-15 of a rounding midpoint
    // could differ between the two double formulas.
    expect_close(host(dy), ey, dt == DType::kF32 ? kF32Ulp : kExact, "y");
    expect_close(host(dm), emean, kF32Ulp, "mean");
    expect_close(host(dr), erstd, kF32Ulp, "rstd");
  }
}

TEST_F(ReferenceBackendTest, LayerNormBackwardMatchesFiniteDifferences) {
  constexpr int64_t N = 3, C = 5;
  constexpr float kEps = 1e-5f;
  Rng rng(9);
  const HostTensor x = random_f32(rng, N, C), gamma = random_f32(rng, 1, C);
  const HostTensor beta = random_f32(rng, 1, C), w = random_f32(rng, N, C);
  auto loss = [&](const HostTensor& hx, const HostTensor& hg, const HostTensor& hb) {
    DeviceTensor dx = dev(hx), dg = dev(hg), db = dev(hb), dy = empty(DType::kF32, N, C);
    DeviceTensor dm = empty(DType::kF32, 1, N), dr = empty(DType::kF32, 1, N);
    AMPD_EXPECT_OK(be.layernorm_forward(dx, dg, db, dy, dm, dr, kEps));
    return weighted_sum(host(dy), w);
  };
  const auto fd_x =
      central_difference(x, kH, [&](const HostTensor& p) { return loss(p, gamma, beta); });
  const auto fd_g =
      central_difference(gamma, kH, [&](const HostTensor& p) { return loss(x, p, beta); });
  const auto fd_b =
      central_difference(beta, kH, [&](const HostTensor& p) { return loss(x, gamma, p); });

  DeviceTensor dx = dev(x), dg = dev(gamma), db = dev(beta), dy = empty(DType::kF32, N, C);
  DeviceTensor dm = empty(DType::kF32, 1, N), dr = empty(DType::kF32, 1, N);
  AMPD_ASSERT_OK(be.layernorm_forward(dx, dg, db, dy, dm, dr, kEps));
  DeviceTensor dw = dev(w), gx = empty(DType::kF32, N, C);
  DeviceTensor gg = device_filled(be, DType::kF32, 1, C, 123.0f);  // overwritten, not added to
  DeviceTensor gb = device_filled(be, DType::kF32, 1, C, 123.0f);
  AMPD_ASSERT_OK(be.layernorm_backward(dw, dx, dg, dm, dr, gx, gg, gb));
  expect_close(host(gx), fd_x, kFdTol, "dx");
  expect_close(host(gg), fd_g, kFdTol, "dgamma");
  expect_close(host(gb), fd_b, kFdTol, "dbeta");
}

// =====================================================================================
// BatchNorm1d
// =====================================================================================

TEST_F(ReferenceBackendTest, BatchNormHandComputedExample) {
  // x (3 x 2) = [[1, 2], [3, 6], [5, 10]], gamma = [1, 2], beta = [0, 1], momentum 0.1,
  // running_mean = [0, 0], running_var = [1, 1] (PyTorch's initial values).
  //   column 0: mean 3, biased var (4 + 0 + 4) / 3 = 8/3, unbiased (4 + 0 + 4) / 2 = 4
  //   column 1: mean 6, biased var (16 + 0 + 16) / 3 = 32/3, unbiased 16
  //   y[:, 0] = [-2, 0, 2] / sqrt(8/3 + eps);  y[:, 1] = 2 [-4, 0, 4] / sqrt(32/3 + eps) + 1
  //   running_mean = 0.9 * 0 + 0.1 * [3, 6] = [0.3, 0.6]
  //   running_var  = 0.9 * 1 + 0.1 * [4, 16] = [1.3, 2.5]
  // (momentum is the float 0.1f, eps the float 1e-5f; their exact values are used.)
  const double m = 0.1f, eps = 1e-5f;
  DeviceTensor x = dev(HostTensor::from(DType::kF32, 3, 2, {1, 2, 3, 6, 5, 10}));
  DeviceTensor gamma = dev(HostTensor::from(DType::kF32, 1, 2, {1, 2}));
  DeviceTensor beta = dev(HostTensor::from(DType::kF32, 1, 2, {0, 1}));
  DeviceTensor y = empty(DType::kF32, 3, 2);
  DeviceTensor mean = empty(DType::kF32, 1, 2), rstd = empty(DType::kF32, 1, 2);
  DeviceTensor rm = device_filled(be, DType::kF32, 1, 2, 0.0f);
  DeviceTensor rv = device_filled(be, DType::kF32, 1, 2, 1.0f);
  AMPD_ASSERT_OK(be.batchnorm_forward_train(x, gamma, beta, y, mean, rstd, rm, rv, 0.1f, 1e-5f));
  const double r0 = 1 / std::sqrt(8.0 / 3 + eps), r1 = 1 / std::sqrt(32.0 / 3 + eps);
  expect_close(host(y), {-2 * r0, -8 * r1 + 1, 0, 1, 2 * r0, 8 * r1 + 1}, kF32Ulp, "y");
  expect_close(host(mean), {3, 6}, kExact, "mean");
  expect_close(host(rstd), {r0, r1}, kF32Ulp, "rstd");
  expect_close(host(rm), {m * 3, m * 6}, kF32Ulp, "running_mean");
  expect_close(host(rv), {(1 - m) + m * 4, (1 - m) + m * 16}, kF32Ulp, "running_var");
  EXPECT_NEAR(host(rm).get(0), 0.3, 1e-7);
  EXPECT_NEAR(host(rv).get(1), 2.5, 1e-7);

  // Eval mode normalizes with the running statistics instead.
  DeviceTensor ye = empty(DType::kF32, 3, 2);
  AMPD_ASSERT_OK(be.batchnorm_forward_eval(x, gamma, beta, rm, rv, ye, 1e-5f));
  const HostTensor hrm = host(rm), hrv = host(rv);
  std::vector<double> expected;
  for (double xi : {1, 2, 3, 6, 5, 10}) expected.push_back(xi);
  for (int64_t i = 0; i < 6; ++i) {
    const int64_t j = i % 2;
    expected[i] = (expected[i] - hrm.get(j)) / std::sqrt(hrv.get(j) + eps) * (j == 0 ? 1 : 2) +
                  (j == 0 ? 0 : 1);
  }
  expect_close(host(ye), expected, kF32Ulp, "y (eval)");
}

TEST_F(ReferenceBackendTest, BatchNormBackwardMatchesFiniteDifferences) {
  constexpr int64_t N = 4, C = 3;
  constexpr float kEps = 1e-5f;
  Rng rng(10);
  const HostTensor x = random_f32(rng, N, C), gamma = random_f32(rng, 1, C);
  const HostTensor beta = random_f32(rng, 1, C), w = random_f32(rng, N, C);
  auto loss = [&](const HostTensor& hx, const HostTensor& hg, const HostTensor& hb) {
    DeviceTensor dx = dev(hx), dg = dev(hg), db = dev(hb), dy = empty(DType::kF32, N, C);
    DeviceTensor dm = empty(DType::kF32, 1, C), dr = empty(DType::kF32, 1, C);
    DeviceTensor rm = device_filled(be, DType::kF32, 1, C, 0.0f);
    DeviceTensor rv = device_filled(be, DType::kF32, 1, C, 1.0f);
    AMPD_EXPECT_OK(be.batchnorm_forward_train(dx, dg, db, dy, dm, dr, rm, rv, 0.1f, kEps));
    return weighted_sum(host(dy), w);
  };
  const auto fd_x =
      central_difference(x, kH, [&](const HostTensor& p) { return loss(p, gamma, beta); });
  const auto fd_g =
      central_difference(gamma, kH, [&](const HostTensor& p) { return loss(x, p, beta); });
  const auto fd_b =
      central_difference(beta, kH, [&](const HostTensor& p) { return loss(x, gamma, p); });

  DeviceTensor dx = dev(x), dg = dev(gamma), db = dev(beta), dy = empty(DType::kF32, N, C);
  DeviceTensor dm = empty(DType::kF32, 1, C), dr = empty(DType::kF32, 1, C);
  DeviceTensor rm = device_filled(be, DType::kF32, 1, C, 0.0f);
  DeviceTensor rv = device_filled(be, DType::kF32, 1, C, 1.0f);
  AMPD_ASSERT_OK(be.batchnorm_forward_train(dx, dg, db, dy, dm, dr, rm, rv, 0.1f, kEps));
  DeviceTensor dw = dev(w), gx = empty(DType::kF32, N, C);
  DeviceTensor gg = empty(DType::kF32, 1, C), gb = empty(DType::kF32, 1, C);
  AMPD_ASSERT_OK(be.batchnorm_backward(dw, dx, dg, dm, dr, gx, gg, gb));
  expect_close(host(gx), fd_x, kFdTol, "dx");
  expect_close(host(gg), fd_g, kFdTol, "dgamma");
  expect_close(host(gb), fd_b, kFdTol, "dbeta");
}

// =====================================================================================
// dropout
// =====================================================================================

TEST_F(ReferenceBackendTest, DropoutMaskIsTheSharedHashAndScalesKeptValues) {
  constexpr int64_t N = 8, C = 16;
  constexpr float p = 0.25f;
  constexpr uint64_t seed = 1234, offset = 77;
  Rng rng(11);
  const HostTensor x = random_f32(rng, N, C);
  DeviceTensor dx = dev(x), dy = empty(DType::kF32, N, C), dm = empty(DType::kU8, N, C);
  AMPD_ASSERT_OK(be.dropout_forward(dx, dy, dm, p, seed, offset));
  const HostTensor y = host(dy), mask = host(dm);
  std::vector<double> expected_mask, expected_y;
  int kept = 0;
  for (int64_t i = 0; i < N * C; ++i) {
    const bool keep = dropout_keep(seed, offset + static_cast<uint64_t>(i), p);
    kept += keep;
    expected_mask.push_back(keep ? 1 : 0);
    expected_y.push_back(keep ? round_to(DType::kF32, x.get(i) / (1.0 - p)) : 0.0);
  }
  expect_close(mask, expected_mask, kExact, "mask");
  expect_close(y, expected_y, kExact, "y");
  EXPECT_GT(kept, N * C * 6 / 10);
  EXPECT_LT(kept, N * C * 9 / 10);

  // The counter is offset + the row-major index: rows 4.. with offset + 4 C draw the tail.
  DeviceTensor tail_y = empty(DType::kF32, 4, C), tail_m = empty(DType::kU8, 4, C);
  AMPD_ASSERT_OK(be.dropout_forward(dx->row_slice(4, 4), tail_y, tail_m, p, seed, offset + 4 * C));
  expect_close(host(tail_m).values(),
               std::vector<double>(expected_mask.begin() + 4 * C, expected_mask.end()), kExact,
               "mask of the tail");

  // p = 0 keeps everything unchanged; a dropped NaN stays visible (NaN * 0).
  AMPD_ASSERT_OK(be.dropout_forward(dx, dy, dm, 0.0f, seed, offset));
  expect_close(host(dy), x, kExact, "p = 0");
  int64_t dropped = 0;
  while (expected_mask[dropped] != 0) ++dropped;
  HostTensor xn = x;
  xn.set(dropped, kNaN);
  DeviceTensor dxn = dev(xn);
  AMPD_ASSERT_OK(be.dropout_forward(dxn, dy, dm, p, seed, offset));
  EXPECT_TRUE(std::isnan(host(dy).get(dropped)));
}

TEST_F(ReferenceBackendTest, DropoutBackwardMatchesFiniteDifferences) {
  constexpr int64_t N = 3, C = 6;
  constexpr float p = 0.5f;
  Rng rng(12);
  const HostTensor x = random_f32(rng, N, C), w = random_f32(rng, N, C);
  const auto fd = central_difference(x, kH, [&](const HostTensor& xp) {
    DeviceTensor dx = dev(xp), dy = empty(DType::kF32, N, C), dm = empty(DType::kU8, N, C);
    AMPD_EXPECT_OK(be.dropout_forward(dx, dy, dm, p, 99, 0));
    return weighted_sum(host(dy), w);
  });
  DeviceTensor dx = dev(x), dy = empty(DType::kF32, N, C), dm = empty(DType::kU8, N, C);
  AMPD_ASSERT_OK(be.dropout_forward(dx, dy, dm, p, 99, 0));
  DeviceTensor dw = dev(w), g = empty(DType::kF32, N, C);
  AMPD_ASSERT_OK(be.dropout_backward(dw, dm, g, p));
  expect_close(host(g), fd, kFdTol, "dx");
  const HostTensor mask = host(dm);
  std::vector<double> exact;
  for (int64_t i = 0; i < N * C; ++i) exact.push_back(w.get(i) * mask.get(i) * 2.0);
  expect_close(host(g), exact, kExact, "dx = dy * mask / (1 - p)");
}

// =====================================================================================
// losses
// =====================================================================================

TEST_F(ReferenceBackendTest, SoftmaxXentKnownValues) {
  // Row 0: logits [0, ln 2, ln 3] -> lse = ln(1 + 2 + 3) = ln 6, label 2 -> loss ln 2
  // (up to the FP32 rounding of the logits, which the expected values below include).
  // Row 1: [-1, 2, 0.5], label 0.
  const HostTensor logits =
      HostTensor::from(DType::kF32, 2, 3, {0, std::log(2.0), std::log(3.0), -1, 2, 0.5});
  const HostTensor labels = HostTensor::from(DType::kI32, 1, 2, {2, 0});
  std::vector<double> lse, loss;
  for (int64_t i = 0; i < 2; ++i) {
    double s = 0;
    for (int64_t j = 0; j < 3; ++j) s += std::exp(logits.get(i, j));
    lse.push_back(std::log(s));
    loss.push_back(std::log(s) - logits.get(i, static_cast<int64_t>(labels.get(i))));
  }
  EXPECT_NEAR(lse[0], std::log(6.0), 1e-7);
  EXPECT_NEAR(loss[0], std::log(2.0), 1e-7);
  DeviceTensor dl = dev(logits), dlab = dev(labels);
  DeviceTensor dloss = empty(DType::kF32, 1, 2), dlse = empty(DType::kF32, 1, 2);
  AMPD_ASSERT_OK(be.softmax_xent_forward(dl, dlab, dloss, dlse));
  expect_close(host(dlse), lse, kF32Ulp, "lse");
  expect_close(host(dloss), loss, kF32Ulp, "loss");
}

TEST_F(ReferenceBackendTest, SoftmaxXentHugeLogitsStayFinite) {
  // exp(1e4) overflows any float type; subtracting the row max avoids it:
  //   row 0: [1e4, 1e4 - 1, -1e4]: lse = 1e4 + ln(1 + e^-1 + e^-2e4) = 1e4 + ln(1 + e^-1)
  //          label 1: loss = lse - (1e4 - 1) = 1 + ln(1 + e^-1)
  //   row 1: [-1e4, -1e4, -1e4]: lse = -1e4 + ln 3, label 0: loss = ln 3
  const HostTensor logits =
      HostTensor::from(DType::kF32, 2, 3, {1e4, 1e4 - 1, -1e4, -1e4, -1e4, -1e4});
  const HostTensor labels = HostTensor::from(DType::kI32, 1, 2, {1, 0});
  DeviceTensor dl = dev(logits), dlab = dev(labels);
  DeviceTensor dloss = empty(DType::kF32, 1, 2), dlse = empty(DType::kF32, 1, 2);
  AMPD_ASSERT_OK(be.softmax_xent_forward(dl, dlab, dloss, dlse));
  const double l1p = std::log1p(std::exp(-1.0));
  expect_close(host(dlse), {1e4 + l1p, -1e4 + std::log(3.0)}, kF32Ulp, "lse");
  expect_close(host(dloss), {1 + l1p, std::log(3.0)}, kF32Ulp, "loss");

  // Backward: finite, rows sum to ~0. The probabilities exp(x - lse) inherit the FP32
  // rounding of lse (|lse| 2^-24 ~ 6e-4 absolute at 1e4), hence the tolerance.
  DeviceTensor dd = empty(DType::kF32, 2, 3);
  AMPD_ASSERT_OK(be.softmax_xent_backward(dl, dlab, dlse, dd, 1.0f));
  const HostTensor d = host(dd);
  const double p0 = 1 / (1 + std::exp(-1.0)), p1 = 1 - p0;
  expect_close(d, {p0, p1 - 1, 0, 1.0 / 3 - 1, 1.0 / 3, 1.0 / 3}, Tolerance{1e-3, 0}, "dlogits");
  for (int64_t i = 0; i < d.numel(); ++i) EXPECT_TRUE(std::isfinite(d.get(i))) << i;
}

// The contract for a label outside [0, C) (backend.h; before: InvalidArgument naming
// labels[1], outputs untouched): the call succeeds, that row's loss is NaN and its lse as
// computed, its dlogits row all NaN; the other row is exact.
TEST_F(ReferenceBackendTest, SoftmaxXentLabelOutOfRangeGivesNaNRow) {
  const HostTensor logits = HostTensor::from(DType::kF32, 2, 3, {1, 2, 3, 4, 5, 6});
  const double lse = 3 + std::log(1 + std::exp(-1.0) + std::exp(-2.0));  // both rows, shifted
  const double p0 = std::exp(1 - lse), p1 = std::exp(2 - lse), p2 = std::exp(3 - lse);
  for (double bad : {-1.0, 3.0, 2147483647.0}) {
    DeviceTensor dl = dev(logits);
    DeviceTensor dloss = device_filled(be, DType::kF32, 1, 2, 7.0f);
    DeviceTensor dlse = device_filled(be, DType::kF32, 1, 2, 7.0f);
    DeviceTensor dlab = dev(HostTensor::from(DType::kI32, 1, 2, {0, bad}));
    AMPD_ASSERT_OK(be.softmax_xent_forward(dl, dlab, dloss, dlse));
    expect_close(host(dloss), {lse - 1, kNaN}, kF32Ulp, "loss: row 1 NaN");
    expect_close(host(dlse), {lse, lse + 3}, kF32Ulp, "lse: both rows");
    AMPD_ASSERT_OK(be.softmax_xent_backward(dl, dlab, dlse, dl, 1.0f));  // aliased
    expect_close(host(dl), {p0 - 1, p1, p2, kNaN, kNaN, kNaN}, Tolerance{1e-6, 0},
                 "dlogits: row 1 NaN");
  }
}

TEST_F(ReferenceBackendTest, SoftmaxXentBackwardMatchesFiniteDifferences) {
  constexpr int64_t N = 3, C = 5;
  Rng rng(13);
  const HostTensor logits = random_f32(rng, N, C, 2.0);
  const HostTensor labels = HostTensor::from(DType::kI32, 1, N, {4, 0, 2});
  DeviceTensor dlab = dev(labels);
  // L = sum_i loss_i; with grad_scale 0.5 the backward returns dL/dlogits / 2.
  const auto fd = central_difference(logits, kH, [&](const HostTensor& lp) {
    DeviceTensor dl = dev(lp), dloss = empty(DType::kF32, 1, N), dlse = empty(DType::kF32, 1, N);
    AMPD_EXPECT_OK(be.softmax_xent_forward(dl, dlab, dloss, dlse));
    return sum(host(dloss));
  });
  std::vector<double> half_fd;
  for (double g : fd) half_fd.push_back(0.5 * g);
  DeviceTensor dl = dev(logits), dloss = empty(DType::kF32, 1, N), dlse = empty(DType::kF32, 1, N);
  AMPD_ASSERT_OK(be.softmax_xent_forward(dl, dlab, dloss, dlse));
  DeviceTensor dd = empty(DType::kF32, N, C);
  AMPD_ASSERT_OK(be.softmax_xent_backward(dl, dlab, dlse, dd, 0.5f));
  expect_close(host(dd), half_fd, kFdTol, "dlogits");
  // In place (dlogits aliases logits) gives the same bits.
  AMPD_ASSERT_OK(be.softmax_xent_backward(dl, dlab, dlse, dl, 0.5f));
  expect_close(host(dl), host(dd), kExact, "in-place dlogits");
}

// =====================================================================================
// sequence models
// =====================================================================================

TEST_F(ReferenceBackendTest, EmbeddingGatherAndScatterAddHandComputed) {
  // table (3 x 2); ids 2, 0, 2, -1, 3: the last two are out of range.
  const HostTensor table = HostTensor::from(DType::kF32, 3, 2, {1, 2, 3, 4, 5, 6});
  const HostTensor ids = HostTensor::from(DType::kI32, 1, 5, {2, 0, 2, -1, 3});
  DeviceTensor dt = dev(table), di = dev(ids), out = device_filled(be, DType::kBF16, 5, 2, 7.0f);
  AMPD_ASSERT_OK(be.embedding_forward(di, dt, out));
  expect_close(host(out), {5, 6, 1, 2, 5, 6, kNaN, kNaN, kNaN, kNaN}, kExact, "gather");

  const HostTensor dy = HostTensor::from(DType::kF16, 5, 2, {1, 10, 2, 20, 3, 30, 4, 40, 5, 50});
  DeviceTensor ddy = dev(dy);
  DeviceTensor g = device_filled(be, DType::kF32, 3, 2, static_cast<float>(kNaN));
  AMPD_ASSERT_OK(be.embedding_backward(di, ddy, g, 0.0f));  // NaN not read: row 1 becomes 0
  expect_close(host(g), {2, 20, 0, 0, 4, 40}, kExact, "scatter-add, beta 0");
  AMPD_ASSERT_OK(be.embedding_backward(di, ddy, g, 0.5f));
  expect_close(host(g), {3, 30, 0, 0, 6, 60}, kExact, "scatter-add, beta 0.5");
}

TEST_F(ReferenceBackendTest, CausalSoftmaxHandComputedAndMaskedScoresNotRead) {
  // Two 3 x 3 matrices; every masked score is NaN or inf.
  const double n = kNaN, i = kInf;
  const HostTensor s = HostTensor::from(DType::kF32, 6, 3,
                                        {0, n, i,    //
                                         0, 0, -i,   //
                                         1, 2, 3,    //
                                         5, i, n,    //
                                         -i, 0, n,   //
                                         0, 1, n});  // NaN unmasked: row NaN
  DeviceTensor ds = dev(s), p = device_filled(be, DType::kF32, 6, 3, 7.0f);
  AMPD_ASSERT_OK(be.causal_softmax_forward(ds, p));
  const double e = std::numbers::e, z = 1 + e + e * e;
  expect_close(host(p),
               {1, 0, 0, 0.5, 0.5, 0, 1 / z, e / z, e * e / z, 1, 0, 0, 0, 1, 0, kNaN, kNaN, kNaN},
               kF32Ulp, "probs");
}

TEST_F(ReferenceBackendTest, CausalSoftmaxBackwardMatchesFiniteDifferences) {
  constexpr int64_t T = 4, rows = 2 * T;
  Rng rng(17);
  const HostTensor scores = random_f32(rng, rows, T);
  const HostTensor w = random_f32(rng, rows, T);
  // L = sum_{r, j} w[r, j] probs[r, j]; dL/dprobs = w (masked entries of w are not read).
  const auto fd = central_difference(scores, kH, [&](const HostTensor& sp) {
    DeviceTensor d = dev(sp), p = empty(DType::kF32, rows, T);
    AMPD_EXPECT_OK(be.causal_softmax_forward(d, p));
    return weighted_sum(host(p), w);
  });
  DeviceTensor d = dev(scores), p = empty(DType::kF32, rows, T);
  AMPD_ASSERT_OK(be.causal_softmax_forward(d, p));
  DeviceTensor dw = dev(w), dscores = empty(DType::kF32, rows, T);
  AMPD_ASSERT_OK(be.causal_softmax_backward(p, dw, dscores));
  expect_close(host(dscores), fd, kFdTol, "dscores");
  // Masked gradients are exactly 0 (the finite differences there are 0 too).
  const HostTensor g = host(dscores);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = r % T + 1; j < T; ++j) EXPECT_EQ(g.get(r, j), 0.0) << r << ", " << j;
  }
  // In place (dscores aliases dprobs) gives the same bits.
  AMPD_ASSERT_OK(be.causal_softmax_backward(p, dw, dw));
  expect_close(host(dw), g, kExact, "in-place dscores");
}

TEST_F(ReferenceBackendTest, MseKnownValues) {
  // pred [[1, 2], [3, 5]], target [[0, 2], [1, 1]]: loss = [(1 + 0) / 2, (4 + 16) / 2]
  // dpred = grad_scale * 2 (pred - target) / C = 0.5 (pred - target) for grad_scale 0.5.
  DeviceTensor target = dev(HostTensor::from(DType::kF32, 2, 2, {0, 2, 1, 1}));
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    DeviceTensor pred = dev(HostTensor::from(dt, 2, 2, {1, 2, 3, 5}));
    DeviceTensor loss = empty(DType::kF32, 1, 2), dpred = empty(dt, 2, 2);
    AMPD_ASSERT_OK(be.mse_forward(pred, target, loss));
    expect_close(host(loss), {0.5, 10}, kExact, "loss");
    AMPD_ASSERT_OK(be.mse_backward(pred, target, dpred, 0.5f));
    expect_close(host(dpred), {0.5, 0, 1, 2}, kExact, "dpred");
  }
}

TEST_F(ReferenceBackendTest, MseBackwardMatchesFiniteDifferences) {
  constexpr int64_t N = 3, C = 4;
  Rng rng(14);
  const HostTensor pred = random_f32(rng, N, C), target = random_f32(rng, N, C);
  DeviceTensor dt = dev(target);
  const auto fd = central_difference(pred, kH, [&](const HostTensor& pp) {
    DeviceTensor dp = dev(pp), dloss = empty(DType::kF32, 1, N);
    AMPD_EXPECT_OK(be.mse_forward(dp, dt, dloss));
    return sum(host(dloss));
  });
  DeviceTensor dp = dev(pred), g = empty(DType::kF32, N, C);
  AMPD_ASSERT_OK(be.mse_backward(dp, dt, g, 1.0f));
  expect_close(host(g), fd, kFdTol, "dpred");
}

TEST_F(ReferenceBackendTest, ArgmaxTakesFirstMaxAndShowsNan) {
  // NaN counts as larger than everything (first NaN wins), so a NaN row is visible.
  const double ninf = -kInf;
  for (DType dt : {DType::kF32, DType::kF16}) {
    DeviceTensor x = dev(HostTensor::from(dt, 5, 4, {1,    3,    3,    2,     //
                                                     5,    -1,   5,    0,     //
                                                     1,    kNaN, 9,    kNaN,  //
                                                     ninf, ninf, ninf, ninf,  //
                                                     -7,   -3,   kInf, -2}));
    DeviceTensor out = empty(DType::kI32, 1, 5);
    AMPD_ASSERT_OK(be.argmax_rows(x, out));
    expect_close(host(out), {1, 0, 1, 0, 2}, kExact, "argmax");
  }
}

// =====================================================================================
// mixed-precision bookkeeping
// =====================================================================================

TEST_F(ReferenceBackendTest, UnscaleFlagsExactlyTheNonFiniteTensors) {
  Rng rng(15);
  std::vector<HostTensor> h;
  for (int t = 0; t < 5; ++t) {
    h.emplace_back(DType::kF32, 2, 3);
    fill_normal(h.back(), rng, 0.0, 1000.0);
  }
  h[1].set(4, kInf);
  h[2].set(0, kNaN);
  h[4].set(5, -kInf);
  std::vector<DeviceTensor> d;
  std::vector<Tensor> views;
  for (const HostTensor& t : h) d.push_back(dev(t));
  for (const DeviceTensor& t : d) views.push_back(t.tensor);
  DeviceTensor flags = device_filled(be, DType::kI32, 1, 5, 7.0f);
  // inv_scale a power of two: scaling is exact (no underflow at these magnitudes).
  AMPD_ASSERT_OK(be.unscale_and_check(views, 0x1p-16f, flags));
  expect_close(host(flags), {0, 1, 1, 0, 1}, kExact, "found_nonfinite");
  for (int t : {0, 3}) {
    std::vector<double> scaled;
    for (double v : h[t].values()) scaled.push_back(v * 0x1p-16);
    expect_close(host(d[t]), scaled, kExact, "unscaled grads[" + std::to_string(t) + "]");
  }
  // A tensor that overflows *after* scaling (inv_scale > 1) is flagged as well.
  DeviceTensor big = dev(HostTensor::from(DType::kF32, 1, 2, {1.0, 0x1.8p126}));
  DeviceTensor one_flag = empty(DType::kI32, 1, 1);
  const Tensor big_view[] = {big.tensor};
  AMPD_ASSERT_OK(be.unscale_and_check(big_view, 4.0f, one_flag));
  EXPECT_EQ(host(one_flag).get(0), 1.0);
}

TEST_F(ReferenceBackendTest, GlobalNormIsSqrtOfSumOfSquaresInFp64) {
  DeviceTensor a = dev(HostTensor::from(DType::kF32, 1, 2, {3, 4}));
  DeviceTensor b = dev(HostTensor::from(DType::kF32, 1, 1, {12}));
  DeviceTensor out = empty(DType::kF32, 1, 1);
  const Tensor views[] = {a.tensor, b.tensor};
  AMPD_ASSERT_OK(be.global_norm(views, out));
  EXPECT_EQ(host(out).get(0), 13.0);  // sqrt(9 + 16 + 144)
  // Squares of 1e30 overflow FP32 but not FP64: the norm sqrt(2) 1e30 is representable.
  DeviceTensor c = dev(HostTensor::from(DType::kF32, 1, 2, {1e30, -1e30}));
  const Tensor big[] = {c.tensor};
  AMPD_ASSERT_OK(be.global_norm(big, out));
  expect_close(host(out), {std::sqrt(2.0) * static_cast<double>(1e30f)}, kF32Ulp, "norm");
  AMPD_ASSERT_OK(be.global_norm({}, out));
  EXPECT_EQ(host(out).get(0), 0.0);
}

// =====================================================================================
// optimizers
// =====================================================================================

// One scalar parameter with its state on the backend.
struct ScalarParam {
  DeviceTensor master, grad, state1, state2, low;
  ParamSlot slot(float wd_multiplier = 1.0f) const {
    return ParamSlot{.master = master,
                     .grad = grad,
                     .state1 = state1,
                     .state2 = state2,
                     .low_precision = low,
                     .weight_decay_multiplier = wd_multiplier};
  }
};

TEST_F(ReferenceBackendTest, SgdMomentumDampeningWeightDecayTrace) {
  // lr 0.5, momentum 0.5, dampening 0.5, weight_decay 0.25, grad_scale 2; w0 = 1;
  // raw grads 0.5, -0.25, 1. All values are short binary fractions: exact in FP32.
  //   g = 2 grad + 0.25 w;  buf = first ? g : 0.5 buf + 0.5 g;  w -= 0.5 buf
  //   step 1: g = 1 + 0.25 = 1.25;  buf = 1.25;  w = 1 - 0.625 = 0.375
  //   step 2: g = -0.5 + 0.09375 = -0.40625;  buf = 0.625 - 0.203125 = 0.421875;
  //           w = 0.375 - 0.2109375 = 0.1640625
  //   step 3: g = 2 + 0.041015625 = 2.041015625;  buf = 0.2109375 + 1.0205078125
  //           = 1.2314453125;  w = 0.1640625 - 0.61572265625 = -0.45166015625
  // A second slot with weight_decay_multiplier 0 (exempt) sees g = 2 grad only:
  //   step 1: g = 1, buf = 1, w = 0.5;  step 2: g = -0.5, buf = 0.25, w = 0.375;
  //   step 3: g = 2, buf = 0.125 + 1 = 1.125, w = 0.375 - 0.5625 = -0.1875
  // Its FP16 working copy must equal the rounded master.
  ScalarParam p{dev(HostTensor::from(DType::kF32, 1, 1, {1})),
                empty(DType::kF32, 1, 1),
                device_filled(be, DType::kF32, 1, 1, kNaN),
                {},
                {}};
  ScalarParam q{dev(HostTensor::from(DType::kF32, 1, 1, {1})),
                empty(DType::kF32, 1, 1),
                empty(DType::kF32, 1, 1),
                {},
                empty(DType::kF16, 1, 1)};
  const double grads[] = {0.5, -0.25, 1};
  const double w[] = {0.375, 0.1640625, -0.45166015625};
  const double buf[] = {1.25, 0.421875, 1.2314453125};
  const double w_exempt[] = {0.5, 0.375, -0.1875};
  const double buf_exempt[] = {1, 0.25, 1.125};
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step + 1));
    const float grad = static_cast<float>(grads[step]);
    for (const ScalarParam* s : {&p, &q}) AMPD_ASSERT_OK(be.upload(s->grad, &grad));
    const ParamSlot slots[] = {p.slot(), q.slot(0.0f)};
    AMPD_ASSERT_OK(be.sgd_step(slots, {.lr = 0.5f,
                                       .momentum = 0.5f,
                                       .dampening = 0.5f,
                                       .weight_decay = 0.25f,
                                       .first_step = step == 0,
                                       .grad_scale = 2.0f}));
    EXPECT_EQ(host(p.master).get(0), w[step]);
    EXPECT_EQ(host(p.state1).get(0), buf[step]);  // the NaN initial buffer was not read
    EXPECT_EQ(host(q.master).get(0), w_exempt[step]);
    EXPECT_EQ(host(q.state1).get(0), buf_exempt[step]);
    EXPECT_EQ(host(q.low).bits16(0), f32_to_f16_bits(static_cast<float>(host(q.master).get(0))));
  }
}

TEST_F(ReferenceBackendTest, SgdNesterovTrace) {
  // lr 0.25, momentum 0.5, nesterov, no dampening / decay; w0 = 2; grads 1, 1, -2.
  //   buf = first ? g : 0.5 buf + g;  w -= 0.25 (g + 0.5 buf)
  //   step 1: buf = 1;     w = 2 - 0.25 * 1.5 = 1.625
  //   step 2: buf = 1.5;   w = 1.625 - 0.25 * 1.75 = 1.1875
  //   step 3: buf = -1.25; w = 1.1875 - 0.25 * (-2.625) = 1.84375
  ScalarParam p{dev(HostTensor::from(DType::kF32, 1, 1, {2})),
                empty(DType::kF32, 1, 1),
                empty(DType::kF32, 1, 1),
                {},
                empty(DType::kBF16, 1, 1)};
  const float grads[] = {1, 1, -2};
  const double w[] = {1.625, 1.1875, 1.84375};
  const double buf[] = {1, 1.5, -1.25};
  for (int step = 0; step < 3; ++step) {
    AMPD_ASSERT_OK(be.upload(p.grad, &grads[step]));
    const ParamSlot slots[] = {p.slot()};
    AMPD_ASSERT_OK(be.sgd_step(
        slots, {.lr = 0.25f, .momentum = 0.5f, .nesterov = true, .first_step = step == 0}));
    EXPECT_EQ(host(p.master).get(0), w[step]) << "step " << step + 1;
    EXPECT_EQ(host(p.state1).get(0), buf[step]) << "step " << step + 1;
    EXPECT_EQ(host(p.low).bits16(0), f32_to_bf16_bits(static_cast<float>(w[step])));
  }
  // Plain SGD (no momentum, no state): w = 1, grad 0.5, lr 0.5, wd 0.25:
  //   g = 0.5 + 0.25 = 0.75, w = 1 - 0.375 = 0.625.
  ScalarParam plain{dev(HostTensor::from(DType::kF32, 1, 1, {1})),
                    dev(HostTensor::from(DType::kF32, 1, 1, {0.5})),
                    {},
                    {},
                    {}};
  const ParamSlot slots[] = {plain.slot()};
  AMPD_ASSERT_OK(be.sgd_step(slots, {.lr = 0.5f, .weight_decay = 0.25f}));
  EXPECT_EQ(host(plain.master).get(0), 0.625);
}

TEST_F(ReferenceBackendTest, AdamWTrace) {
  // lr 0.125, beta1 0.5, beta2 0.75, eps 1e-8 (float), weight_decay 0.5; w0 = 1;
  // grads 1, -1, 2. Decay factor 1 - lr wd = 0.9375.
  //   t = 1: m = 0.5, v = 0.25; bias corrections 0.5, 0.25 -> m^ = 1, v^ = 1
  //          w = 0.9375 - 0.125 * 1 / (1 + eps) = 0.8125 (eps below FP32 resolution)
  //   t = 2: m = 0.25 - 0.5 = -0.25, v = 0.1875 + 0.25 = 0.4375;
  //          corrections 0.75, 0.4375 -> m^ = -1/3, v^ = 1
  //          w = 0.8125 * 0.9375 + 0.125 / 3 / (1 + eps) = 0.80338541(6...)
  //   t = 3: m = -0.125 + 1 = 0.875, v = 0.328125 + 1 = 1.328125 = 85/64;
  //          corrections 0.875, 1 - 0.75^3 = 0.578125 = 37/64 -> m^ = 1, v^ = 85/37
  //          w = w2 * 0.9375 - 0.125 / (sqrt(85/37) + eps) = 0.67070280 (sqrt(85/37)
  //          = 1.5156837...)
  // m and v are exact in FP32; w is compared to these closed forms (with the FP32 w of
  // the previous step, as the optimizer sees it) within one FP32 ulp.
  const double eps = 1e-8f;
  ScalarParam p{dev(HostTensor::from(DType::kF32, 1, 1, {1})), empty(DType::kF32, 1, 1),
                device_filled(be, DType::kF32, 1, 1, 0.0f),
                device_filled(be, DType::kF32, 1, 1, 0.0f), empty(DType::kF16, 1, 1)};
  const float grads[] = {1, -1, 2};
  const double m[] = {0.5, -0.25, 0.875};
  const double v[] = {0.25, 0.4375, 1.328125};
  double w = 1;
  for (int step = 1; step <= 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    AMPD_ASSERT_OK(be.upload(p.grad, &grads[step - 1]));
    const ParamSlot slots[] = {p.slot()};
    AMPD_ASSERT_OK(be.adamw_step(slots, {.lr = 0.125f,
                                         .beta1 = 0.5f,
                                         .beta2 = 0.75f,
                                         .eps = 1e-8f,
                                         .weight_decay = 0.5f,
                                         .step = step}));
    const double update = step == 1   ? 1 / (1 + eps)
                          : step == 2 ? -(1.0 / 3) / (1 + eps)
                                      : 1 / (std::sqrt(85.0 / 37) + eps);
    w = round_to(DType::kF32, w * 0.9375 - 0.125 * update);
    const double got = host(p.master).get(0);
    expect_close(std::vector<double>{got}, std::vector<double>{w}, kF32Ulp, "w");
    w = got;
    EXPECT_EQ(host(p.state1).get(0), m[step - 1]);
    EXPECT_EQ(host(p.state2).get(0), v[step - 1]);
    EXPECT_EQ(host(p.low).bits16(0), f32_to_f16_bits(static_cast<float>(got)));
  }
  EXPECT_NEAR(w, 0.67070280, 1e-7);
}

TEST_F(ReferenceBackendTest, OptimizersWriteTheRoundedMasterAsLowPrecisionCopy) {
  // Random (not grid) values, so the FP16 / BF16 copies really round. Plain SGD is also
  // checked element by element: w - lr (grad + wd w), rounded once to FP32.
  constexpr int64_t N = 4, C = 16;
  Rng rng(16);
  HostTensor w(DType::kF32, N, C), g(DType::kF32, N, C);
  fill_normal(w, rng);
  fill_normal(g, rng);
  DeviceTensor dw = dev(w), dg = dev(g), low16 = empty(DType::kF16, N, C);
  const ParamSlot sgd[] = {
      ParamSlot{.master = dw, .grad = dg, .state1 = {}, .state2 = {}, .low_precision = low16}};
  AMPD_ASSERT_OK(be.sgd_step(sgd, {.lr = 0.1f, .weight_decay = 0.01f}));
  const HostTensor w1 = host(dw);
  std::vector<double> expected;
  for (int64_t i = 0; i < N * C; ++i) {
    expected.push_back(
        round_to(DType::kF32, w.get(i) - double{0.1f} * (g.get(i) + double{0.01f} * w.get(i))));
  }
  expect_close(w1, expected, kExact, "sgd master");
  const HostTensor l16 = host(low16);
  for (int64_t i = 0; i < N * C; ++i) {
    ASSERT_EQ(l16.bits16(i), f32_to_f16_bits(static_cast<float>(w1.get(i)))) << i;
  }

  DeviceTensor m = device_filled(be, DType::kF32, N, C, 0.0f);
  DeviceTensor v = device_filled(be, DType::kF32, N, C, 0.0f);
  DeviceTensor low_bf = empty(DType::kBF16, N, C);
  const ParamSlot adam[] = {
      ParamSlot{.master = dw, .grad = dg, .state1 = m, .state2 = v, .low_precision = low_bf}};
  AMPD_ASSERT_OK(be.adamw_step(adam, AdamWParams{}));
  const HostTensor w2 = host(dw), lbf = host(low_bf);
  for (int64_t i = 0; i < N * C; ++i) {
    ASSERT_EQ(lbf.bits16(i), f32_to_bf16_bits(static_cast<float>(w2.get(i)))) << i;
  }
}

TEST(TestUtil, ExpectCloseReportsTheWorstElement) {
  const HostTensor a = HostTensor::from(DType::kF32, 2, 3, {1, 2, 3.5, 4, 5, kNaN});
  const std::vector<double> e = {1, 2.001, 3, 4, 5, kNaN};
  EXPECT_TRUE(test::all_close(a, e, Tolerance{0.5, 0}));
  const ::testing::AssertionResult r = test::all_close(a, e, Tolerance{1e-4, 0}, "a");
  ASSERT_FALSE(r);
  const std::string msg = r.message();
  EXPECT_NE(msg.find("2 of 6"), std::string::npos) << msg;
  EXPECT_NE(msg.find("worst at [2] (row 0, col 2)"), std::string::npos) << msg;
  EXPECT_FALSE(test::all_close(a, std::vector<double>{1, 2, 3.5, 4, 5, 6}, kExact));
  EXPECT_EQ(test::default_tolerance(DType::kBF16).rtol, 0x1p-7 + 4 * 0x1p-24);
}

// =====================================================================================
// public validation (backend.cc) reaches the caller with the argument named
// =====================================================================================

TEST_F(ReferenceBackendTest, ValidationNamesTheArgument) {
  auto expect_invalid = [](const Status& s, const std::string& needle) {
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.to_string();
  };
  DeviceTensor a = empty(DType::kF32, 3, 5), b = empty(DType::kF32, 5, 4);
  DeviceTensor c_bad = empty(DType::kF32, 3, 3), b_bad = empty(DType::kF32, 6, 4);
  expect_invalid(be.matmul({.a = a, .b = b, .c = c_bad, .bias = {}}), "c must be 3x4");
  expect_invalid(be.matmul({.a = a, .b = b_bad, .c = empty(DType::kF32, 3, 4), .bias = {}}),
                 "inner dimensions");

  DeviceTensor x = empty(DType::kF32, 2, 4), y = empty(DType::kF32, 2, 4);
  DeviceTensor g3 = empty(DType::kF32, 1, 3), g4 = empty(DType::kF32, 1, 4);
  DeviceTensor stat = empty(DType::kF32, 1, 2);
  expect_invalid(be.layernorm_forward(x, g3, g4, y, stat, stat, 1e-5f), "gamma");

  DeviceTensor mask_f32 = empty(DType::kF32, 2, 4);
  expect_invalid(be.dropout_forward(x, y, mask_f32, 0.1f, 1, 0), "mask must be u8");

  DeviceTensor labels_f32 = empty(DType::kF32, 1, 2);
  expect_invalid(be.softmax_xent_forward(x, labels_f32, stat, stat), "labels must be i32");

  ScalarParam p{empty(DType::kF32, 1, 1), empty(DType::kF32, 1, 1), {}, {}, {}};
  const ParamSlot slots[] = {p.slot()};
  expect_invalid(be.sgd_step(slots, {.momentum = 0.9f}), "params[0].state1");

  const Tensor grads[] = {x.tensor};
  expect_invalid(be.unscale_and_check(grads, 1.0f, empty(DType::kI32, 1, 2)), "found_nonfinite");
}

}  // namespace
}  // namespace ampd
