// The Backend interface: every operation one mixed-precision training step needs.
//
// Design (after ggml's backend interface and tiny-cuda-nn):
//   * The engine talks to devices only through this class. Public methods are
//     non-virtual: they validate shapes and dtypes, return InvalidArgument naming the
//     offending argument, and only then call the backend's virtual `*_impl`. An
//     implementation may therefore assume well-formed arguments.
//   * Every tensor passed to an op lives in this backend's memory (see allocate()).
//     Ops may run asynchronously (CUDA streams); results are visible to the host after
//     download(), which synchronizes.
//   * Numerics contract (docs/ARCHITECTURE.md, Numerics): every reduction and every matrix product
//     accumulates in FP32 (the reference backend in FP64); low-precision outputs are
//     rounded once, to nearest even, at the end. Statistics (LayerNorm / BatchNorm mean
//     and rstd, losses, log-sum-exp) are FP32 tensors. Optimizer state and master
//     weights are FP32.
//
//   * Edge cases every backend follows (the reference backend defines them):
//     beta == 0 in matmul, batched_matmul and bias_grad means the old output is not read
//     (a NaN there does not spread, as in BLAS); ReLU passes NaN forward and its backward selects
//     dx = x > 0 ? dy : 0 (derivative 0 at 0, as PyTorch); dropout multiplies literally
//     (a dropped inf gives NaN, as PyTorch); argmax treats NaN as the largest value
//     (first wins); softmax cross-entropy labels are the caller's to keep in [0, C) (see
//     softmax_xent_forward: an out-of-range label makes its row NaN, never an error or an
//     out-of-bounds read); fill() of integer tensors rounds to nearest and saturates; the
//     optimizers' low-precision copy equals cast(master) bit for bit.
//
// Three implementations: ReferenceBackend (plain C++, FP64 accumulation, the oracle),
// CpuBackend (oneDNN), and the CUDA plugin (cuBLASLt + own kernels).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "kernels/dropout_hash.h"
#include "kernels/tensor.h"

namespace ampd {

class Backend;

// ---- memory ----------------------------------------------------------------------

// Move-only owner of one allocation in a backend's memory. Freed on destruction.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend* owner, void* data, size_t bytes) : owner_(owner), data_(data), bytes_(bytes) {}
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { reset(); }

  void reset() noexcept;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  explicit operator bool() const { return data_ != nullptr; }
  // A tensor view of the start of this buffer.
  Tensor view(DType dtype, int64_t rows, int64_t cols) const {
    return Tensor{data_, dtype, rows, cols};
  }

 private:
  Backend* owner_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

struct MemoryStats {
  size_t in_use_bytes = 0;        // currently allocated through allocate()
  size_t peak_bytes = 0;          // high-water mark since the last reset_peak_memory()
  size_t device_total_bytes = 0;  // the device's capacity (0 if unknown)
};

// ---- op arguments ----------------------------------------------------------------

enum class Activation : uint8_t { kReLU, kGELU, kTanh };
const char* activation_name(Activation a);

// C = alpha * op(A) @ op(B) + beta * C (+ bias broadcast over rows)
//   op(A): M x K, op(B): K x N, C: M x N (all row-major).
//   A and B share one dtype (F32, F16 or BF16). C is F32 or A's dtype.
//   bias (optional) is a 1 x N vector, F32 or C's dtype, added before the final rounding.
// Products accumulate in FP32; with a low-precision C the result is rounded once.
struct MatmulArgs {
  Tensor a;
  Tensor b;
  Tensor c;
  bool trans_a = false;
  bool trans_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
  Tensor bias;  // optional
};

// For every batch index: C[i] = alpha * op(A[i]) @ op(B[i]) + beta * C[i]
//   A, B, C are 3-D (batch, rows, cols) or 4-D (batch0, batch1, rows, cols) strided views
//   (tensor.h), all with the same number of dimensions and the same batch dimensions (no
//   broadcasting); op(A[i]): M x K, op(B[i]): K x N, C[i]: M x N.
//   A and B share one dtype (F32, F16 or BF16). C is F32 or A's dtype. No bias.
//   Strides (elements) are free in the batch dimensions, so Q, K and V can be (B, H, T, D)
//   head views carved out of one fused (B, T, 3C) projection, whose two batch dimensions
//   do not merge into one uniform stride. Within the matrix (the last two dimensions):
//     * A and B each need a unit stride in one of the two (a transposed(-2, -1) view is
//       as good as a trans flag) and rows/columns that do not overlap (the other stride
//       >= the extent of the unit-stride dimension);
//     * C needs a unit stride in its last dimension and stride(-2) >= N.
//   Every stride of a dimension of size > 1 must be positive (a dimension of size 1 may
//   have any stride). C's matrices must not overlap each other, A or B (not checked).
// Products accumulate in FP32; with a low-precision C the result is rounded once. As in
// matmul, beta == 0 means C is not read (a NaN there does not spread). K == 0 gives
// C = beta * C.
struct BatchedMatmulArgs {
  Tensor a;
  Tensor b;
  Tensor c;
  bool trans_a = false;
  bool trans_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
};

// One parameter tensor as the optimizer sees it. All F32 except `low_precision`, the
// working copy the forward pass reads (F16/BF16; empty in FP32 mode), which the
// optimizer rewrites from the updated master weight in the same pass.
struct ParamSlot {
  Tensor master;         // F32, updated in place
  Tensor grad;           // F32, read only
  Tensor state1;         // F32: SGD momentum buffer / Adam first moment (empty if unused)
  Tensor state2;         // F32: Adam second moment (empty for SGD)
  Tensor low_precision;  // optional F16/BF16 copy of master, same shape
  float weight_decay_multiplier = 1.0f;  // 0 exempts biases/norm params from decay
};

// PyTorch torch.optim.SGD semantics:
//   g = grad * grad_scale + weight_decay * w
//   if momentum: buf = (first step ? g : momentum * buf + (1 - dampening) * g)
//                g = nesterov ? g + momentum * buf : buf
//   w -= lr * g
struct SgdParams {
  float lr = 0.01f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  float weight_decay = 0.0f;
  bool nesterov = false;
  bool first_step = false;  // momentum buffer is initialised with g, not accumulated
  float grad_scale = 1.0f;  // e.g. the clipping factor
};

// PyTorch torch.optim.AdamW semantics (decoupled weight decay, bias correction):
//   w *= 1 - lr * weight_decay
//   m = beta1 m + (1-beta1) g;  v = beta2 v + (1-beta2) g^2      (g = grad * grad_scale)
//   w -= lr * (m / (1-beta1^t)) / (sqrt(v / (1-beta2^t)) + eps)
struct AdamWParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
  int64_t step = 1;  // t, 1-based, for bias correction
  float grad_scale = 1.0f;
};

// ---- the interface ---------------------------------------------------------------

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu", "reference", "cuda"
  virtual std::string name() const = 0;
  // Human description of the device: "AMD EPYC (2 threads, oneDNN 2.6)", "NVIDIA H200".
  virtual std::string device_description() const = 0;
  // Whether matmul etc. accept this floating dtype natively or by exact widening.
  virtual bool supports(DType dtype) const = 0;
  // True where BF16 runs at native speed (chosen by precision "auto").
  virtual bool prefers_bf16() const { return false; }

  // -- memory: every tensor an op touches lives in memory from here.
  StatusOr<Buffer> allocate(size_t bytes);
  MemoryStats memory_stats() const;
  void reset_peak_memory();
  // Host <-> backend copies of a whole tensor. download() waits for pending work.
  Status upload(const Tensor& dst, const void* host_src);
  Status download(void* host_dst, const Tensor& src);
  Status copy(const Tensor& dst, const Tensor& src);  // same dtype and numel
  Status fill(const Tensor& dst, float value);        // any dtype; value rounded once
  Status synchronize();

  // -- dense algebra
  Status matmul(const MatmulArgs& args);
  // Strided-batched matmul (attention's Q K^T and P V per batch and head); see
  // BatchedMatmulArgs. The only op that takes non-contiguous views.
  Status batched_matmul(const BatchedMatmulArgs& args);
  // dst = round(src) for any pair of floating dtypes of the same numel.
  Status cast(const Tensor& src, const Tensor& dst);
  // x[i, j] += bias[j]; x float, bias F32 or x's dtype, 1 x x.cols().
  Status add_bias(const Tensor& x, const Tensor& bias);
  // dbias[j] = beta * dbias[j] + sum_i dy[i, j]; dbias F32 1 x dy.cols().
  Status bias_grad(const Tensor& dy, const Tensor& dbias, float beta = 0.0f);
  // x *= alpha, in place, any floating dtype.
  Status scale(const Tensor& x, float alpha);
  // y = x + y, same shapes; dtypes may differ (x converted).
  Status accumulate(const Tensor& x, const Tensor& y);

  // -- activations (y and dx have x's shape and dtype; the math is FP32).
  // GELU is the exact erf form: 0.5 x (1 + erf(x / sqrt 2)). Fast backends may use
  // vectorized erf/tanh approximations with absolute error up to 1e-6 (oneDNN's, as
  // PyTorch's CPU GELU); the conformance tests allow exactly that.
  Status activation_forward(Activation act, const Tensor& x, const Tensor& y);
  // dx = dy * act'(x); dx may alias dy.
  Status activation_backward(Activation act, const Tensor& x, const Tensor& dy, const Tensor& dx);

  // -- normalization. gamma/beta/dgamma/dbeta are F32 1 x C, statistics F32.
  // LayerNorm over each row (C = x.cols()): mean/rstd are F32 1 x N.
  Status layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                           const Tensor& y, const Tensor& mean, const Tensor& rstd, float eps);
  // dgamma/dbeta are overwritten (not accumulated).
  Status layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                            const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                            const Tensor& dgamma, const Tensor& dbeta);
  // BatchNorm1d over each column (statistics over the N rows), PyTorch semantics:
  // normalizes with the biased batch variance; running_var is updated with the unbiased
  // one: running = (1 - momentum) * running + momentum * batch. mean/rstd F32 1 x C.
  Status batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                 const Tensor& y, const Tensor& mean, const Tensor& rstd,
                                 const Tensor& running_mean, const Tensor& running_var,
                                 float momentum, float eps);
  Status batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                const Tensor& running_mean, const Tensor& running_var,
                                const Tensor& y, float eps);
  Status batchnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                            const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                            const Tensor& dgamma, const Tensor& dbeta);

  // -- dropout. The keep mask is a pure function of (seed, offset + element index)
  // through a counter-based hash (dropout_keep() in dropout_hash.h), so every backend draws the
  // same mask. mask: U8, x's shape (1 = kept). y = x * mask / (1 - p), where a backend
  // may multiply by 1/(1 - p) rounded to FP32 (within 2 ulp of dividing).
  Status dropout_forward(const Tensor& x, const Tensor& y, const Tensor& mask, float p,
                         uint64_t seed, uint64_t offset);
  Status dropout_backward(const Tensor& dy, const Tensor& mask, const Tensor& dx, float p);

  // -- losses, in FP32. Per-row losses; the engine averages.
  // Softmax cross-entropy: loss[i] = lse_i - logits[i, label_i]; lse F32 1 x N keeps
  // the log-sum-exp so backward recomputes softmax without storing probabilities.
  // labels: I32 1 x N. The caller guarantees each label in [0, C) (the engine's data sets
  // do, engine/dataset.h); label values are not validated, because on a device that would
  // cost a host round trip per call. Shapes and dtypes are validated as for every op.
  // A backend never reads out of bounds for a bad label: a row whose label is outside
  // [0, C) gets loss = NaN (its lse as computed) here and an all-NaN dlogits row in
  // backward, every other row its ordinary value, and the call succeeds. The NaN reaches
  // the trainer's non-finite check, which skips the step rather than train on garbage.
  Status softmax_xent_forward(const Tensor& logits, const Tensor& labels, const Tensor& loss,
                              const Tensor& lse);
  // dlogits = grad_scale * (softmax(logits) - onehot(label)); dlogits may alias logits.
  // grad_scale carries the loss scale and the 1/N of the mean. A row whose label is
  // outside [0, C) is NaN throughout (see softmax_xent_forward).
  Status softmax_xent_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                               const Tensor& dlogits, float grad_scale);
  // Mean squared error per row: loss[i] = mean_j (pred[i,j] - target[i,j])^2, target F32.
  Status mse_forward(const Tensor& pred, const Tensor& target, const Tensor& loss);
  // dpred = grad_scale * 2 (pred - target) / C
  Status mse_backward(const Tensor& pred, const Tensor& target, const Tensor& dpred,
                      float grad_scale);
  // Per-row index of the largest value (first on ties): I32 1 x N.
  Status argmax_rows(const Tensor& x, const Tensor& out);

  // -- sequence models (engine/layers/embedding.cc, causal_self_attention.cc)
  // Embedding gather: out[i, :] = table[ids[i], :], converted once to out's dtype.
  //   ids: I32 vector of N; table: (V, C) floating; out: (N, C) floating (any two
  //   floating dtypes). Like softmax cross-entropy labels, ids are the caller's to keep in
  //   [0, V) and are not validated (that would cost a host round trip on a device): an id
  //   outside it gives a NaN row of out and never an out-of-bounds read.
  Status embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out);
  // Embedding backward (scatter-add): dtable = beta * dtable + sum over the i with
  // ids[i] == v of dy[i, :], for every row v. dtable: F32 (V, C); dy: (N, C) floating.
  // Deterministic: no float atomics; a backend gives the same bits on every run and for
  // every thread count (sums in FP32, the reference in FP64, rounded once). beta == 0: dtable's old
  // values are not read (rows no id selects become 0). Out-of-range ids contribute nothing.
  Status embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dtable,
                            float beta = 0.0f);
  // Causal softmax over square score matrices: scores and probs are contiguous (..., T, T)
  // tensors seen as (rows, T) with rows a multiple of T; row r is query position
  // q = r % T and attends to keys j <= q:
  //   probs[r, j] = exp(s[r, j] - m) / sum_{k <= q} exp(s[r, k] - m), m = max_{k <= q} s[r, k]
  //   probs[r, j] = 0 for j > q.
  // The math is FP32 whatever the dtypes (scores F32 or floating; probs floating). Masked
  // scores are never read, so a NaN or inf there does not spread and no row is ever
  // fully masked (j = q is always kept). probs may not alias scores unless the dtypes
  // match.
  Status causal_softmax_forward(const Tensor& scores, const Tensor& probs);
  // The backward of causal_softmax_forward given its probs:
  //   dscores[r, j] = probs[r, j] * (dprobs[r, j] - sum_{k <= q} probs[r, k] dprobs[r, k])
  //   for j <= q, and 0 for j > q (masked dprobs are not read). The dot product
  //   accumulates in FP32. dscores may alias dprobs (same dtype).
  Status causal_softmax_backward(const Tensor& probs, const Tensor& dprobs, const Tensor& dscores);

  // -- mixed-precision bookkeeping
  // One fused pass over many F32 gradient tensors: g *= inv_scale, and
  // found_nonfinite[t] = 1 if tensor t holds an inf or NaN (before or after scaling),
  // else 0. found_nonfinite: I32 1 x grads.size(). Tensors with a flag may be left
  // partially scaled (they are about to be discarded).
  Status unscale_and_check(std::span<const Tensor> grads, float inv_scale,
                           const Tensor& found_nonfinite);
  // out (F32 1 x 1) = sqrt(sum over all tensors of sum g^2): squares summed in FP32
  // lanes, partial sums combined in FP64 (the reference is FP64 throughout). A norm
  // that does not fit FP32 comes out inf; the trainer then skips the step.
  Status global_norm(std::span<const Tensor> grads, const Tensor& out);

  // -- optimizers on FP32 master weights; each rewrites its low-precision copy.
  Status sgd_step(std::span<const ParamSlot> params, const SgdParams& hp);
  Status adamw_step(std::span<const ParamSlot> params, const AdamWParams& hp);

 protected:
  friend class Buffer;
  virtual StatusOr<void*> allocate_impl(size_t bytes) = 0;
  virtual void free_impl(void* ptr, size_t bytes) noexcept = 0;
  virtual size_t device_total_bytes() const { return 0; }
  virtual Status upload_impl(const Tensor& dst, const void* host_src) = 0;
  virtual Status download_impl(void* host_dst, const Tensor& src) = 0;
  virtual Status copy_impl(const Tensor& dst, const Tensor& src) = 0;
  virtual Status fill_impl(const Tensor& dst, float value) = 0;
  virtual Status synchronize_impl() { return Status::ok_status(); }

  virtual Status matmul_impl(const MatmulArgs& args) = 0;
  virtual Status batched_matmul_impl(const BatchedMatmulArgs& args) = 0;
  virtual Status cast_impl(const Tensor& src, const Tensor& dst) = 0;
  virtual Status add_bias_impl(const Tensor& x, const Tensor& bias) = 0;
  virtual Status bias_grad_impl(const Tensor& dy, const Tensor& dbias, float beta) = 0;
  virtual Status scale_impl(const Tensor& x, float alpha) = 0;
  virtual Status accumulate_impl(const Tensor& x, const Tensor& y) = 0;
  virtual Status activation_forward_impl(Activation act, const Tensor& x, const Tensor& y) = 0;
  virtual Status activation_backward_impl(Activation act, const Tensor& x, const Tensor& dy,
                                          const Tensor& dx) = 0;
  virtual Status layernorm_forward_impl(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                        const Tensor& y, const Tensor& mean, const Tensor& rstd,
                                        float eps) = 0;
  virtual Status layernorm_backward_impl(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                         const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                         const Tensor& dgamma, const Tensor& dbeta) = 0;
  virtual Status batchnorm_forward_train_impl(const Tensor& x, const Tensor& gamma,
                                              const Tensor& beta, const Tensor& y,
                                              const Tensor& mean, const Tensor& rstd,
                                              const Tensor& running_mean, const Tensor& running_var,
                                              float momentum, float eps) = 0;
  virtual Status batchnorm_forward_eval_impl(const Tensor& x, const Tensor& gamma,
                                             const Tensor& beta, const Tensor& running_mean,
                                             const Tensor& running_var, const Tensor& y,
                                             float eps) = 0;
  virtual Status batchnorm_backward_impl(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                         const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                         const Tensor& dgamma, const Tensor& dbeta) = 0;
  virtual Status dropout_forward_impl(const Tensor& x, const Tensor& y, const Tensor& mask, float p,
                                      uint64_t seed, uint64_t offset) = 0;
  virtual Status dropout_backward_impl(const Tensor& dy, const Tensor& mask, const Tensor& dx,
                                       float p) = 0;
  virtual Status softmax_xent_forward_impl(const Tensor& logits, const Tensor& labels,
                                           const Tensor& loss, const Tensor& lse) = 0;
  virtual Status softmax_xent_backward_impl(const Tensor& logits, const Tensor& labels,
                                            const Tensor& lse, const Tensor& dlogits,
                                            float grad_scale) = 0;
  virtual Status mse_forward_impl(const Tensor& pred, const Tensor& target, const Tensor& loss) = 0;
  virtual Status mse_backward_impl(const Tensor& pred, const Tensor& target, const Tensor& dpred,
                                   float grad_scale) = 0;
  virtual Status argmax_rows_impl(const Tensor& x, const Tensor& out) = 0;
  virtual Status embedding_forward_impl(const Tensor& ids, const Tensor& table,
                                        const Tensor& out) = 0;
  virtual Status embedding_backward_impl(const Tensor& ids, const Tensor& dy, const Tensor& dtable,
                                         float beta) = 0;
  virtual Status causal_softmax_forward_impl(const Tensor& scores, const Tensor& probs) = 0;
  virtual Status causal_softmax_backward_impl(const Tensor& probs, const Tensor& dprobs,
                                              const Tensor& dscores) = 0;
  virtual Status unscale_and_check_impl(std::span<const Tensor> grads, float inv_scale,
                                        const Tensor& found_nonfinite) = 0;
  virtual Status global_norm_impl(std::span<const Tensor> grads, const Tensor& out) = 0;
  virtual Status sgd_step_impl(std::span<const ParamSlot> params, const SgdParams& hp) = 0;
  virtual Status adamw_step_impl(std::span<const ParamSlot> params, const AdamWParams& hp) = 0;

 private:
  size_t in_use_bytes_ = 0;
  size_t peak_bytes_ = 0;
};

}  // namespace ampd
