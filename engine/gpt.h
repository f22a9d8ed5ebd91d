// A GPT-2 style language model (ModelSpec.gpt) as a composition of layer kinds, named as
// nanoGPT's model.py names its parameters:
//   transformer.wte (embedding) -> transformer.wpe (position_embedding) -> transformer.drop
//   -> per block i: residual[transformer.h.i.ln_1, transformer.h.i.attn, attn.resid_dropout]
//                   residual[ln_2, mlp.c_fc, gelu, mlp.c_proj, mlp.dropout]
//   -> transformer.ln_f -> lm_head (linear, no bias, weight tied to transformer.wte.weight).
// Initialization as nanoGPT: Linear and Embedding weights N(0, 0.02), biases 0, the two
// residual output projections of each block N(0, 0.02 / sqrt(2 n_layer)); LayerNorm 1 / 0.
#pragma once

#include <string>

#include "ampd/v1/job.pb.h"
#include "engine/spec_checker.h"

namespace ampd::engine {

inline constexpr int kMaxGptLayers = 64;
inline constexpr int kMaxBlockSize = 8192;

// Checks a gpt spec and fills its defaults (bias true); `path` is "model.gpt".
void resolve_gpt(ampd::v1::GptSpec* gpt, const std::string& path, SpecChecker& checker);

// The layers of a resolved gpt spec for a vocabulary of `vocab` tokens (gpt.vocab_size
// when set).
google::protobuf::RepeatedPtrField<ampd::v1::LayerSpec> gpt_layers(const ampd::v1::GptSpec& gpt,
                                                                   int64_t vocab);

// The layers a model spec describes: its own, or its gpt's.
google::protobuf::RepeatedPtrField<ampd::v1::LayerSpec> model_layers(
    const ampd::v1::ModelSpec& model, int64_t vocab);

}  // namespace ampd::engine
