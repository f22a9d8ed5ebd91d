// libFuzzer target: bytes (CSV text, or gzip-compressed CSV) -> CsvTable.
//
// Each input is read twice: as a plain comma-separated table, and with a header and a
// delimiter (';', '\t' or ' ') picked by the input's size. Limits are small (64 KiB decompressed,
// 256 columns) so that every run stays far below -rss_limit_mb and the limits themselves get
// exercised. Beyond "no crash, no leak, no undefined behaviour, no hang", a successful parse must
// be a consistent table (rows x columns values, all finite, increasing line numbers, at least one
// row) and an error must be InvalidArgument whose message starts with the source name.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

#include "engine/csv.h"

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_csv: property violated: %s\n%s\n", what, detail.c_str());
  std::abort();
}

void check_one(std::span<const unsigned char> bytes, const ampd::engine::CsvOptions& options) {
  auto table = ampd::engine::read_csv_buffer(bytes, "fuzz.csv", options);
  if (!table.ok()) {
    const ampd::Status& s = table.status();
    if (s.code() != ampd::StatusCode::kInvalidArgument)
      fail("error is not InvalidArgument", s.to_string());
    if (s.message().rfind("fuzz.csv", 0) != 0) fail("error does not name the source", s.message());
    for (char ch : s.message()) {
      if (static_cast<unsigned char>(ch) < 0x20)
        fail("raw control character in the error", s.message());
    }
    return;
  }
  const ampd::engine::CsvTable& t = *table;
  if (t.num_rows <= 0 || t.num_columns <= 0 || t.num_columns > options.max_columns) {
    fail("bad table shape", std::to_string(t.num_rows) + " x " + std::to_string(t.num_columns));
  }
  if (static_cast<int64_t>(t.values.size()) != t.num_rows * t.num_columns ||
      static_cast<int64_t>(t.row_lines.size()) != t.num_rows) {
    fail("values or row_lines do not match the shape", std::to_string(t.values.size()));
  }
  if (options.header && static_cast<int64_t>(t.column_names.size()) != t.num_columns) {
    fail("header width differs from the table's", std::to_string(t.column_names.size()));
  }
  for (float v : t.values) {
    if (!std::isfinite(v)) fail("non-finite value accepted", std::to_string(v));
  }
  for (size_t i = 1; i < t.row_lines.size(); ++i) {
    if (t.row_lines[i] <= t.row_lines[i - 1]) fail("row lines not increasing", "");
  }
  (void)t.location(t.num_rows - 1, t.num_columns - 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const unsigned char> bytes(data, size);
  ampd::engine::CsvOptions options;
  options.max_bytes = 64 << 10;
  options.max_columns = 256;
  check_one(bytes, options);  // plain: no header, commas
  // With a header, and a delimiter the input's size picks (so seeds stay plain CSV files).
  static constexpr char kDelimiters[] = {';', '\t', ' '};
  options.header = true;
  options.delimiter = kDelimiters[size % 3];
  check_one(bytes, options);
  return 0;
}
