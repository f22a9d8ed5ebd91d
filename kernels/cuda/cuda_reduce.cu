// Reductions of the CUDA backend: bias gradients, LayerNorm and BatchNorm (forward, eval,
// backward).
//
// Memory layout: x, y, dy, dx are dense row-major N x C (N rows = examples, C columns =
// features); gamma/beta/dgamma/dbeta/running stats are F32 1 x C; LayerNorm's mean/rstd are
// F32 1 x N (per row), BatchNorm's are F32 1 x C (per column).
//
// Row reductions (LayerNorm): one block per row (row_threads(C) threads, grid-stride over
// rows); the row is read two or three times, from L1/L2.
//
// Column reductions (bias_grad, dgamma/dbeta, BatchNorm statistics) are deterministic
// two-pass reductions, never float atomics:
//   pass 1  col_partials_kernel: block (32, 8) owns 32 columns x one chunk of kRowsPerChunk
//           rows; thread (tx, ty) sums rows ty, ty + 8, ... of its column in FP32; the 8
//           partial sums of a column are then added in ty order. Output: one FP32 partial
//           per (chunk, column) in scratch.
//   pass 2  col_finalize_kernel: one thread per column adds the chunk partials in chunk
//           order in FP64 and applies the op's formula (rounded once to FP32).
// The chunking depends on the shape only, so every run adds the same numbers in the same
// order: bit-identical results run to run (and independent of the GPU model).
//
// Numerics: FP32 statistics (docs/ARCHITECTURE.md, Numerics): sums of squares are
// two-pass (mean first, then sum (x - mean)^2), 1/sqrt is a correctly rounded sqrtf
// followed by a division (no rsqrtf).
#include <cmath>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace ampd::cuda {

namespace {

constexpr int64_t kRowsPerChunk = 256;

// ---- column reduction machinery ------------------------------------------------------------

// Rows per chunk: kRowsPerChunk unless that would need more than 65535 chunks (gridDim.y).
int64_t rows_per_chunk(int64_t rows) {
  int64_t rpc = kRowsPerChunk;
  while ((rows + rpc - 1) / rpc > 65535) rpc *= 2;
  return rpc;
}

// f(row, col, float v[K]) provides the K values summed per column.
template <int K, typename F>
__global__ void __launch_bounds__(256)
    col_partials_kernel(F f, int64_t rows, int64_t cols, int64_t rpc, float* partials) {
  __shared__ float sh[8][K][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rpc;
  const int64_t r1 = r0 + rpc < rows ? r0 + rpc : rows;
  float acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0.0f;
  if (j < cols) {
    for (int64_t r = r0 + ty; r < r1; r += 8) {
      float v[K];
      f(r, j, v);
#pragma unroll
      for (int k = 0; k < K; ++k) acc[k] += v[k];
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) sh[ty][k][tx] = acc[k];
  __syncthreads();
  if (ty == 0 && j < cols) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float s = 0.0f;
#pragma unroll
      for (int t = 0; t < 8; ++t) s += sh[t][k][tx];
      partials[(static_cast<int64_t>(blockIdx.y) * K + k) * cols + j] = s;
    }
  }
}

// fin(col, const double sums[K]) writes the op's per-column results.
template <int K, typename Fin>
__global__ void __launch_bounds__(256)
    col_finalize_kernel(Fin fin, const float* partials, int64_t chunks, int64_t cols) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  double s[K];
#pragma unroll
  for (int k = 0; k < K; ++k) s[k] = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
#pragma unroll
    for (int k = 0; k < K; ++k) s[k] += static_cast<double>(partials[(c * K + k) * cols + j]);
  }
  fin(j, s);
}

template <int K, typename F, typename Fin>
Status column_reduce(CudaContext& ctx, const char* what, int64_t rows, int64_t cols, const F& f,
                     const Fin& fin) {
  const int64_t rpc = rows_per_chunk(rows);
  const int64_t chunks = rows > 0 ? (rows + rpc - 1) / rpc : 1;
  const size_t bytes = static_cast<size_t>(chunks * K * cols) * sizeof(float);
  AMPD_ASSIGN_OR_RETURN(void* scratch, ctx.scratch(bytes));
  float* partials = static_cast<float*>(scratch);
  const int64_t col_blocks = (cols + 31) / 32;
  if (col_blocks > 0x7fffffff) return invalid_argument(std::string(what) + ": too many columns");
  col_partials_kernel<K><<<dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks)),
                           dim3(32, 8), 0, ctx.stream>>>(f, rows, cols, rpc, partials);
  AMPD_CUDA_CHECK_LAUNCH(what);
  col_finalize_kernel<K><<<static_cast<unsigned>((cols + 255) / 256), 256, 0, ctx.stream>>>(
      fin, partials, chunks, cols);
  AMPD_CUDA_CHECK_LAUNCH(what);
  return Status::ok_status();
}

// ---- bias_grad -------------------------------------------------------------------------------

template <typename T>
struct ColumnValue {
  const T* x;
  int64_t cols;
  __device__ void operator()(int64_t r, int64_t j, float* v) const {
    v[0] = to_f32(x[r * cols + j]);
  }
};

struct BiasGradFinal {
  float* dbias;
  float beta;
  __device__ void operator()(int64_t j, const double* s) const {
    double v = s[0];
    if (beta != 0.0f) v += static_cast<double>(beta) * dbias[j];  // beta == 0: not read
    dbias[j] = static_cast<float>(v);
  }
};

// ---- LayerNorm -------------------------------------------------------------------------------

// One block per row: mean, then variance around it, then y; thread 0 stores the statistics.
template <typename T>
__global__ void layernorm_forward_kernel(const T* x, const float* gamma, const float* beta, T* y,
                                         float* mean, float* rstd, int64_t rows, int64_t cols,
                                         float eps) {
  __shared__ float red[32];
  const float c = static_cast<float>(cols);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += to_f32(xr[j]);
    const float mu = block_sum(s, red) / c;
    float q = 0.0f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float d = to_f32(xr[j]) - mu;
      q += d * d;
    }
    const float var = block_sum(q, red) / c;
    const float rs = 1.0f / sqrtf(var + eps);
    T* yr = y + r * cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      yr[j] = from_f32<T>((to_f32(xr[j]) - mu) * rs * gamma[j] + beta[j]);
    }
    if (threadIdx.x == 0) {
      mean[r] = mu;
      rstd[r] = rs;
    }
  }
}

// dx = rstd (g - mean_j g - xhat mean_j (g xhat)), g = dy gamma, per row. dx may alias dy:
// all of a row's dy is read (first loop, ended by block_sum's barrier) before any dx is
// written, and the second loop reads and writes each element in the same thread.
template <typename TD, typename TX>
__global__ void layernorm_backward_dx_kernel(const TD* dy, const TX* x, const float* gamma,
                                             const float* mean, const float* rstd, TD* dx,
                                             int64_t rows, int64_t cols) {
  __shared__ float red[32];
  const float c = static_cast<float>(cols);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const TD* dyr = dy + r * cols;
    const TX* xr = x + r * cols;
    const float mu = mean[r], rs = rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      // __fmul_rn: g must be the same rounded product in both loops. Contracted into
      // `g - mean_g` as an FMA, it would carry dy*gamma's rounding error, which rstd then
      // magnifies (1 column: 1e-5 where the answer is exactly 0; seen on an H200).
      const float g = __fmul_rn(to_f32(dyr[j]), gamma[j]);
      const float xhat = (to_f32(xr[j]) - mu) * rs;
      sg += g;
      sgx += g * xhat;
    }
    const float mean_g = block_sum(sg, red) / c;
    const float mean_gx = block_sum(sgx, red) / c;
    TD* dxr = dx + r * cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float g = __fmul_rn(to_f32(dyr[j]), gamma[j]);
      const float xhat = (to_f32(xr[j]) - mu) * rs;
      dxr[j] = from_f32<TD>(rs * (g - mean_g - xhat * mean_gx));
    }
  }
}

// Column sums of dy * xhat (LayerNorm: per-row statistics) and dy.
template <typename TD, typename TX>
struct LayerNormParamGrad {
  const TD* dy;
  const TX* x;
  const float* mean;
  const float* rstd;
  int64_t cols;
  __device__ void operator()(int64_t r, int64_t j, float* v) const {
    const int64_t k = r * cols + j;
    const float g = to_f32(dy[k]);
    v[0] = g * ((to_f32(x[k]) - mean[r]) * rstd[r]);
    v[1] = g;
  }
};

struct TwoOutputsFinal {
  float* out0;
  float* out1;
  __device__ void operator()(int64_t j, const double* s) const {
    out0[j] = static_cast<float>(s[0]);
    out1[j] = static_cast<float>(s[1]);
  }
};

unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>(rows < 65535 ? (rows > 0 ? rows : 1) : 65535);
}

// ---- BatchNorm -------------------------------------------------------------------------------

struct MeanFinal {
  float* mean;
  double inv_n;
  __device__ void operator()(int64_t j, const double* s) const {
    mean[j] = static_cast<float>(s[0] * inv_n);
  }
};

template <typename T>
struct CenteredSquare {
  const T* x;
  const float* mean;
  int64_t cols;
  __device__ void operator()(int64_t r, int64_t j, float* v) const {
    const float d = to_f32(x[r * cols + j]) - mean[j];
    v[0] = d * d;
  }
};

// var (biased) -> rstd; running statistics with the unbiased variance, in FP64.
struct VarianceFinal {
  const float* mean;
  float* rstd;
  float* running_mean;
  float* running_var;
  double n;
  double momentum;
  double eps;
  __device__ void operator()(int64_t j, const double* s) const {
    const double var = s[0] / n;
    rstd[j] = static_cast<float>(1.0 / sqrt(var + eps));
    running_mean[j] = static_cast<float>((1.0 - momentum) * running_mean[j] + momentum * mean[j]);
    running_var[j] =
        static_cast<float>((1.0 - momentum) * running_var[j] + momentum * (s[0] / (n - 1.0)));
  }
};

template <typename T>
struct BatchNormApply {  // y = (x - mean) rstd gamma + beta
  const T* x;
  const float* mean;
  const float* rstd;
  const float* gamma;
  const float* beta;
  T* y;
  __device__ void operator()(int64_t, int64_t j, int64_t k) const {
    y[k] = from_f32<T>((to_f32(x[k]) - mean[j]) * rstd[j] * gamma[j] + beta[j]);
  }
};

template <typename T>
struct BatchNormEval {  // y = (x - running_mean) / sqrt(running_var + eps) gamma + beta
  const T* x;
  const float* rm;
  const float* rv;
  const float* gamma;
  const float* beta;
  float eps;
  T* y;
  __device__ void operator()(int64_t, int64_t j, int64_t k) const {
    const float inv = 1.0f / sqrtf(rv[j] + eps);
    y[k] = from_f32<T>((to_f32(x[k]) - rm[j]) * inv * gamma[j] + beta[j]);
  }
};

// Column sums of dy and dy * xhat (BatchNorm: per-column statistics).
template <typename TD, typename TX>
struct BatchNormParamGrad {
  const TD* dy;
  const TX* x;
  const float* mean;
  const float* rstd;
  int64_t cols;
  __device__ void operator()(int64_t r, int64_t j, float* v) const {
    const int64_t k = r * cols + j;
    const float g = to_f32(dy[k]);
    v[0] = g;
    v[1] = g * ((to_f32(x[k]) - mean[j]) * rstd[j]);
  }
};

// dx = gamma rstd (dy - dbeta / N - xhat dgamma / N); dx may alias dy (same element, same
// thread).
template <typename TD, typename TX>
struct BatchNormDx {
  const TD* dy;
  const TX* x;
  const float* gamma;
  const float* mean;
  const float* rstd;
  const float* dgamma;
  const float* dbeta;
  float inv_n;
  TD* dx;
  __device__ void operator()(int64_t, int64_t j, int64_t k) const {
    const float xhat = (to_f32(x[k]) - mean[j]) * rstd[j];
    const float g = to_f32(dy[k]) - dbeta[j] * inv_n - xhat * (dgamma[j] * inv_n);
    dx[k] = from_f32<TD>(gamma[j] * rstd[j] * g);
  }
};

}  // namespace

// ---- launchers
// ------------------------------------------------------------------------------------

Status bias_grad(CudaContext& ctx, const Tensor& dy, const Tensor& dbias, float beta) {
  return dispatch_float(dy.dtype, [&](auto t) {
    using T = decltype(t);
    return column_reduce<1>(ctx, "bias_grad", dy.rows(), dy.cols(),
                            ColumnValue<T>{dy.as<const T>(), dy.cols()},
                            BiasGradFinal{dbias.as<float>(), beta});
  });
}

Status layernorm_forward(CudaContext& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                         const Tensor& y, const Tensor& mean, const Tensor& rstd, float eps) {
  return dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    layernorm_forward_kernel<T><<<row_blocks(x.rows()), row_threads(x.cols()), 0, ctx.stream>>>(
        x.as<const T>(), gamma.as<const float>(), beta.as<const float>(), y.as<T>(),
        mean.as<float>(), rstd.as<float>(), x.rows(), x.cols(), eps);
    AMPD_CUDA_CHECK_LAUNCH("layernorm_forward");
    return Status::ok_status();
  });
}

Status layernorm_backward(CudaContext& ctx, const Tensor& dy, const Tensor& x, const Tensor& gamma,
                          const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                          const Tensor& dgamma, const Tensor& dbeta) {
  return dispatch_float(dy.dtype, [&](auto d) {
    return dispatch_float(x.dtype, [&](auto a) {
      using TD = decltype(d);
      using TX = decltype(a);
      // dgamma / dbeta first: they read dy, which dx may overwrite.
      AMPD_RETURN_IF_ERROR(column_reduce<2>(
          ctx, "layernorm_backward", x.rows(), x.cols(),
          LayerNormParamGrad<TD, TX>{dy.as<const TD>(), x.as<const TX>(), mean.as<const float>(),
                                     rstd.as<const float>(), x.cols()},
          TwoOutputsFinal{dgamma.as<float>(), dbeta.as<float>()}));
      layernorm_backward_dx_kernel<TD, TX>
          <<<row_blocks(x.rows()), row_threads(x.cols()), 0, ctx.stream>>>(
              dy.as<const TD>(), x.as<const TX>(), gamma.as<const float>(), mean.as<const float>(),
              rstd.as<const float>(), dx.as<TD>(), x.rows(), x.cols());
      AMPD_CUDA_CHECK_LAUNCH("layernorm_backward");
      return Status::ok_status();
    });
  });
}

Status batchnorm_forward_train(CudaContext& ctx, const Tensor& x, const Tensor& gamma,
                               const Tensor& beta, const Tensor& y, const Tensor& mean,
                               const Tensor& rstd, const Tensor& running_mean,
                               const Tensor& running_var, float momentum, float eps) {
  const double n = static_cast<double>(x.rows());
  return dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    AMPD_RETURN_IF_ERROR(column_reduce<1>(ctx, "batchnorm_forward_train", x.rows(), x.cols(),
                                          ColumnValue<T>{x.as<const T>(), x.cols()},
                                          MeanFinal{mean.as<float>(), 1.0 / n}));
    AMPD_RETURN_IF_ERROR(column_reduce<1>(
        ctx, "batchnorm_forward_train", x.rows(), x.cols(),
        CenteredSquare<T>{x.as<const T>(), mean.as<const float>(), x.cols()},
        VarianceFinal{mean.as<const float>(), rstd.as<float>(), running_mean.as<float>(),
                      running_var.as<float>(), n, momentum, eps}));
    BatchNormApply<T> op{x.as<const T>(),         mean.as<const float>(), rstd.as<const float>(),
                         gamma.as<const float>(), beta.as<const float>(), y.as<T>()};
    return launch_rowcol("batchnorm_forward_train", ctx.stream, op, x.rows(), x.cols());
  });
}

Status batchnorm_forward_eval(CudaContext& ctx, const Tensor& x, const Tensor& gamma,
                              const Tensor& beta, const Tensor& running_mean,
                              const Tensor& running_var, const Tensor& y, float eps) {
  return dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    BatchNormEval<T> op{x.as<const T>(),
                        running_mean.as<const float>(),
                        running_var.as<const float>(),
                        gamma.as<const float>(),
                        beta.as<const float>(),
                        eps,
                        y.as<T>()};
    return launch_rowcol("batchnorm_forward_eval", ctx.stream, op, x.rows(), x.cols());
  });
}

Status batchnorm_backward(CudaContext& ctx, const Tensor& dy, const Tensor& x, const Tensor& gamma,
                          const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                          const Tensor& dgamma, const Tensor& dbeta) {
  return dispatch_float(dy.dtype, [&](auto d) {
    return dispatch_float(x.dtype, [&](auto a) {
      using TD = decltype(d);
      using TX = decltype(a);
      AMPD_RETURN_IF_ERROR(column_reduce<2>(
          ctx, "batchnorm_backward", x.rows(), x.cols(),
          BatchNormParamGrad<TD, TX>{dy.as<const TD>(), x.as<const TX>(), mean.as<const float>(),
                                     rstd.as<const float>(), x.cols()},
          TwoOutputsFinal{dbeta.as<float>(), dgamma.as<float>()}));
      BatchNormDx<TD, TX> op{dy.as<const TD>(),
                             x.as<const TX>(),
                             gamma.as<const float>(),
                             mean.as<const float>(),
                             rstd.as<const float>(),
                             dgamma.as<const float>(),
                             dbeta.as<const float>(),
                             static_cast<float>(1.0 / static_cast<double>(x.rows())),
                             dx.as<TD>()};
      return launch_rowcol("batchnorm_backward", ctx.stream, op, x.rows(), x.cols());
    });
  });
}

}  // namespace ampd::cuda
