// BatchNorm1d over the batch (statistics per feature over every row, batch x time), FP32
// statistics and running statistics, PyTorch semantics.
#include "engine/layer_registry.h"

namespace ampd::engine {
namespace {

constexpr float kDefaultEps = 1e-5f;
constexpr float kDefaultMomentum = 0.1f;

class BatchNorm final : public Layer {
 public:
  BatchNorm(float eps, float momentum) : eps_(eps), momentum_(momentum) {}
  std::string kind() const override { return "batch_norm"; }
  bool requires_dx() const override { return true; }
  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = out_ = in;
    AMPD_RETURN_IF_ERROR(ctx.make_norm_affine(kind(), in, params_));
    AMPD_ASSIGN_OR_RETURN(StateTensor mean, ctx.make_state("running_mean", in, 0.0f));
    AMPD_ASSIGN_OR_RETURN(StateTensor var, ctx.make_state("running_var", in, 1.0f));
    states_.push_back(std::move(mean));
    states_.push_back(std::move(var));
    const int64_t stat_bytes = MemoryTally::sat_mul(in, sizeof(float));
    AMPD_ASSIGN_OR_RETURN(mean_, ctx.make_aux(stat_bytes));
    AMPD_ASSIGN_OR_RETURN(rstd_, ctx.make_aux(stat_bytes));
    return Status::ok_status();
  }
  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    if (!ctx.training || x.rows() < 2) {
      // Evaluation (or a batch too small for statistics): running statistics.
      return ctx.backend->batchnorm_forward_eval(x, params_[0].master_t(), params_[1].master_t(),
                                                 states_[0].t(), states_[1].t(), y, eps_);
    }
    return ctx.backend->batchnorm_forward_train(
        x, params_[0].master_t(), params_[1].master_t(), y, mean_.view(DType::kF32, 1, in_),
        rstd_.view(DType::kF32, 1, in_), states_[0].t(), states_[1].t(), momentum_, eps_);
  }
  Status backward(const PassContext& ctx, const Tensor& x, const Tensor& dy,
                  const Tensor& dx) override {
    if (x.rows() < 2)
      return failed_precondition("batch_norm needs at least 2 rows in a training batch");
    return ctx.backend->batchnorm_backward(
        dy, x, params_[0].master_t(), mean_.view(DType::kF32, 1, in_),
        rstd_.view(DType::kF32, 1, in_), dx, params_[0].grad_t(), params_[1].grad_t());
  }

 private:
  float eps_, momentum_;
  Buffer mean_, rstd_;
};

void resolve(ampd::v1::LayerSpec& spec, const std::string& path, int, SpecChecker& c) {
  auto* norm = spec.mutable_batch_norm();
  if (!norm->has_eps()) norm->set_eps(kDefaultEps);
  if (!norm->has_momentum()) norm->set_momentum(kDefaultMomentum);
  c.in_range(path + ".batch_norm.eps", norm->eps(), 0.0f, false, 1.0f, true);
  c.closed(path + ".batch_norm.momentum", norm->momentum(), 0.0f, 1.0f);
}

std::unique_ptr<Layer> make(const ampd::v1::LayerSpec& spec) {
  const auto& s = spec.batch_norm();
  return std::make_unique<BatchNorm>(s.has_eps() ? s.eps() : kDefaultEps,
                                     s.has_momentum() ? s.momentum() : kDefaultMomentum);
}

}  // namespace

const LayerKind kBatchNormLayer = {"batch_norm", ampd::v1::LayerSpec::kBatchNorm, resolve, make};

}  // namespace ampd::engine
