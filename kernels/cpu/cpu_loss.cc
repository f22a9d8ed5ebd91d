// Losses and argmax, hand-written, all in FP32.
//
// Memory layout: logits / pred / target are N x C row-major; labels I32 1 x N; per-row
// outputs (loss, lse, argmax) are 1 x N vectors.
//
// Numerics:
//   softmax cross-entropy  m = max_j x_ij, s = sum_j e^(x_ij - m), lse_i = m + log s,
//                          loss_i = lse_i - x_i,label. Every exponent is <= 0, so nothing
//                          overflows; e^x uses exp_approx (cpu_internal.h, <= 2 ulp,
//                          vectorized) and s is an FP32-lane / FP64-block sum.
//   backward               dlogits = grad_scale (e^(x - lse) - onehot), element-wise, so
//                          dlogits may alias logits (each element is read before written).
//   mse                    loss_i = sum_j (p - t)^2 / C;  dpred = (2 grad_scale / C) (p - t).
//   argmax                 exact comparisons of the widened values; the first maximum
//                          wins ties; NaN counts as larger than any number (the first
//                          NaN wins), so a row holding NaN points at it.
// Labels are not validated (backend.h): a row whose label is outside [0, C) gets loss = NaN
// (lse as computed) and an all-NaN dlogits row; nothing outside the row is read.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"

namespace ampd {

using cpu_detail::exp_approx;
using cpu_detail::kBlock;
using cpu_detail::load_f32;
using cpu_detail::out_f32;
using cpu_detail::store_f32;
using cpu_detail::sum_blocks;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

bool label_in_range(int32_t label, int64_t classes) {
  return label >= 0 && label < classes;
}

// max_j x[j]. A NaN may or may not win here; it makes the sum below NaN either way.
AMPD_CPU_CLONES float row_max(const float* x, int64_t n) {
  float m = x[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 1; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// sum_j e^(x[j] - shift), FP32 lanes per block of kBlock, blocks added in FP64.
// (Written out rather than through sum_blocks, whose instantiation would not be cloned.)
AMPD_CPU_CLONES double exp_sum(const float* x, int64_t n, float shift) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = b; j < e; ++j) s += exp_approx(x[j] - shift);
    total += s;
  }
  return total;
}

// out[j] = e^(x[j] - shift); out may alias x.
AMPD_CPU_CLONES void exp_shifted(const float* x, float* out, int64_t n, float shift) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = exp_approx(x[j] - shift);
}

}  // namespace

Status CpuBackend::softmax_xent_forward_impl(const Tensor& logits, const Tensor& labels,
                                             const Tensor& loss, const Tensor& lse) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("softmax_xent_forward", [&]() -> Status {
    const int64_t cols = logits.cols();
    float* bufs = state_->rows.get(static_cast<size_t>(state_->threads * cols));
    const int32_t* label = labels.as<const int32_t>();
    cpu_detail::parallel_rows_tid(logits.rows(), cols, [&](int64_t r, int tid) {
      const float* x = load_f32(logits, r * cols, cols, bufs + static_cast<size_t>(tid) * cols);
      const float m = row_max(x, cols);
      const double s = exp_sum(x, cols, m);
      const float l = static_cast<float>(static_cast<double>(m) + std::log(s));
      lse.as<float>()[r] = l;
      loss.as<float>()[r] = label_in_range(label[r], cols) ? l - x[label[r]] : kNaN;
    });
    return Status::ok_status();
  });
}

Status CpuBackend::softmax_xent_backward_impl(const Tensor& logits, const Tensor& labels,
                                              const Tensor& lse, const Tensor& dlogits,
                                              float grad_scale) {
  cpu_detail::OpScope scope(*state_);
  const int64_t cols = logits.cols();
  const int32_t* label = labels.as<const int32_t>();
  const float* lse_v = lse.as<const float>();
  cpu_detail::parallel_rows(logits.rows(), cols, [&](int64_t r) {
    float buf[kBlock];
    const float l = lse_v[r];
    const int64_t target = label[r];
    const bool valid = label_in_range(label[r], cols);
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      const int64_t n = std::min(kBlock, cols - c0);
      const int64_t i = r * cols + c0;
      float* out = out_f32(dlogits, i, buf);
      if (!valid) {
        std::fill(out, out + n, kNaN);
        store_f32(out, dlogits, i, n);
        continue;
      }
      const float* x = load_f32(logits, i, n, buf);
      exp_shifted(x, out, n, l);
      if (target >= c0 && target < c0 + n) out[target - c0] -= 1.0f;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] *= grad_scale;
      store_f32(out, dlogits, i, n);
    }
  });
  return Status::ok_status();
}

Status CpuBackend::mse_forward_impl(const Tensor& pred, const Tensor& target, const Tensor& loss) {
  cpu_detail::OpScope scope(*state_);
  const int64_t cols = pred.cols();
  const float* t = target.as<const float>();
  cpu_detail::parallel_rows(pred.rows(), cols, [&](int64_t r) {
    float buf[kBlock];
    double total = 0.0;
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      const int64_t n = std::min(kBlock, cols - c0);
      const float* p = load_f32(pred, r * cols + c0, n, buf);
      const float* tv = t + r * cols + c0;
      total += sum_blocks(n, [&](int64_t j) {
        const float d = p[j] - tv[j];
        return d * d;
      });
    }
    loss.as<float>()[r] = static_cast<float>(total / cols);
  });
  return Status::ok_status();
}

Status CpuBackend::mse_backward_impl(const Tensor& pred, const Tensor& target, const Tensor& dpred,
                                     float grad_scale) {
  cpu_detail::OpScope scope(*state_);
  const float k = static_cast<float>(2.0 * grad_scale / static_cast<double>(pred.cols()));
  const float* t = target.as<const float>();
  cpu_detail::parallel_blocks(pred.numel(), [&](int64_t b, int64_t e) {
    float buf[kBlock];
    const int64_t n = e - b;
    const float* p = load_f32(pred, b, n, buf);
    float* out = out_f32(dpred, b, buf);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = k * (p[j] - t[b + j]);
    store_f32(out, dpred, b, n);
  });
  return Status::ok_status();
}

Status CpuBackend::argmax_rows_impl(const Tensor& x, const Tensor& out) {
  cpu_detail::OpScope scope(*state_);
  const int64_t cols = x.cols();
  int32_t* idx = out.as<int32_t>();
  cpu_detail::parallel_rows(x.rows(), cols, [&](int64_t r) {
    float buf[kBlock];
    float best = 0.0f;
    int64_t best_j = 0;
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      const int64_t n = std::min(kBlock, cols - c0);
      const float* v = load_f32(x, r * cols + c0, n, buf);
      for (int64_t j = 0; j < n; ++j) {
        if ((c0 == 0 && j == 0) || v[j] > best || v[j] != v[j]) {
          best = v[j];
          best_j = c0 + j;
          if (v[j] != v[j]) break;
        }
      }
      if (best != best) break;
    }
    idx[r] = static_cast<int32_t>(best_j);
  });
  return Status::ok_status();
}

}  // namespace ampd
