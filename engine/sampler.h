// Text generation from a language model's checkpoint (nanoGPT's sample.py): the model is
// rebuilt from the checkpoint's spec for one sequence of block_size positions, in the
// checkpoint's precision, and fed its own samples.
//
// A step runs the whole window (the last block_size tokens, left-aligned and padded after
// the end: causal attention makes the logits at position len - 1 independent of what
// follows), reads that position's logits (FP32 on the host), divides them by the
// temperature, keeps the top_k largest, and draws from their softmax with a SplitMix64
// stream seeded by `seed`: the same checkpoint, prompt and seed give the same text on
// every backend whose logits round the same way. temperature 0 is greedy (arg-max).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/model.h"
#include "engine/text_data.h"

namespace ampd::engine {

struct SampleOptions {
  std::string prompt;  // may be empty: generation then starts from token 0 ('\n' for chars)
  int64_t max_tokens = 500;
  float temperature = 0.8f;  // > 0, or 0 for greedy
  int32_t top_k = 200;       // 0 = the whole vocabulary
  uint64_t seed = 1;
};

// Limits the server and the CLI enforce.
inline constexpr int64_t kMaxSampleTokens = 100000;
inline constexpr int64_t kMaxPromptBytes = 100000;

class Sampler {
 public:
  // Reads a language model's checkpoint and builds its model on `backend`.
  // InvalidArgument when the checkpoint is not a language model's.
  static StatusOr<std::unique_ptr<Sampler>> create(Backend& backend, const std::string& checkpoint);

  // Checks options (errors name the field: prompt, max_tokens, temperature, top_k) and
  // that every prompt character is in the vocabulary, before any work.
  Status check(const SampleOptions& options) const;
  // The part of check() that needs no checkpoint: the prompt's length and the ranges of
  // max_tokens, temperature and top_k (the server checks a request before loading).
  static Status check_ranges(const SampleOptions& options);
  // Generates up to max_tokens tokens after the prompt, calling on_text with each one's
  // text as it is produced; stops early (OK) when on_text returns false.
  Status generate(const SampleOptions& options,
                  const std::function<bool(const std::string&)>& on_text);
  // The logits (FP32, row-major len x vocab, len = the prompt's tokens) at every position
  // of `prompt`, as one forward pass computes them (no sampling). The prompt must be 1 to
  // block_size tokens long and in the vocabulary (InvalidArgument naming "prompt").
  StatusOr<std::vector<float>> prompt_logits(const std::string& prompt);

  const Vocabulary& vocabulary() const { return vocab_; }
  int64_t block_size() const { return block_; }
  const std::string& precision() const { return precision_; }
  int64_t step() const { return step_; }

 private:
  Sampler() = default;
  Backend* backend_ = nullptr;
  std::unique_ptr<Model> model_;
  Vocabulary vocab_;
  int64_t block_ = 0;
  int64_t step_ = 0;
  std::string precision_;
};

}  // namespace ampd::engine
