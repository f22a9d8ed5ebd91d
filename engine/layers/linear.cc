// Linear: y = x W^T + b, W (out, in) as in torch.nn.Linear; optionally W tied to an
// earlier layer's weight (LinearSpec.tie_weight_to).
#include <cmath>

#include "engine/layer_registry.h"
#include "engine/layers/init.h"

namespace ampd::engine {
namespace {

class Linear final : public Layer {
 public:
  explicit Linear(const ampd::v1::LinearSpec& spec)
      : bias_(!spec.has_bias() || spec.bias()),
        tie_(spec.tie_weight_to()),
        init_std_(spec.has_init_std() ? spec.init_std() : -1.0f) {
    out_ = spec.out_features();
  }
  std::string kind() const override { return "linear"; }

  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = in;
    // PyTorch's default: kaiming_uniform(a = sqrt 5) = U(-1/sqrt(in), 1/sqrt(in)), and the
    // same bound for the bias.
    const float bound = 1.0f / std::sqrt(static_cast<float>(in));
    const uint64_t seed = ctx.seed;
    const int64_t index = ctx.index;
    if (!tie_.empty()) {
      Param* w = nullptr;
      if (ctx.params_by_name != nullptr) {
        auto it = ctx.params_by_name->find(tie_);
        if (it != ctx.params_by_name->end()) w = it->second;
      }
      if (w == nullptr) {
        return invalid_argument("tie_weight_to: no earlier parameter is named " + quote(tie_) +
                                " (names are as in checkpoints: \"0.weight\", \"2.1.weight\")");
      }
      if (w->rows != out_ || w->cols != in) {
        return invalid_argument("tie_weight_to: " + quote(tie_) + " is " + std::to_string(w->rows) +
                                "x" + std::to_string(w->cols) + " but this layer's weight is " +
                                std::to_string(out_) + "x" + std::to_string(in) +
                                " (out_features x in_features)");
      }
      weight_ = w;
    } else {
      AMPD_ASSIGN_OR_RETURN(Param w,
                            ctx.make_param(kind(), "weight", out_, in, /*low_copy=*/true,
                                           /*decay=*/true, [&](int64_t i) {
                                             return init_std_ >= 0.0f
                                                        ? init_normal(seed, index, 0, i, init_std_)
                                                        : init_uniform(seed, index, 0, i, bound);
                                           }));
      params_.push_back(std::move(w));
    }
    if (bias_) {
      // The bias is added in FP32 inside the matmul epilogue: no low-precision copy.
      AMPD_ASSIGN_OR_RETURN(
          Param b,
          ctx.make_param(kind(), "bias", 1, out_, /*low_copy=*/false,
                         /*decay=*/false, [&](int64_t i) {
                           return init_std_ >= 0.0f ? 0.0f : init_uniform(seed, index, 1, i, bound);
                         }));
      params_.push_back(std::move(b));
    }
    if (weight_ == nullptr) weight_ = &params_[0];
    bias_param_ = bias_ ? &params_.back() : nullptr;
    return Status::ok_status();
  }

  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    MatmulArgs m;
    m.a = x.reshaped(x.rows(), x.cols());  // (B*T, in)
    m.b = weight_->compute_t();            // (out, in)
    m.trans_b = true;
    m.c = y.reshaped(y.rows(), y.cols());  // (B*T, out)
    if (bias_param_ != nullptr) m.bias = bias_param_->master_t();
    return ctx.backend->matmul(m);
  }

  Status backward(const PassContext& ctx, const Tensor& x, const Tensor& dy,
                  const Tensor& dx) override {
    Backend& be = *ctx.backend;
    const Tensor g = dy.reshaped(dy.rows(), dy.cols());
    // dW (out, in) = dy^T (out, B*T) @ x (B*T, in), FP32 output; a tied weight's second
    // user adds its contribution to the first one's (beta 1), in FP32.
    MatmulArgs dw;
    dw.a = g;
    dw.trans_a = true;
    dw.b = x.reshaped(x.rows(), x.cols());
    dw.c = weight_->grad_t();
    dw.beta = weight_->next_grad_beta();
    AMPD_RETURN_IF_ERROR(be.matmul(dw));
    if (bias_param_ != nullptr) AMPD_RETURN_IF_ERROR(be.bias_grad(g, bias_param_->grad_t()));
    if (dx.empty()) return Status::ok_status();
    // dx (B*T, in) = dy (B*T, out) @ W (out, in), in the working dtype.
    MatmulArgs mx;
    mx.a = g;
    mx.b = weight_->compute_t();
    mx.c = dx.reshaped(dx.rows(), dx.cols());
    return be.matmul(mx);
  }

 private:
  bool bias_;
  std::string tie_;
  float init_std_;  // < 0: PyTorch's default uniform init
  Param* weight_ = nullptr;
  Param* bias_param_ = nullptr;
};

void resolve(ampd::v1::LayerSpec& spec, const std::string& path, int, SpecChecker& c) {
  auto* linear = spec.mutable_linear();
  c.closed(path + ".linear.out_features", linear->out_features(), 1, kMaxWidth);
  if (!linear->has_bias()) linear->set_bias(true);
  if (linear->tie_weight_to().size() > 256) {
    c.add(path + ".linear.tie_weight_to", "must be at most 256 characters");
  }
  if (linear->has_init_std()) {
    c.in_range(path + ".linear.init_std", linear->init_std(), 0.0f, true, 10.0f, true);
  }
}

std::unique_ptr<Layer> make(const ampd::v1::LayerSpec& spec) {
  return std::make_unique<Linear>(spec.linear());
}

}  // namespace

const LayerKind kLinearLayer = {"linear", ampd::v1::LayerSpec::kLinear, resolve, make};

}  // namespace ampd::engine
