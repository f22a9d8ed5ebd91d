#include "client/ampctl/interrupts.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

namespace ampd::ampctl {

namespace {

std::mutex g_mu;
std::condition_variable g_cv;
std::function<void()> g_handler;  // guarded by g_mu
bool g_handling = false;          // guarded by g_mu: a handler already ran for a signal
std::atomic<bool> g_interrupted{false};

sigset_t interrupt_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// Ends the process the way the signal would have: default action, unblocked, raised.
[[noreturn]] void die_by(int sig) {
  signal(sig, SIG_DFL);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
  raise(sig);
  std::_Exit(128 + sig);  // not reached
}

void signal_loop() {
  const sigset_t set = interrupt_signals();
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    std::unique_lock<std::mutex> lock(g_mu);
    if (!g_handler || g_handling) die_by(sig);
    g_handling = true;
    g_interrupted.store(true);
    g_handler();
    g_cv.notify_all();
  }
}

}  // namespace

void install_interrupt_thread() {
  const sigset_t set = interrupt_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread(signal_loop).detach();
}

bool interrupted() {
  return g_interrupted.load();
}

InterruptScope::InterruptScope(std::function<void()> on_interrupt) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_handler = std::move(on_interrupt);
}

InterruptScope::~InterruptScope() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_handler = nullptr;
}

bool sleep_unless_interrupted(double seconds) {
  std::unique_lock<std::mutex> lock(g_mu);
  return !g_cv.wait_for(lock, std::chrono::duration<double>(seconds),
                        [] { return g_interrupted.load(); });
}

}  // namespace ampd::ampctl
