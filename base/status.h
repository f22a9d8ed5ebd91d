// A small error value: a code and a message. base/ (like kernels/ above it) must build
// with the CUDA toolkit alone (no absl, no gRPC), so it carries its own; server/ maps the
// codes to grpc::Status in one function.
#pragma once

#include <string>
#include <utility>

namespace ampd {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // the caller passed something malformed; name it in the message
  kNotFound,
  kAlreadyExists,
  kFailedPrecondition,  // the call is fine, the state it meets is not
  kResourceExhausted,   // out of memory, queue full, disk full
  kUnavailable,         // a device or service that is not there
  kInternal,            // a bug or a library failure
  kCancelled,
  kDataLoss,  // corrupt or truncated data on disk
  kUnimplemented,
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok_status() { return {}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: matmul: a.cols (3) != b.rows (4)"
  std::string to_string() const;

  // Prefixes the message with context: Status(...).with_context("layer 2 (linear)").
  Status with_context(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) {
  return {StatusCode::kInvalidArgument, std::move(m)};
}
inline Status failed_precondition(std::string m) {
  return {StatusCode::kFailedPrecondition, std::move(m)};
}
inline Status resource_exhausted(std::string m) {
  return {StatusCode::kResourceExhausted, std::move(m)};
}
inline Status unavailable(std::string m) {
  return {StatusCode::kUnavailable, std::move(m)};
}
inline Status internal(std::string m) {
  return {StatusCode::kInternal, std::move(m)};
}
inline Status not_found(std::string m) {
  return {StatusCode::kNotFound, std::move(m)};
}
inline Status data_loss(std::string m) {
  return {StatusCode::kDataLoss, std::move(m)};
}
inline Status unimplemented(std::string m) {
  return {StatusCode::kUnimplemented, std::move(m)};
}

// A value or an error. Minimal on purpose: value() on an error is a bug (asserts).
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : status_(std::move(status)) {}            // NOLINT: implicit by design
  StatusOr(T value) : value_(std::move(value)), has_value_(true) {}  // NOLINT
  bool ok() const { return has_value_; }
  const Status& status() const { return status_; }
  T& value() & { return value_; }
  const T& value() const& { return value_; }
  T&& value() && { return std::move(value_); }
  T* operator->() { return &value_; }
  const T* operator->() const { return &value_; }
  T& operator*() { return value_; }

 private:
  Status status_;
  T value_{};
  bool has_value_ = false;
};

}  // namespace ampd

#define AMPD_CONCAT_INNER(a, b) a##b
#define AMPD_CONCAT(a, b) AMPD_CONCAT_INNER(a, b)

// Returns the status from the enclosing function if it is an error.
#define AMPD_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::ampd::Status ampd_status_ = (expr);        \
    if (!ampd_status_.ok()) return ampd_status_; \
  } while (0)

// AMPD_ASSIGN_OR_RETURN(auto x, Make()); declares x from a StatusOr or returns its error.
#define AMPD_ASSIGN_OR_RETURN(lhs, expr) \
  AMPD_ASSIGN_OR_RETURN_IMPL(AMPD_CONCAT(ampd_statusor_, __LINE__), lhs, expr)
#define AMPD_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
