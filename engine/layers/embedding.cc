// Token embedding (torch.nn.Embedding): the model's input is token ids, I32 (B, T, 1)
// (Model::load_tokens), and the output their rows of the (num_embeddings, embedding_dim)
// table "weight", in the working dtype. The gather reads the working copy; the backward
// scatter-adds dy into the FP32 gradient deterministically (Backend::embedding_backward),
// with beta from Param::next_grad_beta so that a tied output projection's contribution
// (computed first, in backward order) is added to, not overwritten.
#include "engine/layer_registry.h"
#include "engine/layers/init.h"

namespace ampd::engine {
namespace {

constexpr float kDefaultInitStd = 0.02f;

class Embedding final : public Layer {
 public:
  explicit Embedding(const ampd::v1::EmbeddingSpec& spec)
      : vocab_(spec.num_embeddings()),
        init_std_(spec.has_init_std() ? spec.init_std() : kDefaultInitStd) {
    out_ = spec.embedding_dim();
  }
  std::string kind() const override { return "embedding"; }

  // `in` is the model's input width: for token input, the data's vocabulary size.
  Status build(const BuildContext& ctx, int64_t in) override {
    in_ = in;
    if (!ctx.token_input) {
      return invalid_argument(
          "an embedding layer needs token ids: it must be the first layer of a model on text "
          "data");
    }
    if (vocab_ == 0) vocab_ = in;
    if (vocab_ < in) {
      return invalid_argument("num_embeddings " + std::to_string(vocab_) +
                              " is smaller than the data's vocabulary of " + std::to_string(in));
    }
    const uint64_t seed = ctx.seed;
    const int64_t index = ctx.index;
    const float sd = init_std_;
    AMPD_ASSIGN_OR_RETURN(
        Param w, ctx.make_param(kind(), "weight", vocab_, out_, /*low_copy=*/true, /*decay=*/true,
                                [&](int64_t i) { return init_normal(seed, index, 0, i, sd); }));
    params_.push_back(std::move(w));
    return Status::ok_status();
  }

  Status forward(const PassContext& ctx, const Tensor& x, const Tensor& y) override {
    return ctx.backend->embedding_forward(ids(x), params_[0].compute_t(),
                                          y.reshaped(y.rows(), y.cols()));
  }

  Status backward(const PassContext& ctx, const Tensor& x, const Tensor& dy,
                  const Tensor&) override {
    Param& w = params_[0];
    return ctx.backend->embedding_backward(ids(x), dy.reshaped(dy.rows(), dy.cols()), w.grad_t(),
                                           w.next_grad_beta());
  }

 private:
  static Tensor ids(const Tensor& x) { return Tensor(x.data, DType::kI32, 1, x.numel()); }
  int64_t vocab_;
  float init_std_;
};

void resolve(ampd::v1::LayerSpec& spec, const std::string& path, int depth, SpecChecker& c) {
  auto* e = spec.mutable_embedding();
  const std::string at = path + ".embedding";
  if (depth > 0) c.add(at, "an embedding layer must be the model's first layer, not in a block");
  if (e->num_embeddings() != 0) c.closed(at + ".num_embeddings", e->num_embeddings(), 1, 1 << 20);
  c.closed(at + ".embedding_dim", e->embedding_dim(), 1, kMaxWidth);
  if (!e->has_init_std()) e->set_init_std(kDefaultInitStd);
  c.in_range(at + ".init_std", e->init_std(), 0.0f, true, 10.0f, true);
}

std::unique_ptr<Layer> make(const ampd::v1::LayerSpec& spec) {
  return std::make_unique<Embedding>(spec.embedding());
}

}  // namespace

const LayerKind kEmbeddingLayer = {"embedding", ampd::v1::LayerSpec::kEmbedding, resolve, make};

}  // namespace ampd::engine
