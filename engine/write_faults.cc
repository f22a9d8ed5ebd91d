#include "engine/write_faults.h"

#include <cerrno>
#include <cstdlib>
#include <string_view>

namespace ampd::engine {

namespace {

bool is_off(const std::string& schedule) {
  return schedule.empty() || schedule == "0";
}

}  // namespace

bool ScheduledWriteFaults::schedule_hits(const std::string& schedule, int64_t call) {
  if (is_off(schedule)) return false;
  const std::string_view s(schedule);
  auto number = [](std::string_view t) -> int64_t {
    int64_t n = 0;
    if (t.empty() || t.size() > 15) return -1;
    for (char c : t) {
      if (c < '0' || c > '9') return -1;
      n = n * 10 + (c - '0');
    }
    return n;
  };
  if (s.starts_with("from:")) {
    const int64_t n = number(s.substr(5));
    return n > 0 && call >= n;
  }
  if (s.starts_with("nth:")) {
    std::string_view rest = s.substr(4);
    while (!rest.empty()) {
      const size_t comma = rest.find(',');
      if (number(rest.substr(0, comma)) == call) return true;
      if (comma == std::string_view::npos) break;
      rest = rest.substr(comma + 1);
    }
    return false;
  }
  return true;  // "1", "yes", ...: every write
}

std::unique_ptr<ScheduledWriteFaults> ScheduledWriteFaults::from_environment() {
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return v == nullptr ? std::string() : std::string(v);
  };
  std::string enospc = env("AMPD_FAULT_WRITE_ENOSPC");
  std::string erofs = env("AMPD_FAULT_WRITE_EROFS");
  if (is_off(enospc) && is_off(erofs)) return nullptr;
  return std::make_unique<ScheduledWriteFaults>(std::move(enospc), std::move(erofs));
}

StWriteFault ScheduledWriteFaults::next(const std::string&) {
  const int64_t call = ++calls_;
  if (schedule_hits(erofs_, call)) return StWriteFault{EROFS, StWriteStage::kCreate};
  if (schedule_hits(enospc_, call)) return StWriteFault{ENOSPC, StWriteStage::kWrite};
  return {};
}

}  // namespace ampd::engine
