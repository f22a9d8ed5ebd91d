// libFuzzer target: job-file text (YAML or JSON) -> JobSpec -> validated, resolved JobSpec.
//
// Beyond "no crash, no leak, no undefined behaviour, no hang", it checks the properties
// the server relies on:
//   - an error is InvalidArgument and its message starts with "job spec" (parse) or names
//     a field path (validation): never Internal, never empty, no raw control characters;
//   - a resolved spec validates again to itself (validation is idempotent);
//   - the resolved spec's JSON (job_spec_to_json, what checkpoints store) parses back to
//     an equal message;
//   - the memory estimate is non-negative and its parts add up (saturating).
// A violated property aborts, which libFuzzer reports as a crash with the input saved.
#include <google/protobuf/util/message_differencer.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>

#include "engine/job_spec.h"
#include "proto/job_spec_io.h"

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_job_spec: property violated: %s\n%s\n", what, detail.c_str());
  std::abort();
}

void check_error(const ampd::Status& s) {
  if (s.code() != ampd::StatusCode::kInvalidArgument)
    fail("error is not InvalidArgument", s.to_string());
  if (s.message().empty()) fail("empty error message", "");
  // Messages reach logs and terminals: line breaks only where the error list puts them.
  for (char ch : s.message()) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\n') || c == 0x7f)
      fail("raw control character in the error", s.message());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using ampd::engine::estimate_memory;
  using ampd::engine::job_spec_to_json;
  using ampd::engine::parse_job_spec;
  using ampd::engine::validate_and_resolve;
  using google::protobuf::util::MessageDifferencer;

  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)ampd::spec_io::quote_for_message(text);

  auto parsed = parse_job_spec(text);
  if (!parsed.ok()) {
    check_error(parsed.status());
    if (parsed.status().message().rfind("job spec", 0) != 0) {
      fail("parse error does not start with 'job spec'", parsed.status().message());
    }
    return 0;
  }
  auto resolved = validate_and_resolve(*parsed);
  if (!resolved.ok()) {
    check_error(resolved.status());
    return 0;
  }
  auto again = validate_and_resolve(*resolved);
  if (!again.ok()) fail("a resolved spec does not validate", again.status().message());
  if (!MessageDifferencer::Equals(*again, *resolved)) {
    fail("validation is not idempotent",
         job_spec_to_json(*resolved) + "\n" + job_spec_to_json(*again));
  }

  const std::string json = job_spec_to_json(*resolved);
  auto reread = parse_job_spec(json, "json");
  if (!reread.ok())
    fail("job_spec_to_json output does not parse", json + "\n" + reread.status().message());
  if (!MessageDifferencer::Equals(*reread, *resolved))
    fail("JSON round trip changed the spec", json);

  for (int64_t in : {int64_t{0}, int64_t{1}, std::numeric_limits<int64_t>::max()}) {
    const auto m = estimate_memory(*resolved, in, in);
    if (m.parameter_bytes < 0 || m.optimizer_bytes < 0 || m.activation_bytes < 0 ||
        m.total_bytes < 0) {
      fail("negative memory estimate", json);
    }
    if (m.total_bytes < m.parameter_bytes || m.total_bytes < m.optimizer_bytes ||
        m.total_bytes < m.activation_bytes) {
      fail("memory estimate total is below a part", json);
    }
  }
  return 0;
}
