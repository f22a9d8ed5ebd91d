// Losses and predictions of the CUDA backend: softmax cross-entropy (forward, backward),
// mean squared error (forward, backward), per-row argmax.
//
// Memory layout: logits / pred are row-major N x C in the working dtype; labels I32 1 x N;
// target F32 N x C; loss and lse F32 1 x N.
//
// Softmax cross-entropy, forward: one block per row keeps an online (max m, sum s) pair per
// thread, s = sum exp(x - m), rescaled when a larger value arrives, then combines the pairs
// in a fixed tree; lse = m + log(s), loss = lse - x[label]. Probabilities are never stored:
// backward recomputes exp(x - lse) from the stored FP32 lse, element-wise (dlogits may alias
// logits: every element is read and then written by the same thread). Non-finite logits
// follow the reference: NaN anywhere in a row, +inf, or a row of -inf give lse = NaN.
//
// Labels: the caller keeps them in [0, C) (backend.h); nothing here checks them on the host
// or synchronizes: both launchers only enqueue. A kernel never indexes with a label outside
// [0, C): such a row gets loss = NaN (lse as computed) in forward and NaN in every element
// of its dlogits row in backward, which the trainer's non-finite check then catches in the
// flags it reads anyway.
//
// MSE: one block per row sums (pred - target)^2 in FP32; backward is element-wise with the
// factor 2 grad_scale / C computed in FP64 and rounded once.
//
// Argmax: one block per row; NaN is larger than every number and the first index wins ties,
// both in each thread's scan (increasing indices) and in the tree (lower index on ties).
#include <climits>
#include <cmath>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace ampd::cuda {

namespace {

__device__ __forceinline__ bool label_in_range(int32_t label, int64_t classes) {
  return label >= 0 && label < classes;
}

// ---- softmax cross-entropy -------------------------------------------------------------------

struct MaxSum {
  float m;  // running maximum (NaN once a NaN was seen)
  float s;  // sum of exp(x - m)
};

__device__ __forceinline__ void online_add(MaxSum& a, float v) {
  if (isnan(v) || v > a.m) {
    // exp(v - v) rather than 1: +inf gives NaN, as exp(inf - inf) does in the reference.
    a.s = a.s * expf(a.m - v) + expf(v - v);
    a.m = v;
  } else if (v != -INFINITY) {
    a.s += expf(v - a.m);
  }
}

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  if (isnan(a.m) || isnan(b.m)) return {NAN, NAN};
  if (b.m > a.m) {
    const MaxSum t = a;
    a = b;
    b = t;
  }
  if (b.s == 0.0f) return a;  // empty (or all -inf) partial
  return {a.m, a.s + b.s * expf(b.m - a.m)};
}

template <typename T>
__global__ void softmax_xent_forward_kernel(const T* logits, const int32_t* labels, float* loss,
                                            float* lse, int64_t rows, int64_t cols) {
  __shared__ MaxSum red[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* x = logits + r * cols;
    MaxSum a{-INFINITY, 0.0f};
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) online_add(a, to_f32(x[j]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const MaxSum b{__shfl_xor_sync(0xffffffffu, a.m, o), __shfl_xor_sync(0xffffffffu, a.s, o)};
      a = combine(a, b);
    }
    __syncthreads();
    if (lane == 0) red[warp] = a;
    __syncthreads();
    if (threadIdx.x == 0) {
      MaxSum t = red[0];
      for (int w = 1; w < warps; ++w) t = combine(t, red[w]);
      // A row of -inf: m stays -inf; the reference's exp(-inf - -inf) makes that NaN.
      const float l = t.m == -INFINITY ? NAN : t.m + logf(t.s);
      lse[r] = l;
      const int32_t label = labels[r];
      loss[r] = label_in_range(label, cols) ? l - to_f32(x[label]) : NAN;
    }
  }
}

template <typename TL, typename TD>
struct SoftmaxXentBackward {
  const TL* logits;
  const int32_t* labels;
  const float* lse;
  TD* dlogits;
  float grad_scale;
  int64_t cols;
  __device__ void operator()(int64_t r, int64_t j, int64_t k) const {
    const int32_t label = labels[r];
    if (!label_in_range(label, cols)) {
      dlogits[k] = from_f32<TD>(NAN);
      return;
    }
    const float p = expf(to_f32(logits[k]) - lse[r]);
    dlogits[k] = from_f32<TD>(grad_scale * (p - (j == label ? 1.0f : 0.0f)));
  }
};

// ---- MSE ---------------------------------------------------------------------------------------

template <typename T>
__global__ void mse_forward_kernel(const T* pred, const float* target, float* loss, int64_t rows,
                                   int64_t cols) {
  __shared__ float red[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float d = to_f32(pred[r * cols + j]) - target[r * cols + j];
      s += d * d;
    }
    s = block_sum(s, red);
    if (threadIdx.x == 0) loss[r] = s / static_cast<float>(cols);
  }
}

template <typename TP, typename TD>
struct MseBackwardOp {
  const TP* pred;
  const float* target;
  TD* dpred;
  float factor;  // 2 grad_scale / C
  __device__ void one(int64_t i) const {
    dpred[i] = from_f32<TD>(factor * (to_f32(pred[i]) - target[i]));
  }
  __device__ void pack8(int64_t i) const {
#pragma unroll
    for (int k = 0; k < 8; ++k) one(i + k);
  }
};

// ---- argmax ------------------------------------------------------------------------------------

// Whether (va, ia) should win over (vb, ib): NaN beats numbers, then larger, then lower index.
__device__ __forceinline__ bool better(float va, int64_t ia, float vb, int64_t ib) {
  const bool na = isnan(va), nb = isnan(vb);
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return ia < ib;
}

template <typename T>
__global__ void argmax_kernel(const T* x, int32_t* out, int64_t rows, int64_t cols) {
  __shared__ float sv[32];
  __shared__ int64_t si[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float bv = NAN;
    int64_t bi = INT64_MAX;  // "no element": loses against everything
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float v = to_f32(x[r * cols + j]);
      if (bi == INT64_MAX || better(v, j, bv, bi)) {
        bv = v;
        bi = j;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (oi != INT64_MAX && (bi == INT64_MAX || better(ov, oi, bv, bi))) {
        bv = ov;
        bi = oi;
      }
    }
    __syncthreads();
    if (lane == 0) {
      sv[warp] = bv;
      si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < warps; ++w) {
        if (si[w] != INT64_MAX && (bi == INT64_MAX || better(sv[w], si[w], bv, bi))) {
          bv = sv[w];
          bi = si[w];
        }
      }
      out[r] = static_cast<int32_t>(bi);
    }
  }
}

unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>(rows < 65535 ? (rows > 0 ? rows : 1) : 65535);
}

}  // namespace

// ---- launchers
// ------------------------------------------------------------------------------------

Status softmax_xent_forward(CudaContext& ctx, const Tensor& logits, const Tensor& labels,
                            const Tensor& loss, const Tensor& lse) {
  return dispatch_float(logits.dtype, [&](auto t) {
    using T = decltype(t);
    softmax_xent_forward_kernel<T>
        <<<row_blocks(logits.rows()), row_threads(logits.cols()), 0, ctx.stream>>>(
            logits.as<const T>(), labels.as<const int32_t>(), loss.as<float>(), lse.as<float>(),
            logits.rows(), logits.cols());
    AMPD_CUDA_CHECK_LAUNCH("softmax_xent_forward");
    return Status::ok_status();
  });
}

Status softmax_xent_backward(CudaContext& ctx, const Tensor& logits, const Tensor& labels,
                             const Tensor& lse, const Tensor& dlogits, float grad_scale) {
  return dispatch_float(logits.dtype, [&](auto a) {
    return dispatch_float(dlogits.dtype, [&](auto d) {
      using TL = decltype(a);
      using TD = decltype(d);
      SoftmaxXentBackward<TL, TD> op{logits.as<const TL>(),
                                     labels.as<const int32_t>(),
                                     lse.as<const float>(),
                                     dlogits.as<TD>(),
                                     grad_scale,
                                     logits.cols()};
      return launch_rowcol("softmax_xent_backward", ctx.stream, op, logits.rows(), logits.cols());
    });
  });
}

Status mse_forward(CudaContext& ctx, const Tensor& pred, const Tensor& target, const Tensor& loss) {
  return dispatch_float(pred.dtype, [&](auto t) {
    using T = decltype(t);
    mse_forward_kernel<T><<<row_blocks(pred.rows()), row_threads(pred.cols()), 0, ctx.stream>>>(
        pred.as<const T>(), target.as<const float>(), loss.as<float>(), pred.rows(), pred.cols());
    AMPD_CUDA_CHECK_LAUNCH("mse_forward");
    return Status::ok_status();
  });
}

Status mse_backward(CudaContext& ctx, const Tensor& pred, const Tensor& target, const Tensor& dpred,
                    float grad_scale) {
  const float factor =
      static_cast<float>(2.0 * static_cast<double>(grad_scale) / static_cast<double>(pred.cols()));
  return dispatch_float(pred.dtype, [&](auto a) {
    return dispatch_float(dpred.dtype, [&](auto d) {
      using TP = decltype(a);
      using TD = decltype(d);
      MseBackwardOp<TP, TD> op{pred.as<const TP>(), target.as<const float>(), dpred.as<TD>(),
                               factor};
      return launch_map("mse_backward", ctx.stream, ctx.sm_count, op, pred.numel(), false);
    });
  });
}

Status argmax_rows(CudaContext& ctx, const Tensor& x, const Tensor& out) {
  return dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    argmax_kernel<T><<<row_blocks(x.rows()), row_threads(x.cols()), 0, ctx.stream>>>(
        x.as<const T>(), out.as<int32_t>(), x.rows(), x.cols());
    AMPD_CUDA_CHECK_LAUNCH("argmax_rows");
    return Status::ok_status();
  });
}

}  // namespace ampd::cuda
