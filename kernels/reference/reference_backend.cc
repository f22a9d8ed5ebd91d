// The reference backend: every op as the textbook formula, in FP64, rounded once.
//
// Pattern of every op below:
//   1. widen() each input tensor to a std::vector<double> (exact);
//   2. compute the result in double, in a fixed loop order;
//   3. narrow() it into the output tensor, rounding each element once to its dtype.
// Reading all inputs before writing any output also makes every op safe when an output
// aliases an input (e.g. softmax_xent_backward's dlogits = logits, activation dx = dy).
//
// Where backend.h leaves a corner open, the choice made here is stated at the op (NaN in
// ReLU / argmax / dropout, beta == 0 in matmul and bias_grad, integer fills).
#include "kernels/reference/reference_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numbers>
#include <span>
#include <string>
#include <vector>

#include "kernels/batched_geometry.h"
#include "kernels/dropout_hash.h"
#include "kernels/half.h"

namespace ampd {

// ---- exact double -> float / fp16 / bf16 rounding -----------------------------------------

namespace {

// Rounds a non-negative double below 2^52 to an integer, ties to even. Every step is
// exact: floor() is, and s - floor(s) is (both lie in the same or adjacent binades), so
// the comparison with 0.5 sees the true fraction. Independent of the FP rounding mode.
double round_half_even(double s) {
  const double fl = std::floor(s);
  const double frac = s - fl;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(fl, 2.0) == 1.0)) return fl + 1.0;
  return fl;
}

// Shared by FP16 and BF16: a binary format with `mant_bits` explicit significand bits,
// smallest normal exponent `min_exp` and the magnitude `overflow_at` from which values
// round to infinity. For |v| in binade e (2^e <= |v| < 2^(e+1)), clamped below to
// min_exp so that subnormals share the smallest normal binade's quantum, the spacing of
// representable values is q = 2^(e - mant_bits). r = round(|v| / q) is then the value in
// units of q: in [2^mant_bits, 2^(mant_bits+1)] for normals, [0, 2^mant_bits] for
// subnormals. The encoding is ((e - min_exp + 1) << mant_bits) + r - 2^mant_bits
// = ((e - min_exp) << mant_bits) + r, which is also right for subnormals
// (e == min_exp, exponent field 0) and when r carries to 2^(mant_bits+1): the carry
// ripples into the exponent field, exactly as the next binade's encoding requires.
uint16_t round_to_small_float(double v, int mant_bits, int min_exp, double overflow_at) {
  const uint16_t sign = std::signbit(v) ? 0x8000u : 0u;
  const uint16_t inf = static_cast<uint16_t>(((2 * (1 - min_exp) + 1) << mant_bits));
  const double mag = std::fabs(v);
  if (mag >= overflow_at) return static_cast<uint16_t>(sign | inf);  // also +-inf itself
  if (mag == 0.0) return sign;                                       // +-0
  int exp = 0;
  std::frexp(mag, &exp);  // mag = f * 2^exp, f in [0.5, 1): binade exp - 1
  const int e = std::max(exp - 1, min_exp);
  // Scaling by a power of two is exact in double (no overflow or underflow here).
  const double r = round_half_even(std::ldexp(mag, mant_bits - e));
  return static_cast<uint16_t>(sign | (((e - min_exp) << mant_bits) + static_cast<int>(r)));
}

}  // namespace

float f64_to_f32(double value) {
  // FLT_MAX = 0x1.fffffep127 has an odd significand, so the midpoint 0x1.ffffffp127
  // between it and 2^128 rounds to infinity. Below that, the conversion is in range and
  // an IEEE-754 implementation rounds it to nearest even (the default rounding mode,
  // which nothing in ampd changes).
  static_assert(std::numeric_limits<float>::is_iec559 && std::numeric_limits<double>::is_iec559);
  if (std::fabs(value) >= 0x1.ffffffp127 && !std::isnan(value)) {
    return std::signbit(value) ? -std::numeric_limits<float>::infinity()
                               : std::numeric_limits<float>::infinity();
  }
  return static_cast<float>(value);  // NaN: keeps sign and top payload bits (x86, ARM)
}

uint16_t f64_to_f16_bits(double value) {
  // NaN: narrowing to float keeps the sign and the top payload bits; half.h then makes
  // it the same quiet FP16 NaN as every other path does.
  if (std::isnan(value)) return f32_to_f16_bits(static_cast<float>(value));
  // 10 explicit bits, smallest normal 2^-14, largest 65504; 65520 = 65504 + half an ulp.
  return round_to_small_float(value, 10, -14, 65520.0);
}

uint16_t f64_to_bf16_bits(double value) {
  if (std::isnan(value)) return f32_to_bf16_bits(static_cast<float>(value));
  // 7 explicit bits, smallest normal 2^-126, largest 0x1.fep127; +half an ulp = 0x1.ffp127.
  return round_to_small_float(value, 7, -126, 0x1.ffp127);
}

namespace {

// ---- element access -------------------------------------------------------------------------

double load(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::kF32: return t.as<const float>()[i];
    case DType::kF16: return f16_bits_to_f32(t.as<const uint16_t>()[i]);
    case DType::kBF16: return bf16_bits_to_f32(t.as<const uint16_t>()[i]);
    case DType::kI32: return t.as<const int32_t>()[i];
    case DType::kU8: return t.as<const uint8_t>()[i];
  }
  return 0.0;
}

// Integer dtypes (only reached through fill): round half to even, saturate, NaN -> 0.
template <typename Int>
Int to_integer(double v) {
  if (std::isnan(v)) return 0;
  const double lo = std::numeric_limits<Int>::lowest();
  const double hi = std::numeric_limits<Int>::max();
  v = std::clamp(v, lo, hi);
  const double r = std::copysign(round_half_even(std::fabs(v)), v);
  return static_cast<Int>(std::clamp(r, lo, hi));
}

// Stores v into element i, rounding once to the tensor's dtype.
void store(const Tensor& t, int64_t i, double v) {
  switch (t.dtype) {
    case DType::kF32: t.as<float>()[i] = f64_to_f32(v); return;
    case DType::kF16: t.as<uint16_t>()[i] = f64_to_f16_bits(v); return;
    case DType::kBF16: t.as<uint16_t>()[i] = f64_to_bf16_bits(v); return;
    case DType::kI32: t.as<int32_t>()[i] = to_integer<int32_t>(v); return;
    case DType::kU8: t.as<uint8_t>()[i] = to_integer<uint8_t>(v); return;
  }
}

// The whole tensor, exactly, as doubles (row-major).
std::vector<double> widen(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[static_cast<size_t>(i)] = load(t, i);
  return out;
}

void narrow(const Tensor& t, std::span<const double> values) {
  for (int64_t i = 0; i < t.numel(); ++i) store(t, i, values[static_cast<size_t>(i)]);
}

size_t idx(int64_t row, int64_t col, int64_t cols) {
  return static_cast<size_t>(row * cols + col);
}

// ---- activations in double ---------------------------------------------------------------------

constexpr double kInvSqrt2 = 1.0 / std::numbers::sqrt2;
constexpr double kInvSqrt2Pi = std::numbers::inv_sqrtpi * kInvSqrt2;  // 1 / sqrt(2 pi)

double activate(Activation act, double x) {
  switch (act) {
    // NaN propagates (as in PyTorch); -0 and +0 both map to +0.
    case Activation::kReLU: return std::isnan(x) ? x : (x > 0.0 ? x : 0.0);
    // Exact GELU: x * Phi(x), Phi the standard normal CDF = (1 + erf(x / sqrt 2)) / 2.
    case Activation::kGELU: return 0.5 * x * (1.0 + std::erf(x * kInvSqrt2));
    case Activation::kTanh: return std::tanh(x);
  }
  return x;
}

// dx = dy * act'(x).
double activate_backward(Activation act, double x, double dy) {
  switch (act) {
    // ReLU'(0) = 0 (PyTorch's convention). The gradient is *selected*, not multiplied,
    // as PyTorch's threshold_backward does: where x <= 0, dx = 0 even if dy is inf/NaN.
    case Activation::kReLU: return x > 0.0 ? dy : 0.0;
    // d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    case Activation::kGELU: {
      const double cdf = 0.5 * (1.0 + std::erf(x * kInvSqrt2));
      const double pdf = kInvSqrt2Pi * std::exp(-0.5 * x * x);
      return dy * (cdf + x * pdf);
    }
    case Activation::kTanh: {
      const double t = std::tanh(x);
      return dy * (1.0 - t * t);
    }
  }
  return dy;
}

}  // namespace

// ---- memory
// ---------------------------------------------------------------------------------------

StatusOr<void*> ReferenceBackend::allocate_impl(size_t bytes) {
  // std::aligned_alloc needs a size that is a multiple of the alignment.
  constexpr size_t kAlign = 64;
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  if (rounded < bytes) return resource_exhausted("reference: allocation size overflows");
  void* p = std::aligned_alloc(kAlign, rounded);
  if (p == nullptr) {
    return resource_exhausted("reference: out of host memory allocating " + std::to_string(bytes) +
                              " bytes");
  }
  return p;
}

void ReferenceBackend::free_impl(void* ptr, size_t /*bytes*/) noexcept {
  std::free(ptr);
}

Status ReferenceBackend::upload_impl(const Tensor& dst, const void* host_src) {
  std::memcpy(dst.data, host_src, dst.bytes());
  return Status::ok_status();
}

Status ReferenceBackend::download_impl(void* host_dst, const Tensor& src) {
  std::memcpy(host_dst, src.data, src.bytes());
  return Status::ok_status();
}

Status ReferenceBackend::copy_impl(const Tensor& dst, const Tensor& src) {
  std::memmove(dst.data, src.data, src.bytes());  // memmove: overlapping views are fine
  return Status::ok_status();
}

// Floating dtypes: value rounded once (float -> half is a single rounding). I32 / U8:
// rounded to nearest even and saturated; NaN gives 0.
Status ReferenceBackend::fill_impl(const Tensor& dst, float value) {
  for (int64_t i = 0; i < dst.numel(); ++i) store(dst, i, value);
  return Status::ok_status();
}

// ---- dense algebra
// ----------------------------------------------------------------------------------

// C[i, j] = alpha * sum_k op(A)[i, k] op(B)[k, j] + beta * C_old[i, j] + bias[j]
// The sum of products is exact to ~2^-53 (products of FP32 values are exact in double),
// then the whole expression is rounded once to C's dtype. As in BLAS, beta == 0 means
// C's old contents are not read at all (so NaN or garbage there does not leak through).
Status ReferenceBackend::matmul_impl(const MatmulArgs& m) {
  const int64_t M = m.c.rows();
  const int64_t N = m.c.cols();
  const int64_t K = m.trans_a ? m.a.rows() : m.a.cols();
  const std::vector<double> a = widen(m.a);
  const std::vector<double> b = widen(m.b);
  const std::vector<double> c_old = m.beta != 0.0f ? widen(m.c) : std::vector<double>();
  const std::vector<double> bias = m.bias.empty() ? std::vector<double>() : widen(m.bias);
  // op(A)[i, k]: A is M x K, or K x M when transposed; likewise op(B)[k, j].
  auto a_at = [&](int64_t i, int64_t k) {
    return m.trans_a ? a[idx(k, i, m.a.cols())] : a[idx(i, k, m.a.cols())];
  };
  auto b_at = [&](int64_t k, int64_t j) {
    return m.trans_b ? b[idx(j, k, m.b.cols())] : b[idx(k, j, m.b.cols())];
  };
  const double alpha = m.alpha;
  const double beta = m.beta;
  std::vector<double> c(static_cast<size_t>(M * N));
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) acc += a_at(i, k) * b_at(k, j);
      double v = alpha * acc;
      if (m.beta != 0.0f) v += beta * c_old[idx(i, j, N)];
      if (!bias.empty()) v += bias[static_cast<size_t>(j)];
      c[idx(i, j, N)] = v;
    }
  }
  narrow(m.c, c);
  return Status::ok_status();
}

// For every batch: C[i] = alpha * op(A[i]) @ op(B[i]) + beta * C_old[i], read and written
// through the views' strides (batched_geometry.h), summed in double and rounded once like
// matmul above. beta == 0 does not read C. Every result is computed before C is written.
Status ReferenceBackend::batched_matmul_impl(const BatchedMatmulArgs& m) {
  const BatchedGeometry g = batched_geometry(m);
  auto load_at = [](const BatchedOperand& x, int64_t o, int64_t i, int64_t r, int64_t c) {
    const Tensor t(x.data, x.dtype, 1, 1);
    return load(t, x.offset(o, i) + r * x.row_stride + c * x.col_stride);
  };
  const double alpha = m.alpha;
  const double beta = m.beta;
  std::vector<double> out(static_cast<size_t>(g.batch() * g.m * g.n));
  size_t at = 0;
  for (int64_t o = 0; o < g.outer; ++o) {
    for (int64_t i = 0; i < g.inner; ++i) {
      for (int64_t r = 0; r < g.m; ++r) {
        for (int64_t c = 0; c < g.n; ++c) {
          double acc = 0.0;
          for (int64_t k = 0; k < g.k; ++k) {
            acc += load_at(g.a, o, i, r, k) * load_at(g.b, o, i, k, c);
          }
          double v = alpha * acc;
          if (m.beta != 0.0f) v += beta * load_at(g.c, o, i, r, c);
          out[at++] = v;
        }
      }
    }
  }
  at = 0;
  const Tensor c_base(g.c.data, g.c.dtype, 1, 1);
  for (int64_t o = 0; o < g.outer; ++o) {
    for (int64_t i = 0; i < g.inner; ++i) {
      for (int64_t r = 0; r < g.m; ++r) {
        for (int64_t c = 0; c < g.n; ++c) {
          store(c_base, g.c.offset(o, i) + r * g.c.row_stride + c, out[at++]);
        }
      }
    }
  }
  return Status::ok_status();
}

Status ReferenceBackend::cast_impl(const Tensor& src, const Tensor& dst) {
  narrow(dst, widen(src));  // widening is exact, so this is the single rounding
  return Status::ok_status();
}

Status ReferenceBackend::add_bias_impl(const Tensor& x, const Tensor& bias) {
  std::vector<double> v = widen(x);
  const std::vector<double> b = widen(bias);
  for (int64_t i = 0; i < x.rows(); ++i) {
    for (int64_t j = 0; j < x.cols(); ++j) v[idx(i, j, x.cols())] += b[static_cast<size_t>(j)];
  }
  narrow(x, v);
  return Status::ok_status();
}

// dbias[j] = beta * dbias[j] + sum_i dy[i, j]. Like matmul's beta, beta == 0 does not read
// the old dbias, so a freshly allocated (uninitialised) dbias can be written with beta 0.
Status ReferenceBackend::bias_grad_impl(const Tensor& dy, const Tensor& dbias, float beta) {
  const std::vector<double> g = widen(dy);
  std::vector<double> out(static_cast<size_t>(dy.cols()), 0.0);
  if (beta != 0.0f) {
    const std::vector<double> old = widen(dbias);
    for (size_t j = 0; j < out.size(); ++j) out[j] = static_cast<double>(beta) * old[j];
  }
  // Column sums accumulated separately from the beta term, then added: one rounding.
  for (int64_t j = 0; j < dy.cols(); ++j) {
    double sum = 0.0;
    for (int64_t i = 0; i < dy.rows(); ++i) sum += g[idx(i, j, dy.cols())];
    out[static_cast<size_t>(j)] += sum;
  }
  narrow(dbias, out);
  return Status::ok_status();
}

Status ReferenceBackend::scale_impl(const Tensor& x, float alpha) {
  std::vector<double> v = widen(x);
  for (double& e : v) e *= static_cast<double>(alpha);  // exact for F32 x F32
  narrow(x, v);
  return Status::ok_status();
}

Status ReferenceBackend::accumulate_impl(const Tensor& x, const Tensor& y) {
  const std::vector<double> a = widen(x);
  std::vector<double> v = widen(y);
  for (size_t i = 0; i < v.size(); ++i) v[i] += a[i];  // exact for F32 + F32 (in range)
  narrow(y, v);
  return Status::ok_status();
}

// ---- activations
// ----------------------------------------------------------------------------------

Status ReferenceBackend::activation_forward_impl(Activation act, const Tensor& x, const Tensor& y) {
  std::vector<double> v = widen(x);
  for (double& e : v) e = activate(act, e);
  narrow(y, v);
  return Status::ok_status();
}

Status ReferenceBackend::activation_backward_impl(Activation act, const Tensor& x, const Tensor& dy,
                                                  const Tensor& dx) {
  const std::vector<double> xv = widen(x);
  std::vector<double> g = widen(dy);
  for (size_t i = 0; i < g.size(); ++i) g[i] = activate_backward(act, xv[i], g[i]);
  narrow(dx, g);
  return Status::ok_status();
}

// ---- LayerNorm
// ---------------------------------------------------------------------------------------

// Per row i over its C columns (two-pass statistics, biased variance):
//   mean = sum_j x / C,  var = sum_j (x - mean)^2 / C,  rstd = 1 / sqrt(var + eps)
//   y = (x - mean) * rstd * gamma + beta
// y is computed from the FP64 statistics; mean and rstd are then stored rounded to FP32.
Status ReferenceBackend::layernorm_forward_impl(const Tensor& x, const Tensor& gamma,
                                                const Tensor& beta, const Tensor& y,
                                                const Tensor& mean, const Tensor& rstd, float eps) {
  const int64_t C = x.cols();
  const std::vector<double> xv = widen(x);
  const std::vector<double> g = widen(gamma);
  const std::vector<double> b = widen(beta);
  std::vector<double> yv(xv.size());
  std::vector<double> mv(static_cast<size_t>(x.rows()));
  std::vector<double> rv(static_cast<size_t>(x.rows()));
  for (int64_t i = 0; i < x.rows(); ++i) {
    double sum = 0.0;
    for (int64_t j = 0; j < C; ++j) sum += xv[idx(i, j, C)];
    const double mu = sum / static_cast<double>(C);
    double sq = 0.0;
    for (int64_t j = 0; j < C; ++j) {
      const double d = xv[idx(i, j, C)] - mu;
      sq += d * d;
    }
    const double r = 1.0 / std::sqrt(sq / static_cast<double>(C) + static_cast<double>(eps));
    for (int64_t j = 0; j < C; ++j) {
      const size_t k = idx(i, j, C);
      yv[k] = (xv[k] - mu) * r * g[static_cast<size_t>(j)] + b[static_cast<size_t>(j)];
    }
    mv[static_cast<size_t>(i)] = mu;
    rv[static_cast<size_t>(i)] = r;
  }
  narrow(y, yv);
  narrow(mean, mv);
  narrow(rstd, rv);
  return Status::ok_status();
}

// With xhat = (x - mean) * rstd and g = dy * gamma, per row:
//   dx = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat))
// and over all rows: dgamma = sum_i dy * xhat, dbeta = sum_i dy (overwritten).
Status ReferenceBackend::layernorm_backward_impl(const Tensor& dy, const Tensor& x,
                                                 const Tensor& gamma, const Tensor& mean,
                                                 const Tensor& rstd, const Tensor& dx,
                                                 const Tensor& dgamma, const Tensor& dbeta) {
  const int64_t C = x.cols();
  const std::vector<double> xv = widen(x);
  const std::vector<double> dyv = widen(dy);
  const std::vector<double> gam = widen(gamma);
  const std::vector<double> mu = widen(mean);
  const std::vector<double> rs = widen(rstd);
  std::vector<double> dxv(xv.size());
  std::vector<double> dg(static_cast<size_t>(C), 0.0);
  std::vector<double> db(static_cast<size_t>(C), 0.0);
  std::vector<double> xhat(static_cast<size_t>(C));
  std::vector<double> gv(static_cast<size_t>(C));
  for (int64_t i = 0; i < x.rows(); ++i) {
    const double m = mu[static_cast<size_t>(i)];
    const double r = rs[static_cast<size_t>(i)];
    double mean_g = 0.0;
    double mean_gx = 0.0;
    for (int64_t j = 0; j < C; ++j) {
      const size_t k = idx(i, j, C);
      const size_t jj = static_cast<size_t>(j);
      xhat[jj] = (xv[k] - m) * r;
      gv[jj] = dyv[k] * gam[jj];
      mean_g += gv[jj];
      mean_gx += gv[jj] * xhat[jj];
      dg[jj] += dyv[k] * xhat[jj];
      db[jj] += dyv[k];
    }
    mean_g /= static_cast<double>(C);
    mean_gx /= static_cast<double>(C);
    for (int64_t j = 0; j < C; ++j) {
      const size_t jj = static_cast<size_t>(j);
      dxv[idx(i, j, C)] = r * (gv[jj] - mean_g - xhat[jj] * mean_gx);
    }
  }
  narrow(dx, dxv);
  narrow(dgamma, dg);
  narrow(dbeta, db);
  return Status::ok_status();
}

// ---- BatchNorm1d
// ---------------------------------------------------------------------------------------

// Per column j over the N rows (PyTorch BatchNorm1d, training mode):
//   mean = sum_i x / N,  var = sum_i (x - mean)^2 / N (biased),  rstd = 1 / sqrt(var + eps)
//   y = (x - mean) * rstd * gamma + beta
//   running_mean = (1 - momentum) running_mean + momentum mean
//   running_var  = (1 - momentum) running_var  + momentum var * N / (N - 1)  (unbiased)
Status ReferenceBackend::batchnorm_forward_train_impl(const Tensor& x, const Tensor& gamma,
                                                      const Tensor& beta, const Tensor& y,
                                                      const Tensor& mean, const Tensor& rstd,
                                                      const Tensor& running_mean,
                                                      const Tensor& running_var, float momentum,
                                                      float eps) {
  const int64_t N = x.rows();
  const int64_t C = x.cols();
  const double n = static_cast<double>(N);
  const double mom = momentum;
  const std::vector<double> xv = widen(x);
  const std::vector<double> g = widen(gamma);
  const std::vector<double> b = widen(beta);
  std::vector<double> rm = widen(running_mean);
  std::vector<double> rvar = widen(running_var);
  std::vector<double> yv(xv.size());
  std::vector<double> mv(static_cast<size_t>(C));
  std::vector<double> rv(static_cast<size_t>(C));
  for (int64_t j = 0; j < C; ++j) {
    const size_t jj = static_cast<size_t>(j);
    double sum = 0.0;
    for (int64_t i = 0; i < N; ++i) sum += xv[idx(i, j, C)];
    const double mu = sum / n;
    double sq = 0.0;
    for (int64_t i = 0; i < N; ++i) {
      const double d = xv[idx(i, j, C)] - mu;
      sq += d * d;
    }
    const double var = sq / n;
    const double r = 1.0 / std::sqrt(var + static_cast<double>(eps));
    for (int64_t i = 0; i < N; ++i) {
      const size_t k = idx(i, j, C);
      yv[k] = (xv[k] - mu) * r * g[jj] + b[jj];
    }
    mv[jj] = mu;
    rv[jj] = r;
    rm[jj] = (1.0 - mom) * rm[jj] + mom * mu;
    rvar[jj] = (1.0 - mom) * rvar[jj] + mom * (sq / (n - 1.0));
  }
  narrow(y, yv);
  narrow(mean, mv);
  narrow(rstd, rv);
  narrow(running_mean, rm);
  narrow(running_var, rvar);
  return Status::ok_status();
}

// y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta
Status ReferenceBackend::batchnorm_forward_eval_impl(const Tensor& x, const Tensor& gamma,
                                                     const Tensor& beta, const Tensor& running_mean,
                                                     const Tensor& running_var, const Tensor& y,
                                                     float eps) {
  const int64_t C = x.cols();
  const std::vector<double> xv = widen(x);
  const std::vector<double> g = widen(gamma);
  const std::vector<double> b = widen(beta);
  const std::vector<double> rm = widen(running_mean);
  const std::vector<double> rvar = widen(running_var);
  std::vector<double> yv(xv.size());
  for (int64_t i = 0; i < x.rows(); ++i) {
    for (int64_t j = 0; j < C; ++j) {
      const size_t jj = static_cast<size_t>(j);
      const size_t k = idx(i, j, C);
      yv[k] = (xv[k] - rm[jj]) / std::sqrt(rvar[jj] + static_cast<double>(eps)) * g[jj] + b[jj];
    }
  }
  narrow(y, yv);
  return Status::ok_status();
}

// Training-mode gradient (the batch statistics depend on x). Per column, xhat as in
// forward from the stored mean / rstd:
//   dbeta = sum_i dy,  dgamma = sum_i dy * xhat
//   dx = gamma * rstd * (dy - dbeta / N - xhat * dgamma / N)
Status ReferenceBackend::batchnorm_backward_impl(const Tensor& dy, const Tensor& x,
                                                 const Tensor& gamma, const Tensor& mean,
                                                 const Tensor& rstd, const Tensor& dx,
                                                 const Tensor& dgamma, const Tensor& dbeta) {
  const int64_t N = x.rows();
  const int64_t C = x.cols();
  const double n = static_cast<double>(N);
  const std::vector<double> xv = widen(x);
  const std::vector<double> dyv = widen(dy);
  const std::vector<double> gam = widen(gamma);
  const std::vector<double> mu = widen(mean);
  const std::vector<double> rs = widen(rstd);
  std::vector<double> dxv(xv.size());
  std::vector<double> dg(static_cast<size_t>(C));
  std::vector<double> db(static_cast<size_t>(C));
  for (int64_t j = 0; j < C; ++j) {
    const size_t jj = static_cast<size_t>(j);
    double sum_dy = 0.0;
    double sum_dy_xhat = 0.0;
    for (int64_t i = 0; i < N; ++i) {
      const size_t k = idx(i, j, C);
      sum_dy += dyv[k];
      sum_dy_xhat += dyv[k] * (xv[k] - mu[jj]) * rs[jj];
    }
    for (int64_t i = 0; i < N; ++i) {
      const size_t k = idx(i, j, C);
      const double xhat = (xv[k] - mu[jj]) * rs[jj];
      dxv[k] = gam[jj] * rs[jj] * (dyv[k] - sum_dy / n - xhat * sum_dy_xhat / n);
    }
    dg[jj] = sum_dy_xhat;
    db[jj] = sum_dy;
  }
  narrow(dx, dxv);
  narrow(dgamma, dg);
  narrow(dbeta, db);
  return Status::ok_status();
}

// ---- dropout
// ---------------------------------------------------------------------------------------------

// Element i (row-major) is kept iff dropout_keep(seed, offset + i, p). y = x * mask / (1 - p)
// taken literally: a dropped NaN / inf input gives NaN (0 * inf), as in PyTorch, so a
// non-finite activation is not silently hidden by the mask. 1 - p is exact in double for
// any p >= 2^-29, and the division is rounded (2^-53) before the single output rounding.
Status ReferenceBackend::dropout_forward_impl(const Tensor& x, const Tensor& y, const Tensor& mask,
                                              float p, uint64_t seed, uint64_t offset) {
  const double keep_prob = 1.0 - static_cast<double>(p);
  std::vector<double> v = widen(x);
  uint8_t* m = mask.as<uint8_t>();
  for (size_t i = 0; i < v.size(); ++i) {
    const bool keep = dropout_keep(seed, offset + i, p);
    m[i] = keep ? 1 : 0;
    v[i] = v[i] * (keep ? 1.0 : 0.0) / keep_prob;
  }
  narrow(y, v);
  return Status::ok_status();
}

// dx = dy * mask / (1 - p), same conventions as forward.
Status ReferenceBackend::dropout_backward_impl(const Tensor& dy, const Tensor& mask,
                                               const Tensor& dx, float p) {
  const double keep_prob = 1.0 - static_cast<double>(p);
  std::vector<double> v = widen(dy);
  const uint8_t* m = mask.as<const uint8_t>();
  for (size_t i = 0; i < v.size(); ++i) v[i] = v[i] * (m[i] != 0 ? 1.0 : 0.0) / keep_prob;
  narrow(dx, v);
  return Status::ok_status();
}

// ---- losses
// ----------------------------------------------------------------------------------------------

namespace {

// Labels are not validated (backend.h): a row whose label is outside [0, C) gets a NaN
// loss and a NaN dlogits row, and nothing outside the row is read.
constexpr double kNaN64 = std::numeric_limits<double>::quiet_NaN();

bool label_in_range(double label, int64_t classes) {
  return label >= 0 && label < static_cast<double>(classes);
}

}  // namespace

// Per row: m = max_j x, lse = m + log(sum_j exp(x - m)), loss = lse - x[label].
// Subtracting the max keeps exp() in range for any finite logits (e.g. 1e4); NaN in a
// row makes m NaN (std::max would drop it, so it is tested explicitly) and the loss NaN.
Status ReferenceBackend::softmax_xent_forward_impl(const Tensor& logits, const Tensor& labels,
                                                   const Tensor& loss, const Tensor& lse) {
  const int64_t C = logits.cols();
  const std::vector<double> lab = widen(labels);
  const std::vector<double> x = widen(logits);
  std::vector<double> lossv(static_cast<size_t>(logits.rows()));
  std::vector<double> lsev(static_cast<size_t>(logits.rows()));
  for (int64_t i = 0; i < logits.rows(); ++i) {
    double m = x[idx(i, 0, C)];
    for (int64_t j = 1; j < C; ++j) {
      const double v = x[idx(i, j, C)];
      if (std::isnan(v) || v > m) m = v;
      if (std::isnan(m)) break;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < C; ++j) sum += std::exp(x[idx(i, j, C)] - m);
    const double l = m + std::log(sum);
    const double label = lab[static_cast<size_t>(i)];
    lsev[static_cast<size_t>(i)] = l;
    lossv[static_cast<size_t>(i)] =
        label_in_range(label, C) ? l - x[idx(i, static_cast<int64_t>(label), C)] : kNaN64;
  }
  narrow(loss, lossv);
  narrow(lse, lsev);
  return Status::ok_status();
}

// dlogits = grad_scale * (exp(x - lse) - onehot(label)), with the lse stored by forward
// (FP32), as the interface prescribes: its rounding (<= |lse| 2^-24 absolute) perturbs the
// probabilities by the same relative amount, for every backend alike. All logits are
// read before any gradient is written, so dlogits may alias logits.
Status ReferenceBackend::softmax_xent_backward_impl(const Tensor& logits, const Tensor& labels,
                                                    const Tensor& lse, const Tensor& dlogits,
                                                    float grad_scale) {
  const int64_t C = logits.cols();
  const std::vector<double> lab = widen(labels);
  std::vector<double> x = widen(logits);
  const std::vector<double> l = widen(lse);
  const double s = grad_scale;
  for (int64_t i = 0; i < logits.rows(); ++i) {
    const bool valid = label_in_range(lab[static_cast<size_t>(i)], C);
    const auto label = valid ? static_cast<int64_t>(lab[static_cast<size_t>(i)]) : -1;
    for (int64_t j = 0; j < C; ++j) {
      const size_t k = idx(i, j, C);
      const double prob = std::exp(x[k] - l[static_cast<size_t>(i)]);
      x[k] = valid ? s * (prob - (j == label ? 1.0 : 0.0)) : kNaN64;
    }
  }
  narrow(dlogits, x);
  return Status::ok_status();
}

// loss[i] = sum_j (pred - target)^2 / C
Status ReferenceBackend::mse_forward_impl(const Tensor& pred, const Tensor& target,
                                          const Tensor& loss) {
  const int64_t C = pred.cols();
  const std::vector<double> p = widen(pred);
  const std::vector<double> t = widen(target);
  std::vector<double> out(static_cast<size_t>(pred.rows()));
  for (int64_t i = 0; i < pred.rows(); ++i) {
    double sum = 0.0;
    for (int64_t j = 0; j < C; ++j) {
      const double d = p[idx(i, j, C)] - t[idx(i, j, C)];
      sum += d * d;
    }
    out[static_cast<size_t>(i)] = sum / static_cast<double>(C);
  }
  narrow(loss, out);
  return Status::ok_status();
}

// dpred = grad_scale * 2 (pred - target) / C
Status ReferenceBackend::mse_backward_impl(const Tensor& pred, const Tensor& target,
                                           const Tensor& dpred, float grad_scale) {
  const double C = static_cast<double>(pred.cols());
  std::vector<double> p = widen(pred);
  const std::vector<double> t = widen(target);
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] = static_cast<double>(grad_scale) * 2.0 * (p[i] - t[i]) / C;
  }
  narrow(dpred, p);
  return Status::ok_status();
}

// First index of the row maximum. NaN counts as larger than every number (and the
// first NaN wins), so a row holding NaN points at it rather than hiding it.
Status ReferenceBackend::argmax_rows_impl(const Tensor& x, const Tensor& out) {
  const int64_t C = x.cols();
  const std::vector<double> v = widen(x);
  int32_t* o = out.as<int32_t>();
  for (int64_t i = 0; i < x.rows(); ++i) {
    int64_t best = 0;
    double best_v = v[idx(i, 0, C)];
    for (int64_t j = 1; j < C && !std::isnan(best_v); ++j) {
      const double e = v[idx(i, j, C)];
      if (std::isnan(e) || e > best_v) {
        best = j;
        best_v = e;
      }
    }
    o[i] = static_cast<int32_t>(best);
  }
  return Status::ok_status();
}

// ---- mixed-precision bookkeeping
// ------------------------------------------------------------------------

// g * inv_scale: the product of two floats is exact in double, so each element is the
// correctly rounded FP32 product. A tensor is flagged if any element is inf/NaN before
// scaling or becomes inf after (inv_scale > 1 can overflow). Every tensor is fully
// scaled here, flagged or not.
Status ReferenceBackend::unscale_and_check_impl(std::span<const Tensor> grads, float inv_scale,
                                                const Tensor& found_nonfinite) {
  int32_t* flags = found_nonfinite.as<int32_t>();
  for (size_t t = 0; t < grads.size(); ++t) {
    float* g = grads[t].as<float>();
    int32_t flag = 0;
    for (int64_t i = 0; i < grads[t].numel(); ++i) {
      const float scaled = f64_to_f32(static_cast<double>(g[i]) * inv_scale);
      if (!std::isfinite(g[i]) || !std::isfinite(scaled)) flag = 1;
      g[i] = scaled;
    }
    flags[t] = flag;
  }
  return Status::ok_status();
}

// sqrt(sum g^2) over every element of every tensor; squares of floats are exact in double
// and cannot overflow it.
Status ReferenceBackend::global_norm_impl(std::span<const Tensor> grads, const Tensor& out) {
  double sum = 0.0;
  for (const Tensor& t : grads) {
    for (double v : widen(t)) sum += v * v;
  }
  store(out, 0, std::sqrt(sum));
  return Status::ok_status();
}

// ---- optimizers
// ----------------------------------------------------------------------------------------------

namespace {

// The low-precision working copy is the FP32 master *as stored* rounded once to F16 /
// BF16 (not the FP64 intermediate), so that low_precision == cast(master) bit for bit.
void write_low_precision(const ParamSlot& p) {
  if (p.low_precision.empty()) return;
  const float* w = p.master.as<const float>();
  for (int64_t i = 0; i < p.master.numel(); ++i) store(p.low_precision, i, w[i]);
}

}  // namespace

// PyTorch torch.optim.SGD, per element, in double from the FP32 values (hyper-parameters at
// their FP32 values); master and momentum buffer are each rounded to FP32 once:
//   g = grad * grad_scale + weight_decay * multiplier * w
//   momentum != 0: buf = first_step ? g : momentum * buf + (1 - dampening) * g
//                  g = nesterov ? g + momentum * buf : buf       (buf unrounded here)
//   w -= lr * g
Status ReferenceBackend::sgd_step_impl(std::span<const ParamSlot> params, const SgdParams& hp) {
  const double lr = hp.lr;
  const double mom = hp.momentum;
  const double damp = hp.dampening;
  const double gs = hp.grad_scale;
  for (const ParamSlot& p : params) {
    const double wd = static_cast<double>(hp.weight_decay) * p.weight_decay_multiplier;
    float* w = p.master.as<float>();
    const float* grad = p.grad.as<const float>();
    float* buf = hp.momentum != 0.0f ? p.state1.as<float>() : nullptr;
    for (int64_t i = 0; i < p.master.numel(); ++i) {
      const double wi = w[i];
      double g = static_cast<double>(grad[i]) * gs + wd * wi;
      if (buf != nullptr) {
        const double b = hp.first_step ? g : mom * buf[i] + (1.0 - damp) * g;
        g = hp.nesterov ? g + mom * b : b;
        buf[i] = f64_to_f32(b);
      }
      w[i] = f64_to_f32(wi - lr * g);
    }
    write_low_precision(p);
  }
  return Status::ok_status();
}

// PyTorch torch.optim.AdamW, per element, in double (t = hp.step):
//   w *= 1 - lr * weight_decay * multiplier
//   g = grad * grad_scale
//   m = beta1 m + (1 - beta1) g,  v = beta2 v + (1 - beta2) g^2
//   w -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// The update uses the unrounded m and v; w, m and v are each rounded to FP32 once.
Status ReferenceBackend::adamw_step_impl(std::span<const ParamSlot> params, const AdamWParams& hp) {
  const double lr = hp.lr;
  const double b1 = hp.beta1;
  const double b2 = hp.beta2;
  const double eps = hp.eps;
  const double gs = hp.grad_scale;
  const double t = static_cast<double>(hp.step);
  const double bc1 = 1.0 - std::pow(b1, t);
  const double bc2 = 1.0 - std::pow(b2, t);
  for (const ParamSlot& p : params) {
    const double wd = static_cast<double>(hp.weight_decay) * p.weight_decay_multiplier;
    float* w = p.master.as<float>();
    const float* grad = p.grad.as<const float>();
    float* m = p.state1.as<float>();
    float* v = p.state2.as<float>();
    for (int64_t i = 0; i < p.master.numel(); ++i) {
      const double g = static_cast<double>(grad[i]) * gs;
      const double mi = b1 * m[i] + (1.0 - b1) * g;
      const double vi = b2 * v[i] + (1.0 - b2) * g * g;
      double wi = static_cast<double>(w[i]) * (1.0 - lr * wd);
      wi -= lr * (mi / bc1) / (std::sqrt(vi / bc2) + eps);
      m[i] = f64_to_f32(mi);
      v[i] = f64_to_f32(vi);
      w[i] = f64_to_f32(wi);
    }
    write_low_precision(p);
  }
  return Status::ok_status();
}

// ---- sequence models ---------------------------------------------------------------------

Status ReferenceBackend::embedding_forward_impl(const Tensor& ids, const Tensor& table,
                                                const Tensor& out) {
  const int64_t V = table.rows(), C = table.cols();
  const std::vector<double> w = widen(table);
  std::vector<double> y(static_cast<size_t>(out.numel()));
  for (int64_t i = 0; i < out.rows(); ++i) {
    const int32_t id = ids.as<const int32_t>()[i];
    const bool valid = id >= 0 && id < V;
    for (int64_t j = 0; j < C; ++j) y[idx(i, j, C)] = valid ? w[idx(id, j, C)] : kNaN64;
  }
  narrow(out, y);
  return Status::ok_status();
}

Status ReferenceBackend::embedding_backward_impl(const Tensor& ids, const Tensor& dy,
                                                 const Tensor& dtable, float beta) {
  const int64_t V = dtable.rows(), C = dtable.cols();
  std::vector<double> g(static_cast<size_t>(dtable.numel()), 0.0);
  if (beta != 0.0f) {
    g = widen(dtable);
    for (double& v : g) v *= static_cast<double>(beta);
  }
  const std::vector<double> d = widen(dy);
  for (int64_t i = 0; i < dy.rows(); ++i) {
    const int32_t id = ids.as<const int32_t>()[i];
    if (id < 0 || id >= V) continue;
    for (int64_t j = 0; j < C; ++j) g[idx(id, j, C)] += d[idx(i, j, C)];
  }
  narrow(dtable, g);
  return Status::ok_status();
}

Status ReferenceBackend::causal_softmax_forward_impl(const Tensor& scores, const Tensor& probs) {
  const int64_t T = scores.cols();
  const std::vector<double> s = widen(scores);
  std::vector<double> p(s.size(), 0.0);
  for (int64_t r = 0; r < scores.rows(); ++r) {
    const int64_t q = r % T;
    double m = s[idx(r, 0, T)];
    for (int64_t j = 1; j <= q; ++j) {
      const double v = s[idx(r, j, T)];
      if (std::isnan(v) || v > m) m = v;
      if (std::isnan(m)) break;
    }
    double sum = 0.0;
    for (int64_t j = 0; j <= q; ++j) sum += std::exp(s[idx(r, j, T)] - m);
    for (int64_t j = 0; j <= q; ++j) p[idx(r, j, T)] = std::exp(s[idx(r, j, T)] - m) / sum;
  }
  narrow(probs, p);
  return Status::ok_status();
}

Status ReferenceBackend::causal_softmax_backward_impl(const Tensor& probs, const Tensor& dprobs,
                                                      const Tensor& dscores) {
  const int64_t T = probs.cols();
  const std::vector<double> p = widen(probs);
  const std::vector<double> dp = widen(dprobs);
  std::vector<double> ds(p.size(), 0.0);
  for (int64_t r = 0; r < probs.rows(); ++r) {
    const int64_t q = r % T;
    double dot = 0.0;
    for (int64_t j = 0; j <= q; ++j) dot += p[idx(r, j, T)] * dp[idx(r, j, T)];
    for (int64_t j = 0; j <= q; ++j) ds[idx(r, j, T)] = p[idx(r, j, T)] * (dp[idx(r, j, T)] - dot);
  }
  narrow(dscores, ds);
  return Status::ok_status();
}

std::unique_ptr<Backend> make_reference_backend() {
  return std::make_unique<ReferenceBackend>();
}

}  // namespace ampd
