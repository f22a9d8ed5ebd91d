// LayerNorm and BatchNorm1d, hand-written.
//
// Memory layout: x, y, dy, dx are N x C row-major (N rows = samples). LayerNorm
// normalizes each row (statistics 1 x N), BatchNorm each column (statistics 1 x C).
// gamma, beta, dgamma, dbeta, mean, rstd and the running statistics are F32 vectors.
//
// Numerics: x and dy are widened to FP32; statistics and parameter gradients are FP32
// tensors. Row sums use FP32 SIMD lanes over blocks of 1024 terms added in FP64
// (sum_blocks); column sums use FP32 partials of 16 rows added in FP64 (column_sums).
// Variances are two-pass (sum of squared deviations from the mean), never E[x^2] - E[x]^2,
// which cancels catastrophically when |mean| >> std. rstd = 1 / sqrt(var + eps) is
// computed in FP64 and rounded once.
//
//   LayerNorm   y = (x - mean) * rstd * gamma + beta         (mean, var over the row)
//               (the row kernels are compute-bound on SSE2 and have AVX-512 clones)
//     backward  xhat = (x - mean) rstd, g = dy gamma
//               dx = rstd (g - mean_row(g) - xhat mean_row(g xhat))
//               dgamma = sum_rows dy xhat, dbeta = sum_rows dy
//   BatchNorm   y = (x - mean) * rstd * gamma + beta         (mean, biased var over rows)
//               running = (1 - momentum) running + momentum batch (unbiased var: N/(N-1))
//     backward  dbeta = sum_rows dy, dgamma = sum_rows dy xhat,
//               dx = gamma rstd / N (N dy - dbeta - xhat dgamma)
//
// Why not oneDNN's layer/batch normalization: its backward takes the variance while this
// interface keeps rstd (recovering var = 1/rstd^2 - eps adds a rounding step), 2.6 wants
// src and diff_dst in one dtype and has no f16, and the running-variance update with
// Bessel's correction is ours anyway. These ops are memory-bound; the loops below read
// each operand once or twice and vectorize.
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"

namespace ampd {

using cpu_detail::column_sums;
using cpu_detail::CpuState;
using cpu_detail::kColBlock;
using cpu_detail::load_f32;
using cpu_detail::out_f32;
using cpu_detail::store_f32;
using cpu_detail::sum_blocks;

namespace {

float rstd_of(double var, float eps) {
  return static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
}

// y = (x - mean_j) * rstd_j * gamma_j + beta_j with per-column statistics (BatchNorm).
void normalize_columns(const Tensor& x, const float* mean, const float* rstd, const float* gamma,
                       const float* beta, const Tensor& y) {
  const int64_t cols = x.cols();
  cpu_detail::parallel_rows(x.rows(), cols, [&](int64_t r) {
    float buf[cpu_detail::kBlock];
    for (int64_t c0 = 0; c0 < cols; c0 += cpu_detail::kBlock) {
      const int64_t n = std::min(cpu_detail::kBlock, cols - c0);
      const int64_t i = r * cols + c0;
      const float* xv = load_f32(x, i, n, buf);
      float* out = out_f32(y, i, buf);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        out[j] = (xv[j] - mean[c0 + j]) * rstd[c0 + j] * gamma[c0 + j] + beta[c0 + j];
      }
      store_f32(out, y, i, n);
    }
  });
}

}  // namespace

// ---- LayerNorm ----------------------------------------------------------------------------

namespace {

// One row of C values (FP32): mean, rstd and y = (x - mean) rstd gamma + beta.
AMPD_CPU_CLONES void layernorm_row(const float* x, const float* gamma, const float* beta, float* y,
                                   int64_t cols, float eps, float* mean_out, float* rstd_out) {
  const float mu = static_cast<float>(sum_blocks(cols, [&](int64_t j) { return x[j]; }) / cols);
  const double var = sum_blocks(cols,
                                [&](int64_t j) {
                                  const float d = x[j] - mu;
                                  return d * d;
                                }) /
                     cols;
  const float rs = rstd_of(var, eps);
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) y[j] = (x[j] - mu) * rs * gamma[j] + beta[j];
  *mean_out = mu;
  *rstd_out = rs;
}

// One row of the backward pass: dgamma / dbeta contributions added to acc_g / acc_b, then
// dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy gamma. dx may alias dy (the
// contributions are taken first, and each dx[j] is written after every read of dy).
AMPD_CPU_CLONES void layernorm_row_backward(const float* x, const float* dy, const float* gamma,
                                            float mu, float rs, float* dx, float* acc_g,
                                            float* acc_b, int64_t cols) {
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) {
    acc_g[j] += dy[j] * ((x[j] - mu) * rs);
    acc_b[j] += dy[j];
  }
  const float mean_g =
      static_cast<float>(sum_blocks(cols, [&](int64_t j) { return dy[j] * gamma[j]; }) / cols);
  const float mean_gx = static_cast<float>(
      sum_blocks(cols, [&](int64_t j) { return dy[j] * gamma[j] * ((x[j] - mu) * rs); }) / cols);
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) {
    const float xhat = (x[j] - mu) * rs;
    dx[j] = rs * (dy[j] * gamma[j] - mean_g - xhat * mean_gx);
  }
}

}  // namespace

Status CpuBackend::layernorm_forward_impl(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          const Tensor& y, const Tensor& mean, const Tensor& rstd,
                                          float eps) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("layernorm_forward", [&]() -> Status {
    CpuState& s = *state_;
    const int64_t cols = x.cols();
    float* bufs = s.rows.get(static_cast<size_t>(s.threads * 2 * cols));
    cpu_detail::parallel_rows_tid(x.rows(), cols, [&](int64_t r, int tid) {
      float* xbuf = bufs + static_cast<size_t>(tid) * 2 * cols;
      float* ybuf = xbuf + cols;
      const float* xv = load_f32(x, r * cols, cols, xbuf);
      float* out = out_f32(y, r * cols, ybuf);
      layernorm_row(xv, gamma.as<const float>(), beta.as<const float>(), out, cols, eps,
                    mean.as<float>() + r, rstd.as<float>() + r);
      store_f32(out, y, r * cols, cols);
    });
    return Status::ok_status();
  });
}

// One pass over x and dy: tasks of kRowChunk whole rows compute dx and FP32 partial sums of
// dgamma / dbeta per task, which are then added in FP64 in task order.
Status CpuBackend::layernorm_backward_impl(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                           const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                           const Tensor& dgamma, const Tensor& dbeta) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("layernorm_backward", [&]() -> Status {
    CpuState& s = *state_;
    const int64_t rows = x.rows(), cols = x.cols();
    const int64_t nrc = cpu_detail::ceil_div(rows, cpu_detail::kRowChunk);
    float* partials = s.partials.get(static_cast<size_t>(nrc * 2 * cols));  // [rc][g|b][cols]
    float* bufs = s.rows.get(static_cast<size_t>(s.threads * 3 * cols));
    const float* mu = mean.as<const float>();
    const float* rs = rstd.as<const float>();
    cpu_detail::parallel_for_tid(nrc, [&](int64_t rc, int tid) {
      float* xbuf = bufs + static_cast<size_t>(tid) * 3 * cols;
      float* dybuf = xbuf + cols;
      float* dxbuf = dybuf + cols;
      float* acc_g = partials + rc * 2 * cols;
      float* acc_b = acc_g + cols;
      std::fill(acc_g, acc_g + 2 * cols, 0.0f);
      const int64_t r_end = std::min(rows, (rc + 1) * cpu_detail::kRowChunk);
      for (int64_t r = rc * cpu_detail::kRowChunk; r < r_end; ++r) {
        const float* xv = load_f32(x, r * cols, cols, xbuf);
        const float* dyv = load_f32(dy, r * cols, cols, dybuf);
        float* out = out_f32(dx, r * cols, dxbuf);
        layernorm_row_backward(xv, dyv, gamma.as<const float>(), mu[r], rs[r], out, acc_g, acc_b,
                               cols);
        store_f32(out, dx, r * cols, cols);
      }
    });
    double* sums = s.partials64.get(static_cast<size_t>(2 * cols));
    cpu_detail::combine_partials(partials, nrc, 2, cols, sums);
    for (int64_t j = 0; j < cols; ++j) {
      dgamma.as<float>()[j] = static_cast<float>(sums[j]);
      dbeta.as<float>()[j] = static_cast<float>(sums[cols + j]);
    }
    return Status::ok_status();
  });
}

// ---- BatchNorm1d ---------------------------------------------------------------------------

Status CpuBackend::batchnorm_forward_train_impl(const Tensor& x, const Tensor& gamma,
                                                const Tensor& beta, const Tensor& y,
                                                const Tensor& mean, const Tensor& rstd,
                                                const Tensor& running_mean,
                                                const Tensor& running_var, float momentum,
                                                float eps) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("batchnorm_forward_train", [&]() -> Status {
    CpuState& s = *state_;
    const int64_t rows = x.rows(), cols = x.cols();
    float* mu = mean.as<float>();
    float* rs = rstd.as<float>();
    double* sums = s.partials64.get(static_cast<size_t>(cols));
    column_sums(s, rows, cols, 1, sums, [&](int64_t r, int64_t c0, int64_t n, float* acc) {
      float buf[kColBlock];
      const float* xv = load_f32(x, r * cols + c0, n, buf);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) acc[j] += xv[j];
    });
    for (int64_t j = 0; j < cols; ++j) mu[j] = static_cast<float>(sums[j] / rows);
    column_sums(s, rows, cols, 1, sums, [&](int64_t r, int64_t c0, int64_t n, float* acc) {
      float buf[kColBlock];
      const float* xv = load_f32(x, r * cols + c0, n, buf);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float d = xv[j] - mu[c0 + j];
        acc[j] += d * d;
      }
    });
    float* rm = running_mean.as<float>();
    float* rv = running_var.as<float>();
    const double mom = momentum;
    for (int64_t j = 0; j < cols; ++j) {
      const double var = sums[j] / rows;  // biased: normalizes this batch
      rs[j] = rstd_of(var, eps);
      const double unbiased = sums[j] / (rows - 1);
      rm[j] = static_cast<float>((1.0 - mom) * rm[j] + mom * mu[j]);
      rv[j] = static_cast<float>((1.0 - mom) * rv[j] + mom * unbiased);
    }
    normalize_columns(x, mu, rs, gamma.as<const float>(), beta.as<const float>(), y);
    return Status::ok_status();
  });
}

Status CpuBackend::batchnorm_forward_eval_impl(const Tensor& x, const Tensor& gamma,
                                               const Tensor& beta, const Tensor& running_mean,
                                               const Tensor& running_var, const Tensor& y,
                                               float eps) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("batchnorm_forward_eval", [&]() -> Status {
    const int64_t cols = x.cols();
    float* rs = state_->partials.get(static_cast<size_t>(cols));
    const float* rv = running_var.as<const float>();
    for (int64_t j = 0; j < cols; ++j) rs[j] = rstd_of(rv[j], eps);
    normalize_columns(x, running_mean.as<const float>(), rs, gamma.as<const float>(),
                      beta.as<const float>(), y);
    return Status::ok_status();
  });
}

Status CpuBackend::batchnorm_backward_impl(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                           const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                           const Tensor& dgamma, const Tensor& dbeta) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("batchnorm_backward", [&]() -> Status {
    CpuState& s = *state_;
    const int64_t rows = x.rows(), cols = x.cols();
    const float* mu = mean.as<const float>();
    const float* rs = rstd.as<const float>();
    const float* g = gamma.as<const float>();
    double* sums = s.partials64.get(static_cast<size_t>(2 * cols));
    column_sums(s, rows, cols, 2, sums, [&](int64_t r, int64_t c0, int64_t n, float* acc) {
      float xbuf[kColBlock], dybuf[kColBlock];
      const float* xv = load_f32(x, r * cols + c0, n, xbuf);
      const float* dyv = load_f32(dy, r * cols + c0, n, dybuf);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        acc[j] += dyv[j];
        acc[kColBlock + j] += dyv[j] * ((xv[j] - mu[c0 + j]) * rs[c0 + j]);
      }
    });
    float* db = dbeta.as<float>();
    float* dg = dgamma.as<float>();
    // Per-column factor gamma rstd / N, kept in the float scratch.
    float* k = s.partials.get(static_cast<size_t>(cols));
    for (int64_t j = 0; j < cols; ++j) {
      db[j] = static_cast<float>(sums[j]);
      dg[j] = static_cast<float>(sums[cols + j]);
      k[j] = static_cast<float>(static_cast<double>(g[j]) * rs[j] / rows);
    }
    const float n_rows = static_cast<float>(rows);
    cpu_detail::parallel_rows(rows, cols, [&](int64_t r) {
      float xbuf[cpu_detail::kBlock], dybuf[cpu_detail::kBlock];
      for (int64_t c0 = 0; c0 < cols; c0 += cpu_detail::kBlock) {
        const int64_t n = std::min(cpu_detail::kBlock, cols - c0);
        const int64_t i = r * cols + c0;
        const float* xv = load_f32(x, i, n, xbuf);
        const float* dyv = load_f32(dy, i, n, dybuf);
        float* out = out_f32(dx, i, dybuf);
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const int64_t c = c0 + j;
          const float xhat = (xv[j] - mu[c]) * rs[c];
          out[j] = k[c] * (n_rows * dyv[j] - db[c] - xhat * dg[c]);
        }
        store_f32(out, dx, i, n);
      }
    });
    return Status::ok_status();
  });
}

}  // namespace ampd
