// The sequence-model ops (backend.h, "sequence models"): embedding gather and its
// deterministic scatter-add, and the causal softmax of attention, forward and backward.
// Hand-written: oneDNN 2.6 has no masked softmax and no embedding op.
//
// Numerics: FP32 throughout; low-precision inputs are widened exactly, outputs rounded
// once. Softmax rows use exp_approx (cpu_internal.h, <= 2 ulp) and 16 FP32 lanes combined
// in a fixed tree (the same order on every ISA and for any thread count).
// Parallelism: softmax over rows; the embedding backward scales dtable in one contiguous
// pass, then works over column blocks, each of which walks the tokens in ascending order,
// so every dtable element is one ordered FP32 sum (the CUDA backend adds in that order too).
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
using cpu_detail::parallel_blocks;
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

// Lanes of the row reductions: kLanes FP32 accumulators combined in a fixed tree, whatever
// the ISA of the clone (AVX-512 or SSE), so every machine adds in the same order. Always
// inlined: compiled for the calling clone's ISA.
constexpr int64_t kLanes = 16;

[[gnu::always_inline]] inline float lane_tree_sum(float* acc) {
  for (int64_t k = 0; k < 8; ++k) acc[k] += acc[k + 8];
  for (int64_t k = 0; k < 4; ++k) acc[k] += acc[k + 4];
  return ((acc[0] + acc[2]) + (acc[1] + acc[3]));
}

[[gnu::always_inline]] inline float lane_tree_max(float* acc) {
  for (int64_t k = 0; k < 8; ++k) acc[k] = std::max(acc[k], acc[k + 8]);
  for (int64_t k = 0; k < 4; ++k) acc[k] = std::max(acc[k], acc[k + 4]);
  return std::max(std::max(acc[0], acc[2]), std::max(acc[1], acc[3]));
}

// p[0..n) = softmax(s[0..n)), FP32; n >= 1. e: scratch of ceil(n / kLanes) * kLanes floats.
// p may alias s.
//   The row is copied into e and padded with -inf, so that every loop runs over whole
//   vectors with no scalar tail (rows of attention are short: q + 1 <= T entries, and the
//   tails and horizontal reductions were most of the time). exp_approx(-inf - m) is
//   exactly 0, so the padding adds nothing.
//   m is the maximum of the non-NaN values (exact in any order). A NaN in the row makes
//   its exp_approx NaN, hence the sum and every p NaN; +inf gives exp(inf - inf) = NaN and
//   a row of -inf exp(-inf + inf) = NaN, as in the reference.
AMPD_CPU_CLONES void softmax_row(const float* s, float* p, int64_t n, float* e) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t padded = cpu_detail::ceil_div(n, kLanes) * kLanes;
  std::copy(s, s + n, e);
  std::fill(e + n, e + padded, kNegInf);
  float acc[kLanes];
  std::fill(acc, acc + kLanes, kNegInf);
  for (int64_t j = 0; j < padded; j += kLanes) {
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) acc[k] = e[j + k] > acc[k] ? e[j + k] : acc[k];
  }
  const float m = lane_tree_max(acc);
  std::fill(acc, acc + kLanes, 0.0f);
  for (int64_t j = 0; j < padded; j += kLanes) {
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) {
      e[j + k] = exp_approx(e[j + k] - m);
      acc[k] += e[j + k];
    }
  }
  const float inv = 1.0f / lane_tree_sum(acc);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) p[j] = e[j] * inv;
}

// ds[0..n) = p * (dp - <p, dp>), FP32; ds may alias dp (or p).
AMPD_CPU_CLONES void softmax_backward_row(const float* p, const float* dp, float* ds, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += p[j + k] * dp[j + k];
  }
  for (int64_t k = 0; j + k < n; ++k) acc[k] += p[j + k] * dp[j + k];
  const float dot = lane_tree_sum(acc);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) ds[i] = p[i] * (dp[i] - dot);
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
  // dtable = beta * dtable first, as one contiguous pass (element-wise, so the same bits as
  // per column block; a strided pass over a large vocabulary was most of the op's time).
  if (beta == 0.0f) {
    parallel_blocks(V * C, [&](int64_t b, int64_t e) { std::fill(g + b, g + e, 0.0f); });
  } else if (beta != 1.0f) {
    parallel_blocks(V * C, [&](int64_t b, int64_t e) {
#pragma omp simd
      for (int64_t k = b; k < e; ++k) g[k] *= beta;
    });
  }
  parallel_for(cpu_detail::ceil_div(C, kEmbedColBlock), [&](int64_t cb) {
    const int64_t c0 = cb * kEmbedColBlock, n = std::min(kEmbedColBlock, C - c0);
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
    softmax_row(s, p, n, row_scratch(2, cpu_detail::ceil_div(T, kLanes) * kLanes));
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
