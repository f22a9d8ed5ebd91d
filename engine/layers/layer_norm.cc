// LayerNorm over the last dimension: FP32 statistics (mean, rstd per row) and FP32
// parameters, as torch.nn.LayerNorm(features).
#include "engine/layer_registry.h"

namespace ampd::engine {
namespace {

constexpr float kDefaultEps = 1e-5f;

class LayerNorm final : public Layer {
 public:
  LayerNorm(float eps, bool bias) : eps_(eps), bias_(bias) {}
  std::string kind() const override { return "layer_norm"; }
  bool requires_dx() const override { return true; }
  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = out_ = in;
    if (bias_) {
      AMPD_RETURN_IF_ERROR(ctx.make_norm_affine(kind(), in, params_));
    } else {
      // No learned shift (nanoGPT's LayerNorm(bias=False)): the ops get a zero shift and a
      // scratch gradient for it.
      AMPD_ASSIGN_OR_RETURN(Param w, ctx.make_param(kind(), "weight", 1, in, false, false,
                                                    [](int64_t) { return 1.0f; }));
      params_.push_back(std::move(w));
      const int64_t vec_bytes = MemoryTally::sat_mul(in, sizeof(float));
      AMPD_ASSIGN_OR_RETURN(zero_shift_, ctx.make_aux(vec_bytes));
      AMPD_ASSIGN_OR_RETURN(shift_grad_, ctx.make_aux(vec_bytes));
      if (!ctx.dry_run()) {
        AMPD_RETURN_IF_ERROR(ctx.backend->fill(zero_shift_.view(DType::kF32, 1, in), 0.0f));
      }
    }
    const int64_t stat_bytes = MemoryTally::sat_mul(ctx.max_rows(), sizeof(float));
    AMPD_ASSIGN_OR_RETURN(mean_, ctx.make_aux(stat_bytes));
    AMPD_ASSIGN_OR_RETURN(rstd_, ctx.make_aux(stat_bytes));
    return Status::ok_status();
  }
  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    return ctx.backend->layernorm_forward(x, params_[0].master_t(), shift(), y,
                                          mean_.view(DType::kF32, 1, x.rows()),
                                          rstd_.view(DType::kF32, 1, x.rows()), eps_);
  }
  Status backward(const PassContext& ctx, const Tensor& x, const Tensor& dy,
                  const Tensor& dx) override {
    return ctx.backend->layernorm_backward(
        dy, x, params_[0].master_t(), mean_.view(DType::kF32, 1, x.rows()),
        rstd_.view(DType::kF32, 1, x.rows()), dx, params_[0].grad_t(),
        bias_ ? params_[1].grad_t() : shift_grad_.view(DType::kF32, 1, in_));
  }

 private:
  Tensor shift() const {
    return bias_ ? params_[1].master_t() : zero_shift_.view(DType::kF32, 1, in_);
  }
  float eps_;
  bool bias_;
  Buffer mean_, rstd_, zero_shift_, shift_grad_;
};

void resolve(ampd::v1::LayerSpec& spec, const std::string& path, int, SpecChecker& c) {
  auto* norm = spec.mutable_layer_norm();
  if (!norm->has_eps()) norm->set_eps(kDefaultEps);
  c.in_range(path + ".layer_norm.eps", norm->eps(), 0.0f, false, 1.0f, true);
}

std::unique_ptr<Layer> make(const ampd::v1::LayerSpec& spec) {
  const auto& n = spec.layer_norm();
  return std::make_unique<LayerNorm>(n.has_eps() ? n.eps() : kDefaultEps,
                                     !n.has_bias() || n.bias());
}

}  // namespace

const LayerKind kLayerNormLayer = {"layer_norm", ampd::v1::LayerSpec::kLayerNorm, resolve, make};

}  // namespace ampd::engine
