// `ampd serve`: the gRPC training service. Options (each also from an AMPD_* environment
// variable), building the server, and the signal-driven shutdown.
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace ampd::server {

struct ServeOptions {
  std::string grpc_addr = "127.0.0.1:50051";
  // Prometheus /metrics; "" or "off" disables it; port 0 picks a free one.
  std::string metrics_addr = "127.0.0.1:9464";
  std::string state_dir = "ampd-state";
  std::string data_dir;  // "" = <state_dir>/data
  std::string backend = "auto";
  int threads = 0;
  int max_queued_jobs = 100;
  uint64_t max_upload_bytes = uint64_t{256} << 20;
  int64_t checkpoint_every = 50;
  double shutdown_timeout_s = 20;
  double drain_grace_s = 0;
  int watch_buffer_events = 256;
  // Text generation (the Generate RPC, server/generator.h): generations at once (0: off)
  // and tokens per request.
  int max_generations = 2;
  int64_t max_generate_tokens = 2000;
  // Security (README "Security"). token_file: every ampd.v1.Trainer call must send
  // `authorization: Bearer <its content>`; AMPD_TOKEN in the environment is the other
  // way to give the token. tls_cert + tls_key: serve TLS; tls_client_ca: also require
  // client certificates signed by it (mutual TLS).
  std::string token_file;
  std::string token;  // from AMPD_TOKEN only: a command line is visible to every user (ps)
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
};

// Adds the subcommand to the CLI; the callback stores the exit code in *exit_code.
void add_serve_command(CLI::App& app, ServeOptions& options, int* exit_code);

// Serves until SIGTERM or SIGINT, then drains. Exit codes: 0 after a clean drain, 1 when
// the drain overran --shutdown-timeout (the running job still resumes on the next start)
// or the server failed, 2 bad configuration (state dir, data dir, token or TLS files),
// 3 backend unavailable
// or the address cannot be bound.
int run_serve_command(const ServeOptions& options);

}  // namespace ampd::server
