// Job files as text: YAML or JSON -> ampd.v1.JobSpec, with no validation. Shared by the
// engine (engine/job_spec.h wraps it and adds validation and defaults) and by ampctl,
// which parses a job file locally before it submits it, so that a syntax error names its
// line without a round trip. Depends on the proto, protobuf and yaml-cpp alone.
//
// There is one schema, proto/ampd/v1/job.proto, and one parser, protobuf's JSON mapping
// (google::protobuf::util::JsonStringToMessage). YAML is only a friendlier syntax for the
// same JSON: it is converted to JSON text first (maps -> objects, sequences -> arrays,
// plain numbers -> numbers, true/false -> booleans, null/~ -> null, quoted scalars ->
// strings), guided by the message descriptors only where YAML is ambiguous (a plain `42`
// given to a string field stays the string "42"; an empty `relu:` on a message field is
// the empty message {}). Nothing here throws.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "ampd/v1/job.pb.h"

namespace ampd::spec_io {

// A job spec is a few kilobytes (256 layers fit in ~10 KB); larger input is refused.
inline constexpr size_t kMaxSpecBytes = 1 << 20;

enum class ErrorKind {
  kNone,      // parsed
  kInvalid,   // malformed input: syntax, unknown field, wrong type, too large
  kNotFound,  // the file does not exist
  kInternal,  // a library failure
};

struct ParseResult {
  ampd::v1::JobSpec spec;  // valid when ok()
  ErrorKind error = ErrorKind::kNone;
  std::string message;  // set when !ok()
  bool ok() const { return error == ErrorKind::kNone; }
};

// Parses a job file's text. `format` is "yaml", "json", or "" to guess (a leading '{'
// means JSON, anything else is read as YAML, which is a superset of JSON anyway). Error
// messages start with "job spec: ": YAML syntax errors carry a 1-based line and column;
// protobuf's own message names unknown fields and values of the wrong type with their
// path, e.g. "job spec: (model.layers[0]) conv: Cannot find field.".
ParseResult parse_job_spec_text(std::string_view text, std::string_view format = "");

// Reads and parses a job file; the format follows the extension (.json, .yaml/.yml), else
// it is guessed. kNotFound when the file does not exist, kInvalid otherwise; every message
// starts with the path.
ParseResult read_job_spec_file(const std::string& path);

// 'text' for error messages: at most 64 bytes, control characters escaped, in quotes.
std::string quote_for_message(std::string_view s);

}  // namespace ampd::spec_io
