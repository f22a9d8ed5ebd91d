// Export of a GPT checkpoint (ModelSpec.gpt, engine/gpt.h) to the Hugging Face
// transformers layout of GPT-2, loadable with GPT2LMHeadModel.from_pretrained(dir):
//
//   dir/config.json        GPT2Config: model_type gpt2, vocab_size, n_positions = n_ctx =
//                          block_size, n_embd, n_layer, n_head, activation_function "gelu"
//                          (the exact erf GELU ampd trains with, not GPT-2's "gelu_new"),
//                          layer_norm_epsilon 1e-5, the three dropouts from gpt.dropout,
//                          tie_word_embeddings true, bos_token_id 0 (the token generation
//                          starts from in `ampd sample`), eos_token_id null (a character
//                          vocabulary has no end-of-text token).
//   dir/model.safetensors  FP32 weights under GPT-2's names, metadata {"format": "pt"}.
//                          ampd's checkpoints hold nn.Linear weights (out, in); GPT-2's
//                          attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj are Conv1D
//                          modules whose weights are (in, out), so those four are written
//                          transposed. Embeddings and LayerNorms are copied as they are.
//                          GPT-2 always has biases: a gpt.bias = false model gets zero
//                          biases (the same function). lm_head is tied to
//                          transformer.wte.weight and not stored.
//   dir/vocab.json         the vocabulary: {"format": "ampd-vocab-v1", "type": "chars" or
//                          "bytes", "vocabulary": ampd's serialized form (metadata
//                          "ampd.vocabulary"), "byte_values": [the byte of each id],
//                          "itos": [the text of each id]}. Every token is one byte; "itos"
//                          and "vocabulary" spell a byte >= 0x80 as the code point of the
//                          same value (latin-1), so bytes(ord(c) for c in s) recovers them.
//
// The checkpoint's FP32 master weights are exported whatever precision it trained in.
#pragma once

#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/safetensors.h"

namespace ampd::engine {

// What the export wrote.
struct HfExport {
  std::vector<std::string> files;  // paths, in the order written
  int64_t tensors = 0;             // in model.safetensors
  int64_t parameters = 0;          // elements in model.safetensors
  int64_t vocab_size = 0;
  int64_t block_size = 0;
};

// The GPT-2 tensors of a gpt checkpoint (model.safetensors' content, metadata included).
// InvalidArgument when the checkpoint is not a gpt language model's; FailedPrecondition
// when a tensor is missing or has the wrong size.
StatusOr<StFile> hf_gpt2_tensors(const LoadedCheckpoint& checkpoint);
// config.json's text.
StatusOr<std::string> hf_gpt2_config_json(const LoadedCheckpoint& checkpoint);
// vocab.json's text.
StatusOr<std::string> hf_vocab_json(const LoadedCheckpoint& checkpoint);

// Writes the three files into `dir`, creating it (and its parents) when missing. Refuses
// (FailedPrecondition) a `dir` that exists and is not an empty directory unless `force`,
// which replaces the three files and leaves anything else there alone. Each file is
// written atomically (temporary file, fsync, rename). Errors name the path.
StatusOr<HfExport> export_hf_gpt2(const LoadedCheckpoint& checkpoint, const std::string& dir,
                                  bool force);

}  // namespace ampd::engine
