// The sequence-model ops (backend.h, "sequence models"): embedding gather and its
// deterministic scatter-add, and the causal softmax of attention, forward and backward.
// Hand-written: oneDNN 2.6 has no masked softmax and no embedding op.
//
// Numerics: FP32 throughout; low-precision inputs are widened exactly, outputs rounded
// once. Softmax rows use exp_approx (cpu_internal.h, <= 2 ulp) and FP32-lane sums whose
// order is fixed by the code (deterministic for any thread count).
// Parallelism: softmax over rows; the embedding backward over column blocks, each of which
// walks the tokens in ascending order, so every dtable element is one ordered FP32 sum.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"

namespace ampd {

using cpu_detail::exp_approx;
using cpu_detail::load_f32;
using cpu_detail::out_f32;
using cpu_detail::parallel_for;
using cpu_detail::parallel_rows;
using cpu_detail::store_f32;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr int64_t kEmbedColBlock = 64;

// Scratch for one row of up to n floats, per thread.
float* row_scratch(int slot, int64_t n) {
  thread_local std::vector<float> buf[4];
  auto& b = buf[slot];
  if (b.size() < static_cast<size_t>(n)) b.resize(static_cast<size_t>(n));
  return b.data();
}

// p[0..n) = softmax(s[0..n)), FP32; n >= 1.
AMPD_CPU_CLONES void softmax_row(const float* s, float* p, int64_t n) {
  float m = s[0];
  bool nan = std::isnan(m);
  for (int64_t j = 1; j < n; ++j) {
    nan |= std::isnan(s[j]);
    m = s[j] > m ? s[j] : m;
  }
  if (nan) {
    std::fill(p, p + n, kNaN);
    return;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    p[j] = exp_approx(s[j] - m);
    sum += p[j];
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) p[j] *= inv;
}

// ds[0..n) = p * (dp - <p, dp>), FP32.
AMPD_CPU_CLONES void softmax_backward_row(const float* p, const float* dp, float* ds, int64_t n) {
  float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < n; ++j) dot += p[j] * dp[j];
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (dp[j] - dot);
}

}  // namespace

Status CpuBackend::embedding_forward_impl(const Tensor& ids, const Tensor& table,
                                          const Tensor& out) {
  const int64_t V = table.rows(), C = table.cols();
  const int32_t* id = ids.as<const int32_t>();
  parallel_rows(out.rows(), C, [&](int64_t i) {
    float* y = out_f32(out, i * C, row_scratch(0, C));
    if (id[i] < 0 || id[i] >= V) {
      std::fill(y, y + C, kNaN);
    } else {
      const float* w = load_f32(table, id[i] * C, C, row_scratch(1, C));
      if (y != w) std::copy(w, w + C, y);
    }
    store_f32(y, out, i * C, C);
  });
  return Status::ok_status();
}

Status CpuBackend::embedding_backward_impl(const Tensor& ids, const Tensor& dy,
                                           const Tensor& dtable, float beta) {
  const int64_t V = dtable.rows(), C = dtable.cols(), N = dy.rows();
  const int32_t* id = ids.as<const int32_t>();
  float* g = dtable.as<float>();
  parallel_for(cpu_detail::ceil_div(C, kEmbedColBlock), [&](int64_t cb) {
    const int64_t c0 = cb * kEmbedColBlock, n = std::min(kEmbedColBlock, C - c0);
    for (int64_t v = 0; v < V; ++v) {
      float* row = g + v * C + c0;
      if (beta == 0.0f) {
        std::fill(row, row + n, 0.0f);
      } else if (beta != 1.0f) {
        for (int64_t j = 0; j < n; ++j) row[j] *= beta;
      }
    }
    float buf[kEmbedColBlock];
    for (int64_t i = 0; i < N; ++i) {
      if (id[i] < 0 || id[i] >= V) continue;
      const float* d = load_f32(dy, i * C + c0, n, buf);
      float* row = g + id[i] * C + c0;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) row[j] += d[j];
    }
  });
  return Status::ok_status();
}

Status CpuBackend::causal_softmax_forward_impl(const Tensor& scores, const Tensor& probs) {
  const int64_t T = scores.cols();
  parallel_rows(scores.rows(), T, [&](int64_t r) {
    const int64_t q = r % T, n = q + 1;
    const float* s = load_f32(scores, r * T, n, row_scratch(0, T));
    float* p = out_f32(probs, r * T, row_scratch(1, T));
    softmax_row(s, p, n);
    std::fill(p + n, p + T, 0.0f);
    store_f32(p, probs, r * T, T);
  });
  return Status::ok_status();
}

Status CpuBackend::causal_softmax_backward_impl(const Tensor& probs, const Tensor& dprobs,
                                                const Tensor& dscores) {
  const int64_t T = probs.cols();
  parallel_rows(probs.rows(), T, [&](int64_t r) {
    const int64_t q = r % T, n = q + 1;
    const float* p = load_f32(probs, r * T, n, row_scratch(0, T));
    const float* dp = load_f32(dprobs, r * T, n, row_scratch(1, T));
    float* ds = out_f32(dscores, r * T, row_scratch(2, T));
    softmax_backward_row(p, dp, ds, n);
    std::fill(ds + n, ds + T, 0.0f);
    store_f32(ds, dscores, r * T, T);
  });
  return Status::ok_status();
}

}  // namespace ampd
