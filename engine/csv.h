// A strict reader for numeric CSV tables (plain or gzip-compressed), used by the data
// loader for `data.csv` sources and for the built-in digits set.
//
// Every cell must be a finite number that fits in float32; errors name the source, the
// 1-based line and, where it applies, the 1-based column: "data.csv:3:5: 'abc' is not a
// number". Accepted: surrounding spaces, CRLF line endings, a UTF-8 byte order mark,
// blank lines (skipped), cells in double quotes, a leading '+'. Rejected: empty cells,
// NaN/inf, ragged rows, trailing garbage ("1.5x"), values outside float32's range.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace ampd::engine {

struct CsvOptions {
  // The first non-blank line names the columns instead of holding data.
  bool header = false;
  char delimiter = ',';
  // Limits on the (decompressed) text and on the width of a row.
  int64_t max_bytes = int64_t{2} << 30;  // 2 GiB
  int64_t max_columns = int64_t{1} << 17;
};

struct CsvTable {
  std::string source;  // the name used in messages, e.g. "data.csv"
  int64_t num_rows = 0;
  int64_t num_columns = 0;
  std::vector<std::string> column_names;  // the header cells, when CsvOptions::header
  std::vector<float> values;              // row-major, num_rows x num_columns
  std::vector<int64_t> row_lines;         // the 1-based line number of every row

  float at(int64_t row, int64_t column) const { return values[row * num_columns + column]; }
  // "data.csv:9:65": where a cell came from, for messages about its value.
  std::string location(int64_t row, int64_t column) const;
};

// Parses CSV text. `source` names the input in messages.
StatusOr<CsvTable> parse_csv(std::string_view text, const std::string& source,
                             const CsvOptions& options = {});

// Parses a buffer that holds CSV text, or gzip-compressed CSV text (detected by the gzip
// magic bytes).
StatusOr<CsvTable> read_csv_buffer(std::span<const unsigned char> bytes, const std::string& source,
                                   const CsvOptions& options = {});

// Reads and parses a file (plain or gzip). `source` names it in messages (callers pass
// the path as the user wrote it, not the resolved one). The caller vets the path.
StatusOr<CsvTable> read_csv_file(const std::string& path, const std::string& source,
                                 const CsvOptions& options = {});

// Reads a whole regular file of at most `max_bytes` (NotFound when missing,
// InvalidArgument when not a regular file or too large; messages start with `source`).
// The caller vets the path.
StatusOr<std::string> read_file(const std::string& path, const std::string& source,
                                int64_t max_bytes);

// Decompresses gzip data (one or more concatenated members), refusing output larger
// than `max_bytes`.
StatusOr<std::string> gunzip(std::span<const unsigned char> bytes, const std::string& source,
                             int64_t max_bytes);

// True when the bytes start with the gzip magic number.
bool is_gzip(std::span<const unsigned char> bytes);

}  // namespace ampd::engine
