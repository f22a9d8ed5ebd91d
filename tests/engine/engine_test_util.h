// Helpers shared by the engine tests that run the Trainer on the CPU backend.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "kernels/cpu/cpu_backend.h"

namespace ampd::engine::test {

// The CPU backend with `threads` threads (fails the test if it cannot be made).
inline std::unique_ptr<Backend> cpu_backend(int threads) {
  CpuBackendOptions o;
  o.threads = threads;
  auto b = make_cpu_backend(o);
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  return std::move(b).value();
}

// An empty directory /tmp/ampd-test-<name>-<pid> (emptied if it exists).
inline std::filesystem::path temp_dir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path p = fs::temp_directory_path() / ("ampd-test-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

}  // namespace ampd::engine::test
