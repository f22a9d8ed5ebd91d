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
std::string num(T v) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  if (ec != std::errc()) return "?";
  return std::string(buf, end);
}

inline std::string quote(std::string_view s) {
  return spec_io::quote_for_message(s);
}

class SpecChecker {
 public:
  void add(const std::string& path, const std::string& message) {
    errors_.push_back(path + ": " + message);
  }
  bool ok() const { return errors_.empty(); }

  // One error alone; several under a count line, one per line.
  Status to_status() const {
    if (errors_.size() == 1) return invalid_argument(errors_[0]);
    std::string message = "job spec has " + std::to_string(errors_.size()) + " errors:";
    for (size_t i = 0; i < errors_.size() && i < kMaxListedErrors; ++i) {
      message += "\n  " + errors_[i];
    }
    if (errors_.size() > kMaxListedErrors) {
      message += "\n  ... and " + std::to_string(errors_.size() - kMaxListedErrors) + " more";
    }
    return invalid_argument(message);
  }

  template <typename T>
  bool finite(const std::string& path, T v) {
    if (std::isfinite(v)) return true;
    add(path, "must be finite, got " + num(v));
    return false;
  }

  // v in the interval from lo to hi, each end closed or open; reported in interval notation.
  template <typename T>
  bool in_range(const std::string& path, T v, T lo, bool lo_closed, T hi, bool hi_closed) {
    if constexpr (std::is_floating_point_v<T>) {
      if (!finite(path, v)) return false;
    }
    bool ok = (lo_closed ? v >= lo : v > lo) && (hi_closed ? v <= hi : v < hi);
    if (!ok) {
      add(path, "must be in " + std::string(lo_closed ? "[" : "(") + num(lo) + ", " + num(hi) +
                    (hi_closed ? "]" : ")") + ", got " + num(v));
    }
    return ok;
  }
  template <typename T>
  bool closed(const std::string& path, T v, T lo, T hi) {
    return in_range(path, v, lo, true, hi, true);
  }

  // v > lo (strict) or v >= lo.
  template <typename T>
  bool above(const std::string& path, T v, T lo, bool strict) {
    if constexpr (std::is_floating_point_v<T>) {
      if (!finite(path, v)) return false;
    }
    bool ok = strict ? v > lo : v >= lo;
    if (!ok)
      add(path, std::string("must be ") + (strict ? "> " : ">= ") + num(lo) + ", got " + num(v));
    return ok;
  }
  template <typename T>
  bool positive(const std::string& path, T v) {
    return above(path, v, T(0), true);
  }
  template <typename T>
  bool non_negative(const std::string& path, T v) {
    return above(path, v, T(0), false);
  }

  bool one_of(const std::string& path, const std::string& v,
              std::initializer_list<std::string_view> allowed) {
    std::string list;
    for (std::string_view a : allowed) {
      if (v == a) return true;
      if (!list.empty()) list += ", ";
      list += a;
    }
    add(path, "must be one of " + list + "; got " + quote(v));
    return false;
  }

 private:
  std::vector<std::string> errors_;
};

}  // namespace ampd::engine
