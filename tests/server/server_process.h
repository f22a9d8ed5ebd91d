// A real `ampd serve` child process for the service tests: started with posix_spawn on a
// free loopback port with its own state dir, ready once grpc.health.v1 says SERVING,
// stopped by PID with the signal a test chooses. Its stdout/stderr go to a log file that
// a failing test prints.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "ampd/v1/trainer.grpc.pb.h"

namespace ampd::testing {

class ServerProcess {
 public:
  struct Options {
    std::vector<std::string> extra_args;  // after the defaults below
    std::vector<std::string> env;         // "NAME=value", added to the child's environment
    std::string host = "127.0.0.1";       // of --grpc-addr; probes connect to 127.0.0.1
    // How new_channel() (and the readiness probe) connect: nullptr = plaintext. With TLS,
    // ssl_target_name overrides the name the server certificate must carry.
    std::shared_ptr<grpc::ChannelCredentials> credentials;
    std::string ssl_target_name;
  };

  // Starts `ampd serve --grpc-addr 127.0.0.1:<free port> --state-dir <state_dir>
  // --backend cpu --threads 1 --metrics-addr 127.0.0.1:0 <extra...>` and waits (up to 30 s) for
  // SERVING. Returns nullptr, with the reason in *error, when it does not come up.
  static std::unique_ptr<ServerProcess> start(const std::string& state_dir,
                                              const std::vector<std::string>& extra_args,
                                              std::string* error);
  // The same with a TLS-aware readiness probe, environment and listening host.
  static std::unique_ptr<ServerProcess> start_with(const std::string& state_dir,
                                                   const Options& options, std::string* error);
  ~ServerProcess();  // SIGKILL if still running

  const std::string& address() const { return address_; }
  pid_t pid() const { return pid_; }
  std::shared_ptr<grpc::Channel> new_channel() const;
  // A channel with other credentials (nullptr: plaintext) than the ones it was started with.
  std::shared_ptr<grpc::Channel> new_channel(std::shared_ptr<grpc::ChannelCredentials> credentials,
                                             const std::string& ssl_target_name = "") const;

  void signal(int sig) const;
  // Waits for the process to exit; its exit code (128 + signal when killed), or -1 when
  // it is still running after `timeout`.
  int wait(std::chrono::milliseconds timeout);
  // Signal + Wait.
  int stop(int sig, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  bool running() const { return exit_code_ < 0; }

  std::string log() const;

 private:
  ServerProcess() = default;
  pid_t pid_ = -1;
  int exit_code_ = -1;
  std::string address_;  // what clients dial: 127.0.0.1:<port>
  std::string log_path_;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  std::string ssl_target_name_;
};

// A port that nothing listens on right now (bind to port 0, read it, close).
int pick_free_port();

// Follows the job's WatchJob stream until a progress event reaches `step`, then
// disconnects; false if the job ended first (or 60 s passed).
bool wait_for_step(ampd::v1::Trainer::Stub& stub, const std::string& id, int64_t step);

// A job's whole event history: seqs 1..n without gaps or repeats, every event of job `id`,
// exactly one final state event (server::EventHub::is_final), and it is the last (gtest
// expectations).
void expect_complete_history(const std::vector<ampd::v1::JobEvent>& events, const std::string& id);

// A test with its own temporary state dir and the `ampd serve` processes it starts there
// (newest last); all are killed and the dir removed at the end, and a failing test prints
// every server's log.
class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ampd-server-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    state_dir_ = (root_ / "state").string();
  }
  void TearDown() override {
    if (HasFailure()) {
      for (auto& s : servers_)
        std::cerr << "---- server log (" << s->address() << ")\n" << s->log();
    }
    servers_.clear();  // kills what still runs
    std::error_code ec;
    std::filesystem::remove_all(root_, ec);
  }
  // Starts a server on the state dir with `extra` arguments and `env` ("NAME=value") added
  // to its environment; it becomes server() / stub().
  ServerProcess* start_server(const std::vector<std::string>& extra = {},
                              const std::vector<std::string>& env = {}) {
    ServerProcess::Options options;
    options.extra_args = extra;
    options.env = env;
    std::string error;
    auto p = ServerProcess::start_with(state_dir_, options, &error);
    EXPECT_NE(p, nullptr) << error;
    if (p == nullptr) return nullptr;
    servers_.push_back(std::move(p));
    stub_ = ampd::v1::Trainer::NewStub(servers_.back()->new_channel());
    return servers_.back().get();
  }
  ServerProcess& server() { return *servers_.back(); }
  ampd::v1::Trainer::Stub& stub() { return *stub_; }
  std::filesystem::path job_dir(const std::string& id) const {
    return std::filesystem::path(state_dir_) / "jobs" / id;
  }

  std::filesystem::path root_;
  std::string state_dir_;
  std::vector<std::unique_ptr<ServerProcess>> servers_;
  std::unique_ptr<ampd::v1::Trainer::Stub> stub_;
};

// ASSERT that a grpc::Status is OK, printing its code and message if not.
#define AMPD_ASSERT_GRPC_OK(expr)                                          \
  do {                                                                     \
    const grpc::Status s_ = (expr);                                        \
    ASSERT_TRUE(s_.ok()) << s_.error_code() << ": " << s_.error_message(); \
  } while (0)

// Lowercase hex SHA-256 of `data`, as UploadDatasetHeader.sha256 expects (the server's own
// ampd::server::Sha256, so tests and server agree by construction).
std::string sha256_hex(const std::string& data);

}  // namespace ampd::testing
