// Dropout: inverted dropout with a counter-based mask (kernels/dropout_hash.h), so every
// backend draws the same mask and a resumed job draws the masks an uninterrupted one did.
#include "engine/layer_registry.h"

namespace ampd::engine {
namespace {

class Dropout final : public Layer {
 public:
  explicit Dropout(float p) : p_(p) {}
  std::string kind() const override { return "dropout"; }
  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = out_ = in;
    index_ = ctx.index;
    AMPD_ASSIGN_OR_RETURN(mask_, ctx.make_activation(DType::kU8, ctx.max_rows(), in));
    return Status::ok_status();
  }
  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    if (!ctx.training || p_ == 0.0f) return ctx.backend->copy(y, x);
    // One mask stream per (seed, layer); the offset advances by a fixed stride per step
    // so that a resumed job draws the same masks as an uninterrupted one.
    const uint64_t seed = splitmix64(ctx.seed ^ (0xd50ull + static_cast<uint64_t>(index_)));
    const uint64_t offset = static_cast<uint64_t>(ctx.step) * static_cast<uint64_t>(x.numel());
    return ctx.backend->dropout_forward(x, y, mask_.view(DType::kU8, x.rows(), x.cols()), p_, seed,
                                        offset);
  }
  Status backward(const PassContext& ctx, const Tensor&, const Tensor& dy,
                  const Tensor& dx) override {
    if (dx.empty()) return Status::ok_status();
    if (p_ == 0.0f) return ctx.backend->copy(dx, dy);
    return ctx.backend->dropout_backward(dy, mask_.view(DType::kU8, dy.rows(), dy.cols()), dx, p_);
  }

 private:
  float p_;
  int64_t index_ = 0;
  Buffer mask_;
};

void resolve(ampd::v1::LayerSpec& spec, const std::string& path, int, SpecChecker& c) {
  c.in_range(path + ".dropout.p", spec.dropout().p(), 0.0f, true, 1.0f, false);
}

std::unique_ptr<Layer> make(const ampd::v1::LayerSpec& spec) {
  return std::make_unique<Dropout>(spec.dropout().p());
}

}  // namespace

const LayerKind kDropoutLayer = {"dropout", ampd::v1::LayerSpec::kDropout, resolve, make};

}  // namespace ampd::engine
