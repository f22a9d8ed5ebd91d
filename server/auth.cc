#include "server/auth.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace ampd::server {

namespace {

constexpr size_t kMaxTokenBytes = 4096;
// Shorter tokens are accepted with a warning: 16 random hex digits are 64 bits.
constexpr size_t kShortTokenChars = 16;

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

std::array<unsigned char, 32> sha256(std::string_view s) {
  std::array<unsigned char, 32> d{};
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d.data());
  return d;
}

// `what` is "--token-file /x" or "AMPD_TOKEN".
StatusOr<LoadedToken> check_token(const std::string& what, std::string raw) {
  if (raw.size() > kMaxTokenBytes) {
    return invalid_argument(what + ": " + std::to_string(raw.size()) +
                            " bytes is too large for a token (at most " +
                            std::to_string(kMaxTokenBytes) + "); is this the right file?");
  }
  const std::string_view t = trim(raw);
  if (t.empty()) {
    return invalid_argument(what +
                            ": the token is empty; put a random secret there, e.g. "
                            "`openssl rand -hex 32`");
  }
  for (char c : t) {
    if (c < 0x21 || c > 0x7e) {
      return invalid_argument(what +
                              ": the token may only hold printable ASCII characters without "
                              "spaces (it travels as `authorization: Bearer <token>`)");
    }
  }
  LoadedToken out;
  out.token = std::string(t);
  if (out.token.size() < kShortTokenChars) {
    out.warnings.push_back(what + ": the token is only " + std::to_string(out.token.size()) +
                           " characters long; use a random one of 32 or more (`openssl rand "
                           "-hex 32`)");
  }
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const char x = static_cast<char>(a[i] | 0x20);
    const char y = static_cast<char>(b[i] | 0x20);
    if (x != y) return false;
  }
  return true;
}

}  // namespace

StatusOr<std::string> read_file_for_flag(std::string_view flag, const std::string& path) {
  const std::string what = std::string(flag) + " " + path;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return invalid_argument(what + ": cannot read: " + std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) return invalid_argument(what + ": cannot read: it is a directory");
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return invalid_argument(
        what + ": cannot read: " + (errno != 0 ? std::strerror(errno) : "cannot open"));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return invalid_argument(what + ": cannot read: I/O error");
  return ss.str();
}

std::string permission_warning(std::string_view flag, const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || (st.st_mode & 077) == 0) return "";
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  return std::string(flag) + " " + path + " may be read by other users (mode " + mode +
         "); chmod 600 it";
}

StatusOr<LoadedToken> load_token_file(std::string_view flag, const std::string& path) {
  AMPD_ASSIGN_OR_RETURN(std::string raw, read_file_for_flag(flag, path));
  AMPD_ASSIGN_OR_RETURN(LoadedToken token,
                        check_token(std::string(flag) + " " + path, std::move(raw)));
  if (std::string w = permission_warning(flag, path); !w.empty()) token.warnings.push_back(w);
  return token;
}

StatusOr<LoadedToken> check_token_value(std::string_view name, std::string token) {
  return check_token(std::string(name), std::move(token));
}

const char* auth_result_label(AuthResult result) {
  switch (result) {
    case AuthResult::kOk: return "ok";
    case AuthResult::kMissing: return "missing";
    case AuthResult::kMalformed: return "malformed";
    case AuthResult::kWrongToken: return "wrong_token";
  }
  return "unknown";
}

std::string auth_failure_message(AuthResult result) {
  const char* const how =
      "send the metadata `authorization: Bearer <token>` with the server's token (ampctl: "
      "--token-file FILE, or AMPD_TOKEN_FILE / AMPD_TOKEN)";
  switch (result) {
    case AuthResult::kOk: return "";
    case AuthResult::kMissing: return std::string("this server requires a bearer token: ") + how;
    case AuthResult::kMalformed:
      return std::string("the authorization metadata is not a single `Bearer <token>`: ") + how;
    case AuthResult::kWrongToken:
      return std::string("the bearer token is not valid for this server: ") + how;
  }
  return how;
}

BearerAuth::BearerAuth(std::string_view token) : digest_(sha256(token)) {}

AuthResult BearerAuth::check(const std::vector<std::string_view>& authorization) const {
  if (authorization.empty()) return AuthResult::kMissing;
  if (authorization.size() > 1) return AuthResult::kMalformed;
  // RFC 6750: "Bearer" (case-insensitive, RFC 7235) SP token.
  const std::string_view value = trim(authorization.front());
  const size_t space = value.find_first_of(" \t");
  if (space == std::string_view::npos || !iequals(value.substr(0, space), "bearer")) {
    return AuthResult::kMalformed;
  }
  const std::string_view token = trim(value.substr(space));
  if (token.empty()) return AuthResult::kMalformed;
  const std::array<unsigned char, 32> presented = sha256(token);
  return CRYPTO_memcmp(presented.data(), digest_.data(), digest_.size()) == 0
             ? AuthResult::kOk
             : AuthResult::kWrongToken;
}

bool is_loopback_address(std::string_view addr) {
  if (addr.starts_with("unix:") || addr.starts_with("unix-abstract:")) return true;
  for (std::string_view scheme : {"dns:///", "dns:", "ipv4:", "ipv6:"}) {
    if (addr.starts_with(scheme)) {
      addr.remove_prefix(scheme.size());
      break;
    }
  }
  std::string_view host = addr;
  if (!host.empty() && host.front() == '[') {
    const size_t close = host.find(']');
    if (close == std::string_view::npos) return false;
    host = host.substr(1, close - 1);
  } else if (const size_t colon = host.rfind(':');
             colon != std::string_view::npos && host.find(':') == colon) {
    host = host.substr(0, colon);  // "host:port"; a bare IPv6 address has several colons
  }
  if (iequals(host, "localhost")) return true;
  const std::string h(host);
  in_addr v4{};
  if (::inet_pton(AF_INET, h.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, h.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

}  // namespace ampd::server
