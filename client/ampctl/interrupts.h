// Ctrl-C (SIGINT) and SIGTERM for ampctl, without work in a signal handler: the signals
// are blocked in every thread and one thread takes them with sigwait.
//
// Without a handler a signal ends ampctl at once, as if the signals were not blocked. A
// command that must stop cleanly (watch: stop watching and say so; download: remove the
// partial file) holds an InterruptScope whose callback cancels its gRPC call; a second
// signal while the first is being handled ends ampctl at once.
#pragma once

#include <functional>

namespace ampd::ampctl {

// Call first thing in main(), before any other thread exists (gRPC's threads inherit the
// blocked mask).
void install_interrupt_thread();

// True once SIGINT or SIGTERM arrived while a scope was active.
bool interrupted();

class InterruptScope {
 public:
  // `on_interrupt` runs on the signal thread (not in a signal handler), under a lock that
  // the destructor also takes: it may call ClientContext::TryCancel on a context that the
  // scope outlives.
  explicit InterruptScope(std::function<void()> on_interrupt);
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;
};

// Sleeps up to `seconds`; returns early (false) when interrupted.
bool sleep_unless_interrupted(double seconds);

}  // namespace ampd::ampctl
