// CpuBackend: the embedded default backend, on oneDNN (matmul, GELU/tanh) and OpenMP loops.
//
// Numerics (docs/ARCHITECTURE.md, Numerics): every op loads its operands, widens them
// exactly to FP32, does the math in FP32 (sums of many terms in FP32 lanes combined in FP64
// where cheap) and rounds once, to nearest even, when it stores a low-precision result.
// FP16 has no CPU support in oneDNN 2.6: FP16 matmul operands are widened to FP32 (exact)
// and run through the FP32 matmul, which is the same arithmetic a GPU does with FP32
// accumulation (a product of two FP16 values is exact in FP32).
//
// Memory: host memory, 64-byte aligned; upload/download/copy are memcpy.
//
// Threads: OpenMP. The thread count from CpuBackendOptions is applied with
// omp_set_num_threads() at construction and again on the calling thread at the start of
// every op (OpenMP's nthreads ICV is per thread in libgomp, so a worker thread that calls
// the backend would otherwise run with the process default). This affects other OpenMP
// code that the same thread runs later: the setting is effectively process-wide. Results
// are deterministic for a fixed thread count (static schedules, no atomics); the
// hand-written reductions split their work into fixed blocks, so they do not even depend
// on the thread count. Ops on one backend are serialized by a mutex (they share scratch
// buffers and cached oneDNN primitives).
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace ampd {

namespace cpu_detail {
struct CpuState;  // oneDNN engine, primitive caches, scratch buffers (cpu_internal.h)
}  // namespace cpu_detail

struct CpuBackendOptions {
  // OpenMP threads for every op; 0 = the OpenMP default (OMP_NUM_THREADS, else all cores).
  int threads = 0;
};

class CpuBackend final : public Backend {
 public:
  // Prefer make_cpu_backend(), which reports oneDNN failures as a Status.
  explicit CpuBackend(const CpuBackendOptions& options);
  ~CpuBackend() override;
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;

  std::string name() const override { return "cpu"; }
  std::string device_description() const override;
  bool supports(DType dtype) const override;
  bool prefers_bf16() const override;
  int threads() const;

  // Number of oneDNN matmul primitives currently cached (for tests of the cache).
  size_t cached_matmul_primitives() const;

 protected:
  StatusOr<void*> allocate_impl(size_t bytes) override;
  void free_impl(void* ptr, size_t bytes) noexcept override;
  size_t device_total_bytes() const override;
  Status upload_impl(const Tensor& dst, const void* host_src) override;
  Status download_impl(void* host_dst, const Tensor& src) override;
  Status copy_impl(const Tensor& dst, const Tensor& src) override;
  Status fill_impl(const Tensor& dst, float value) override;

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
  std::unique_ptr<cpu_detail::CpuState> state_;
};

// Creates a CpuBackend; Internal if oneDNN cannot create its CPU engine.
StatusOr<std::unique_ptr<Backend>> make_cpu_backend(const CpuBackendOptions& options = {});

}  // namespace ampd
