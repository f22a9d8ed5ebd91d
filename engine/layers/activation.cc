// Element-wise activations: ReLU, GELU (exact, erf), tanh. No parameters.
#include "engine/layer_registry.h"

namespace ampd::engine {
namespace {

class ActivationLayer final : public Layer {
 public:
  explicit ActivationLayer(Activation act) : act_(act) {}
  std::string kind() const override { return activation_name(act_); }
  Status build(const BuildContext&, int64_t in) override {
    in_ = out_ = in;
    return Status::ok_status();
  }
  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    return ctx.backend->activation_forward(act_, x, y);
  }
  Status backward(const PassContext& ctx, const Tensor& x, const Tensor& dy,
                  const Tensor& dx) override {
    if (dx.empty()) return Status::ok_status();
    return ctx.backend->activation_backward(act_, x, dy, dx);
  }

 private:
  Activation act_;
};

void resolve(ampd::v1::LayerSpec&, const std::string&, int, SpecChecker&) {}

template <Activation A>
std::unique_ptr<Layer> make(const ampd::v1::LayerSpec&) {
  return std::make_unique<ActivationLayer>(A);
}

}  // namespace

const LayerKind kReluLayer = {"relu", ampd::v1::LayerSpec::kRelu, resolve, make<Activation::kReLU>};
const LayerKind kGeluLayer = {"gelu", ampd::v1::LayerSpec::kGelu, resolve, make<Activation::kGELU>};
const LayerKind kTanhLayer = {"tanh", ampd::v1::LayerSpec::kTanh, resolve, make<Activation::kTanh>};

}  // namespace ampd::engine
