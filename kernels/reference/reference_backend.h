// ReferenceBackend: plain, single-threaded C++ implementation of every Backend op. It is
// the oracle the fast backends (oneDNN CPU, CUDA) are tested against, so it chooses
// exactness and clarity over speed.
//
// Numerics (docs/ARCHITECTURE.md, Numerics; stricter than the contract in backend.h):
//   * Every input element is widened exactly to double (FP16 / BF16 / FP32 are subsets
//     of FP64). All arithmetic -- sums, dot products, statistics, exp/log/erf/tanh, the
//     optimizer updates -- is done in FP64.
//   * Each output element is rounded once, to nearest even, from that double directly to
//     the output dtype (f64_to_f32 / f64_to_f16_bits / f64_to_bf16_bits below). Going
//     double -> float -> half would round twice and can miss the correctly rounded half
//     by one ulp when the double lies just off an FP16 midpoint; these functions do not.
//     The FP64 computation itself of course rounds (error ~2^-53 relative per
//     operation), which is ~2^29 times finer than FP32's and invisible in the outputs
//     except for results within ~2^-50 relative of a rounding midpoint.
//   * Statistics the interface stores as FP32 (LayerNorm/BatchNorm mean and rstd, the
//     log-sum-exp, losses, norms) are rounded once to FP32 when stored. Ops that consume
//     them (the backward passes) use the stored FP32 values, as every backend must.
//   * Deterministic: no threads, fixed loop orders.
//
// Memory is ordinary host memory, 64-byte aligned; upload/download/copy are memcpy.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/backend.h"

namespace ampd {

// Correctly rounded conversions of a double (round to nearest, ties to even). Overflow
// follows IEEE: magnitudes at or above the midpoint between the largest finite value and
// the next power of two become +-inf (the tie rounds to "even", which is the infinity,
// because the largest finite values all have odd significands). FP16 and BF16 keep their
// subnormals. NaN stays NaN and comes out quiet with the sign and the top payload bits
// kept, exactly as f32_to_f16_bits / f32_to_bf16_bits in kernels/half.h do for the same
// NaN narrowed to float. For every double that is exactly a float, the result equals
// the half.h conversion of that float.
float f64_to_f32(double value);
uint16_t f64_to_f16_bits(double value);
uint16_t f64_to_bf16_bits(double value);

class ReferenceBackend final : public Backend {
 public:
  std::string name() const override { return "reference"; }
  std::string device_description() const override {
    return "host (plain C++ reference, FP64 accumulation)";
  }
  bool supports(DType dtype) const override { return is_floating(dtype); }

 protected:
  StatusOr<void*> allocate_impl(size_t bytes) override;
  void free_impl(void* ptr, size_t bytes) noexcept override;
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
};

std::unique_ptr<Backend> make_reference_backend();

}  // namespace ampd
