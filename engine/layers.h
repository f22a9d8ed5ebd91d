// Layers of a sequential model and the parameters they own.
//
// Precision (DESIGN.md §2): every parameter has an FP32 master copy, an FP32 gradient
// and FP32 optimizer state. Linear weights also have a low-precision working copy
// (FP16/BF16 mode) that the forward and backward matmuls read; biases and normalization
// parameters are read in FP32 directly (the backend adds an FP32 bias before the single
// rounding of the output, and normalization runs in FP32). Activations and activation
// gradients are stored in the working dtype; statistics are FP32.
//
// Shapes: activations are (batch, features), row-major. A layer reads x (B, in) and
// writes y (B, out); backward reads dy (B, out) and writes dx (B, in) and the FP32
// parameter gradients (overwritten each step).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "kernels/backend.h"

namespace ampd::engine {

// One trainable tensor with everything the optimizer and the checkpoint need.
struct Param {
  std::string name;     // checkpoint key, PyTorch nn.Sequential style: "0.weight"
  std::string display;  // for humans and overflow events: "layer 0 (linear).weight"
  int64_t rows = 0;
  int64_t cols = 0;
  bool decay = true;  // weight decay applies (false for biases/norm params by default)
  Buffer master;      // F32
  Buffer low;         // F16/BF16 working copy, or empty
  DType low_dtype = DType::kF32;
  Buffer grad;  // F32

  Tensor master_t() const { return master.view(DType::kF32, rows, cols); }
  Tensor grad_t() const { return grad.view(DType::kF32, rows, cols); }
  Tensor low_t() const { return low ? low.view(low_dtype, rows, cols) : Tensor{}; }
  // What the forward pass reads: the low-precision copy when there is one.
  Tensor compute_t() const { return low ? low_t() : master_t(); }
};

// A non-trainable FP32 tensor kept in checkpoints (BatchNorm running statistics).
struct StateTensor {
  std::string name;  // "1.running_mean"
  int64_t rows = 0;
  int64_t cols = 0;
  Buffer data;
  Tensor t() const { return data.view(DType::kF32, rows, cols); }
};

// What a layer needs to know when it is built.
struct BuildContext {
  Backend* backend = nullptr;
  DType act_dtype = DType::kF32;  // activations and working weights
  int64_t max_batch = 0;
  int64_t index = 0;  // position in the model
  uint64_t seed = 0;
};

// Per-call state of a forward/backward pass.
struct PassContext {
  Backend* backend = nullptr;
  bool training = true;
  int64_t step = 0;  // global step, drives the dropout mask stream
  uint64_t seed = 0;
};

class Layer {
 public:
  virtual ~Layer() = default;
  virtual std::string kind() const = 0;
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

  // Creates parameters (initialized on the host from the seed, then uploaded) and the
  // per-batch auxiliary buffers for up to ctx.max_batch rows.
  virtual Status build(const BuildContext& ctx, int64_t in_features) = 0;
  virtual Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) = 0;
  // dx may be empty (first layer: no input gradient needed).
  virtual Status backward(const PassContext& ctx, const Tensor& x, const Tensor& y,
                          const Tensor& dy, const Tensor& dx) = 0;

  // True when backward must be given a dx buffer even for the first layer (the
  // normalization ops compute dx together with the parameter gradients).
  virtual bool requires_dx() const { return false; }

  std::vector<Param>& params() { return params_; }
  const std::vector<Param>& params() const { return params_; }
  std::vector<StateTensor>& states() { return states_; }
  const std::vector<StateTensor>& states() const { return states_; }
  // Bytes of auxiliary per-batch buffers (statistics, masks): part of activation memory.
  int64_t aux_bytes() const { return aux_bytes_; }

 protected:
  // Allocates an FP32 parameter with host-side initial values.
  Status add_param(const BuildContext& ctx, const std::string& suffix, int64_t rows, int64_t cols,
                   bool has_low_copy, bool decay, const std::vector<float>& init);
  StatusOr<Buffer> alloc_aux(const BuildContext& ctx, size_t bytes);
  std::string prefix(const BuildContext& ctx) const;

  int64_t in_ = 0;
  int64_t out_ = 0;
  int64_t aux_bytes_ = 0;
  std::vector<Param> params_;
  std::vector<StateTensor> states_;
};

// Builds the layer a spec entry describes (not yet built).
StatusOr<std::unique_ptr<Layer>> make_layer(const ampd::v1::LayerSpec& spec);

}  // namespace ampd::engine
