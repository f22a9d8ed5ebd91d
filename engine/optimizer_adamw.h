// AdamW (torch.optim.AdamW semantics; kernels/backend.h AdamWParams): states "exp_avg"
// and "exp_avg_sq" per parameter, the backend's ParamSlot::state1 and state2.
#pragma once

#include "engine/optimizer.h"

namespace ampd::engine {

class AdamWOptimizer final : public Optimizer {
 public:
  static StatusOr<std::unique_ptr<Optimizer>> create(Backend& backend,
                                                     const ampd::v1::OptimizerSpec& spec,
                                                     std::vector<Param*> params);
  // {"exp_avg", "exp_avg_sq"}.
  static std::vector<std::string> state_names_for(const ampd::v1::OptimizerSpec& spec);

  std::string_view name() const override { return "adamw"; }
  double peak_lr() const override { return spec_.lr(); }

 private:
  AdamWOptimizer(Backend& backend, const ampd::v1::AdamWSpec& spec, std::vector<Param*> params)
      : Optimizer(backend, std::move(params)), spec_(spec) {}
  Status apply(double lr, float grad_scale) override;

  ampd::v1::AdamWSpec spec_;
};

}  // namespace ampd::engine
