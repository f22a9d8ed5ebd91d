// SGD (torch.optim.SGD semantics; kernels/backend.h SgdParams), with an optional momentum
// buffer per parameter: state "momentum_buffer", the backend's ParamSlot::state1.
#pragma once

#include "engine/optimizer.h"

namespace ampd::engine {

class SgdOptimizer final : public Optimizer {
 public:
  static StatusOr<std::unique_ptr<Optimizer>> create(Backend& backend,
                                                     const ampd::v1::OptimizerSpec& spec,
                                                     std::vector<Param*> params);
  // {"momentum_buffer"} when momentum is set, else none.
  static std::vector<std::string> state_names_for(const ampd::v1::OptimizerSpec& spec);

  std::string_view name() const override { return "sgd"; }
  double peak_lr() const override { return spec_.lr(); }

 private:
  SgdOptimizer(Backend& backend, const ampd::v1::SgdSpec& spec, std::vector<Param*> params)
      : Optimizer(backend, std::move(params)), spec_(spec) {}
  Status apply(double lr, float grad_scale) override;

  ampd::v1::SgdSpec spec_;
};

}  // namespace ampd::engine
