// Multi-head causal self-attention, as nanoGPT's CausalSelfAttention:
//   qkv = x Wattn^T + battn                       (B, T, 3C), "c_attn"
//   S   = (1 / sqrt(D)) Q K^T per batch and head   (B, H, T, T), FP32
//   P   = causal_softmax(S)                        working dtype, FP32 math
//   Pd  = dropout(P)                               (when dropout > 0)
//   Yh  = Pd V                                     (B, T, C) through (B, H, T, D) views
//   y   = Yh Wproj^T + bproj                       (B, T, C), "c_proj"
// Q, K and V are strided (B, H, T, D) views of the fused projection (no copies), and the
// heads' outputs land in (B, T, C) order through a transposed view: the batched matmuls
// take them as they are (Backend::batched_matmul).
//
// Saved for backward: x (the caller's), qkv, P (and Pd, the dropout mask), Yh. Scratch:
// the FP32 scores (reused for dPd), dS, dYh and dqkv.
#include <cmath>

#include "engine/layer_registry.h"
#include "engine/layers/init.h"

namespace ampd::engine {
namespace {

constexpr float kDefaultInitStd = 0.02f;

class CausalSelfAttention final : public Layer {
 public:
  explicit CausalSelfAttention(const ampd::v1::CausalSelfAttentionSpec& spec)
      : heads_(spec.n_head()),
        bias_(!spec.has_bias() || spec.bias()),
        dropout_(spec.dropout()),
        init_std_(spec.has_init_std() ? spec.init_std() : kDefaultInitStd),
        proj_init_std_(spec.has_proj_init_std() ? spec.proj_init_std() : init_std_) {}
  std::string kind() const override { return "causal_self_attention"; }

  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = out_ = in;
    if (heads_ <= 0 || in % heads_ != 0) {
      return invalid_argument("n_head " + std::to_string(heads_) + " must divide the width " +
                              std::to_string(in));
    }
    time_ = ctx.time;
    index_ = ctx.index;
    const int64_t C = in, T = time_, H = heads_;
    const uint64_t seed = ctx.seed;
    const int64_t index = ctx.index;
    const float s1 = init_std_, s2 = proj_init_std_;
    auto normal = [&](int tensor, float sd) {
      return [=](int64_t i) { return init_normal(seed, index, tensor, i, sd); };
    };
    auto zero = [](int64_t) { return 0.0f; };
    AMPD_ASSIGN_OR_RETURN(
        Param wa, ctx.make_param(kind(), "c_attn.weight", 3 * C, C, true, true, normal(0, s1)));
    params_.push_back(std::move(wa));
    if (bias_) {
      AMPD_ASSIGN_OR_RETURN(Param ba,
                            ctx.make_param(kind(), "c_attn.bias", 1, 3 * C, false, false, zero));
      params_.push_back(std::move(ba));
    }
    AMPD_ASSIGN_OR_RETURN(Param wp,
                          ctx.make_param(kind(), "c_proj.weight", C, C, true, true, normal(2, s2)));
    params_.push_back(std::move(wp));
    if (bias_) {
      AMPD_ASSIGN_OR_RETURN(Param bp,
                            ctx.make_param(kind(), "c_proj.bias", 1, C, false, false, zero));
      params_.push_back(std::move(bp));
    }
    w_attn_ = &params_[0];
    b_attn_ = bias_ ? &params_[1] : nullptr;
    w_proj_ = &params_[bias_ ? 2 : 1];
    b_proj_ = bias_ ? &params_[3] : nullptr;

    const DType dt = ctx.act_dtype;
    const int64_t rows = ctx.max_rows();                                    // B * T
    const int64_t score_rows = MemoryTally::sat_mul(ctx.max_batch * H, T);  // B * H * T
    AMPD_ASSIGN_OR_RETURN(qkv_, ctx.make_activation(dt, rows, 3 * C));
    AMPD_ASSIGN_OR_RETURN(yh_, ctx.make_activation(dt, rows, C));
    AMPD_ASSIGN_OR_RETURN(probs_, ctx.make_activation(dt, score_rows, T));
    if (dropout_ > 0.0f) {
      AMPD_ASSIGN_OR_RETURN(dropped_, ctx.make_activation(dt, score_rows, T));
      AMPD_ASSIGN_OR_RETURN(mask_, ctx.make_activation(DType::kU8, score_rows, T));
    }
    AMPD_ASSIGN_OR_RETURN(scores_, ctx.make_activation(DType::kF32, score_rows, T));
    AMPD_ASSIGN_OR_RETURN(dscores_, ctx.make_activation(dt, score_rows, T));
    AMPD_ASSIGN_OR_RETURN(dyh_, ctx.make_activation(dt, rows, C));
    AMPD_ASSIGN_OR_RETURN(dqkv_, ctx.make_activation(dt, rows, 3 * C));
    return Status::ok_status();
  }

  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    Backend& be = *ctx.backend;
    const int64_t B = x.size(0), T = time_, C = in_, rows = B * T;
    const DType dt = x.dtype;
    MatmulArgs m;
    m.a = x.reshaped(rows, C);
    m.b = w_attn_->compute_t();
    m.trans_b = true;
    m.c = qkv(dt, rows);
    if (b_attn_ != nullptr) m.bias = b_attn_->master_t();
    AMPD_RETURN_IF_ERROR(be.matmul(m));

    const Tensor q = head(qkv3(dt, B), 0), k = head(qkv3(dt, B), 1), v = head(qkv3(dt, B), 2);
    BatchedMatmulArgs s;
    s.a = q;
    s.b = k;
    s.trans_b = true;
    s.alpha = scale();
    s.c = square(scores_, DType::kF32, B);
    AMPD_RETURN_IF_ERROR(be.batched_matmul(s));
    const Tensor p = square(probs_, dt, B);
    AMPD_RETURN_IF_ERROR(be.causal_softmax_forward(flat(s.c), flat(p)));
    Tensor pd = p;
    if (dropout_ > 0.0f && ctx.training) {
      pd = square(dropped_, dt, B);
      const uint64_t seed = splitmix64(ctx.seed ^ (0xa77ull + static_cast<uint64_t>(index_)));
      const uint64_t offset = static_cast<uint64_t>(ctx.step) * static_cast<uint64_t>(p.numel());
      AMPD_RETURN_IF_ERROR(be.dropout_forward(flat(p), flat(pd), flat(square(mask_, DType::kU8, B)),
                                              dropout_, seed, offset));
    }
    BatchedMatmulArgs o;
    o.a = pd;
    o.b = v;
    o.c = heads_view(yh_, dt, B);
    AMPD_RETURN_IF_ERROR(be.batched_matmul(o));

    MatmulArgs proj;
    proj.a = yh(dt, rows);
    proj.b = w_proj_->compute_t();
    proj.trans_b = true;
    proj.c = y.reshaped(rows, C);
    if (b_proj_ != nullptr) proj.bias = b_proj_->master_t();
    return be.matmul(proj);
  }

  Status backward(const PassContext& ctx, const Tensor& x, const Tensor& dy,
                  const Tensor& dx) override {
    Backend& be = *ctx.backend;
    const int64_t B = x.size(0), T = time_, C = in_, rows = B * T;
    const DType dt = dy.dtype;
    const Tensor g = dy.reshaped(rows, C);
    // c_proj: dW += dy^T Yh, db = sum dy, dYh = dy Wproj.
    AMPD_RETURN_IF_ERROR(weight_grad(be, *w_proj_, g, yh(dt, rows)));
    if (b_proj_ != nullptr) AMPD_RETURN_IF_ERROR(be.bias_grad(g, b_proj_->grad_t()));
    MatmulArgs dyh;
    dyh.a = g;
    dyh.b = w_proj_->compute_t();
    dyh.c = dyh_.view(dt, rows, C);
    AMPD_RETURN_IF_ERROR(be.matmul(dyh));

    const Tensor q = head(qkv3(dt, B), 0), k = head(qkv3(dt, B), 1), v = head(qkv3(dt, B), 2);
    const Tensor dyh_heads = heads_view(dyh_, dt, B);
    const Tensor p = square(probs_, dt, B);
    const Tensor pd = dropout_ > 0.0f ? square(dropped_, dt, B) : p;
    const Tensor dq = head(dqkv3(dt, B), 0), dk = head(dqkv3(dt, B), 1), dv = head(dqkv3(dt, B), 2);
    // dPd = dYh V^T (FP32), dV = Pd^T dYh.
    BatchedMatmulArgs dp;
    dp.a = dyh_heads;
    dp.b = v;
    dp.trans_b = true;
    dp.c = square(scores_, DType::kF32, B);
    AMPD_RETURN_IF_ERROR(be.batched_matmul(dp));
    BatchedMatmulArgs dvm;
    dvm.a = pd;
    dvm.trans_a = true;
    dvm.b = dyh_heads;
    dvm.c = dv;
    AMPD_RETURN_IF_ERROR(be.batched_matmul(dvm));
    if (dropout_ > 0.0f) {
      AMPD_RETURN_IF_ERROR(be.dropout_backward(flat(dp.c), flat(square(mask_, DType::kU8, B)),
                                               flat(dp.c), dropout_));
    }
    const Tensor ds = square(dscores_, dt, B);
    AMPD_RETURN_IF_ERROR(be.causal_softmax_backward(flat(p), flat(dp.c), flat(ds)));
    // S = alpha Q K^T: dQ = alpha dS K, dK = alpha dS^T Q.
    BatchedMatmulArgs dqm;
    dqm.a = ds;
    dqm.b = k;
    dqm.alpha = scale();
    dqm.c = dq;
    AMPD_RETURN_IF_ERROR(be.batched_matmul(dqm));
    BatchedMatmulArgs dkm;
    dkm.a = ds;
    dkm.trans_a = true;
    dkm.b = q;
    dkm.alpha = scale();
    dkm.c = dk;
    AMPD_RETURN_IF_ERROR(be.batched_matmul(dkm));

    // c_attn: dW += dqkv^T x, db = sum dqkv, dx = dqkv Wattn.
    const Tensor gq = dqkv_.view(dt, rows, 3 * C);
    AMPD_RETURN_IF_ERROR(weight_grad(be, *w_attn_, gq, x.reshaped(rows, C)));
    if (b_attn_ != nullptr) AMPD_RETURN_IF_ERROR(be.bias_grad(gq, b_attn_->grad_t()));
    if (dx.empty()) return Status::ok_status();
    MatmulArgs mx;
    mx.a = gq;
    mx.b = w_attn_->compute_t();
    mx.c = dx.reshaped(rows, C);
    return be.matmul(mx);
  }

 private:
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(in_ / heads_)); }
  static Status weight_grad(Backend& be, Param& w, const Tensor& g, const Tensor& in) {
    MatmulArgs dw;
    dw.a = g;
    dw.trans_a = true;
    dw.b = in;
    dw.c = w.grad_t();
    dw.beta = w.next_grad_beta();
    return be.matmul(dw);
  }
  Tensor qkv(DType dt, int64_t rows) const { return qkv_.view(dt, rows, 3 * in_); }
  Tensor yh(DType dt, int64_t rows) const { return yh_.view(dt, rows, in_); }
  Tensor qkv3(DType dt, int64_t B) const {
    return Tensor::contiguous(qkv_.data(), dt, {B, time_, 3 * in_});
  }
  Tensor dqkv3(DType dt, int64_t B) const {
    return Tensor::contiguous(dqkv_.data(), dt, {B, time_, 3 * in_});
  }
  // Part `which` (0 Q, 1 K, 2 V) of a (B, T, 3C) projection as (B, H, T, D) heads.
  Tensor head(const Tensor& fused, int which) const {
    const int64_t C = in_;
    return fused.narrowed(-1, which * C, C).split(-1, heads_, C / heads_).transposed(1, 2);
  }
  // A (B, T, C) buffer as (B, H, T, D) heads.
  Tensor heads_view(const Buffer& b, DType dt, int64_t B) const {
    return Tensor::contiguous(b.data(), dt, {B, time_, in_})
        .split(-1, heads_, in_ / heads_)
        .transposed(1, 2);
  }
  // A (B, H, T, T) buffer.
  Tensor square(const Buffer& b, DType dt, int64_t B) const {
    return Tensor::contiguous(b.data(), dt, {B, heads_, time_, time_});
  }
  static Tensor flat(const Tensor& t) { return t.reshaped(t.rows(), t.cols()); }

  int64_t heads_;
  bool bias_;
  float dropout_, init_std_, proj_init_std_;
  int64_t time_ = 0, index_ = 0;
  Param *w_attn_ = nullptr, *b_attn_ = nullptr, *w_proj_ = nullptr, *b_proj_ = nullptr;
  Buffer qkv_, yh_, probs_, dropped_, mask_, scores_, dscores_, dyh_, dqkv_;
};

void resolve(ampd::v1::LayerSpec& spec, const std::string& path, int, SpecChecker& c) {
  auto* a = spec.mutable_causal_self_attention();
  const std::string at = path + ".causal_self_attention";
  c.closed(at + ".n_head", a->n_head(), 1, 1024);
  if (!a->has_bias()) a->set_bias(true);
  c.in_range(at + ".dropout", a->dropout(), 0.0f, true, 1.0f, false);
  if (!a->has_init_std()) a->set_init_std(kDefaultInitStd);
  c.in_range(at + ".init_std", a->init_std(), 0.0f, true, 10.0f, true);
  if (!a->has_proj_init_std()) a->set_proj_init_std(a->init_std());
  c.in_range(at + ".proj_init_std", a->proj_init_std(), 0.0f, true, 10.0f, true);
}

std::unique_ptr<Layer> make(const ampd::v1::LayerSpec& spec) {
  return std::make_unique<CausalSelfAttention>(spec.causal_self_attention());
}

}  // namespace

const LayerKind kCausalSelfAttentionLayer = {
    "causal_self_attention", ampd::v1::LayerSpec::kCausalSelfAttention, resolve, make};

}  // namespace ampd::engine
