// A residual block: y = x + f(x), f its own layers in order (ResidualSpec). Gradients
// flow through both branches: dx = dy + df/dx(dy). The block writes f's last output
// straight into its own output buffer and adds x there, so it costs no buffer of its own;
// its layers use the gradient scratch one depth below (engine/sequential.h).
#include "engine/layer_registry.h"
#include "engine/sequential.h"

namespace ampd::engine {
namespace {

class Residual final : public Layer {
 public:
  explicit Residual(const ampd::v1::ResidualSpec& spec) : spec_(spec) {}
  std::string kind() const override { return "residual"; }

  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = out_ = in;
    if (ctx.next_index == nullptr || ctx.scratch == nullptr) {
      return internal("residual: built outside a model");
    }
    AMPD_RETURN_IF_ERROR(inner_.build(ctx, spec_.layers(), in, "layers", ctx.name + ".",
                                      ctx.depth + 1, ctx.next_index, ctx.scratch));
    if (inner_.out_features() != in) {
      return invalid_argument("its layers turn " + std::to_string(in) + " features into " +
                              std::to_string(inner_.out_features()) +
                              "; a residual block must give back the width it was given");
    }
    return Status::ok_status();
  }

  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    AMPD_RETURN_IF_ERROR(inner_.forward(ctx, x, y));
    return ctx.backend->accumulate(x, y);  // y = x + f(x), one rounding
  }

  Status backward(const PassContext& ctx, const Tensor& x, const Tensor& dy,
                  const Tensor& dx) override {
    AMPD_RETURN_IF_ERROR(inner_.backward(ctx, x, dy, /*dy_slot=*/-1, dx));
    if (dx.empty()) return Status::ok_status();
    return ctx.backend->accumulate(dy, dx);  // dx = df/dx(dy) + dy
  }

  void collect_params(std::vector<Param*>& out) override { inner_.collect_params(out); }
  void collect_states(std::vector<StateTensor*>& out) override { inner_.collect_states(out); }

 private:
  ampd::v1::ResidualSpec spec_;
  Sequential inner_;
};

void resolve(ampd::v1::LayerSpec& spec, const std::string& path, int depth, SpecChecker& c);

std::unique_ptr<Layer> make(const ampd::v1::LayerSpec& spec) {
  return std::make_unique<Residual>(spec.residual());
}

}  // namespace

const LayerKind kResidualLayer = {"residual", ampd::v1::LayerSpec::kResidual, resolve, make};

namespace {

void resolve(ampd::v1::LayerSpec& spec, const std::string& path, int depth, SpecChecker& c) {
  auto* block = spec.mutable_residual();
  const std::string at = path + ".residual.layers";
  if (block->layers().empty()) {
    c.add(at, "a residual block needs at least one layer");
    return;
  }
  resolve_layers(block->mutable_layers(), at, depth + 1, c);
}

}  // namespace

}  // namespace ampd::engine
