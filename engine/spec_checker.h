// Validation of job specs: a collector of errors, each starting with its field path in
// proto field names ("optimizer.adamw.lr: must be > 0, got -1"). engine/job_spec.cc uses
// it for the whole spec; each layer kind's entry in engine/layer_registry.h for its own
// message. Errors are collected, not stopped at.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "base/status.h"
#include "proto/job_spec_io.h"

namespace ampd::engine {

// At most this many errors are listed; the count line still gives the total.
inline constexpr size_t kMaxListedErrors = 50;

// Shortest text that reads back as the same value: 0.1f prints "0.1", not "0.100000001".
template <typename T>
std::string Num(T v) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  if (ec != std::errc()) return "?";
  return std::string(buf, end);
}

inline std::string Quote(std::string_view s) {
  return spec_io::quote_for_message(s);
}

class SpecChecker {
 public:
  void Add(const std::string& path, const std::string& message) {
    errors_.push_back(path + ": " + message);
  }
  bool ok() const { return errors_.empty(); }

  // One error alone; several under a count line, one per line.
  Status ToStatus() const {
    if (errors_.size() == 1) return InvalidArgument(errors_[0]);
    std::string message = "job spec has " + std::to_string(errors_.size()) + " errors:";
    for (size_t i = 0; i < errors_.size() && i < kMaxListedErrors; ++i) {
      message += "\n  " + errors_[i];
    }
    if (errors_.size() > kMaxListedErrors) {
      message += "\n  ... and " + std::to_string(errors_.size() - kMaxListedErrors) + " more";
    }
    return InvalidArgument(message);
  }

  template <typename T>
  bool Finite(const std::string& path, T v) {
    if (std::isfinite(v)) return true;
    Add(path, "must be finite, got " + Num(v));
    return false;
  }

  // v in the interval from lo to hi, each end closed or open; reported in interval notation.
  template <typename T>
  bool InRange(const std::string& path, T v, T lo, bool lo_closed, T hi, bool hi_closed) {
    if constexpr (std::is_floating_point_v<T>) {
      if (!Finite(path, v)) return false;
    }
    bool ok = (lo_closed ? v >= lo : v > lo) && (hi_closed ? v <= hi : v < hi);
    if (!ok) {
      Add(path, "must be in " + std::string(lo_closed ? "[" : "(") + Num(lo) + ", " + Num(hi) +
                    (hi_closed ? "]" : ")") + ", got " + Num(v));
    }
    return ok;
  }
  template <typename T>
  bool Closed(const std::string& path, T v, T lo, T hi) {
    return InRange(path, v, lo, true, hi, true);
  }

  // v > lo (strict) or v >= lo.
  template <typename T>
  bool Above(const std::string& path, T v, T lo, bool strict) {
    if constexpr (std::is_floating_point_v<T>) {
      if (!Finite(path, v)) return false;
    }
    bool ok = strict ? v > lo : v >= lo;
    if (!ok)
      Add(path, std::string("must be ") + (strict ? "> " : ">= ") + Num(lo) + ", got " + Num(v));
    return ok;
  }
  template <typename T>
  bool Positive(const std::string& path, T v) {
    return Above(path, v, T(0), true);
  }
  template <typename T>
  bool NonNegative(const std::string& path, T v) {
    return Above(path, v, T(0), false);
  }

  bool OneOf(const std::string& path, const std::string& v,
             std::initializer_list<std::string_view> allowed) {
    std::string list;
    for (std::string_view a : allowed) {
      if (v == a) return true;
      if (!list.empty()) list += ", ";
      list += a;
    }
    Add(path, "must be one of " + list + "; got " + Quote(v));
    return false;
  }

 private:
  std::vector<std::string> errors_;
};

}  // namespace ampd::engine
