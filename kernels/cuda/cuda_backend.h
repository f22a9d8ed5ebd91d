// CudaBackend: the Backend interface on one NVIDIA GPU (sm_80+), built as the dlopen plugin
// libampd_backend_cuda.so (plugin.cc; docs/ARCHITECTURE.md, The CUDA plugin, says why).
//
// Execution: every op is enqueued on one non-blocking stream owned by the backend and
// returns at once; download() and synchronize() wait for it. Ops on one backend are
// serialized by a mutex (they share the plan cache and scratch) and make the
// backend's device current on the calling thread, so any thread may call them.
//
// Memory: one stream-ordered pool (cudaMallocFromPoolAsync on the backend's stream, release
// threshold "never", so freed blocks are reused without going back to the driver). Every
// device allocation goes through allocate(), which keeps MemoryStats' in_use / peak: tensors,
// and also the backend's own cuBLASLt workspace (32 MiB) and its grow-only scratch buffer,
// so the reported peak is what the job really held. On out-of-memory the pool is trimmed
// and the allocation retried once, then ResourceExhausted.
//
// Errors: every CUDA and cuBLASLt call is checked and turned into a Status, never an abort.
// A pointer that is not aligned to its element size is InvalidArgument before any kernel
// runs (a misaligned access would poison the CUDA context for every later job).
//
// Configuration (environment, read once at creation):
//   AMPD_CUDA_DEVICE=N       the device to use (default 0)
//   AMPD_CUDA_ALLOW_TF32=1   FP32 matmuls on TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32,
//                            ~10 bits of mantissa in the products); default off: FP32 mode
//                            means FP32 arithmetic.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/cuda/cuda_matmul.h"

namespace ampd {

struct CudaBackendOptions {
  int device = -1;      // -1: AMPD_CUDA_DEVICE or 0
  int allow_tf32 = -1;  // -1: AMPD_CUDA_ALLOW_TF32; 0 / 1 override it
  size_t workspace_bytes = size_t{32} << 20;
  bool fallback_gemm_only = false;  // tests: every matmul on the plain fallback GEMM
};

class CudaBackend final : public Backend {
 public:
  // Unavailable with a reason a user can act on when there is no usable GPU.
  static StatusOr<std::unique_ptr<CudaBackend>> create(const CudaBackendOptions& options = {});
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return "cuda"; }
  // "NVIDIA H200 (140 GiB, sm_90, CUDA 13.0)"
  std::string device_description() const override { return description_; }
  bool supports(DType dtype) const override { return is_floating(dtype); }
  bool prefers_bf16() const override { return sm_major_ >= 8; }

  // For tests and benchmarks.
  int device() const { return ctx_.device; }
  cudaStream_t stream() const { return ctx_.stream; }  // every op is enqueued on it
  bool allow_tf32() const { return allow_tf32_; }
  cuda::MatmulCacheStats matmul_stats() const;

 protected:
  StatusOr<void*> allocate_impl(size_t bytes) override;
  void free_impl(void* ptr, size_t bytes) noexcept override;
  size_t device_total_bytes() const override { return total_bytes_; }
  Status upload_impl(const Tensor& dst, const void* host_src) override;
  Status download_impl(void* host_dst, const Tensor& src) override;
  Status copy_impl(const Tensor& dst, const Tensor& src) override;
  Status fill_impl(const Tensor& dst, float value) override;
  Status synchronize_impl() override;

  Status matmul_impl(const MatmulArgs& args) override;
  Status batched_matmul_impl(const BatchedMatmulArgs& args) override;
  Status cast_impl(const Tensor& src, const Tensor& dst) override;
  Status add_bias_impl(const Tensor& x, const Tensor& bias) override;
  Status bias_grad_impl(const Tensor& dy, const Tensor& dbias, float beta) override;
  Status scale_impl(const Tensor& x, float alpha) override;
  Status accumulate_impl(const Tensor& x, const Tensor& y) override;
  Status activation_forward_impl(Activation act, const Tensor& x, const Tensor& y) override;
  Status activation_backward_impl(Activation act, const Tensor& x, const Tensor& dy,
                                  const Tensor& dx) override;
  Status layernorm_forward_impl(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                const Tensor& y, const Tensor& mean, const Tensor& rstd,
                                float eps) override;
  Status layernorm_backward_impl(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                 const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                 const Tensor& dgamma, const Tensor& dbeta) override;
  Status batchnorm_forward_train_impl(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                      const Tensor& y, const Tensor& mean, const Tensor& rstd,
                                      const Tensor& running_mean, const Tensor& running_var,
                                      float momentum, float eps) override;
  Status batchnorm_forward_eval_impl(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                     const Tensor& running_mean, const Tensor& running_var,
                                     const Tensor& y, float eps) override;
  Status batchnorm_backward_impl(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                 const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                 const Tensor& dgamma, const Tensor& dbeta) override;
  Status dropout_forward_impl(const Tensor& x, const Tensor& y, const Tensor& mask, float p,
                              uint64_t seed, uint64_t offset) override;
  Status dropout_backward_impl(const Tensor& dy, const Tensor& mask, const Tensor& dx,
                               float p) override;
  Status softmax_xent_forward_impl(const Tensor& logits, const Tensor& labels, const Tensor& loss,
                                   const Tensor& lse) override;
  Status softmax_xent_backward_impl(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                                    const Tensor& dlogits, float grad_scale) override;
  Status mse_forward_impl(const Tensor& pred, const Tensor& target, const Tensor& loss) override;
  Status mse_backward_impl(const Tensor& pred, const Tensor& target, const Tensor& dpred,
                           float grad_scale) override;
  Status argmax_rows_impl(const Tensor& x, const Tensor& out) override;
  Status embedding_forward_impl(const Tensor& ids, const Tensor& table, const Tensor& out) override;
  Status embedding_backward_impl(const Tensor& ids, const Tensor& dy, const Tensor& dtable,
                                 float beta) override;
  Status causal_softmax_forward_impl(const Tensor& scores, const Tensor& probs) override;
  Status causal_softmax_backward_impl(const Tensor& probs, const Tensor& dprobs,
                                      const Tensor& dscores) override;
  Status unscale_and_check_impl(std::span<const Tensor> grads, float inv_scale,
                                const Tensor& found_nonfinite) override;
  Status global_norm_impl(std::span<const Tensor> grads, const Tensor& out) override;
  Status sgd_step_impl(std::span<const ParamSlot> params, const SgdParams& hp) override;
  Status adamw_step_impl(std::span<const ParamSlot> params, const AdamWParams& hp) override;

 private:
  CudaBackend() = default;
  Status init(const CudaBackendOptions& options);
  // Makes the device current on the calling thread; the caller holds mu_.
  Status enter();
  StatusOr<void*> scratch(size_t bytes);

  mutable std::mutex mu_;
  cuda::CudaContext ctx_;
  cudaMemPool_t pool_ = nullptr;
  bool owns_stream_ = false;
  int sm_major_ = 0;
  size_t total_bytes_ = 0;
  bool allow_tf32_ = false;
  std::string description_;
  Buffer workspace_;
  Buffer scratch_;
  cuda::MatmulCachePtr matmul_;
};

// Checks for a usable GPU (driver, device count, compute capability 8.0+) and creates the
// backend; Unavailable with the reason otherwise, e.g. "no CUDA GPU: cudaGetDeviceCount
// returned cudaErrorInsufficientDriver (CUDA driver is not installed or too old)".
StatusOr<std::unique_ptr<Backend>> make_cuda_backend(const CudaBackendOptions& options = {});

}  // namespace ampd
