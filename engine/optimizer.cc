#include "engine/optimizer.h"

#include "engine/optimizer_adamw.h"
#include "engine/optimizer_sgd.h"

namespace ampd::engine {

namespace {

// The registry: one row per OptimizerSpec oneof case.
const OptimizerInfo kOptimizers[] = {
    {ampd::v1::OptimizerSpec::kSgd, "sgd", &SgdOptimizer::state_names_for, &SgdOptimizer::create},
    {ampd::v1::OptimizerSpec::kAdamw, "adamw", &AdamWOptimizer::state_names_for,
     &AdamWOptimizer::create},
};

}  // namespace

const OptimizerInfo* find_optimizer(ampd::v1::OptimizerSpec::KindCase kind) {
  for (const OptimizerInfo& info : kOptimizers) {
    if (info.kind == kind) return &info;
  }
  return nullptr;
}

std::vector<std::string> optimizer_state_names(const ampd::v1::OptimizerSpec& spec) {
  const OptimizerInfo* info = find_optimizer(spec.kind_case());
  return info == nullptr ? std::vector<std::string>{} : info->state_names(spec);
}

StatusOr<std::unique_ptr<Optimizer>> Optimizer::create(Backend& backend,
                                                       const ampd::v1::OptimizerSpec& spec,
                                                       std::vector<Param*> params) {
  const OptimizerInfo* info = find_optimizer(spec.kind_case());
  if (info == nullptr) {
    std::string names;
    for (const OptimizerInfo& i : kOptimizers)
      names += std::string(names.empty() ? "" : " or ") + i.name;
    return invalid_argument("optimizer: set " + names);
  }
  return info->make(backend, spec, std::move(params));
}

Optimizer::Optimizer(Backend& backend, std::vector<Param*> params)
    : backend_(&backend), params_(std::move(params)) {}

Status Optimizer::init_state(std::vector<std::string> names, bool no_decay_on_bias_and_norm) {
  state_names_ = std::move(names);
  states_.clear();
  slots_.clear();
  state_bytes_ = 0;
  for (Param* p : params_) {
    const size_t bytes = static_cast<size_t>(p->rows * p->cols) * sizeof(float);
    std::vector<Buffer>& states = states_.emplace_back();
    for (size_t k = 0; k < state_names_.size(); ++k) {
      AMPD_ASSIGN_OR_RETURN(Buffer b, backend_->allocate(bytes));
      AMPD_RETURN_IF_ERROR(backend_->fill(b.view(DType::kF32, p->rows, p->cols), 0.0f));
      states.push_back(std::move(b));
      state_bytes_ += static_cast<int64_t>(bytes);
    }
    ParamSlot slot;
    slot.master = p->master_t();
    slot.grad = p->grad_t();
    slot.low_precision = p->low_t();
    slot.weight_decay_multiplier = (p->decay || !no_decay_on_bias_and_norm) ? 1.0f : 0.0f;
    slots_.push_back(slot);
  }
  return Status::ok_status();
}

Tensor Optimizer::state(size_t param, std::string_view name) const {
  if (param >= params_.size()) return Tensor{};
  for (size_t k = 0; k < state_names_.size(); ++k) {
    if (state_names_[k] == name) {
      const Param* p = params_[param];
      return states_[param][k].view(DType::kF32, p->rows, p->cols);
    }
  }
  return Tensor{};
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Param* p = params_[i];
    for (size_t k = 0; k < state_names_.size(); ++k) {
      out.emplace_back("optimizer." + p->name + "." + state_names_[k],
                       states_[i][k].view(DType::kF32, p->rows, p->cols));
    }
  }
  return out;
}

Status Optimizer::step(double lr, float grad_scale) {
  AMPD_RETURN_IF_ERROR(apply(lr, grad_scale));
  ++applied_steps_;
  return Status::ok_status();
}

}  // namespace ampd::engine
