// Optimizers over the model's FP32 master weights (PyTorch semantics, see
// kernels/backend.h), with the learning rate supplied per step by the schedule.
//
// An Optimizer owns its state: for every parameter, the FP32 tensors its implementation
// declares by name (PyTorch's state names: SGD with momentum "momentum_buffer", AdamW
// "exp_avg" and "exp_avg_sq"), allocated and zeroed when it is created. Everything else
// asks the optimizer: checkpoints save and restore state_tensors() under the keys it
// gives ("optimizer.<param>.<state>"), memory reports use state_bytes(), and estimates
// made before a model exists use optimizer_state_names(spec). So adding an optimizer
// (Lion, say) is: its OptimizerSpec oneof case, a class here (engine/optimizer_*.cc) that
// declares its states and maps them to the backend's ParamSlot when it calls its step op,
// and one row in the registry (optimizer.cc). checkpoint.cc, the trainer and the memory
// report do not change.
//
// All parameters go to the backend in one multi-tensor call per step, which also rewrites
// each low-precision working copy from the updated master weight.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "engine/layers.h"
#include "kernels/backend.h"

namespace ampd::engine {

class Optimizer {
 public:
  // Builds the optimizer the spec's oneof names (InvalidArgument when none or an unknown
  // one is set), with zeroed state for every parameter.
  static StatusOr<std::unique_ptr<Optimizer>> create(Backend& backend,
                                                     const ampd::v1::OptimizerSpec& spec,
                                                     std::vector<Param*> params);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Applies one update with learning rate `lr`; gradients are multiplied by grad_scale
  // first (the clipping factor). Increments applied_steps().
  Status step(double lr, float grad_scale);

  // "sgd", "adamw": the spec's oneof field.
  virtual std::string_view name() const = 0;
  virtual double peak_lr() const = 0;
  int64_t applied_steps() const { return applied_steps_; }
  void set_applied_steps(int64_t n) { applied_steps_ = n; }

  // The state each parameter has, in order ("exp_avg", "exp_avg_sq"); empty for plain SGD.
  const std::vector<std::string>& state_names() const { return state_names_; }
  // Every state tensor with its checkpoint key "optimizer.<param name>.<state name>"
  // ("optimizer.0.weight.exp_avg"), parameter by parameter, each in state_names() order.
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // The state `state` of parameter `param` (an index into the params given to create),
  // or an empty tensor when there is no such state.
  Tensor state(size_t param, std::string_view state) const;
  // Bytes of all state tensors.
  int64_t state_bytes() const { return state_bytes_; }

 protected:
  Optimizer(Backend& backend, std::vector<Param*> params);
  // Allocates and zeroes one FP32 tensor per parameter and name; fills slots() (master,
  // grad, low-precision copy, weight-decay multiplier) but not their state1/state2,
  // which each implementation maps from its named states.
  Status init_state(std::vector<std::string> names, bool no_decay_on_bias_and_norm);
  // The backend's per-parameter view, in parameter order.
  std::vector<ParamSlot>& slots() { return slots_; }
  Backend& backend() { return *backend_; }
  // One update; applied_steps() is the number of updates before this one.
  virtual Status apply(double lr, float grad_scale) = 0;

 private:
  Backend* backend_;
  std::vector<Param*> params_;
  std::vector<std::string> state_names_;
  std::vector<std::vector<Buffer>> states_;  // [param][state]
  std::vector<ParamSlot> slots_;
  int64_t applied_steps_ = 0;
  int64_t state_bytes_ = 0;
};

// What the registry knows of each optimizer without building one.
struct OptimizerInfo {
  ampd::v1::OptimizerSpec::KindCase kind;
  const char* name;  // the oneof field: "sgd"
  // The per-parameter state names the spec implies (SGD without momentum has none).
  std::vector<std::string> (*state_names)(const ampd::v1::OptimizerSpec& spec);
  StatusOr<std::unique_ptr<Optimizer>> (*make)(Backend& backend,
                                               const ampd::v1::OptimizerSpec& spec,
                                               std::vector<Param*> params);
};
// The registry entry for the spec's oneof case, or nullptr.
const OptimizerInfo* find_optimizer(ampd::v1::OptimizerSpec::KindCase kind);

// The FP32 state tensors per parameter the spec's optimizer keeps, by name (what
// Optimizer::state_names() will be); empty for an unknown kind. For memory estimates:
// state bytes = 4 * (number of parameter elements) * names.size().
std::vector<std::string> optimizer_state_names(const ampd::v1::OptimizerSpec& spec);

}  // namespace ampd::engine
