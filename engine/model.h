// A model on one backend: its layers (a Sequential, whose residual blocks hold sequences
// of their own), parameters, the activation buffers for one batch, and the loss.
//
// Memory plan for a batch of up to B examples of T positions (rows = B x T; all in the
// working dtype unless noted; engine/sequential.h has the per-sequence part):
//   input            (B, T, in)   cast from the FP32 batch
//   layer outputs    (B, T, out_i) every layer's but the last, kept for backward
//   logits           (B, T, out)  the last layer's output
//   gradient scratch two (B, T, widest) buffers per residual nesting depth
//   loss rows, lse, argmax (B*T) F32/I32; labels (B*T) I32 or targets (B*T, out) F32
// plus per-layer auxiliaries (normalization statistics F32, dropout masks U8).
// activation_bytes() is the sum; in FP16/BF16 it is about half of FP32. Model::plan runs
// the same build without a backend and reports the same figures without allocating.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "engine/layers.h"
#include "engine/sequential.h"
#include "kernels/backend.h"

namespace ampd::engine {

enum class LossKind { kCrossEntropy, kMse };

class Model {
 public:
  struct Options {
    DType act_dtype = DType::kF32;
    int64_t max_batch = 64;   // examples
    int64_t time = 1;         // positions per example (1 for tabular data)
    int64_t in_features = 0;  // features, or the vocabulary size for token input
    // The input is token ids (text data; load_tokens), read by the first layer, an
    // embedding. The loss is then cross-entropy over the vocabulary at every position.
    bool token_input = false;
    int64_t out_features = 0;  // classes (cross-entropy) or targets (mse); checked
    LossKind loss = LossKind::kCrossEntropy;
    uint64_t seed = 0;
  };

  static StatusOr<std::unique_ptr<Model>> create(Backend& backend, const ampd::v1::ModelSpec& spec,
                                                 const Options& options);
  // What create() would allocate, without a backend (the same code, counting).
  static StatusOr<MemoryTally> plan(const ampd::v1::ModelSpec& spec, const Options& options);

  // Stages a host batch of n examples: features (n, T, in) F32, and labels (n, T) or
  // targets (n, T, out). The input is rounded to the working dtype on the host, then
  // uploaded.
  Status load_batch(int64_t n, const float* features, const int32_t* labels, const float* targets);
  // Token input: ids (n, T) and the next-token labels (n, T), or labels null (generation:
  // forward(ctx, n, false) needs none).
  Status load_tokens(int64_t n, const int32_t* tokens, const int32_t* labels);
  // Forward pass over the staged batch, then the per-row FP32 loss.
  // with_loss false: the outputs only (generation).
  Status forward(const PassContext& ctx, int64_t n, bool with_loss = true);
  // Backward from the loss; gradients of the mean loss (over n x T rows) times
  // `loss_scale` land in each Param's FP32 grad.
  Status backward(const PassContext& ctx, int64_t n, float loss_scale);

  // After forward: per-row losses (F32, 1 x n*T) and outputs (n, T, out) on the backend.
  Tensor loss_rows(int64_t n) const { return loss_.view(DType::kF32, 1, n * options_.time); }
  Tensor outputs(int64_t n) const;
  // Copies per-row losses and (classification) the arg-max predictions to the host.
  Status read_losses(int64_t n, float* losses);
  Status read_predictions(int64_t n, int32_t* predictions);

  // Every parameter once (a tied weight under its owner), in model order, and every
  // non-trainable state tensor.
  std::vector<Param*> params() const { return params_; }
  std::vector<StateTensor*> states();
  int64_t parameter_count() const { return tally_.parameter_count; }

  int64_t activation_bytes() const { return tally_.activation_bytes; }
  // Masters, working copies, gradients and running statistics.
  int64_t parameter_bytes() const { return tally_.parameter_bytes; }
  DType act_dtype() const { return options_.act_dtype; }
  const Options& options() const { return options_; }
  Backend& backend() const { return *backend_; }

  // Rewrites every low-precision copy from its master (after a checkpoint restore).
  Status refresh_low_precision();

 private:
  Model(Backend* backend, const Options& options) : backend_(backend), options_(options) {}
  Status build(const ampd::v1::ModelSpec& spec);
  Tensor input(int64_t n) const;
  Status check_batch(int64_t n) const;  // 0 < n <= max_batch

  Backend* backend_;  // nullptr while planning
  Options options_;
  MemoryTally tally_;
  GradScratch scratch_;
  google::protobuf::RepeatedPtrField<ampd::v1::LayerSpec> layer_specs_;  // gpt expanded
  Sequential layers_;
  std::unordered_map<std::string, Param*> params_by_name_;
  std::vector<Param*> params_;  // every parameter once, in model order
  Buffer input_, logits_, loss_, lse_, labels_, targets_, argmax_;
  std::vector<uint8_t> input_host_;  // the batch rounded to the working dtype, on the host
};

}  // namespace ampd::engine
