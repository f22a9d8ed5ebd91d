// Layers of a model and the parameters they own.
//
// Precision (docs/ARCHITECTURE.md, "Numerics"): every parameter has an FP32 master copy,
// an FP32 gradient and FP32 optimizer state (kept by the optimizer). Matmul weights also
// have a low-precision working copy (FP16/BF16 mode) that the forward and backward
// matmuls read; biases and normalization parameters are read in FP32 directly (the
// backend adds an FP32 bias before the single rounding of the output, and normalization
// runs in FP32). Activations and activation gradients are stored in the working dtype;
// statistics are FP32.
//
// Shapes: activations are (batch, time, features) contiguous tensors (time is 1 for
// tabular data); every layer here acts on the last dimension, so it sees a
// (batch * time, features) matrix. A layer reads x (B, T, in) and writes y (B, T, out);
// backward reads dy (B, T, out) and its own saved state (its input x, statistics, masks),
// never its output y (a residual block adds its input into y in place), and writes dx
// (B, T, in) and its FP32 parameter gradients.
//
// Memory: a layer allocates only through its BuildContext. A context without a backend
// is a dry run that counts the bytes without allocating or initializing anything:
// Model::plan and the admission estimate (engine/job_spec.h) run the very code that
// allocates, so an estimate and an allocation cannot drift apart.
//
// Each layer kind is one entry of engine/layer_registry.h.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "kernels/backend.h"

namespace ampd::engine {

class GradScratch;  // engine/sequential.h

// One trainable tensor with everything the optimizer and the checkpoint need.
struct Param {
  std::string name;     // checkpoint key, PyTorch nn.Sequential style: "0.weight", "2.1.weight"
  std::string display;  // for humans and overflow events: "layer 2.1 (linear).weight"
  int64_t rows = 0;
  int64_t cols = 0;
  bool decay = true;  // weight decay applies (false for biases/norm params by default)
  Buffer master;      // F32
  Buffer low;         // F16/BF16 working copy, or empty
  DType low_dtype = DType::kF32;
  Buffer grad;  // F32
  // Backward passes that wrote the gradient since Model::backward began: the first
  // writer overwrites it, a later one (a tied weight's second user) accumulates into it.
  int grad_writes = 0;

  Tensor master_t() const { return master.view(DType::kF32, rows, cols); }
  Tensor grad_t() const { return grad.view(DType::kF32, rows, cols); }
  Tensor low_t() const { return low ? low.view(low_dtype, rows, cols) : Tensor{}; }
  // What the forward pass reads: the low-precision copy when there is one.
  Tensor compute_t() const { return low ? low_t() : master_t(); }
  // beta for a matmul writing this gradient: 0 for the step's first write, then 1.
  float next_grad_beta() { return grad_writes++ > 0 ? 1.0f : 0.0f; }
};

// A non-trainable FP32 tensor kept in checkpoints (BatchNorm running statistics).
struct StateTensor {
  std::string name;  // "1.running_mean"
  int64_t rows = 0;
  int64_t cols = 0;
  Buffer data;
  Tensor t() const { return data.view(DType::kF32, rows, cols); }
};

// What the model's build has counted so far (bytes; saturating at INT64_MAX).
struct MemoryTally {
  int64_t parameter_bytes = 0;   // masters, working copies, gradients, running statistics
  int64_t parameter_count = 0;   // trainable elements (a tied weight counts once)
  int64_t activation_bytes = 0;  // per-batch buffers: activations, gradients, aux
  void add_param(int64_t bytes) { parameter_bytes = sat_add(parameter_bytes, bytes); }
  void add_activation(int64_t bytes) { activation_bytes = sat_add(activation_bytes, bytes); }
  static int64_t sat_add(int64_t a, int64_t b);
  static int64_t sat_mul(int64_t a, int64_t b);
};

// What a layer needs to know when it is built, and its only way to allocate.
struct BuildContext {
  Backend* backend = nullptr;     // nullptr: a dry run (count, allocate nothing)
  DType act_dtype = DType::kF32;  // activations and working weights
  int64_t max_batch = 0;          // examples per batch
  int64_t index = 0;              // the layer's number in a pre-order walk of the model
  uint64_t seed = 0;
  int64_t time = 1;          // positions per example
  bool token_input = false;  // the model's input is token ids (engine/layers/embedding.cc)
  std::string name;          // "3" or "2.1": the parameter prefix
  bool named = false;        // `name` was given in the spec (LayerSpec.name): it is also
                             // the parameters' display name

  MemoryTally* tally = nullptr;  // set by the model
  // Parameters of the layers built so far, by name (for weight tying); set by the model.
  std::unordered_map<std::string, Param*>* params_by_name = nullptr;
  // For blocks that hold a sequence of their own (engine/sequential.h): the nesting
  // depth of this layer, the pre-order layer counter, the model's gradient scratch.
  int depth = 0;
  int64_t* next_index = nullptr;
  GradScratch* scratch = nullptr;

  bool dry_run() const { return backend == nullptr; }
  int64_t max_rows() const { return MemoryTally::sat_mul(max_batch, time); }
  // Allocates an FP32 master (initialized from init(i) for element i), its gradient and,
  // when asked, a working copy in act_dtype (FP16/BF16 mode only).
  StatusOr<Param> make_param(const std::string& kind, const std::string& suffix, int64_t rows,
                             int64_t cols, bool low_copy, bool decay,
                             const std::function<float(int64_t)>& init) const;
  StatusOr<StateTensor> make_state(const std::string& suffix, int64_t cols, float value) const;
  // A normalization's FP32 affine parameters: "weight" (ones) and "bias" (zeros), 1 x
  // features each, no working copy, no weight decay; appended to `params`.
  Status make_norm_affine(const std::string& kind, int64_t features,
                          std::vector<Param>& params) const;
  // A per-batch buffer (statistics, masks): part of the activation memory.
  StatusOr<Buffer> make_aux(int64_t bytes) const;
  // An activation-sized buffer of rows x cols in `dtype`: part of the activation memory.
  StatusOr<Buffer> make_activation(DType dtype, int64_t rows, int64_t cols) const;
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
  // per-batch auxiliary buffers for up to ctx.max_rows() rows, or counts them (dry run).
  virtual Status build(const BuildContext& ctx, int64_t in_features) = 0;
  virtual Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) = 0;
  // dx may be empty (the model's first layer: no input gradient needed).
  virtual Status backward(const PassContext& ctx, const Tensor& x, const Tensor& dy,
                          const Tensor& dx) = 0;

  // True when backward must be given a dx buffer even when no input gradient is needed
  // (the normalization ops compute dx together with the parameter gradients).
  virtual bool requires_dx() const { return false; }
  // Parameters this layer owns (not tied ones it borrows), and its state tensors; a
  // block also lists its children's.
  virtual void collect_params(std::vector<Param*>& out);
  virtual void collect_states(std::vector<StateTensor*>& out);
  std::vector<Param>& params() { return params_; }
  const std::vector<Param>& params() const { return params_; }
  std::vector<StateTensor>& states() { return states_; }
  const std::vector<StateTensor>& states() const { return states_; }

 protected:
  int64_t in_ = 0;
  int64_t out_ = 0;
  std::vector<Param> params_;
  std::vector<StateTensor> states_;
};

// Builds the layer a spec entry describes (not yet built); see engine/layer_registry.h.
StatusOr<std::unique_ptr<Layer>> make_layer(const ampd::v1::LayerSpec& spec);

}  // namespace ampd::engine
