#include "engine/optimizer_adamw.h"

namespace ampd::engine {

std::vector<std::string> AdamWOptimizer::state_names_for(const ampd::v1::OptimizerSpec&) {
  return {"exp_avg", "exp_avg_sq"};
}

StatusOr<std::unique_ptr<Optimizer>> AdamWOptimizer::create(Backend& backend,
                                                            const ampd::v1::OptimizerSpec& spec,
                                                            std::vector<Param*> params) {
  const size_t n = params.size();
  std::unique_ptr<AdamWOptimizer> opt(new AdamWOptimizer(backend, spec.adamw(), std::move(params)));
  AMPD_RETURN_IF_ERROR(
      opt->init_state(state_names_for(spec),
                      !spec.has_no_decay_on_bias_and_norm() || spec.no_decay_on_bias_and_norm()));
  for (size_t i = 0; i < n; ++i) {
    opt->slots()[i].state1 = opt->state(i, "exp_avg");
    opt->slots()[i].state2 = opt->state(i, "exp_avg_sq");
  }
  return std::unique_ptr<Optimizer>(std::move(opt));
}

Status AdamWOptimizer::apply(double lr, float grad_scale) {
  AdamWParams hp;
  hp.lr = static_cast<float>(lr);
  hp.beta1 = spec_.has_beta1() ? spec_.beta1() : 0.9f;
  hp.beta2 = spec_.has_beta2() ? spec_.beta2() : 0.999f;
  hp.eps = spec_.has_eps() ? spec_.eps() : 1e-8f;
  hp.weight_decay = spec_.has_weight_decay() ? spec_.weight_decay() : 0.01f;
  hp.step = applied_steps() + 1;
  hp.grad_scale = grad_scale;
  return backend().adamw_step(slots(), hp);
}

}  // namespace ampd::engine
