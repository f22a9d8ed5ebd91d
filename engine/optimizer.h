// SGD and AdamW over the model's FP32 master weights (PyTorch semantics, see
// kernels/backend.h), with the learning rate supplied per step by the schedule.
// All parameters go to the backend in one multi-tensor call per step, which also
// rewrites each low-precision working copy from the updated master weight.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "engine/layers.h"
#include "kernels/backend.h"

namespace ampd::engine {

class Optimizer {
 public:
  static StatusOr<std::unique_ptr<Optimizer>> create(Backend& backend,
                                                     const ampd::v1::OptimizerSpec& spec,
                                                     std::vector<Param*> params);

  // Applies one update with learning rate `lr`; gradients are multiplied by grad_scale
  // first (the clipping factor). Increments applied_steps().
  Status step(double lr, float grad_scale);

  double peak_lr() const;
  int64_t applied_steps() const { return applied_steps_; }
  void set_applied_steps(int64_t n) { applied_steps_ = n; }
  // "momentum_buffer" / "exp_avg", "exp_avg_sq" (PyTorch's state names).
  std::vector<std::string> state_names() const;
  int64_t state_bytes() const { return state_bytes_; }

 private:
  Optimizer(Backend& backend, const ampd::v1::OptimizerSpec& spec)
      : backend_(&backend), spec_(spec) {}

  Backend* backend_;
  ampd::v1::OptimizerSpec spec_;
  std::vector<Param*> params_;
  std::vector<ParamSlot> slots_;
  int64_t applied_steps_ = 0;
  int64_t state_bytes_ = 0;
};

}  // namespace ampd::engine
