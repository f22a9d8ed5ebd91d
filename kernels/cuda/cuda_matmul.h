// The CUDA backend's matmul on cuBLASLt, with a cache of matmul plans (cuda_matmul.cc).
#pragma once

#include <cstddef>
#include <memory>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_context.h"

namespace ampd::cuda {

struct MatmulCache;
struct MatmulCacheDeleter {
  void operator()(MatmulCache* cache) const noexcept;
};
using MatmulCachePtr = std::unique_ptr<MatmulCache, MatmulCacheDeleter>;

struct MatmulOptions {
  // FP32 matmuls on CUBLAS_COMPUTE_32F_FAST_TF32 instead of CUBLAS_COMPUTE_32F.
  bool allow_tf32 = false;
  // Every product on the fallback GEMM (cuda_gemm_fallback.cu): for its tests only.
  bool fallback_gemm_only = false;
  void* workspace = nullptr;  // device memory for cuBLASLt (split-K partials etc.)
  size_t workspace_bytes = 0;
};

// Creates the cuBLASLt handle; Internal if cuBLASLt cannot start.
StatusOr<MatmulCachePtr> create_matmul_cache(const MatmulOptions& options);

// C = alpha op(A) op(B) + beta C + bias, as Backend::matmul documents (arguments validated).
Status matmul(MatmulCache& cache, CudaContext& ctx, const MatmulArgs& args);

// For every batch: C[i] = alpha op(A[i]) op(B[i]) + beta C[i], as Backend::batched_matmul
// documents (arguments validated); see the top of cuda_matmul.cc.
Status batched_matmul(MatmulCache& cache, CudaContext& ctx, const BatchedMatmulArgs& args);

struct MatmulCacheStats {
  size_t plans = 0;           // distinct plans built (heuristic queries made)
  size_t executions = 0;      // cublasLtMatmul calls
  size_t bias_fallbacks = 0;  // calls whose bias went through the FP32 fallback path
  size_t fallback_gemms = 0;  // calls cuBLASLt had no algorithm for (cuda_gemm_fallback.cu)
  // batched_matmul calls whose batch dimensions do not merge into one stride (one
  // strided-batched cublasLtMatmul per index of the outer batch dimension)
  size_t batched_outer_loops = 0;
};
MatmulCacheStats matmul_cache_stats(const MatmulCache& cache);

}  // namespace ampd::cuda
