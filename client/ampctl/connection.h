// The channel to ampd, per-call contexts (deadline, bearer token), and the one place where
// a gRPC status becomes a message for people and an exit status.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <string_view>

#include "ampd/v1/trainer.grpc.pb.h"
#include "client/ampctl/ampctl.h"

namespace ampd::ampctl {

// A failed call, described for the terminal.
struct Failure {
  std::string message;  // one or more lines, no trailing newline, no "ampctl: " prefix
  int exit_code = kExitError;
};

// How ampctl connected, for the hints of a failure. Never holds the token itself.
struct SecurityHints {
  bool tls = false;
  std::string trust;         // with TLS: "--ca-cert ca.crt" or "the system's CA certificates"
  bool client_cert = false;  // a client certificate was offered (mutual TLS)
  std::string server_name;   // --tls-server-name ("" = the host of --server)
  std::string token_source;  // "--token-file /x", "AMPD_TOKEN", ...; "" = no token sent
};
SecurityHints security_hints(const GlobalOptions& options);

// Maps a status to a message and an exit status. `what` says what was attempted ("get job
// 7f3a"); `server`, `timeout_s` and `security` go into the hints. UNAVAILABLE from the
// transport reads "cannot reach ampd at ADDR: connection refused — is `ampd serve`
// running? ..."; a failed TLS handshake says which side to fix (TLS on one side only, an
// untrusted certificate, a certificate for another name, a missing client certificate).
Failure describe_failure(const grpc::Status& status, std::string_view what, std::string_view server,
                         double timeout_s, const SecurityHints& security = {});

// The reason alone, in a few words: "connection refused", or the server's message.
std::string short_reason(const grpc::Status& status);

// True for an UNAVAILABLE that came from the transport (refused, reset, DNS), as opposed
// to one the server sent on purpose (draining).
bool is_transport_failure(const grpc::Status& status);

class Connection {
 public:
  explicit Connection(const GlobalOptions& options);

  ampd::v1::Trainer::Stub& stub() { return *stub_; }
  const std::string& server() const { return options_.server; }
  double timeout_s() const { return options_.timeout_s; }

  // For a unary call: --timeout as the deadline, and the token.
  std::unique_ptr<grpc::ClientContext> unary_context() const;
  // For a stream (watch, upload, download): no deadline (a stream lasts as long as the
  // job or the file), the token.
  std::unique_ptr<grpc::ClientContext> stream_context() const;

  // Prints "ampctl: <message>" on stderr and returns the exit status.
  int report(const grpc::Status& status, std::string_view what) const;

 private:
  GlobalOptions options_;
  SecurityHints hints_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<ampd::v1::Trainer::Stub> stub_;
};

// Prints "ampctl: <message>" on stderr and returns `code` (for local errors).
int fail(int code, std::string_view message);

}  // namespace ampd::ampctl
