// A plain tiled GEMM for the matmuls cuBLASLt declines (no algorithm for a pointer
// alignment or leading dimension, e.g. an FP16 view that starts mid-row): slow, but right,
// so such a call still succeeds. Never used for the aligned, whole tensors the engine
// allocates; counted in MatmulCacheStats::fallback_gemms.
//
//   C (M x N) = alpha op(A) (M x K) op(B) (K x N) + beta C + bias (1 x N)
//
// Memory layout: row-major, op() by index arithmetic (A is M x K, or K x M when
// trans_a). Block (16, 16) owns a 16 x 16 tile of C; both operands go through shared
// memory 16 x 16 at a time, widened to FP32.
//
// Numerics: FP32 accumulation over k in increasing order (deterministic), then
// alpha * acc + beta * C + bias in FP32 and one rounding to C's dtype; beta == 0 does not
// read C.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace ampd::cuda {

namespace {

constexpr int kTile = 16;

template <typename TA, typename TC, typename TB>
__global__ void gemm_kernel(const TA* a, const TA* b, TC* c, const TB* bias, int64_t m, int64_t n,
                            int64_t k, bool ta, bool tb, float alpha, float beta) {
  __shared__ float sa[kTile][kTile + 1];
  __shared__ float sb[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + tx;
  for (int64_t row_base = static_cast<int64_t>(blockIdx.y) * kTile; row_base < m;
       row_base += static_cast<int64_t>(gridDim.y) * kTile) {
    const int64_t row = row_base + ty;
    float acc = 0.0f;
    for (int64_t k0 = 0; k0 < k; k0 += kTile) {
      // sa[ty][tx] = op(A)[row, k0 + tx]; sb[ty][tx] = op(B)[k0 + ty, col]
      const int64_t ka = k0 + tx, kb = k0 + ty;
      float va = 0.0f, vb = 0.0f;
      if (row < m && ka < k) va = to_f32(ta ? a[ka * m + row] : a[row * k + ka]);
      if (kb < k && col < n) vb = to_f32(tb ? b[col * k + kb] : b[kb * n + col]);
      sa[ty][tx] = va;
      sb[ty][tx] = vb;
      __syncthreads();
      const int64_t kk_end = k - k0 < kTile ? k - k0 : kTile;
      for (int kk = 0; kk < kk_end; ++kk) acc += sa[ty][kk] * sb[kk][tx];
      __syncthreads();
    }
    if (row < m && col < n) {
      float v = alpha * acc;
      if (beta != 0.0f) v += beta * to_f32(c[row * n + col]);
      if (bias != nullptr) v += to_f32(bias[col]);
      c[row * n + col] = from_f32<TC>(v);
    }
  }
}

// One operand of the batched kernel: element (o, i, r, c) at
// p[o * so + i * si + r * sr + c * sc].
struct Strides {
  int64_t so, si, sr, sc;
};

// gemm_kernel with a batch over gridDim.z (grid-stride past 65535) and every operand read
// through its strides: op(A) M x K, op(B) K x N, C M x N, batch b = o * inner + i.
template <typename TA, typename TC>
__global__ void batched_gemm_kernel(const TA* a, const TA* b, TC* c, Strides sa, Strides sb,
                                    Strides sc, int64_t m, int64_t n, int64_t k, int64_t inner,
                                    int64_t batch, float alpha, float beta) {
  __shared__ float tile_a[kTile][kTile + 1];
  __shared__ float tile_b[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + tx;
  for (int64_t z = blockIdx.z; z < batch; z += gridDim.z) {
    const int64_t o = z / inner, i = z % inner;
    const TA* az = a + o * sa.so + i * sa.si;
    const TA* bz = b + o * sb.so + i * sb.si;
    TC* cz = c + o * sc.so + i * sc.si;
    for (int64_t row_base = static_cast<int64_t>(blockIdx.y) * kTile; row_base < m;
         row_base += static_cast<int64_t>(gridDim.y) * kTile) {
      const int64_t row = row_base + ty;
      float acc = 0.0f;
      for (int64_t k0 = 0; k0 < k; k0 += kTile) {
        const int64_t ka = k0 + tx, kb = k0 + ty;
        float va = 0.0f, vb = 0.0f;
        if (row < m && ka < k) va = to_f32(az[row * sa.sr + ka * sa.sc]);
        if (kb < k && col < n) vb = to_f32(bz[kb * sb.sr + col * sb.sc]);
        tile_a[ty][tx] = va;
        tile_b[ty][tx] = vb;
        __syncthreads();
        const int64_t kk_end = k - k0 < kTile ? k - k0 : kTile;
        for (int kk = 0; kk < kk_end; ++kk) acc += tile_a[ty][kk] * tile_b[kk][tx];
        __syncthreads();
      }
      if (row < m && col < n) {
        float v = alpha * acc;
        if (beta != 0.0f) v += beta * to_f32(cz[row * sc.sr + col * sc.sc]);
        cz[row * sc.sr + col * sc.sc] = from_f32<TC>(v);
      }
    }
  }
}

Strides strides_of(const BatchedOperand& x) {
  return Strides{x.outer_stride, x.inner_stride, x.row_stride, x.col_stride};
}

}  // namespace

Status batched_gemm_fallback(CudaContext& ctx, const BatchedGeometry& g, float alpha, float beta) {
  const int64_t gx = (g.n + kTile - 1) / kTile;
  int64_t gy = (g.m + kTile - 1) / kTile;
  if (gy > 65535) gy = 65535;
  const int64_t gz = g.batch() < 65535 ? g.batch() : 65535;
  if (gx > 0x7fffffff) return invalid_argument("batched_matmul: too many columns");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz));
  const dim3 block(kTile, kTile);
  return dispatch_float(g.a.dtype, [&](auto at) {
    using TA = decltype(at);
    auto with_c = [&](auto ct) {
      using TC = decltype(ct);
      batched_gemm_kernel<TA, TC><<<grid, block, 0, ctx.stream>>>(
          static_cast<const TA*>(g.a.data), static_cast<const TA*>(g.b.data),
          static_cast<TC*>(g.c.data), strides_of(g.a), strides_of(g.b), strides_of(g.c), g.m, g.n,
          g.k, g.inner, g.batch(), alpha, beta);
      AMPD_CUDA_CHECK_LAUNCH("batched_matmul (fallback GEMM)");
      return Status::ok_status();
    };
    return g.c.dtype == DType::kF32 ? with_c(float{}) : with_c(TA{});
  });
}

Status gemm_fallback(CudaContext& ctx, const MatmulArgs& m) {
  const int64_t M = m.c.rows(), N = m.c.cols(), K = m.trans_a ? m.a.rows() : m.a.cols();
  const int64_t gx = (N + kTile - 1) / kTile;
  int64_t gy = (M + kTile - 1) / kTile;
  if (gy > 65535) gy = 65535;
  if (gx > 0x7fffffff) return invalid_argument("matmul: too many columns");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), block(kTile, kTile);
  return dispatch_float(m.a.dtype, [&](auto at) {
    using TA = decltype(at);
    auto with_c = [&](auto ct) {
      using TC = decltype(ct);
      auto with_bias = [&](auto bt) {
        using TB = decltype(bt);
        gemm_kernel<TA, TC, TB>
            <<<grid, block, 0, ctx.stream>>>(m.a.as<const TA>(), m.b.as<const TA>(), m.c.as<TC>(),
                                             m.bias.empty() ? nullptr : m.bias.as<const TB>(), M, N,
                                             K, m.trans_a, m.trans_b, m.alpha, m.beta);
        AMPD_CUDA_CHECK_LAUNCH("matmul (fallback GEMM)");
        return Status::ok_status();
      };
      return !m.bias.empty() && m.bias.dtype != DType::kF32 ? with_bias(TC{}) : with_bias(float{});
    };
    return m.c.dtype == DType::kF32 ? with_c(float{}) : with_c(TA{});
  });
}

}  // namespace ampd::cuda
