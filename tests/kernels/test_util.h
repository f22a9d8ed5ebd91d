// Shared helpers for the kernel tests (GoogleTest). Header-only; everything is in
// namespace ampd::test. Include as "tests/kernels/test_util.h" and link ampd_kernels.
//
// API
// ---
// Random numbers (the same on every standard library: only std::mt19937_64's raw output
// is used, the distributions are written out here; normal() goes through libm's log/cos,
// whose last-bit differences between platforms vanish when values are rounded to a dtype
// or snapped to a grid):
//   Rng rng(seed);  rng.uniform(lo, hi);  rng.normal(mean, stddev);  rng.integer(lo, hi)
//
// Host tensors:
//   HostTensor t(DType::kF16, rows, cols);          zero-filled, owns std::vector<uint8_t>
//   HostTensor::from(dtype, rows, cols, {1, 2, 3, 4})  values rounded once (RNE) to dtype
//   t.get(i) / t.get(r, c) -> double               exact widening (any dtype, also I32/U8)
//   t.set(i, v) / t.set(r, c, v)                   rounds v once, to nearest even
//   t.values() -> std::vector<double>;  t.bits16(i) raw FP16/BF16 pattern;  t.view() Tensor
//   fill_normal(t, rng, mean, stddev, quantum = 0) / fill_uniform(t, rng, lo, hi, quantum = 0)
//       random values rounded to t's dtype, so they are exactly representable; quantum > 0
//       first snaps them to multiples of quantum (e.g. 2^-8, so that x +- 2^-7 stays exact
//       in FP32 for finite differences).
//   fill_integers(t, rng, lo, hi)                  integers in [lo, hi] (exact in any dtype
//                                                  for |v| <= 256)
//
// Backend memory (works with any Backend; failures are reported with ADD_FAILURE and yield
// an empty tensor, which the next op rejects with InvalidArgument):
//   DeviceTensor d = to_device(backend, host);      allocate + upload
//   DeviceTensor d = device_tensor(backend, dtype, rows, cols);   uninitialised
//   DeviceTensor d = device_filled(backend, dtype, rows, cols, value);
//   HostTensor h = to_host(backend, d);              download (synchronizes)
//   DeviceTensor owns its Buffer and converts implicitly to `const Tensor&`.
//
// Status:
//   AMPD_ASSERT_OK(expr) / AMPD_EXPECT_OK(expr)     the Status must be ok; prints it if not
//
// Comparison:
//   Tolerance{atol, rtol}: element passes iff |a - e| <= atol + rtol * |e|, or both are NaN,
//   or both are the same infinity. kExact = {0, 0} (bit-exact up to NaN payloads and the
//   sign of zero).
//   expect_close(actual, expected, tol, "what")     non-fatal failure at the caller's line,
//       reporting the count of bad elements and the worst one (index, row/col, actual,
//       expected, error, allowed). actual / expected: HostTensor or std::vector<double>.
//   all_close(...) -> ::testing::AssertionResult     the same, for EXPECT_TRUE/ASSERT_TRUE.
//   default_tolerance(out_dtype, k, magnitude)      see the table below.
//
// Finite differences:
//   central_difference(x, h, f) -> std::vector<double>   g[k] = (f(x + h e_k) - f(x - h e_k)) / 2h
//       for a scalar function f of a HostTensor; checks x_k +- h is exactly representable.
//
// Default tolerances (default_tolerance) for comparing a backend's output with the
// FP64 reference (ReferenceBackend), for operands of order `magnitude` (default 1, e.g.
// fill_normal with stddev 1) and results that are reductions of K terms (K = 1 for
// elementwise ops):
//
//   output  rtol                         atol
//   f32     2^-23 + 4 sqrt(K) 2^-24      rtol * magnitude
//   f16     2^-10 + 4 sqrt(K) 2^-24      rtol * magnitude
//   bf16    2^-7  + 4 sqrt(K) 2^-24      rtol * magnitude
//
// Why:
//   * Output rounding. The reference result is correctly rounded: within half an ulp of
//     the exact value. A fast backend rounds its own (slightly different, FP32-computed)
//     value, which may land on the other neighbour: one ulp of the output dtype apart.
//     One ulp relative is at most 2^-23 for f32, 2^-10 for f16, 2^-7 for bf16 (worst case
//     at the bottom of a binade; the unit roundoff is half that).
//   * FP32 accumulation (the contract for fast backends). Each addition of a K-term sum
//     errs by <= 2^-24 of the running partial sum. The worst case bound (K-1) 2^-24 sum|t|
//     is far too pessimistic for tests; rounding errors of random data behave like a
//     random walk, so the typical error is ~sqrt(K) 2^-24 sum|t|; 4x covers the tails.
//     The term enters rtol (relative to |result|, right when the sum does not cancel)
//     and, through atol, relative to `magnitude` (for sums that do cancel).
//     Transcendentals in FP32 (expf, erff, tanhf; a few ulp) fit in the same term.
//   * atol. Relative error is meaningless for results that cancel to ~0 (a dot product of
//     random vectors, a normalized value near the mean), whose absolute error is set by
//     the size of the operands, not of the result. atol = rtol * magnitude assumes terms of
//     size `magnitude`; pass the real scale (e.g. sqrt(K) for the dot product of two
//     unit-normal K-vectors, whose partial sums grow like sqrt(K)).
//   These are not proofs; an op with a long dependency chain (softmax of large logits,
//   normalization with tiny variance) needs a stated, wider tolerance in its own test.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <numbers>
#include <random>
#include <source_location>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "kernels/dtype.h"
#include "kernels/half.h"
#include "kernels/reference/reference_backend.h"
#include "kernels/tensor.h"

// Status checks: AMPD_ASSERT_OK(be.matmul(args)); AMPD_EXPECT_OK(...). Print the status.
#define AMPD_ASSERT_OK(expr)                                              \
  do {                                                                    \
    const ::ampd::Status ampd_test_status_ = (expr);                      \
    ASSERT_TRUE(ampd_test_status_.ok()) << ampd_test_status_.to_string(); \
  } while (0)
#define AMPD_EXPECT_OK(expr)                                              \
  do {                                                                    \
    const ::ampd::Status ampd_test_status_ = (expr);                      \
    EXPECT_TRUE(ampd_test_status_.ok()) << ampd_test_status_.to_string(); \
  } while (0)

namespace ampd::test {

// ---- random numbers ---------------------------------------------------------------------

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  // Uniform in [0, 1) with 53 random bits.
  double uniform01() { return static_cast<double>(gen_() >> 11) * 0x1p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform01(); }
  // Box-Muller; u1 is taken in (0, 1] so log(u1) is finite.
  double normal(double mean = 0.0, double stddev = 1.0) {
    const double u1 = 1.0 - uniform01();
    const double u2 = uniform01();
    const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
    return mean + stddev * z;
  }
  // Uniform integer in [lo, hi] (the modulo bias is < 2^-40 for small ranges).
  int64_t integer(int64_t lo, int64_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
    return lo + static_cast<int64_t>(gen_() % span);
  }
  std::mt19937_64& engine() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

// ---- host tensors -------------------------------------------------------------------------

// Rounds v once, to nearest even, to a floating dtype and returns the rounded value.
inline double round_to(DType dtype, double v) {
  switch (dtype) {
    case DType::kF32: return f64_to_f32(v);
    case DType::kF16: return f16_bits_to_f32(f64_to_f16_bits(v));
    case DType::kBF16: return bf16_bits_to_f32(f64_to_bf16_bits(v));
    case DType::kI32:
    case DType::kU8: return v;
  }
  return v;
}

struct HostTensor {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> bytes;

  HostTensor() = default;
  HostTensor(DType dt, int64_t r, int64_t c)
      : dtype(dt), rows(r), cols(c), bytes(static_cast<size_t>(r * c) * dtype_size(dt), 0) {}

  // Element-wise from doubles (row-major), each rounded once to dtype.
  static HostTensor from(DType dt, int64_t r, int64_t c, const std::vector<double>& values) {
    HostTensor t(dt, r, c);
    EXPECT_EQ(values.size(), static_cast<size_t>(r * c)) << "HostTensor::from: wrong count";
    for (int64_t i = 0; i < t.numel() && static_cast<size_t>(i) < values.size(); ++i) {
      t.set(i, values[static_cast<size_t>(i)]);
    }
    return t;
  }
  static HostTensor from(DType dt, int64_t r, int64_t c, std::initializer_list<double> values) {
    return from(dt, r, c, std::vector<double>(values));
  }

  int64_t numel() const { return rows * cols; }
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  // A Tensor view of the host bytes (for host-side code; ops need backend memory).
  Tensor view() { return Tensor{bytes.data(), dtype, rows, cols}; }

  double get(int64_t i) const {
    const uint8_t* p = bytes.data() + static_cast<size_t>(i) * dtype_size(dtype);
    switch (dtype) {
      case DType::kF32: {
        float f;
        std::memcpy(&f, p, 4);
        return f;
      }
      case DType::kF16: return f16_bits_to_f32(load16(p));
      case DType::kBF16: return bf16_bits_to_f32(load16(p));
      case DType::kI32: {
        int32_t v;
        std::memcpy(&v, p, 4);
        return v;
      }
      case DType::kU8: return *p;
    }
    return 0.0;
  }
  double get(int64_t r, int64_t c) const { return get(r * cols + c); }

  // Floating dtypes: rounded once to nearest even. I32 / U8: v must be an integer.
  void set(int64_t i, double v) {
    uint8_t* p = bytes.data() + static_cast<size_t>(i) * dtype_size(dtype);
    switch (dtype) {
      case DType::kF32: {
        const float f = f64_to_f32(v);
        std::memcpy(p, &f, 4);
        return;
      }
      case DType::kF16: store16(p, f64_to_f16_bits(v)); return;
      case DType::kBF16: store16(p, f64_to_bf16_bits(v)); return;
      case DType::kI32: {
        const int32_t x = static_cast<int32_t>(v);
        std::memcpy(p, &x, 4);
        return;
      }
      case DType::kU8: *p = static_cast<uint8_t>(v); return;
    }
  }
  void set(int64_t r, int64_t c, double v) { set(r * cols + c, v); }

  // The raw 16-bit pattern of an F16 / BF16 element.
  uint16_t bits16(int64_t i) const {
    return load16(bytes.data() + static_cast<size_t>(i) * dtype_size(dtype));
  }

  std::vector<double> values() const {
    std::vector<double> v(static_cast<size_t>(numel()));
    for (int64_t i = 0; i < numel(); ++i) v[static_cast<size_t>(i)] = get(i);
    return v;
  }

 private:
  static uint16_t load16(const uint8_t* p) {
    uint16_t b;
    std::memcpy(&b, p, 2);
    return b;
  }
  static void store16(uint8_t* p, uint16_t b) { std::memcpy(p, &b, 2); }
};

inline double snap(double v, double quantum) {
  return quantum > 0 ? std::nearbyint(v / quantum) * quantum : v;
}

inline void fill_normal(HostTensor& t, Rng& rng, double mean = 0.0, double stddev = 1.0,
                        double quantum = 0.0) {
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, snap(rng.normal(mean, stddev), quantum));
}

inline void fill_uniform(HostTensor& t, Rng& rng, double lo, double hi, double quantum = 0.0) {
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, snap(rng.uniform(lo, hi), quantum));
}

inline void fill_integers(HostTensor& t, Rng& rng, int64_t lo, int64_t hi) {
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, static_cast<double>(rng.integer(lo, hi)));
}

// ---- backend memory ------------------------------------------------------------------------

struct DeviceTensor {
  Buffer buffer;
  Tensor tensor;
  operator const Tensor&() const { return tensor; }  // NOLINT: implicit by design
  const Tensor* operator->() const { return &tensor; }
};

inline DeviceTensor device_tensor(Backend& be, DType dtype, int64_t rows, int64_t cols) {
  DeviceTensor d;
  d.tensor = Tensor{nullptr, dtype, rows, cols};
  StatusOr<Buffer> buf = be.allocate(d.tensor.bytes());
  if (!buf.ok()) {
    ADD_FAILURE() << "allocate " << d.tensor.describe() << " on " << be.name() << ": "
                  << buf.status().to_string();
    return d;
  }
  d.buffer = std::move(buf).value();
  d.tensor.data = d.buffer.data();
  return d;
}

inline DeviceTensor device_filled(Backend& be, DType dtype, int64_t rows, int64_t cols,
                                  float value) {
  DeviceTensor d = device_tensor(be, dtype, rows, cols);
  const Status s = be.fill(d.tensor, value);
  if (!s.ok()) ADD_FAILURE() << "fill " << d.tensor.describe() << ": " << s.to_string();
  return d;
}

inline DeviceTensor to_device(Backend& be, const HostTensor& h) {
  DeviceTensor d = device_tensor(be, h.dtype, h.rows, h.cols);
  if (d.tensor.data == nullptr && h.numel() > 0) return d;
  const Status s = be.upload(d.tensor, h.data());
  if (!s.ok()) ADD_FAILURE() << "upload " << d.tensor.describe() << ": " << s.to_string();
  return d;
}

inline HostTensor to_host(Backend& be, const Tensor& t) {
  HostTensor h(t.dtype, t.rows(), t.cols());
  const Status s = be.download(h.data(), t);
  if (!s.ok()) ADD_FAILURE() << "download " << t.describe() << ": " << s.to_string();
  return h;
}

// ---- comparison ------------------------------------------------------------------------------

struct Tolerance {
  double atol = 0.0;
  double rtol = 0.0;
};
inline constexpr Tolerance kExact{0.0, 0.0};

// See the table at the top of this file.
inline Tolerance default_tolerance(DType out, int64_t k = 1, double magnitude = 1.0) {
  const double ulp = out == DType::kF16 ? 0x1p-10 : out == DType::kBF16 ? 0x1p-7 : 0x1p-23;
  const double rtol = ulp + 4.0 * std::sqrt(static_cast<double>(k < 1 ? 1 : k)) * 0x1p-24;
  return Tolerance{rtol * magnitude, rtol};
}

namespace detail {

inline bool element_ok(double a, double e, const Tolerance& tol) {
  if (std::isnan(a) || std::isnan(e)) return std::isnan(a) && std::isnan(e);
  if (a == e) return true;  // also equal infinities
  if (!std::isfinite(a) || !std::isfinite(e)) return false;
  return std::fabs(a - e) <= tol.atol + tol.rtol * std::fabs(e);
}

inline std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g (%a)", v, v);
  return buf;
}

// Empty string when everything matches, else the failure report. cols > 0 adds (row, col).
inline std::string compare(std::span<const double> actual, std::span<const double> expected,
                           const Tolerance& tol, const std::string& what, int64_t cols) {
  std::ostringstream os;
  if (actual.size() != expected.size()) {
    os << what << ": size mismatch, actual has " << actual.size() << " elements, expected "
       << expected.size();
    return os.str();
  }
  size_t bad = 0;
  size_t worst = 0;
  double worst_ratio = -1.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (element_ok(actual[i], expected[i], tol)) continue;
    ++bad;
    const double allowed = tol.atol + tol.rtol * std::fabs(expected[i]);
    double ratio = std::fabs(actual[i] - expected[i]) / allowed;
    if (!std::isfinite(ratio)) ratio = std::numeric_limits<double>::infinity();
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  if (bad == 0) return {};
  const double a = actual[worst];
  const double e = expected[worst];
  os << what << ": " << bad << " of " << actual.size()
     << " elements differ beyond atol=" << tol.atol << " rtol=" << tol.rtol << "; worst at ["
     << worst << "]";
  if (cols > 0) {
    os << " (row " << static_cast<int64_t>(worst) / cols << ", col "
       << static_cast<int64_t>(worst) % cols << ")";
  }
  os << ": actual " << fmt(a) << ", expected " << fmt(e) << ", |diff| " << std::fabs(a - e)
     << ", allowed " << tol.atol + tol.rtol * std::fabs(e);
  return os.str();
}

}  // namespace detail

inline ::testing::AssertionResult all_close(std::span<const double> actual,
                                            std::span<const double> expected, Tolerance tol,
                                            const std::string& what = "values", int64_t cols = 0) {
  std::string msg = detail::compare(actual, expected, tol, what, cols);
  if (msg.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << msg;
}

inline ::testing::AssertionResult all_close(const HostTensor& actual, const HostTensor& expected,
                                            Tolerance tol, const std::string& what = "values") {
  return all_close(actual.values(), expected.values(), tol, what, actual.cols);
}

inline ::testing::AssertionResult all_close(const HostTensor& actual,
                                            const std::vector<double>& expected, Tolerance tol,
                                            const std::string& what = "values") {
  return all_close(actual.values(), expected, tol, what, actual.cols);
}

inline void expect_close(std::span<const double> actual, std::span<const double> expected,
                         Tolerance tol, const std::string& what,
                         std::source_location loc = std::source_location::current(),
                         int64_t cols = 0) {
  const std::string msg = detail::compare(actual, expected, tol, what, cols);
  if (!msg.empty()) ADD_FAILURE_AT(loc.file_name(), static_cast<int>(loc.line())) << msg;
}

inline void expect_close(const std::vector<double>& actual, const std::vector<double>& expected,
                         Tolerance tol, const std::string& what,
                         std::source_location loc = std::source_location::current()) {
  expect_close(std::span<const double>(actual), std::span<const double>(expected), tol, what, loc);
}

inline void expect_close(const HostTensor& actual, const std::vector<double>& expected,
                         Tolerance tol, const std::string& what,
                         std::source_location loc = std::source_location::current()) {
  expect_close(actual.values(), expected, tol, what, loc, actual.cols);
}

inline void expect_close(const HostTensor& actual, const HostTensor& expected, Tolerance tol,
                         const std::string& what,
                         std::source_location loc = std::source_location::current()) {
  if (actual.rows != expected.rows || actual.cols != expected.cols) {
    ADD_FAILURE_AT(loc.file_name(), static_cast<int>(loc.line()))
        << what << ": shape mismatch, actual " << actual.rows << "x" << actual.cols << ", expected "
        << expected.rows << "x" << expected.cols;
    return;
  }
  expect_close(actual.values(), expected.values(), tol, what, loc, actual.cols);
}

// ---- finite differences -----------------------------------------------------------------------

// Central differences of a scalar function of the elements of x:
//   g[k] = (f(x + h e_k) - f(x - h e_k)) / (2 h)
// Error: h^2 f'''/6 (truncation) plus (error of f) / h. Choose x on a grid (fill_* with a
// quantum) so that x_k +- h is exactly representable in x's dtype; this is checked.
inline std::vector<double> central_difference(const HostTensor& x, double h,
                                              const std::function<double(const HostTensor&)>& f) {
  std::vector<double> g(static_cast<size_t>(x.numel()));
  HostTensor xp = x;
  for (int64_t k = 0; k < x.numel(); ++k) {
    const double x0 = x.get(k);
    xp.set(k, x0 + h);
    EXPECT_EQ(xp.get(k), x0 + h) << "central_difference: x[" << k << "] + h not representable";
    const double fp = f(xp);
    xp.set(k, x0 - h);
    EXPECT_EQ(xp.get(k), x0 - h) << "central_difference: x[" << k << "] - h not representable";
    const double fm = f(xp);
    xp.set(k, x0);
    g[static_cast<size_t>(k)] = (fp - fm) / (2.0 * h);
  }
  return g;
}

}  // namespace ampd::test
