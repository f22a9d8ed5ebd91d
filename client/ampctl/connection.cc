#include "client/ampctl/connection.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

namespace ampd::ampctl {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

// What the transport said, in a few words: "connection refused", "cannot resolve the host".
std::string transport_reason(const std::string& details) {
  const std::string d = lower(details);
  if (contains(d, "connection refused")) return "connection refused";
  if (contains(d, "dns resolution failed") || contains(d, "domain name not found")) {
    return "cannot resolve the host name";
  }
  if (contains(d, "no such file or directory")) return "no such socket";
  if (contains(d, "connection reset") || contains(d, "socket closed") ||
      contains(d, "broken pipe") || contains(d, "goaway") || contains(d, "end of stream")) {
    return "the connection was closed";
  }
  if (contains(d, "timed out") || contains(d, "timeout")) return "connection timed out";
  return details;
}

// A failed TLS handshake, as gRPC 1.51 reports it: the reason for people, or "" when
// `details` is not about TLS.
std::string tls_reason(const std::string& details, const SecurityHints& sec,
                       std::string_view host) {
  const std::string d = lower(details);
  if (!sec.tls) {
    // A plaintext client at a TLS server sees its HTTP/2 preface answered by a TLS alert
    // and the connection closed.
    return "";
  }
  const bool handshake = contains(d, "handshake") || contains(d, "ssl") || contains(d, "tsi_") ||
                         contains(d, "certificate") || contains(d, "peer name");
  if (!handshake) return "";
  if (contains(d, "wrong_version_number") || contains(d, "wrong version number") ||
      contains(d, "packet_length_too_long") || contains(d, "http_request") ||
      contains(d, "record_layer_failure") || contains(d, "unexpected eof") ||
      contains(d, "tsi_data_corrupted")) {
    return "the TLS handshake failed: the server does not speak TLS — drop --tls/--ca-cert "
           "(AMPD_TLS, AMPD_CA_CERT), or start it with --tls-cert and --tls-key";
  }
  if (contains(d, "peer name") || contains(d, "hostname") ||
      contains(d, "not in peer certificate")) {
    return "the server's certificate is not issued for \"" + std::string(host) +
           "\" — connect by a name it carries, or set --tls-server-name";
  }
  if (contains(d, "certificate_verify_failed") || contains(d, "certificate verify failed") ||
      contains(d, "unable to get local issuer") || contains(d, "self signed") ||
      contains(d, "self-signed") || contains(d, "unknown ca")) {
    return "the server's certificate is not signed by a CA ampctl trusts (" + sec.trust +
           ") — pass the CA that signed it with --ca-cert (AMPD_CA_CERT)";
  }
  if (contains(d, "certificate required") || contains(d, "certificate_required") ||
      contains(d, "alert handshake failure") || contains(d, "bad certificate") ||
      contains(d, "bad_certificate")) {
    return sec.client_cert
               ? "the server refused ampctl's client certificate (--client-cert) — it must be "
                 "signed by the server's --tls-client-ca"
               : "the server requires a client certificate (mutual TLS) — pass --client-cert "
                 "and --client-key";
  }
  return "the TLS handshake failed (" + details + ")";
}

std::string host_of(std::string_view server) {
  std::string_view h = server;
  if (h.starts_with("dns:///")) h.remove_prefix(7);
  if (!h.empty() && h.front() == '[') return std::string(h.substr(1, h.find(']') - 1));
  const size_t colon = h.rfind(':');
  return std::string(colon == std::string_view::npos ? h : h.substr(0, colon));
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

}  // namespace

std::string short_reason(const grpc::Status& status) {
  if (is_transport_failure(status)) return transport_reason(status.error_message());
  return status.error_message();
}

bool is_transport_failure(const grpc::Status& status) {
  if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return false;
  const std::string d = lower(status.error_message());
  for (std::string_view marker :
       {"failed to connect", "connection refused", "dns resolution failed", "connection reset",
        "socket closed", "broken pipe", "goaway", "end of stream", "keepalive",
        "connections to all backends failing", "empty address list", "no such file"}) {
    if (contains(d, marker)) return true;
  }
  return false;
}

SecurityHints security_hints(const GlobalOptions& o) {
  SecurityHints h;
  h.tls = o.tls;
  if (o.tls)
    h.trust = o.ca_cert.empty() ? "the system's CA certificates" : "--ca-cert " + o.ca_cert;
  h.client_cert = !o.client_cert.empty();
  h.server_name = o.tls_server_name;
  h.token_source = o.token_source;
  return h;
}

Failure describe_failure(const grpc::Status& status, std::string_view what, std::string_view server,
                         double timeout_s, const SecurityHints& sec) {
  const std::string w(what);
  const std::string s(server);
  const std::string& details = status.error_message();
  Failure f;
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      f.message = w + ": ok";
      f.exit_code = kExitOk;
      break;
    case grpc::StatusCode::UNAVAILABLE:
      f.exit_code = kExitUnreachable;
      if (const std::string tls =
              is_transport_failure(status)
                  ? tls_reason(details, sec,
                               sec.server_name.empty() ? host_of(server) : sec.server_name)
                  : "";
          !tls.empty()) {
        f.message = "cannot reach ampd at " + s + " securely: " + tls;
      } else if (is_transport_failure(status)) {
        const std::string reason = transport_reason(details);
        const std::string hint = reason == "cannot resolve the host name"
                                     ? "check the host name;"
                                     : "is `ampd serve` running?";
        f.message = "cannot reach ampd at " + s + ": " + reason + " — " + hint +
                    " set --server or AMPD_SERVER";
        if (reason == "the connection was closed") {
          // What a TLS server does to a plaintext client, and a mutual-TLS server to a
          // client without an acceptable certificate (TLS 1.3 lets it finish first).
          if (!sec.tls) {
            f.message += "; if the server uses TLS, add --tls or --ca-cert FILE (AMPD_CA_CERT)";
          } else if (!sec.client_cert) {
            f.message +=
                "; if the server requires client certificates (mutual TLS), pass "
                "--client-cert and --client-key";
          } else {
            f.message +=
                "; the server may have refused ampctl's --client-cert (it must be signed by "
                "the server's --tls-client-ca)";
          }
        }
      } else {
        f.message = w + ": ampd at " + s + " is unavailable: " + details +
                    " (it may be shutting down; try again shortly)";
      }
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      f.exit_code = kExitUnreachable;
      f.message = w + ": no answer from ampd at " + s + " within " + seconds_text(timeout_s) +
                  " s — check the address, or raise --timeout";
      break;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      f.exit_code = kExitUsage;
      f.message = w + ": " + details;
      break;
    case grpc::StatusCode::NOT_FOUND:
      f.exit_code = kExitNotFound;
      f.message = w + ": " + details;
      break;
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::ABORTED:
      f.exit_code = kExitConflict;
      f.message = w + ": " + details;
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      f.exit_code = kExitExhausted;
      f.message = w + ": " + details;
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
      f.exit_code = kExitUnauthenticated;
      // ampd's own message already says how to send a token; another server's may not.
      if (sec.token_source.empty()) {
        f.message = w + ": " + details + " — ampctl sent no token" +
                    (contains(details, "--token-file")
                         ? ""
                         : ": give it with --token-file FILE (or AMPD_TOKEN_FILE, AMPD_TOKEN)");
      } else {
        f.message = w + ": " + details + " — ampctl sent the token from " + sec.token_source +
                    ": check that it is the server's";
      }
      break;
    case grpc::StatusCode::UNIMPLEMENTED:
      f.exit_code = kExitError;
      f.message = w + ": ampd at " + s + " does not implement this call (" + details +
                  ") — is it older than this ampctl?";
      break;
    case grpc::StatusCode::CANCELLED:
      f.exit_code = kExitInterrupted;
      f.message = w + ": cancelled";
      break;
    default:
      f.exit_code = kExitError;
      f.message = w + ": " + details + " (" + std::to_string(status.error_code()) + ")";
      break;
  }
  return f;
}

Connection::Connection(const GlobalOptions& options)
    : options_(options), hints_(security_hints(options)) {
  grpc::ChannelArguments args;
  // Checkpoints and data sets move in chunks well under this, but a job with a long spec
  // or many listed jobs may exceed gRPC's 4 MiB default.
  args.SetMaxReceiveMessageSize(64 << 20);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options_.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options_.ca_pem;  // "" = gRPC's default roots
    ssl.pem_cert_chain = options_.client_cert_pem;
    ssl.pem_private_key = options_.client_key_pem;
    credentials = grpc::SslCredentials(ssl);
    if (!options_.tls_server_name.empty()) args.SetSslTargetNameOverride(options_.tls_server_name);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  channel_ = grpc::CreateCustomChannel(options_.server, credentials, args);
  stub_ = ampd::v1::Trainer::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> Connection::stream_context() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  return ctx;
}

std::unique_ptr<grpc::ClientContext> Connection::unary_context() const {
  auto ctx = stream_context();
  if (options_.timeout_s > 0 && std::isfinite(options_.timeout_s)) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::duration_cast<std::chrono::system_clock::duration>(
                          std::chrono::duration<double>(options_.timeout_s)));
  }
  return ctx;
}

int Connection::report(const grpc::Status& status, std::string_view what) const {
  Failure f = describe_failure(status, what, options_.server, options_.timeout_s, hints_);
  return fail(f.exit_code, f.message);
}

int fail(int code, std::string_view message) {
  std::cout.flush();
  std::cerr << "ampctl: " << message << "\n";
  return code;
}

}  // namespace ampd::ampctl
