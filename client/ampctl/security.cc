// ampctl's credentials: the bearer token (--token, --token-file, AMPD_TOKEN,
// AMPD_TOKEN_FILE) and TLS (--tls, --ca-cert, --tls-server-name, --client-cert,
// --client-key). Files are read once, after parsing, so that a wrong one is a usage error
// naming the flag and the file before anything is sent. No message holds a token.
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "client/ampctl/ampctl.h"
#include "client/ampctl/connection.h"

namespace ampd::ampctl {

namespace {

constexpr size_t kMaxTokenBytes = 4096;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

// The file's content, or "" with *error set to "FLAG PATH: cannot read: REASON".
bool read_file(const std::string& flag, const std::string& path, std::string* out,
               std::string* error) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    *error = flag + " " + path + ": cannot read: it is a directory";
    return false;
  }
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error =
        flag + " " + path + ": cannot read: " + (errno != 0 ? std::strerror(errno) : "cannot open");
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) {
    *error = flag + " " + path + ": cannot read: I/O error";
    return false;
  }
  *out = ss.str();
  return true;
}

// Trims whitespace (a trailing newline) and checks what an HTTP/2 header value may hold.
bool check_token(const std::string& what, std::string* token, std::string* error) {
  if (token->size() > kMaxTokenBytes) {
    *error = what + ": too large for a token (" + std::to_string(token->size()) +
             " bytes); is this the right file?";
    return false;
  }
  const size_t first = token->find_first_not_of(" \t\r\n");
  if (first == std::string::npos) {
    *error = what + ": the token is empty";
    return false;
  }
  *token = token->substr(first, token->find_last_not_of(" \t\r\n") - first + 1);
  for (char c : *token) {
    if (c < 0x21 || c > 0x7e) {
      *error = what + ": the token may only hold printable ASCII characters without spaces";
      return false;
    }
  }
  return true;
}

bool read_pem(const std::string& flag, const std::string& path, const char* marker,
              std::string* out, std::string* error) {
  if (!read_file(flag, path, out, error)) return false;
  if (out->find(marker) == std::string::npos) {
    *error = flag + " " + path + ": not a PEM file (no " + marker + " line)";
    return false;
  }
  return true;
}

}  // namespace

void add_security_options(CLI::App& app, GlobalOptions& g) {
  const char* const group = "Security";
  CLI::Option* token =
      app.add_option("--token", g.token,
                     "Bearer token, when the server requires one (visible to other users in "
                     "`ps`: prefer --token-file; environment: AMPD_TOKEN)")
          ->group(group);
  CLI::Option* token_file =
      app.add_option("--token-file", g.token_file,
                     "Read the bearer token from this file (surrounding whitespace ignored; "
                     "environment: AMPD_TOKEN_FILE)")
          ->group(group);
  token->excludes(token_file);
  app.add_flag("--tls", g.tls,
               "Connect with TLS, trusting the system's CA certificates unless --ca-cert")
      ->envname("AMPD_TLS")
      ->group(group);
  app.add_option("--ca-cert", g.ca_cert,
                 "Trust the server certificates signed by the CA(s) in this PEM file (implies "
                 "--tls)")
      ->envname("AMPD_CA_CERT")
      ->group(group);
  app.add_option("--tls-server-name", g.tls_server_name,
                 "The name the server's certificate must carry, when it is not the host of "
                 "--server, e.g. connecting by IP address (implies --tls)")
      ->envname("AMPD_TLS_SERVER_NAME")
      ->group(group);
  app.add_option("--client-cert", g.client_cert,
                 "Mutual TLS: this client's PEM certificate (with --client-key; implies --tls)")
      ->envname("AMPD_CLIENT_CERT")
      ->group(group);
  app.add_option("--client-key", g.client_key, "Mutual TLS: the PEM private key of --client-cert")
      ->envname("AMPD_CLIENT_KEY")
      ->group(group);
}

int resolve_security(GlobalOptions& g) {
  std::string error;
  // Flags win over the environment; two sources of one kind are an error, not a guess.
  if (!g.token.empty()) {
    g.token_source = "--token";
  } else if (!g.token_file.empty()) {
    g.token_source = "--token-file " + g.token_file;
  } else {
    const std::string env_token = env("AMPD_TOKEN");
    const std::string env_file = env("AMPD_TOKEN_FILE");
    if (!env_token.empty() && !env_file.empty()) {
      return fail(kExitUsage,
                  "both AMPD_TOKEN and AMPD_TOKEN_FILE are set; unset one (or pass --token-file)");
    }
    if (!env_token.empty()) {
      g.token = env_token;
      g.token_source = "AMPD_TOKEN";
    } else if (!env_file.empty()) {
      g.token_file = env_file;
      g.token_source = "AMPD_TOKEN_FILE " + env_file;
    }
  }
  if (!g.token_file.empty()) {
    const std::string flag =
        g.token_source.starts_with("AMPD") ? "AMPD_TOKEN_FILE" : "--token-file";
    if (!read_file(flag, g.token_file, &g.token, &error)) return fail(kExitUsage, error);
  }
  if (!g.token_source.empty() && !check_token(g.token_source, &g.token, &error)) {
    return fail(kExitUsage, error);
  }

  if (!g.ca_cert.empty() || !g.tls_server_name.empty() || !g.client_cert.empty() ||
      !g.client_key.empty()) {
    g.tls = true;
  }
  if (!g.ca_cert.empty() &&
      !read_pem("--ca-cert", g.ca_cert, "-----BEGIN CERTIFICATE-----", &g.ca_pem, &error)) {
    return fail(kExitUsage, error);
  }
  if (g.client_cert.empty() != g.client_key.empty()) {
    return fail(kExitUsage, g.client_cert.empty() ? "--client-key needs --client-cert"
                                                  : "--client-cert needs --client-key");
  }
  if (!g.client_cert.empty()) {
    if (!read_pem("--client-cert", g.client_cert, "-----BEGIN CERTIFICATE-----", &g.client_cert_pem,
                  &error) ||
        !read_pem("--client-key", g.client_key, "PRIVATE KEY-----", &g.client_key_pem, &error)) {
      return fail(kExitUsage, error);
    }
  }
  return kExitOk;
}

}  // namespace ampd::ampctl
