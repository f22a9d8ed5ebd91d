#include "server/serve_command.h"

#include <fcntl.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>
#include <signal.h>
#include <sys/file.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/sampler.h"
#include "kernels/backend_factory.h"
#if AMPD_FAULT_INJECTION
#include "engine/write_faults.h"
#endif
#include "server/auth.h"
#include "server/generator.h"
#include "server/job_manager.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/tls.h"
#include "server/trainer_service.h"

#ifndef AMPD_VERSION
#define AMPD_VERSION "0.0.0"
#endif

namespace ampd::server {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

const char* const kServiceName = "ampd.v1.Trainer";

// Turns SIGTERM/SIGINT into an ordinary event. The signals are blocked in every thread
// (the mask is set before any thread exists and is inherited), and this thread collects
// them with sigtimedwait: no code runs in signal-handler context, so the shutdown may lock,
// log and allocate like any other code. A second signal during the drain exits at once;
// the store and checkpoints are crash-safe, so that only loses progress since the last
// checkpoint.
class SignalWatcher {
 public:
  SignalWatcher() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGINT);
  }
  ~SignalWatcher() { stop(); }

  // Must run before any other thread is created.
  void block_signals() { pthread_sigmask(SIG_BLOCK, &set_, nullptr); }

  void start() {
    thread_ = std::thread([this] {
      const timespec tick{0, 200 * 1000 * 1000};
      while (!stop_.load()) {
        const int sig = sigtimedwait(&set_, nullptr, &tick);
        if (sig <= 0) continue;
        std::lock_guard<std::mutex> lock(mu_);
        if (signal_ != 0) {
          log_line(std::string("second signal (") + strsignal(sig) + "): exiting now");
          std::_Exit(1);
        }
        signal_ = sig;
        cv_.notify_all();
      }
    });
  }

  int wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return signal_ != 0; });
    return signal_;
  }

  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }

 private:
  sigset_t set_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  int signal_ = 0;
};

// Ends the process if the drain overruns its budget (a step that never returns, a stuck
// RPC): Kubernetes would SIGKILL a little later anyway, and exiting ourselves leaves a
// log line saying why. The job store and checkpoints are crash-safe.
class Watchdog {
 public:
  explicit Watchdog(Clock::time_point deadline) {
    thread_ = std::thread([this, deadline] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_until(lock, deadline, [&] { return done_; })) {
        log_line("shutdown: still not done at --shutdown-timeout; exiting now");
        std::_Exit(1);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// What --token-file/AMPD_TOKEN and --tls-* turned into, checked before anything starts.
struct Security {
  std::unique_ptr<BearerAuth> auth;  // null: no token required
  std::string token_source;          // "--token-file /etc/ampd/token" or "AMPD_TOKEN"
  std::shared_ptr<grpc::ServerCredentials> credentials;
  std::string transport;  // "plaintext", "TLS", "mutual TLS"
};

// Reads and checks the token and TLS files; logs the warnings; InvalidArgument naming the
// flag and the file when one is wrong.
StatusOr<Security> load_security(const ServeOptions& o) {
  Security sec;
  std::vector<std::string> warnings;
  if (!o.token_file.empty() && !o.token.empty()) {
    return invalid_argument(
        "both --token-file (or AMPD_TOKEN_FILE) and AMPD_TOKEN are set; give the token one "
        "way");
  }
  if (!o.token_file.empty() || !o.token.empty()) {
    const bool from_file = !o.token_file.empty();
    AMPD_ASSIGN_OR_RETURN(LoadedToken token, from_file
                                                 ? load_token_file("--token-file", o.token_file)
                                                 : check_token_value("AMPD_TOKEN", o.token));
    sec.auth = std::make_unique<BearerAuth>(token.token);
    sec.token_source = from_file ? "--token-file " + o.token_file : "AMPD_TOKEN";
    warnings.insert(warnings.end(), token.warnings.begin(), token.warnings.end());
  }
  if (!o.tls_cert.empty() || !o.tls_key.empty() || !o.tls_client_ca.empty()) {
    AMPD_ASSIGN_OR_RETURN(ServerTls tls, load_server_tls({o.tls_cert, o.tls_key, o.tls_client_ca}));
    sec.credentials = std::move(tls.credentials);
    sec.transport = tls.description;
    warnings.insert(warnings.end(), tls.warnings.begin(), tls.warnings.end());
  } else {
    sec.credentials = grpc::InsecureServerCredentials();
    sec.transport = "plaintext";
  }
  if (!is_loopback_address(o.grpc_addr) && sec.transport == "plaintext") {
    if (sec.auth) {
      warnings.push_back("--grpc-addr " + o.grpc_addr +
                         " is reachable from other machines and TLS is off: the bearer token "
                         "crosses the network in cleartext; set --tls-cert and --tls-key");
    } else {
      warnings.push_back("--grpc-addr " + o.grpc_addr +
                         " is reachable from other machines with neither TLS nor a token: "
                         "anyone who can connect may submit, cancel and download jobs; see "
                         "--token-file and --tls-cert");
    }
  }
  for (const std::string& w : warnings) log_line("warning: " + w);
  return sec;
}

Clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

}  // namespace

void add_serve_command(CLI::App& app, ServeOptions& o, int* exit_code) {
  CLI::App* serve = app.add_subcommand(
      "serve", "Run the gRPC training service (ampd.v1.Trainer, health, reflection)");
  serve->footer(
      "\nExamples:\n"
      "  ampd serve\n"
      "  ampd serve --grpc-addr 0.0.0.0:50051 --state-dir /var/lib/ampd --backend cuda\n"
      "  AMPD_STATE_DIR=/var/lib/ampd ampd serve\n\n"
      "Jobs, their events and checkpoints live under --state-dir; after a restart every job\n"
      "is still there and unfinished ones continue (running ones from their last checkpoint).\n"
      "SIGTERM/SIGINT drain: new calls get UNAVAILABLE, health turns NOT_SERVING, the running\n"
      "job checkpoints and stays RUNNING for the next start.\n"
      "Prometheus metrics (ampd_*: jobs, queue, gRPC calls, steps, loss scale, numerics\n"
      "telemetry, generated tokens) are served at http://<--metrics-addr>/metrics.\n"
      "\nText generation (`ampctl generate JOB`) reads a language model job's checkpoint,\n"
      "also while the job trains: each loaded model runs on a backend of its own (a CPU\n"
      "backend with one thread, or a second CUDA stream), so training is not held up; it\n"
      "only shares the cores or the GPU. --max-generations and --max-generate-tokens\n"
      "bound what that sharing can cost.\n"
      "\nSecurity (off by default; health and reflection stay open):\n"
      "  openssl rand -hex 32 > /etc/ampd/token && chmod 600 /etc/ampd/token\n"
      "  ampd serve --grpc-addr 0.0.0.0:50051 --tls-cert server.crt --tls-key server.key \\\n"
      "             --token-file /etc/ampd/token\n"
      "  ampctl --server HOST:50051 --ca-cert ca.crt --token-file /etc/ampd/token info\n"
      "With a token, every ampd.v1.Trainer call must send `authorization: Bearer <token>`;\n"
      "others get UNAUTHENTICATED. Without TLS the token travels in cleartext: use both\n"
      "off loopback. The /metrics endpoint is plain HTTP without authentication: keep\n"
      "--metrics-addr on 127.0.0.1 or a private network.\n"
      "Exit status: 0 drained, 1 failed or drain overran, 2 bad configuration (including\n"
      "token and TLS files), 3 backend or address unavailable.");
  const auto seconds_unit = CLI::AsNumberWithUnit(
      std::map<std::string, double>{{"ms", 0.001}, {"s", 1}, {"m", 60}},
      static_cast<CLI::AsNumberWithUnit::Options>(CLI::AsNumberWithUnit::CASE_INSENSITIVE |
                                                  CLI::AsNumberWithUnit::UNIT_OPTIONAL),
      "SECONDS");
  serve->add_option("--grpc-addr", o.grpc_addr, "host:port to listen on (port 0: any free port)")
      ->envname("AMPD_GRPC_ADDR")
      ->capture_default_str();
  serve
      ->add_option("--metrics-addr", o.metrics_addr,
                   "host:port of the Prometheus /metrics endpoint (port 0: any free port; "
                   "\"off\": none)")
      ->envname("AMPD_METRICS_ADDR")
      ->capture_default_str();
  serve->add_option("--state-dir", o.state_dir, "Job database (ampd.db) and checkpoints (jobs/)")
      ->envname("AMPD_STATE_DIR")
      ->capture_default_str();
  serve
      ->add_option("--data-dir", o.data_dir,
                   "Root of data.csv.path and of uploaded data sets (default: <state-dir>/data)")
      ->envname("AMPD_DATA_DIR");
  serve->add_option("--backend", o.backend, "auto | cpu | cuda | reference")
      ->envname("AMPD_BACKEND")
      ->capture_default_str();
  serve->add_option("--threads", o.threads, "CPU threads (0 = all cores)")
      ->envname("AMPD_THREADS")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  serve
      ->add_option("--max-queued-jobs", o.max_queued_jobs,
                   "Jobs that may wait behind the running one; more get RESOURCE_EXHAUSTED")
      ->envname("AMPD_MAX_QUEUED_JOBS")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  serve
      ->add_option("--max-upload-bytes", o.max_upload_bytes,
                   "Largest data set upload (256MiB, 1G, 4096)")
      ->envname("AMPD_MAX_UPLOAD_BYTES")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  serve
      ->add_option("--checkpoint-every", o.checkpoint_every,
                   "Checkpoint interval in steps for jobs whose spec sets none: a restart "
                   "repeats at most this many steps")
      ->envname("AMPD_CHECKPOINT_EVERY")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  serve
      ->add_option("--shutdown-timeout", o.shutdown_timeout_s,
                   "Upper bound on the drain after SIGTERM (20s fits Kubernetes' 30 s grace)")
      ->envname("AMPD_SHUTDOWN_TIMEOUT")
      ->transform(seconds_unit)
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  serve
      ->add_option("--drain-grace", o.drain_grace_s,
                   "After SIGTERM, keep the listener open this long (NOT_SERVING, new calls "
                   "UNAVAILABLE, running job continues) so that probes and load balancers "
                   "notice before connections drop")
      ->envname("AMPD_DRAIN_GRACE")
      ->transform(seconds_unit)
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  serve
      ->add_option("--watch-buffer-events", o.watch_buffer_events,
                   "Live events buffered per WatchJob stream; a slower client replays from "
                   "the store instead")
      ->envname("AMPD_WATCH_BUFFER_EVENTS")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  serve
      ->add_option("--max-generations", o.max_generations,
                   "Generate calls that may produce text at once, each on its own backend "
                   "(one CPU thread, or one CUDA stream, plus the model's memory); one more "
                   "gets RESOURCE_EXHAUSTED. 0 turns text generation off")
      ->envname("AMPD_MAX_GENERATIONS")
      ->check(CLI::Range(0, 64))
      ->group("Text generation")
      ->capture_default_str();
  serve
      ->add_option("--max-generate-tokens", o.max_generate_tokens,
                   "Tokens (characters, for a character vocabulary) one Generate call may "
                   "ask for; more gets RESOURCE_EXHAUSTED. Up to " +
                       std::to_string(engine::kMaxSampleTokens))
      ->envname("AMPD_MAX_GENERATE_TOKENS")
      ->check(CLI::Range(int64_t{1}, engine::kMaxSampleTokens))
      ->group("Text generation")
      ->capture_default_str();
  serve
      ->add_option("--token-file", o.token_file,
                   "Require a bearer token on every ampd.v1.Trainer call (health and reflection "
                   "stay open): the file holds the token (surrounding whitespace is ignored; "
                   "`openssl rand -hex 32`). Clients send `authorization: Bearer <token>`. "
                   "Alternatively, AMPD_TOKEN=<token> in the environment")
      ->envname("AMPD_TOKEN_FILE")
      ->group("Security");
  serve
      ->add_option("--tls-cert", o.tls_cert,
                   "Serve TLS with this PEM certificate (chain), the server's first; needs "
                   "--tls-key")
      ->envname("AMPD_TLS_CERT")
      ->group("Security");
  serve->add_option("--tls-key", o.tls_key, "The PEM private key of --tls-cert (unencrypted)")
      ->envname("AMPD_TLS_KEY")
      ->group("Security");
  serve
      ->add_option("--tls-client-ca", o.tls_client_ca,
                   "Mutual TLS: require client certificates signed by the CA certificates in "
                   "this PEM file (ampctl --client-cert/--client-key)")
      ->envname("AMPD_TLS_CLIENT_CA")
      ->group("Security");
  serve->callback([&o, exit_code] {
    if (const char* token = std::getenv("AMPD_TOKEN"); token != nullptr && *token != '\0') {
      o.token = token;
    }
    *exit_code = run_serve_command(o);
  });
}

int run_serve_command(const ServeOptions& o) {
  SignalWatcher signals;
  signals.block_signals();
  // A client that disconnects mid-write must not kill the server.
  ::signal(SIGPIPE, SIG_IGN);
  signals.start();

  // Security first: a wrong token or certificate file stops the start before anything
  // (the state dir lock, the metrics port, the backend) is touched.
  auto security = load_security(o);
  if (!security.ok()) {
    log_line(security.status().message());
    return 2;
  }

  const std::string data_dir =
      o.data_dir.empty() ? (fs::path(o.state_dir) / "data").string() : o.data_dir;
  std::error_code ec;
  fs::create_directories(o.state_dir, ec);
  if (ec) {
    log_line("cannot create --state-dir " + o.state_dir + ": " + ec.message());
    return 2;
  }

  // One server per state dir: a second one would run the same jobs twice. flock is
  // released by the kernel when the process dies, even by SIGKILL, so a crash never leaves
  // a stale lock behind.
  const std::string lock_path = (fs::path(o.state_dir) / "ampd.lock").string();
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0 || ::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    log_line("state dir " + o.state_dir + " is in use by another ampd serve (" + lock_path +
             " is locked)");
    return 2;
  }

  // Metrics start before the backend: civetweb's threads are created now, before a CUDA
  // plugin with its static TLS is loaded (docs/ARCHITECTURE.md, The CUDA plugin), and a
  // taken port fails fast.
  ServerMetrics metrics;
  const bool metrics_on = !o.metrics_addr.empty() && o.metrics_addr != "off";
  if (metrics_on) {
    Status s = metrics.serve(o.metrics_addr);
    if (!s.ok()) {
      log_line(s.message());
      return 3;
    }
  }

  BackendRequest request;
  request.kind = o.backend;
  request.threads = o.threads;
  auto choice = create_backend(request);
  if (!choice.ok()) {
    log_line("backend: " + choice.status().message());
    return choice.status().code() == StatusCode::kInvalidArgument ? 2 : 3;
  }
  if (!choice->note.empty()) log_line(choice->note);

  JobManagerOptions mopts;
#if AMPD_FAULT_INJECTION
  // Test builds only (engine/write_faults.h): the checkpoint write-fault schedules a
  // server fault test sets in this process's environment.
  const std::unique_ptr<engine::WriteFaults> write_faults =
      engine::ScheduledWriteFaults::from_environment();
  if (write_faults != nullptr) log_line("fault injection: checkpoint writes follow a schedule");
  mopts.write_faults = write_faults.get();
#endif
  mopts.state_dir = o.state_dir;
  mopts.data_dir = data_dir;
  mopts.max_queued_jobs = o.max_queued_jobs;
  mopts.default_checkpoint_every = o.checkpoint_every;
  mopts.max_upload_bytes = static_cast<int64_t>(
      std::min<uint64_t>(o.max_upload_bytes, static_cast<uint64_t>(INT64_MAX)));
  mopts.hub.watcher_buffer = static_cast<size_t>(o.watch_buffer_events);
  mopts.observer = &metrics;
  auto manager = JobManager::create(std::move(choice->backend), mopts);
  if (!manager.ok()) {
    log_line(manager.status().message());
    return 2;
  }

  JobManager* const m = manager->get();
  metrics.set_build_info(AMPD_VERSION, m->info().backend, m->info().device);
  metrics.set_snapshot_source([m] {
    ServerMetrics::Snapshot snap;
    auto counts = m->count_jobs_by_state();
    if (counts.ok()) snap.jobs_by_state = std::move(counts).value();
    snap.queue_depth = m->info().queued_jobs;
    return snap;
  });
  // Destroyed before the manager on every return path: a scrape must not reach it then.
  struct DetachSnapshot {
    ServerMetrics& metrics;
    ~DetachSnapshot() { metrics.set_snapshot_source(nullptr); }
  } detach_snapshot{metrics};

  // Generation runs on backends of its own, of the training backend's kind (a CPU one with
  // one thread): never on the worker's, so a running job is not stalled (server/generator.h).
  // Declared before the server, so destroyed after it: no Generate call outlives it.
  GeneratorOptions gopts;
  gopts.max_concurrent = o.max_generations;
  gopts.max_tokens = o.max_generate_tokens;
  gopts.observer = &metrics;
  gopts.make_backend = [kind = m->info().backend]() -> StatusOr<std::unique_ptr<Backend>> {
    BackendRequest r;
    r.kind = kind;
    r.threads = 1;
    AMPD_ASSIGN_OR_RETURN(BackendChoice made, create_backend(r));
    return std::move(made.backend);
  };
  Generator generator(m, gopts);

  TrainerServiceOptions sopts;
  sopts.version = AMPD_VERSION;
  sopts.metrics = &metrics;
  sopts.auth = security->auth.get();
  sopts.generator = &generator;
  TrainerService service(manager->get(), sopts);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(o.grpc_addr, security->credentials, &port);
  builder.RegisterService(&service);
  // Find clients that vanished without closing their connection (a WatchJob stream would
  // otherwise hold its thread until TCP gives up), and accept the keepalive pings of
  // clients that watch long jobs over idle-killing networks.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10 * 1000);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    log_line("cannot listen on " + o.grpc_addr);
    return 3;
  }
  (*manager)->start();
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(kServiceName, true);
  health->SetServingStatus(true);
  const ManagerInfo info = (*manager)->info();
  log_line(std::string("ampd ") + AMPD_VERSION + " serving " + kServiceName + " on " +
           o.grpc_addr.substr(0, o.grpc_addr.rfind(':')) + ":" + std::to_string(port) + " (" +
           info.backend + ": " + info.device + "; state " + o.state_dir + ", data " + data_dir +
           ")");
  log_line("security: " + security->transport +
           (security->auth ? ", bearer token from " + security->token_source
                           : ", no token (any client may call)"));
  if (metrics_on) {
    log_line("metrics on http://" + o.metrics_addr.substr(0, o.metrics_addr.rfind(':')) + ":" +
             std::to_string(metrics.port()) + "/metrics");
  }

  const int sig = signals.wait();
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + seconds(o.shutdown_timeout_s);
  Watchdog watchdog(deadline);
  char bound[32];
  std::snprintf(bound, sizeof bound, "%g", o.shutdown_timeout_s);
  log_line(std::string("received ") + strsignal(sig) + ": draining (bound " + bound + " s)");
  // 1. Refuse new work, then tell probes (in this order, so that a client that has seen
  //    NOT_SERVING never gets a new call accepted); calls in flight continue.
  service.begin_drain();
  health->SetServingStatus(false);
  if (o.drain_grace_s > 0) {
    std::this_thread::sleep_until(std::min(deadline, start + seconds(o.drain_grace_s)));
  }
  // 2. Stop the running job at a step boundary after a checkpoint (it stays RUNNING),
  //    then end the WatchJob streams. A quarter of the budget stays for step 3.
  const bool stopped = (*manager)->shutdown(deadline - (deadline - Clock::now()) / 4);
  // 3. Give unary calls in flight a moment to finish, then cancel what remains. The
  //    moment is short on purpose: gRPC's Shutdown also waits for idle client connections
  //    to go away, which clients do lazily (measured: 5-15 s after the GOAWAY), and only
  //    the cancel at the deadline closes them. WatchJob streams have already ended.
  const Clock::duration rpc_grace = std::clamp<Clock::duration>(
      deadline - Clock::now(), Clock::duration::zero(), std::chrono::seconds(1));
  server->Shutdown(std::chrono::system_clock::now() + rpc_grace);
  if (!stopped) {
    // The worker is still inside a step: the manager cannot be destroyed under it.
    log_line(
        "shutdown: the running job did not reach a step boundary in time; exiting "
        "(it resumes from its last checkpoint on the next start)");
    std::_Exit(1);
  }
  server.reset();
  metrics.set_snapshot_source(nullptr);  // a scrape must not reach a destroyed manager
  manager->reset();
  signals.stop();
  const double took = std::chrono::duration<double>(Clock::now() - start).count();
  log_line("stopped after " + std::to_string(took).substr(0, 5) + " s");
  return 0;
}

}  // namespace ampd::server
