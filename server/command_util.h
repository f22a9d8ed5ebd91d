// What the in-process subcommands (`ampd train`, `ampd sample`, `ampd export`) share.
#pragma once

#include <string>

#include "base/status.h"

namespace ampd::server {

// Exit status for a failure: 2 bad input (spec, data, flags, checkpoint), 3 backend
// unavailable, 1 anything else.
int exit_code_for(const Status& status);

// A checkpoint argument: a file as it is, or a job's checkpoint directory, whose newest
// readable checkpoint it names (NotFound, with what was passed over, when there is none).
StatusOr<std::string> checkpoint_file(const std::string& file_or_dir);

}  // namespace ampd::server
