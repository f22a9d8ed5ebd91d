// A sequential model on one backend: its layers, parameters, the activation buffers for
// one batch, and the loss.
//
// Memory plan for a batch of up to B rows (all in the working dtype unless noted):
//   acts[0]          (B, in)      the input, cast from the FP32 batch
//   acts[i + 1]      (B, out_i)   output of layer i, kept for backward
//   grad_a, grad_b   (B, max w)   ping-pong activation gradients
//   loss rows, lse   (B) F32;  labels (B) I32 or targets (B, out) F32
// plus per-layer auxiliaries (normalization statistics F32, dropout masks U8).
// activation_bytes() reports the sum; in FP16/BF16 it is about half of FP32.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "engine/layers.h"
#include "kernels/backend.h"

namespace ampd::engine {

enum class LossKind { kCrossEntropy, kMse };

class Model {
 public:
  struct Options {
    DType act_dtype = DType::kF32;
    int64_t max_batch = 64;
    int64_t in_features = 0;
    int64_t out_features = 0;  // classes (cross-entropy) or targets (mse); checked
    LossKind loss = LossKind::kCrossEntropy;
    uint64_t seed = 0;
  };

  static StatusOr<std::unique_ptr<Model>> create(Backend& backend, const ampd::v1::ModelSpec& spec,
                                                 const Options& options);

  // Stages a host batch of n rows: features (n, in) F32, and labels (n) or targets
  // (n, out). The input is rounded to the working dtype on the host, then uploaded.
  Status load_batch(int64_t n, const float* features, const int32_t* labels, const float* targets);
  // Forward pass over the staged batch, then the per-row FP32 loss.
  Status forward(const PassContext& ctx, int64_t n);
  // Backward from the loss; gradients of the mean loss times `loss_scale` land in each
  // Param's FP32 grad.
  Status backward(const PassContext& ctx, int64_t n, float loss_scale);

  // After forward: per-row losses (F32, 1 x n) and outputs (n, out) on the backend.
  Tensor loss_rows(int64_t n) const { return loss_.view(DType::kF32, 1, n); }
  Tensor outputs(int64_t n) const;
  // Copies per-row losses and (classification) the arg-max predictions to the host.
  Status read_losses(int64_t n, float* losses);
  Status read_predictions(int64_t n, int32_t* predictions);

  std::vector<Layer*> layers() const;
  // Every parameter in model order, and every non-trainable state tensor.
  std::vector<Param*> params();
  std::vector<StateTensor*> states();
  int64_t parameter_count() const;

  int64_t activation_bytes() const { return activation_bytes_; }
  int64_t parameter_bytes() const;
  DType act_dtype() const { return options_.act_dtype; }
  const Options& options() const { return options_; }
  Backend& backend() const { return *backend_; }

  // Rewrites every low-precision copy from its master (after a checkpoint restore).
  Status refresh_low_precision();

 private:
  Model(Backend& backend, const Options& options) : backend_(&backend), options_(options) {}
  Status alloc_act(Buffer& buf, DType dtype, int64_t rows, int64_t cols);

  Backend* backend_;
  Options options_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<Buffer> acts_;
  Buffer grad_a_, grad_b_, loss_, lse_, labels_, targets_, argmax_;
  std::vector<uint8_t> input_host_;  // the batch rounded to the working dtype, on the host
  int64_t max_width_ = 0;
  int64_t activation_bytes_ = 0;
};

}  // namespace ampd::engine
