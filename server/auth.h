// Bearer-token authentication of ampd.v1.Trainer calls, and the security checks of
// `ampd serve`'s configuration that need no gRPC (reading the token, loopback addresses).
//
// A client sends the metadata `authorization: Bearer <token>`; the server compares the
// token with the one from --token-file (or AMPD_TOKEN). The server keeps only the SHA-256
// of its token and compares digests with CRYPTO_memcmp: the time a check takes depends
// neither on where a wrong token first differs nor on the length of the right one. No
// function here puts a token, right or wrong, into a message.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace ampd::server {

// A token read from a file or an environment variable, with what is worth a warning
// (a file others may read, a short token).
struct LoadedToken {
  std::string token;
  std::vector<std::string> warnings;
};

// Reads a token from `path`: the whole file, surrounding whitespace (a trailing newline)
// removed. `flag` names the source in messages ("--token-file"). InvalidArgument, naming
// the flag and the file but never the content, when the file cannot be read, is empty,
// is larger than 4 KiB, or holds anything but printable ASCII without spaces (the token
// travels in an HTTP/2 header).
StatusOr<LoadedToken> load_token_file(std::string_view flag, const std::string& path);

// Checks a token given directly (from the environment variable `name`), with the same
// rules as load_token_file.
StatusOr<LoadedToken> check_token_value(std::string_view name, std::string token);

// The result of checking one call's credentials.
enum class AuthResult {
  kOk,
  kMissing,    // no authorization metadata
  kMalformed,  // not "Bearer <token>", or sent more than once
  kWrongToken,
};

// The label of ampd_auth_failures_total{reason}: "missing", "malformed", "wrong_token".
const char* auth_result_label(AuthResult result);

// The message of the UNAUTHENTICATED status for a failed check: it says what to send and
// how ampctl sends it, and never holds what the client sent.
std::string auth_failure_message(AuthResult result);

class BearerAuth {
 public:
  // `token` must have passed load_token_file/check_token_value. Only its digest is kept.
  explicit BearerAuth(std::string_view token);

  // `authorization`: the values of the call's "authorization" metadata (normally one).
  AuthResult check(const std::vector<std::string_view>& authorization) const;

 private:
  std::array<unsigned char, 32> digest_{};
};

// True when `grpc_addr` can only be reached from this machine: 127.0.0.0/8, ::1,
// localhost, or a unix socket. 0.0.0.0, [::] and other hosts are not.
bool is_loopback_address(std::string_view grpc_addr);

// Reads a whole file for a flag; InvalidArgument "FLAG PATH: cannot read: REASON".
StatusOr<std::string> read_file_for_flag(std::string_view flag, const std::string& path);

// A warning when `path` may be read by users other than its owner (mode & 077), e.g.
// "--token-file /x is readable by other users (mode 0644); chmod 600 it"; "" otherwise.
std::string permission_warning(std::string_view flag, const std::string& path);

}  // namespace ampd::server
