#include "engine/gpt.h"

#include <cmath>

namespace ampd::engine {

using ampd::v1::LayerSpec;

void resolve_gpt(ampd::v1::GptSpec* g, const std::string& path, SpecChecker& c) {
  c.closed(path + ".n_layer", g->n_layer(), 1, kMaxGptLayers);
  c.closed(path + ".n_embd", g->n_embd(), 1, 65536);
  if (c.closed(path + ".n_head", g->n_head(), 1, 1024) && g->n_embd() > 0 &&
      g->n_embd() % g->n_head() != 0) {
    c.add(path + ".n_head", "must divide n_embd (" + std::to_string(g->n_embd()) + ")");
  }
  c.closed(path + ".block_size", g->block_size(), 1, kMaxBlockSize);
  c.in_range(path + ".dropout", g->dropout(), 0.0f, true, 1.0f, false);
  if (!g->has_bias()) g->set_bias(true);
  if (g->vocab_size() != 0) c.closed(path + ".vocab_size", g->vocab_size(), 1, 1 << 20);
}

namespace {

LayerSpec named(const std::string& name) {
  LayerSpec l;
  l.set_name(name);
  return l;
}

LayerSpec layer_norm(const std::string& name, bool bias) {
  LayerSpec l = named(name);
  l.mutable_layer_norm()->set_eps(1e-5f);
  l.mutable_layer_norm()->set_bias(bias);
  return l;
}

LayerSpec dropout(const std::string& name, float p) {
  LayerSpec l = named(name);
  l.mutable_dropout()->set_p(p);
  return l;
}

LayerSpec linear(const std::string& name, int64_t out, bool bias, float init_std) {
  LayerSpec l = named(name);
  auto* lin = l.mutable_linear();
  lin->set_out_features(static_cast<int32_t>(out));
  lin->set_bias(bias);
  lin->set_init_std(init_std);
  return l;
}

}  // namespace

google::protobuf::RepeatedPtrField<LayerSpec> gpt_layers(const ampd::v1::GptSpec& g,
                                                         int64_t vocab) {
  constexpr float kStd = 0.02f;
  const float proj_std = kStd / std::sqrt(2.0f * static_cast<float>(g.n_layer()));
  const bool bias = !g.has_bias() || g.bias();
  const int64_t C = g.n_embd();
  if (g.vocab_size() > 0) vocab = g.vocab_size();
  google::protobuf::RepeatedPtrField<LayerSpec> out;
  {
    LayerSpec wte = named("transformer.wte");
    wte.mutable_embedding()->set_num_embeddings(static_cast<int32_t>(vocab));
    wte.mutable_embedding()->set_embedding_dim(static_cast<int32_t>(C));
    wte.mutable_embedding()->set_init_std(kStd);
    *out.Add() = std::move(wte);
    LayerSpec wpe = named("transformer.wpe");
    wpe.mutable_position_embedding();
    *out.Add() = std::move(wpe);
    // Dropout layers only when they drop something (p = 0 would be a copy per layer).
    if (g.dropout() > 0) *out.Add() = dropout("transformer.drop", g.dropout());
  }
  for (int i = 0; i < g.n_layer(); ++i) {
    const std::string h = "transformer.h." + std::to_string(i);
    LayerSpec attn_block = named(h);
    auto* a = attn_block.mutable_residual()->mutable_layers();
    *a->Add() = layer_norm(h + ".ln_1", bias);
    LayerSpec attn = named(h + ".attn");
    auto* as = attn.mutable_causal_self_attention();
    as->set_n_head(g.n_head());
    as->set_bias(bias);
    as->set_dropout(g.dropout());
    as->set_init_std(kStd);
    as->set_proj_init_std(proj_std);
    *a->Add() = std::move(attn);
    if (g.dropout() > 0) *a->Add() = dropout(h + ".attn.resid_dropout", g.dropout());
    *out.Add() = std::move(attn_block);

    LayerSpec mlp_block = named(h);
    auto* m = mlp_block.mutable_residual()->mutable_layers();
    *m->Add() = layer_norm(h + ".ln_2", bias);
    *m->Add() = linear(h + ".mlp.c_fc", 4 * C, bias, kStd);
    LayerSpec gelu = named(h + ".mlp.gelu");
    gelu.mutable_gelu();
    *m->Add() = std::move(gelu);
    *m->Add() = linear(h + ".mlp.c_proj", C, bias, proj_std);
    if (g.dropout() > 0) *m->Add() = dropout(h + ".mlp.dropout", g.dropout());
    *out.Add() = std::move(mlp_block);
  }
  *out.Add() = layer_norm("transformer.ln_f", bias);
  LayerSpec head = linear("lm_head", vocab, /*bias=*/false, kStd);
  head.mutable_linear()->set_tie_weight_to("transformer.wte.weight");
  *out.Add() = std::move(head);
  return out;
}

google::protobuf::RepeatedPtrField<LayerSpec> model_layers(const ampd::v1::ModelSpec& model,
                                                           int64_t vocab) {
  if (model.has_gpt()) return gpt_layers(model.gpt(), vocab);
  return model.layers();
}

}  // namespace ampd::engine
