#include "server/command_util.h"

#include <filesystem>

#include "engine/checkpoint.h"

namespace ampd::server {

int exit_code_for(const Status& s) {
  switch (s.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kNotFound:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kDataLoss:
    case StatusCode::kResourceExhausted: return 2;
    case StatusCode::kUnavailable: return 3;
    default: return 1;
  }
}

StatusOr<std::string> checkpoint_file(const std::string& file_or_dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(file_or_dir, ec)) return file_or_dir;
  const engine::CheckpointSearch found =
      engine::find_latest_checkpoint(file_or_dir, /*remove_partial_writes=*/false);
  if (found.path.empty()) {
    return not_found("no readable checkpoint in " + file_or_dir +
                     (found.note().empty() ? "" : " (" + found.note() + ")"));
  }
  return found.path;
}

}  // namespace ampd::server
