// Write-fault schedules for tests: the WriteFaults (engine/safetensors.h) that a test, or
// `ampd serve` started by a test, injects into checkpoint writes.
//
// This is the library ampd_fault_injection. Test binaries link it; `ampd serve` links it
// and reads the environment below at startup only when the CMake option
// AMPD_FAULT_INJECTION is ON (the default, so that the server fault tests can drive a real
// server; deploy/docker/Dockerfile builds release images with it OFF). A release build
// therefore carries no fault code at all: no environment lookup, no hook, no lock; the
// writer's only trace of the seam is a null WriteFaults pointer.
//
// Environment (read once, by from_environment), each a schedule of writes counted from 1
// by the object it creates (one per server process, shared by all its jobs):
//   AMPD_FAULT_WRITE_ENOSPC   the scheduled writes fail in write(2) with ENOSPC (disk full);
//   AMPD_FAULT_WRITE_EROFS    the scheduled writes fail creating the temporary file with
//                             EROFS (an unwritable state directory, which chmod cannot
//                             simulate for root).
// Schedules: unset, "" or "0": never; "nth:3" or "nth:3,5": the 3rd (and 5th) write;
// "from:3": the 3rd write and every later one; any other value ("1"): every write. When
// both name a write, EROFS wins.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/safetensors.h"

namespace ampd::engine {

class ScheduledWriteFaults final : public WriteFaults {
 public:
  ScheduledWriteFaults(std::string enospc_schedule, std::string erofs_schedule)
      : enospc_(std::move(enospc_schedule)), erofs_(std::move(erofs_schedule)) {}
  // From AMPD_FAULT_WRITE_ENOSPC / AMPD_FAULT_WRITE_EROFS; nullptr when neither is set
  // to a schedule that can fire.
  static std::unique_ptr<ScheduledWriteFaults> from_environment();

  StWriteFault next(const std::string& path) override;
  // The writes seen so far.
  int64_t calls() const { return calls_.load(); }

  // Whether write number `call` (from 1) is in `schedule`.
  static bool schedule_hits(const std::string& schedule, int64_t call);

 private:
  const std::string enospc_, erofs_;
  std::atomic<int64_t> calls_{0};
};

}  // namespace ampd::engine
