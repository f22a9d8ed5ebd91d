#include "engine/layers.h"

#include <cmath>

#include "kernels/dropout_hash.h"

namespace ampd::engine {

namespace {

// Uniform in [-bound, bound) from a counter-based hash: a pure function of
// (seed, layer, tensor, element), so initialization does not depend on the backend,
// the thread count or the order parameters are created in.
float init_uniform(uint64_t seed, int64_t layer, int64_t tensor, int64_t i, float bound) {
  const uint64_t h = splitmix64(splitmix64(splitmix64(seed ^ 0x1a17ull) + layer) + tensor) ^
                     static_cast<uint64_t>(i);
  const double u = static_cast<double>(splitmix64(h) >> 11) * 0x1p-53;  // [0, 1)
  return static_cast<float>((2.0 * u - 1.0) * bound);
}

// ---- Linear: y = x W^T + b, W is (out, in) as in torch.nn.Linear -----------------

class Linear final : public Layer {
 public:
  Linear(int64_t out, bool bias) : bias_(bias) { out_ = out; }
  std::string kind() const override { return "linear"; }

  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = in;
    // PyTorch's default: kaiming_uniform(a = sqrt 5) = U(-1/sqrt(in), 1/sqrt(in)),
    // and the same bound for the bias.
    const float bound = 1.0f / std::sqrt(static_cast<float>(in));
    std::vector<float> w(static_cast<size_t>(out_ * in));
    for (size_t i = 0; i < w.size(); ++i) w[i] = init_uniform(ctx.seed, ctx.index, 0, i, bound);
    const bool low = ctx.act_dtype != DType::kF32;
    AMPD_RETURN_IF_ERROR(add_param(ctx, "weight", out_, in, low, /*decay=*/true, w));
    if (bias_) {
      std::vector<float> b(static_cast<size_t>(out_));
      for (size_t i = 0; i < b.size(); ++i) b[i] = init_uniform(ctx.seed, ctx.index, 1, i, bound);
      // The bias is added in FP32 inside the matmul epilogue: no low-precision copy.
      AMPD_RETURN_IF_ERROR(add_param(ctx, "bias", 1, out_, false, /*decay=*/false, b));
    }
    return Status::Ok();
  }

  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    MatmulArgs m;
    m.a = x;                       // (B, in)
    m.b = params_[0].compute_t();  // (out, in)
    m.trans_b = true;
    m.c = y;  // (B, out)
    if (bias_) m.bias = params_[1].master_t();
    return ctx.backend->matmul(m);
  }

  Status backward(const PassContext& ctx, const Tensor& x, const Tensor&, const Tensor& dy,
                  const Tensor& dx) override {
    Backend& be = *ctx.backend;
    // dW (out, in) = dy^T (out, B) @ x (B, in), FP32 output.
    MatmulArgs dw;
    dw.a = dy;
    dw.trans_a = true;
    dw.b = x;
    dw.c = params_[0].grad_t();
    AMPD_RETURN_IF_ERROR(be.matmul(dw));
    if (bias_) AMPD_RETURN_IF_ERROR(be.bias_grad(dy, params_[1].grad_t()));
    if (dx.empty()) return Status::Ok();
    // dx (B, in) = dy (B, out) @ W (out, in), in the working dtype.
    MatmulArgs mx;
    mx.a = dy;
    mx.b = params_[0].compute_t();
    mx.c = dx;
    return be.matmul(mx);
  }

 private:
  bool bias_;
};

// ---- element-wise activations -----------------------------------------------------

class ActivationLayer final : public Layer {
 public:
  explicit ActivationLayer(Activation act) : act_(act) {}
  std::string kind() const override { return activation_name(act_); }
  Status build(const BuildContext&, int64_t in) override {
    in_ = out_ = in;
    return Status::Ok();
  }
  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    return ctx.backend->activation_forward(act_, x, y);
  }
  Status backward(const PassContext& ctx, const Tensor& x, const Tensor&, const Tensor& dy,
                  const Tensor& dx) override {
    if (dx.empty()) return Status::Ok();
    return ctx.backend->activation_backward(act_, x, dy, dx);
  }

 private:
  Activation act_;
};

// ---- LayerNorm over features, FP32 statistics and parameters ------------------------

class LayerNorm final : public Layer {
 public:
  explicit LayerNorm(float eps) : eps_(eps) {}
  std::string kind() const override { return "layer_norm"; }
  bool requires_dx() const override { return true; }
  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = out_ = in;
    AMPD_RETURN_IF_ERROR(add_param(ctx, "weight", 1, in, false, false,
                                   std::vector<float>(static_cast<size_t>(in), 1.0f)));
    AMPD_RETURN_IF_ERROR(add_param(ctx, "bias", 1, in, false, false,
                                   std::vector<float>(static_cast<size_t>(in), 0.0f)));
    AMPD_ASSIGN_OR_RETURN(mean_, alloc_aux(ctx, sizeof(float) * ctx.max_batch));
    AMPD_ASSIGN_OR_RETURN(rstd_, alloc_aux(ctx, sizeof(float) * ctx.max_batch));
    return Status::Ok();
  }
  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    return ctx.backend->layernorm_forward(x, params_[0].master_t(), params_[1].master_t(), y,
                                          mean_.view(DType::kF32, 1, x.rows()),
                                          rstd_.view(DType::kF32, 1, x.rows()), eps_);
  }
  Status backward(const PassContext& ctx, const Tensor& x, const Tensor&, const Tensor& dy,
                  const Tensor& dx) override {
    return ctx.backend->layernorm_backward(
        dy, x, params_[0].master_t(), mean_.view(DType::kF32, 1, x.rows()),
        rstd_.view(DType::kF32, 1, x.rows()), dx, params_[0].grad_t(), params_[1].grad_t());
  }

 private:
  float eps_;
  Buffer mean_, rstd_;
};

// ---- BatchNorm1d over the batch, FP32 statistics and running statistics -------------

class BatchNorm final : public Layer {
 public:
  BatchNorm(float eps, float momentum) : eps_(eps), momentum_(momentum) {}
  std::string kind() const override { return "batch_norm"; }
  bool requires_dx() const override { return true; }
  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = out_ = in;
    AMPD_RETURN_IF_ERROR(add_param(ctx, "weight", 1, in, false, false,
                                   std::vector<float>(static_cast<size_t>(in), 1.0f)));
    AMPD_RETURN_IF_ERROR(add_param(ctx, "bias", 1, in, false, false,
                                   std::vector<float>(static_cast<size_t>(in), 0.0f)));
    for (auto [suffix, value] : {std::pair{"running_mean", 0.0f}, {"running_var", 1.0f}}) {
      StateTensor s;
      s.name = std::to_string(ctx.index) + "." + suffix;
      s.rows = 1;
      s.cols = in;
      AMPD_ASSIGN_OR_RETURN(s.data, ctx.backend->allocate(sizeof(float) * in));
      AMPD_RETURN_IF_ERROR(ctx.backend->fill(s.t(), value));
      states_.push_back(std::move(s));
    }
    AMPD_ASSIGN_OR_RETURN(mean_, alloc_aux(ctx, sizeof(float) * in));
    AMPD_ASSIGN_OR_RETURN(rstd_, alloc_aux(ctx, sizeof(float) * in));
    return Status::Ok();
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
  Status backward(const PassContext& ctx, const Tensor& x, const Tensor&, const Tensor& dy,
                  const Tensor& dx) override {
    if (x.rows() < 2)
      return FailedPrecondition("batch_norm needs at least 2 rows in a training batch");
    return ctx.backend->batchnorm_backward(
        dy, x, params_[0].master_t(), mean_.view(DType::kF32, 1, in_),
        rstd_.view(DType::kF32, 1, in_), dx, params_[0].grad_t(), params_[1].grad_t());
  }

 private:
  float eps_, momentum_;
  Buffer mean_, rstd_;
};

// ---- Dropout: inverted dropout with a counter-based mask -----------------------------

class Dropout final : public Layer {
 public:
  explicit Dropout(float p) : p_(p) {}
  std::string kind() const override { return "dropout"; }
  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = out_ = in;
    index_ = ctx.index;
    AMPD_ASSIGN_OR_RETURN(mask_, alloc_aux(ctx, static_cast<size_t>(ctx.max_batch * in)));
    return Status::Ok();
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
  Status backward(const PassContext& ctx, const Tensor&, const Tensor&, const Tensor& dy,
                  const Tensor& dx) override {
    if (dx.empty()) return Status::Ok();
    if (p_ == 0.0f) return ctx.backend->copy(dx, dy);
    return ctx.backend->dropout_backward(dy, mask_.view(DType::kU8, dy.rows(), dy.cols()), dx, p_);
  }

 private:
  float p_;
  int64_t index_ = 0;
  Buffer mask_;
};

}  // namespace

std::string Layer::prefix(const BuildContext& ctx) const {
  return std::to_string(ctx.index);
}

Status Layer::add_param(const BuildContext& ctx, const std::string& suffix, int64_t rows,
                        int64_t cols, bool has_low_copy, bool decay,
                        const std::vector<float>& init) {
  Backend& be = *ctx.backend;
  Param p;
  p.name = prefix(ctx) + "." + suffix;
  p.display = "layer " + std::to_string(ctx.index) + " (" + kind() + ")." + suffix;
  p.rows = rows;
  p.cols = cols;
  p.decay = decay;
  const size_t n = static_cast<size_t>(rows * cols);
  AMPD_ASSIGN_OR_RETURN(p.master, be.allocate(n * sizeof(float)));
  AMPD_ASSIGN_OR_RETURN(p.grad, be.allocate(n * sizeof(float)));
  AMPD_RETURN_IF_ERROR(be.upload(p.master_t(), init.data()));
  AMPD_RETURN_IF_ERROR(be.fill(p.grad_t(), 0.0f));
  if (has_low_copy) {
    p.low_dtype = ctx.act_dtype;
    AMPD_ASSIGN_OR_RETURN(p.low, be.allocate(n * dtype_size(ctx.act_dtype)));
    AMPD_RETURN_IF_ERROR(be.cast(p.master_t(), p.low_t()));
  }
  params_.push_back(std::move(p));
  return Status::Ok();
}

StatusOr<Buffer> Layer::alloc_aux(const BuildContext& ctx, size_t bytes) {
  aux_bytes_ += static_cast<int64_t>(bytes);
  return ctx.backend->allocate(bytes);
}

StatusOr<std::unique_ptr<Layer>> make_layer(const ampd::v1::LayerSpec& spec) {
  using K = ampd::v1::LayerSpec;
  switch (spec.kind_case()) {
    case K::kLinear:
      return std::unique_ptr<Layer>(std::make_unique<Linear>(
          spec.linear().out_features(), !spec.linear().has_bias() || spec.linear().bias()));
    case K::kRelu:
      return std::unique_ptr<Layer>(std::make_unique<ActivationLayer>(Activation::kReLU));
    case K::kGelu:
      return std::unique_ptr<Layer>(std::make_unique<ActivationLayer>(Activation::kGELU));
    case K::kTanh:
      return std::unique_ptr<Layer>(std::make_unique<ActivationLayer>(Activation::kTanh));
    case K::kLayerNorm:
      return std::unique_ptr<Layer>(std::make_unique<LayerNorm>(
          spec.layer_norm().has_eps() ? spec.layer_norm().eps() : 1e-5f));
    case K::kBatchNorm:
      return std::unique_ptr<Layer>(std::make_unique<BatchNorm>(
          spec.batch_norm().has_eps() ? spec.batch_norm().eps() : 1e-5f,
          spec.batch_norm().has_momentum() ? spec.batch_norm().momentum() : 0.1f));
    case K::kDropout: return std::unique_ptr<Layer>(std::make_unique<Dropout>(spec.dropout().p()));
    case K::KIND_NOT_SET: break;
  }
  return InvalidArgument(
      "layer has no kind (expected one of linear, relu, gelu, tanh, "
      "layer_norm, batch_norm, dropout)");
}

}  // namespace ampd::engine
