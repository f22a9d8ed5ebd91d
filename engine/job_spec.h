// Job files: parsing (YAML or JSON), validation with defaults, a memory estimate, and the
// JSON form written into checkpoints and logs.
//
// There is one schema, proto/ampd/v1/job.proto, and one parser, protobuf's JSON mapping
// (google::protobuf::util::JsonStringToMessage). YAML is only a friendlier syntax for the
// same JSON: it is converted to JSON text first (maps -> objects, sequences -> arrays,
// plain numbers -> numbers, true/false -> booleans, null/~ -> null, quoted scalars ->
// strings), guided by the message descriptors only where YAML is ambiguous (a plain `42`
// given to a string field stays the string "42"; an empty `relu:` on a message field is
// the empty message {}). Nothing here throws.
// The parsing is proto/job_spec_io.h (ampd_spec_io, shared with ampctl); this header wraps
// it in Status and adds validation.
//
//   AMPD_ASSIGN_OR_RETURN(ampd::v1::JobSpec spec, load_job_spec_file("job.yaml"));
//   AMPD_ASSIGN_OR_RETURN(spec, validate_and_resolve(spec));  // every default explicit
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "ampd/v1/job.pb.h"
#include "base/status.h"

namespace ampd::engine {

// Parses a job file's text into a JobSpec (no validation: see validate_and_resolve).
// `format` is "yaml", "json", or "" to guess (a leading '{' means JSON, anything else is
// read as YAML, which is a superset of JSON anyway). Errors are InvalidArgument starting
// with "job spec: ": YAML syntax errors carry a 1-based line and column; protobuf's own
// message names unknown fields and values of the wrong type with their path, e.g.
// "job spec: (model.layers[0]) conv: Cannot find field.".
StatusOr<ampd::v1::JobSpec> parse_job_spec(std::string_view text, std::string_view format = "");

// Reads and parses a job file; the format follows the extension (.json, .yaml/.yml), else
// it is guessed. NotFound when the file does not exist, InvalidArgument otherwise; every
// message starts with the path.
StatusOr<ampd::v1::JobSpec> load_job_spec_file(const std::string& path);

// Checks every field and fills every default, so that the result is fully explicit:
// precision is never empty, every `optional` field is set, every sub-message is present,
// each oneof with a default (lr_schedule.decay, loss_scaling.mode) is chosen. Loss scaling
// defaults to dynamic (PyTorch GradScaler values plus hysteresis 1, floor 1, cap 2^24) for
// fp16 and auto ("auto" stays "auto": the engine resolves it with the backend), and to off
// for fp32 and bf16 unless the spec chooses a mode.
//
// Errors are collected, not stopped at: InvalidArgument whose message is the one error
// ("optimizer.adamw.lr: must be > 0, got -1") or, for several, a count line and one
// indented line per error ("job spec has 2 errors:\n  optimizer.adamw.lr: ...\n  ...").
// Each error starts with its field path in proto field names.
StatusOr<ampd::v1::JobSpec> validate_and_resolve(const ampd::v1::JobSpec& spec);

// A conservative estimate of what one job needs on its device, used to refuse jobs that
// cannot fit before anything is allocated.
struct MemoryEstimate {
  // FP32 master weights, their low-precision working copies (fp16/bf16/auto) and their
  // FP32 gradients, plus normalization running statistics.
  int64_t parameter_bytes = 0;
  // Optimizer state in FP32: AdamW m and v; SGD's momentum buffer when momentum > 0.
  int64_t optimizer_bytes = 0;
  // One batch: the input, every layer's output and its gradient (2 bytes per element in
  // fp16/bf16/auto, 4 in fp32), dropout masks, normalization statistics, and the FP32
  // logits/probabilities of the loss with their gradient.
  int64_t activation_bytes = 0;
  int64_t total_bytes = 0;  // the sum of the three
};

// `resolved` should come from validate_and_resolve. `input_features` and `output_features`
// are the data's widths when known (> 0); otherwise the input width is taken from the data
// spec (digits: 64, synthetic: its features) or, for CSV, assumed to be the widest linear
// layer, and the output width is the last linear layer's. Saturates at INT64_MAX.
MemoryEstimate estimate_memory(const ampd::v1::JobSpec& resolved, int64_t input_features,
                               int64_t output_features);

// The spec as protobuf JSON with the proto field names (snake_case) and without fields at
// their default values; parse_job_spec reads it back to an equal message.
std::string job_spec_to_json(const ampd::v1::JobSpec& spec, bool pretty = false);

}  // namespace ampd::engine
