// TLS for `ampd serve`: the server certificate and key (--tls-cert, --tls-key) and, for
// mutual TLS, the CA that client certificates must be signed by (--tls-client-ca).
//
// The files are read and checked with OpenSSL before gRPC sees them, so that a wrong file
// is a startup error naming the flag and the file (gRPC would only fail the handshakes, or
// report one generic line), then handed to grpc::SslServerCredentials.
#pragma once

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"

namespace ampd::server {

struct TlsFiles {
  std::string cert;       // PEM certificate chain, the server's own first
  std::string key;        // PEM private key of that certificate, unencrypted
  std::string client_ca;  // PEM CA certificates; "" = clients present no certificate
};

struct ServerTls {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  std::string description;            // "TLS" or "mutual TLS", for the startup line
  std::vector<std::string> warnings;  // an expired certificate, a key others may read
};

// InvalidArgument naming the flag and the file for a file that cannot be read, is not
// PEM, or a key that does not belong to the certificate; also when only one of cert and
// key is given, or a client CA without them.
StatusOr<ServerTls> load_server_tls(const TlsFiles& files);

}  // namespace ampd::server
