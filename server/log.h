// One-line server logs on stderr: "2026-01-02T03:04:05.678Z ampd: message". Lines from
// different threads never interleave (one write per line under a mutex); a container
// runtime or systemd adds nothing more, so there is no log library to configure.
#pragma once

#include <string_view>

namespace ampd::server {

void log_line(std::string_view message);

}  // namespace ampd::server
