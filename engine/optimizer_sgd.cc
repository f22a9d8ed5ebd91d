#include "engine/optimizer_sgd.h"

namespace ampd::engine {

std::vector<std::string> SgdOptimizer::state_names_for(const ampd::v1::OptimizerSpec& spec) {
  if (spec.sgd().momentum() != 0.0f) return {"momentum_buffer"};
  return {};
}

StatusOr<std::unique_ptr<Optimizer>> SgdOptimizer::create(Backend& backend,
                                                          const ampd::v1::OptimizerSpec& spec,
                                                          std::vector<Param*> params) {
  const size_t n = params.size();
  std::unique_ptr<SgdOptimizer> opt(new SgdOptimizer(backend, spec.sgd(), std::move(params)));
  AMPD_RETURN_IF_ERROR(
      opt->init_state(state_names_for(spec),
                      !spec.has_no_decay_on_bias_and_norm() || spec.no_decay_on_bias_and_norm()));
  for (size_t i = 0; i < n; ++i) opt->slots()[i].state1 = opt->state(i, "momentum_buffer");
  return std::unique_ptr<Optimizer>(std::move(opt));
}

Status SgdOptimizer::apply(double lr, float grad_scale) {
  SgdParams hp;
  hp.lr = static_cast<float>(lr);
  hp.momentum = spec_.momentum();
  hp.dampening = spec_.dampening();
  hp.weight_decay = spec_.weight_decay();
  hp.nesterov = spec_.nesterov();
  hp.first_step = applied_steps() == 0;
  hp.grad_scale = grad_scale;
  return backend().sgd_step(slots(), hp);
}

}  // namespace ampd::engine
