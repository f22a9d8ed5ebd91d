// The launchers of the CUDA backend's own kernels, one group per .cu file. Each takes the
// backend's CudaContext and Tensors whose shapes and dtypes Backend's public methods have
// already validated (backend.cc), enqueues its kernels on ctx.stream, checks every launch
// and returns a Status. Semantics are those documented in kernels/backend.h; the numerics
// of each kernel are described at the top of its .cu file.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/backend.h"
#include "kernels/batched_geometry.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/tensor.h"

namespace ampd::cuda {

// ---- cuda_elementwise.cu -------------------------------------------------------------------

// Every element of dst = value rounded once to dst's dtype (integers: round half to even,
// saturate, NaN -> 0), any dtype.
Status fill(CudaContext& ctx, const Tensor& dst, float value);
// dst = round(src) between any two floating dtypes of the same numel.
Status cast(CudaContext& ctx, const Tensor& src, const Tensor& dst);
// out[i, j] = (beta != 0 ? beta * in[i, j] : 0) + bias[j], in FP32, rounded once to out's
// dtype. `in` is out's dtype or F32 (it may be out itself: in place); `bias` (1 x cols, F32
// or out's dtype) may be empty. Serves add_bias, matmul with K == 0 and the matmul bias
// fallback.
Status affine_bias(CudaContext& ctx, const Tensor& in, float beta, const Tensor& bias,
                   const Tensor& out);
// x *= alpha.
Status scale(CudaContext& ctx, const Tensor& x, float alpha);
// y += x, x of any floating dtype.
Status accumulate(CudaContext& ctx, const Tensor& x, const Tensor& y);
Status activation_forward(CudaContext& ctx, Activation act, const Tensor& x, const Tensor& y);
Status activation_backward(CudaContext& ctx, Activation act, const Tensor& x, const Tensor& dy,
                           const Tensor& dx);
Status dropout_forward(CudaContext& ctx, const Tensor& x, const Tensor& y, const Tensor& mask,
                       float p, uint64_t seed, uint64_t offset);
Status dropout_backward(CudaContext& ctx, const Tensor& dy, const Tensor& mask, const Tensor& dx,
                        float p);

// ---- cuda_gemm_fallback.cu -----------------------------------------------------------------

// Backend::matmul's semantics on a plain tiled kernel, for the calls cuBLASLt declines.
Status gemm_fallback(CudaContext& ctx, const MatmulArgs& args);
// Backend::batched_matmul's semantics on the same tiled kernel, batched over gridDim.z and
// reading every operand through its strides: the calls cuBLASLt declines, and K == 0.
Status batched_gemm_fallback(CudaContext& ctx, const BatchedGeometry& g, float alpha, float beta);

// ---- cuda_reduce.cu --------------------------------------------------------------------------

Status bias_grad(CudaContext& ctx, const Tensor& dy, const Tensor& dbias, float beta);
Status layernorm_forward(CudaContext& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                         const Tensor& y, const Tensor& mean, const Tensor& rstd, float eps);
Status layernorm_backward(CudaContext& ctx, const Tensor& dy, const Tensor& x, const Tensor& gamma,
                          const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                          const Tensor& dgamma, const Tensor& dbeta);
Status batchnorm_forward_train(CudaContext& ctx, const Tensor& x, const Tensor& gamma,
                               const Tensor& beta, const Tensor& y, const Tensor& mean,
                               const Tensor& rstd, const Tensor& running_mean,
                               const Tensor& running_var, float momentum, float eps);
Status batchnorm_forward_eval(CudaContext& ctx, const Tensor& x, const Tensor& gamma,
                              const Tensor& beta, const Tensor& running_mean,
                              const Tensor& running_var, const Tensor& y, float eps);
Status batchnorm_backward(CudaContext& ctx, const Tensor& dy, const Tensor& x, const Tensor& gamma,
                          const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                          const Tensor& dgamma, const Tensor& dbeta);

// ---- cuda_loss.cu ----------------------------------------------------------------------------

// Both softmax cross-entropy launchers only enqueue (no synchronization): labels are the
// caller's to keep in [0, C), and a row with a label outside it comes out NaN (see
// cuda_loss.cu and backend.h).
Status softmax_xent_forward(CudaContext& ctx, const Tensor& logits, const Tensor& labels,
                            const Tensor& loss, const Tensor& lse);
Status softmax_xent_backward(CudaContext& ctx, const Tensor& logits, const Tensor& labels,
                             const Tensor& lse, const Tensor& dlogits, float grad_scale);
Status mse_forward(CudaContext& ctx, const Tensor& pred, const Tensor& target, const Tensor& loss);
Status mse_backward(CudaContext& ctx, const Tensor& pred, const Tensor& target, const Tensor& dpred,
                    float grad_scale);
Status argmax_rows(CudaContext& ctx, const Tensor& x, const Tensor& out);

// ---- cuda_sequence.cu ------------------------------------------------------------------------

// Embedding gather; an id outside [0, V) gives a NaN row (never an out-of-bounds read).
Status embedding_forward(CudaContext& ctx, const Tensor& ids, const Tensor& table,
                         const Tensor& out);
// Deterministic scatter-add (stable radix sort of the ids, then ordered FP32 sums per row
// and column; no float atomics). Temporary storage from ctx.scratch; only enqueues.
Status embedding_backward(CudaContext& ctx, const Tensor& ids, const Tensor& dy,
                          const Tensor& dtable, float beta);
// Causal softmax over (rows, T), one warp per row; masked entries not read, written as 0.
Status causal_softmax_forward(CudaContext& ctx, const Tensor& scores, const Tensor& probs);
Status causal_softmax_backward(CudaContext& ctx, const Tensor& probs, const Tensor& dprobs,
                               const Tensor& dscores);

// ---- cuda_optim.cu ---------------------------------------------------------------------------

// Multi-tensor: one launch per kMaxTensorsPerLaunch tensors (see cuda_optim.cu).
Status unscale_and_check(CudaContext& ctx, std::span<const Tensor> grads, float inv_scale,
                         const Tensor& found_nonfinite);
Status global_norm(CudaContext& ctx, std::span<const Tensor> grads, const Tensor& out);
Status sgd_step(CudaContext& ctx, std::span<const ParamSlot> params, const SgdParams& hp);
Status adamw_step(CudaContext& ctx, std::span<const ParamSlot> params, const AdamWParams& hp);

}  // namespace ampd::cuda
