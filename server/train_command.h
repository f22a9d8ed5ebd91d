// `ampd train`: runs one job in-process through the engine, no server involved.
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace ampd::server {

struct TrainCommandOptions {
  std::string job_file;
  std::string backend = "auto";
  int threads = 0;
  std::string out_dir;
  std::string data_dir = ".";
  std::string resume;
  bool json = false;
  bool quiet = false;
};

// Adds the subcommand to the CLI; the callback stores the exit code in *exit_code.
void add_train_command(CLI::App& app, TrainCommandOptions& options, int* exit_code);

// Runs it. Exit codes: 0 SUCCEEDED, 1 FAILED, 2 bad input (spec, data, flags),
// 3 backend unavailable, 130 CANCELLED (SIGINT/SIGTERM).
int run_train_command(const TrainCommandOptions& options);

}  // namespace ampd::server
