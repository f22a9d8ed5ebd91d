// `ampd export`: a checkpoint in another framework's layout (today: Hugging Face GPT-2).
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace ampd::server {

struct ExportCommandOptions {
  std::string format = "hf-gpt2";
  std::string checkpoint;  // a checkpoint file, or a checkpoint directory (its newest)
  std::string dir;         // the output directory
  bool force = false;      // write into an existing, non-empty directory
};

void add_export_command(CLI::App& app, ExportCommandOptions& options, int* exit_code);

// Exit codes: 0 done, 2 bad input (not a GPT checkpoint, DIR not empty, DIR unwritable),
// 1 anything else.
int run_export_command(const ExportCommandOptions& options);

}  // namespace ampd::server
