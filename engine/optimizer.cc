#include "engine/optimizer.h"

namespace ampd::engine {

StatusOr<std::unique_ptr<Optimizer>> Optimizer::create(Backend& backend,
                                                       const ampd::v1::OptimizerSpec& spec,
                                                       std::vector<Param*> params) {
  const bool adamw = spec.kind_case() == ampd::v1::OptimizerSpec::kAdamw;
  if (!adamw && spec.kind_case() != ampd::v1::OptimizerSpec::kSgd) {
    return InvalidArgument("optimizer: set sgd or adamw");
  }
  std::unique_ptr<Optimizer> opt(new Optimizer(backend, spec));
  const bool no_decay = !spec.has_no_decay_on_bias_and_norm() || spec.no_decay_on_bias_and_norm();
  const bool needs_state1 = adamw || spec.sgd().momentum() != 0.0f;
  for (Param* p : params) {
    const size_t bytes = static_cast<size_t>(p->rows * p->cols) * sizeof(float);
    if (needs_state1) {
      AMPD_ASSIGN_OR_RETURN(p->state1, backend.allocate(bytes));
      AMPD_RETURN_IF_ERROR(backend.fill(p->state1_t(), 0.0f));
      opt->state_bytes_ += static_cast<int64_t>(bytes);
    }
    if (adamw) {
      AMPD_ASSIGN_OR_RETURN(p->state2, backend.allocate(bytes));
      AMPD_RETURN_IF_ERROR(backend.fill(p->state2_t(), 0.0f));
      opt->state_bytes_ += static_cast<int64_t>(bytes);
    }
    ParamSlot slot;
    slot.master = p->master_t();
    slot.grad = p->grad_t();
    slot.state1 = p->state1_t();
    slot.state2 = p->state2_t();
    slot.low_precision = p->low_t();
    slot.weight_decay_multiplier = (p->decay || !no_decay) ? 1.0f : 0.0f;
    opt->slots_.push_back(slot);
  }
  opt->params_ = std::move(params);
  return opt;
}

double Optimizer::peak_lr() const {
  return spec_.kind_case() == ampd::v1::OptimizerSpec::kAdamw ? spec_.adamw().lr()
                                                              : spec_.sgd().lr();
}

std::vector<std::string> Optimizer::state_names() const {
  if (spec_.kind_case() == ampd::v1::OptimizerSpec::kAdamw) return {"exp_avg", "exp_avg_sq"};
  if (spec_.sgd().momentum() != 0.0f) return {"momentum_buffer"};
  return {};
}

Status Optimizer::step(double lr, float grad_scale) {
  if (spec_.kind_case() == ampd::v1::OptimizerSpec::kAdamw) {
    const auto& a = spec_.adamw();
    AdamWParams hp;
    hp.lr = static_cast<float>(lr);
    hp.beta1 = a.has_beta1() ? a.beta1() : 0.9f;
    hp.beta2 = a.has_beta2() ? a.beta2() : 0.999f;
    hp.eps = a.has_eps() ? a.eps() : 1e-8f;
    hp.weight_decay = a.has_weight_decay() ? a.weight_decay() : 0.01f;
    hp.step = applied_steps_ + 1;
    hp.grad_scale = grad_scale;
    AMPD_RETURN_IF_ERROR(backend_->adamw_step(slots_, hp));
  } else {
    const auto& s = spec_.sgd();
    SgdParams hp;
    hp.lr = static_cast<float>(lr);
    hp.momentum = s.momentum();
    hp.dampening = s.dampening();
    hp.weight_decay = s.weight_decay();
    hp.nesterov = s.nesterov();
    hp.first_step = applied_steps_ == 0;
    hp.grad_scale = grad_scale;
    AMPD_RETURN_IF_ERROR(backend_->sgd_step(slots_, hp));
  }
  ++applied_steps_;
  return Status::Ok();
}

}  // namespace ampd::engine
