// `ampd sample`: text from a language model's checkpoint, printed as it is produced.
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace ampd::server {

struct SampleCommandOptions {
  std::string checkpoint;  // a checkpoint file, or a checkpoint directory (its newest)
  std::string prompt;
  int64_t tokens = 500;
  float temperature = 0.8f;
  int32_t top_k = 200;
  uint64_t seed = 1;
  std::string backend = "auto";
  int threads = 0;
  // When set: write the prompt's logits there (.npy, float32, prompt length x vocabulary)
  // instead of generating.
  std::string logits_out;
};

void add_sample_command(CLI::App& app, SampleCommandOptions& options, int* exit_code);

// Exit codes: 0 done, 2 bad input (checkpoint, prompt, options), 3 backend unavailable,
// 1 anything else.
int run_sample_command(const SampleCommandOptions& options);

}  // namespace ampd::server
