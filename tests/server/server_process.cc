#include "server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "server/dataset_store.h"
#include "server/event_hub.h"

extern char** environ;

namespace ampd::testing {

int pick_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

std::unique_ptr<ServerProcess> ServerProcess::start(const std::string& state_dir,
                                                    const std::vector<std::string>& extra_args,
                                                    std::string* error) {
  Options options;
  options.extra_args = extra_args;
  return start_with(state_dir, options, error);
}

std::unique_ptr<ServerProcess> ServerProcess::start_with(const std::string& state_dir,
                                                         const Options& options,
                                                         std::string* error) {
  // options.env first: getenv returns the first entry of a name.
  std::vector<std::string> env_strings = options.env;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  // The port can be taken between pick_free_port and the server's bind: retry on a new one.
  for (int attempt = 0; attempt < 5; ++attempt) {
    std::unique_ptr<ServerProcess> p(new ServerProcess());
    const int port = pick_free_port();
    p->address_ = "127.0.0.1:" + std::to_string(port);
    p->credentials_ = options.credentials;
    p->ssl_target_name_ = options.ssl_target_name;
    const std::string listen = options.host + ":" + std::to_string(port);
    p->log_path_ = state_dir + ".server-" + std::to_string(attempt) + "-" +
                   std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) +
                   ".log";
    std::vector<std::string> args = {AMPD_BINARY,   "serve",   "--grpc-addr",    listen,
                                     "--state-dir", state_dir, "--backend",      "cpu",
                                     "--threads",   "1",       "--metrics-addr", "127.0.0.1:0"};
    args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, p->log_path_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    const int rc = posix_spawn(&p->pid_, AMPD_BINARY, &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      *error = std::string("posix_spawn ") + AMPD_BINARY + ": " + std::strerror(rc);
      return nullptr;
    }

    // A fresh channel per probe: a channel that saw "connection refused" before the server
    // listened would wait out gRPC's reconnect backoff (seconds).
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < give_up && p->running()) {
      auto health = grpc::health::v1::Health::NewStub(p->new_channel());
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
      grpc::health::v1::HealthCheckRequest req;
      // The Trainer service's own status, not the server's (""): gRPC's default health
      // service answers SERVING for "" from the moment the server starts, a moment before
      // ampd registers "ampd.v1.Trainer" (NOT_FOUND until then).
      req.set_service("ampd.v1.Trainer");
      grpc::health::v1::HealthCheckResponse resp;
      if (health->Check(&ctx, req, &resp).ok() &&
          resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
        return p;
      }
      if (p->wait(std::chrono::milliseconds(20)) >= 0) break;
    }
    if (p->running()) {
      *error = "ampd serve did not become SERVING in 30 s; log:\n" + p->log();
      return nullptr;  // the destructor kills it
    }
    // Exit 3: the address could not be bound (a race for the port); anything else is real.
    if (p->exit_code_ != 3) {
      *error = "ampd serve exited with " + std::to_string(p->exit_code_) + "; log:\n" + p->log();
      return nullptr;
    }
  }
  *error = "ampd serve could not bind a port in 5 attempts";
  return nullptr;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && running()) {
    ::kill(pid_, SIGKILL);
    wait(std::chrono::seconds(10));
  }
}

std::shared_ptr<grpc::Channel> ServerProcess::new_channel() const {
  return new_channel(credentials_, ssl_target_name_);
}

std::shared_ptr<grpc::Channel> ServerProcess::new_channel(
    std::shared_ptr<grpc::ChannelCredentials> credentials,
    const std::string& ssl_target_name) const {
  // A channel argument per call site keeps channels from being shared through gRPC's
  // subchannel pool, so each "client" really has its own connection.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // Reconnect quickly after a server restart on the same port.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  if (!ssl_target_name.empty()) args.SetSslTargetNameOverride(ssl_target_name);
  return grpc::CreateCustomChannel(
      address_, credentials != nullptr ? credentials : grpc::InsecureChannelCredentials(), args);
}

void ServerProcess::signal(int sig) const {
  if (pid_ > 0 && running()) ::kill(pid_, sig);
}

int ServerProcess::wait(std::chrono::milliseconds timeout) {
  if (!running()) return exit_code_;
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_code_;
    }
    if (r < 0) {
      exit_code_ = 255;
      return exit_code_;
    }
    if (std::chrono::steady_clock::now() >= give_up) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

int ServerProcess::stop(int sig, std::chrono::milliseconds timeout) {
  signal(sig);
  return wait(timeout);
}

std::string ServerProcess::log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool wait_for_step(ampd::v1::Trainer::Stub& stub, const std::string& id, int64_t step) {
  bool reached = false;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  ampd::v1::WatchJobRequest req;
  req.set_job_id(id);
  auto reader = stub.WatchJob(&ctx, req);
  ampd::v1::JobEvent e;
  while (reader->Read(&e)) {
    if (e.has_progress() && e.progress().step() >= step) {
      reached = true;
      ctx.TryCancel();
      break;
    }
  }
  (void)reader->Finish();
  return reached;
}

void expect_complete_history(const std::vector<ampd::v1::JobEvent>& events, const std::string& id) {
  ASSERT_FALSE(events.empty()) << id;
  int finals = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    ASSERT_EQ(events[i].seq(), static_cast<int64_t>(i) + 1) << "event " << i << " of " << id;
    EXPECT_EQ(events[i].job_id(), id);
    finals += server::EventHub::is_final(events[i]) ? 1 : 0;
  }
  EXPECT_EQ(finals, 1) << id;
  EXPECT_TRUE(server::EventHub::is_final(events.back())) << id;
}

std::string sha256_hex(const std::string& data) {
  server::Sha256 sha;
  sha.update(data);
  return sha.hex_digest();
}

}  // namespace ampd::testing
