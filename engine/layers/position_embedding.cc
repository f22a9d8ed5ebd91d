// Learned position embedding (GPT-2's wpe): y[b, t, :] = x[b, t, :] + weight[t, :], weight
// (T, C) FP32, T the model's positions per example. The add is the bias add of a
// (B, T*C) matrix with the (1, T*C) weight, rounded once; its gradient is the column sum of
// dy as a (B, T*C) matrix (bias_grad), and dx = dy.
#include "engine/layer_registry.h"
#include "engine/layers/init.h"

namespace ampd::engine {
namespace {

constexpr float kInitStd = 0.02f;

class PositionEmbedding final : public Layer {
 public:
  std::string kind() const override { return "position_embedding"; }

  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = out_ = in;
    time_ = ctx.time;
    const uint64_t seed = ctx.seed;
    const int64_t index = ctx.index;
    // No working copy: the bias add reads the FP32 master and rounds once.
    AMPD_ASSIGN_OR_RETURN(Param w, ctx.make_param(kind(), "weight", time_, in, /*low_copy=*/false,
                                                  /*decay=*/true, [&](int64_t i) {
                                                    return init_normal(seed, index, 0, i, kInitStd);
                                                  }));
    params_.push_back(std::move(w));
    return Status::ok_status();
  }

  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    Backend& be = *ctx.backend;
    const int64_t B = x.size(0), TC = x.numel() / B;
    AMPD_RETURN_IF_ERROR(be.copy(y, x));
    return be.add_bias(y.reshaped(B, TC), params_[0].master_t().reshaped(1, TC));
  }

  Status backward(const PassContext& ctx, const Tensor&, const Tensor& dy,
                  const Tensor& dx) override {
    Backend& be = *ctx.backend;
    const int64_t B = dy.size(0), TC = dy.numel() / B;
    Param& w = params_[0];
    AMPD_RETURN_IF_ERROR(
        be.bias_grad(dy.reshaped(B, TC), w.grad_t().reshaped(1, TC), w.next_grad_beta()));
    if (dx.empty()) return Status::ok_status();
    return be.copy(dx, dy);
  }

 private:
  int64_t time_ = 0;
};

void resolve(ampd::v1::LayerSpec&, const std::string&, int, SpecChecker&) {}

std::unique_ptr<Layer> make(const ampd::v1::LayerSpec&) {
  return std::make_unique<PositionEmbedding>();
}

}  // namespace

const LayerKind kPositionEmbeddingLayer = {"position_embedding",
                                           ampd::v1::LayerSpec::kPositionEmbedding, resolve, make};

}  // namespace ampd::engine
