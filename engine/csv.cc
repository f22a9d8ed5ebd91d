#include "engine/csv.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <system_error>

namespace ampd::engine {
namespace {

// A cell as found on its line: the text (inside the quotes for a quoted cell) and its
// 1-based column.
struct Cell {
  std::string_view text;
  bool quoted = false;
};

bool is_space(char c, char delimiter) {
  return (c == ' ' || c == '\t') && c != delimiter;
}

bool is_blank(std::string_view line, char delimiter) {
  return std::all_of(line.begin(), line.end(), [&](char c) { return is_space(c, delimiter); });
}

// 'abc', shortened so that a megabyte of garbage does not end up in a message, with
// control characters escaped (\x00) so that a file's bytes cannot break a log line or a
// terminal.
std::string quoted_excerpt(std::string_view s) {
  constexpr size_t kMax = 40;
  std::string out = "'";
  for (char ch : s.substr(0, kMax)) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  if (s.size() > kMax) out += "...";
  out += "'";
  return out;
}

std::string line_prefix(const std::string& source, int64_t line) {
  return source + ":" + std::to_string(line) + ": ";
}

std::string cell_prefix(const std::string& source, int64_t line, int64_t column) {
  return source + ":" + std::to_string(line) + ":" + std::to_string(column + 1) + ": ";
}

// Splits one line (without its line ending) into cells.
Status split_line(std::string_view line, char delimiter, int64_t max_columns,
                  const std::string& source, int64_t line_no, std::vector<Cell>& cells) {
  cells.clear();
  size_t i = 0;
  const size_t n = line.size();
  while (true) {
    if (static_cast<int64_t>(cells.size()) >= max_columns) {
      return invalid_argument(line_prefix(source, line_no) + "more than " +
                              std::to_string(max_columns) + " columns");
    }
    while (i < n && is_space(line[i], delimiter)) ++i;
    Cell cell;
    if (i < n && line[i] == '"') {
      // A quoted cell: "" stands for one quote; the delimiter may appear inside.
      const size_t start = ++i;
      bool closed = false;
      while (i < n) {
        if (line[i] == '"') {
          if (i + 1 < n && line[i + 1] == '"') {
            i += 2;
            continue;
          }
          closed = true;
          break;
        }
        ++i;
      }
      if (!closed) {
        return invalid_argument(cell_prefix(source, line_no, static_cast<int64_t>(cells.size())) +
                                "unterminated quoted cell");
      }
      cell.text = line.substr(start, i - start);
      cell.quoted = true;
      ++i;  // the closing quote
      while (i < n && is_space(line[i], delimiter)) ++i;
      if (i < n && line[i] != delimiter) {
        return invalid_argument(cell_prefix(source, line_no, static_cast<int64_t>(cells.size())) +
                                "unexpected text after a quoted cell");
      }
    } else {
      const size_t start = i;
      while (i < n && line[i] != delimiter) ++i;
      size_t end = i;
      while (end > start && is_space(line[end - 1], delimiter)) --end;
      cell.text = line.substr(start, end - start);
    }
    cells.push_back(cell);
    if (i >= n) break;
    ++i;  // the delimiter; a line that ends with one has an empty last cell
    if (i == n) {
      cells.push_back(Cell{});
      break;
    }
  }
  return Status::ok_status();
}

std::string unescape_quotes(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    out += s[i];
    if (s[i] == '"' && i + 1 < s.size() && s[i + 1] == '"') ++i;
  }
  return out;
}

// Parses a whole cell as a finite float32. On failure returns the reason (without the
// location); on success an empty string.
std::string parse_float(std::string_view s, float* out) {
  if (s.empty()) return "empty cell";
  std::string_view digits = s;
  if (digits.size() > 1 && digits[0] == '+' &&
      (digits[1] == '.' || (digits[1] >= '0' && digits[1] <= '9'))) {
    digits.remove_prefix(1);
  }
  const char* begin = digits.data();
  const char* end = digits.data() + digits.size();
  float value = 0;
  auto [ptr, ec] = std::from_chars(begin, end, value, std::chars_format::general);
  if (ptr != end || ec == std::errc::invalid_argument) {
    return quoted_excerpt(s) + " is not a number";
  }
  if (ec == std::errc::result_out_of_range) {
    // Overflow or underflow for float; a value below float's range rounds to 0 or a
    // subnormal like any other parse, one above it is an error.
    double wide = 0;
    auto [wptr, wec] = std::from_chars(begin, end, wide, std::chars_format::general);
    if (wec != std::errc() || wptr != end ||
        !(std::fabs(wide) <= std::numeric_limits<float>::max())) {
      return quoted_excerpt(s) + " is out of the float32 range";
    }
    value = static_cast<float>(wide);
  }
  if (!std::isfinite(value)) return "non-finite value " + quoted_excerpt(s);
  *out = value;
  return {};
}

std::string format_bytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 30) && bytes % (int64_t{1} << 30) == 0) {
    return std::to_string(bytes >> 30) + " GiB";
  }
  if (bytes >= (int64_t{1} << 20) && bytes % (int64_t{1} << 20) == 0) {
    return std::to_string(bytes >> 20) + " MiB";
  }
  return std::to_string(bytes) + " bytes";
}

}  // namespace

std::string CsvTable::location(int64_t row, int64_t column) const {
  const int64_t line =
      row >= 0 && row < static_cast<int64_t>(row_lines.size()) ? row_lines[row] : 0;
  return source + ":" + std::to_string(line) + ":" + std::to_string(column + 1);
}

bool is_gzip(std::span<const unsigned char> bytes) {
  return bytes.size() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b;
}

StatusOr<std::string> gunzip(std::span<const unsigned char> bytes, const std::string& source,
                             int64_t max_bytes) {
  z_stream zs{};
  // 15 + 32: a 32 KiB window and automatic detection of a gzip (or zlib) header.
  if (inflateInit2(&zs, 15 + 32) != Z_OK) {
    return internal(source + ": cannot initialize zlib");
  }
  struct Closer {
    z_stream* zs;
    ~Closer() { inflateEnd(zs); }
  } closer{&zs};

  constexpr size_t kMaxChunk = size_t{1} << 30;  // avail_in / avail_out are 32-bit
  std::string out;
  size_t produced = 0;
  size_t consumed = 0;  // input handed to zlib before the current chunk
  const size_t total_in = bytes.size();
  auto feed = [&] {
    const size_t chunk = std::min(kMaxChunk, total_in - consumed);
    zs.next_in = const_cast<Bytef*>(bytes.data() + consumed);
    zs.avail_in = static_cast<uInt>(chunk);
    consumed += chunk;
  };
  feed();
  out.resize(std::min<size_t>(std::max<size_t>(total_in * 4, 1 << 16),
                              static_cast<size_t>(max_bytes) + 1));
  while (true) {
    if (produced == out.size()) {
      if (static_cast<int64_t>(produced) > max_bytes) {
        return invalid_argument(source + ": decompressed data exceeds the " +
                                format_bytes(max_bytes) + " limit");
      }
      out.resize(std::min<size_t>(out.size() * 2, static_cast<size_t>(max_bytes) + 1));
    }
    zs.next_out = reinterpret_cast<Bytef*>(out.data() + produced);
    const size_t room = std::min(kMaxChunk, out.size() - produced);
    zs.avail_out = static_cast<uInt>(room);
    const int ret = inflate(&zs, Z_NO_FLUSH);
    produced += room - zs.avail_out;
    if (static_cast<int64_t>(produced) > max_bytes) {
      return invalid_argument(source + ": decompressed data exceeds the " +
                              format_bytes(max_bytes) + " limit");
    }
    if (ret == Z_STREAM_END) {
      // Another gzip member may follow (concatenated .gz files decompress to the
      // concatenation of their contents, as with gunzip).
      const size_t left = zs.avail_in + (total_in - consumed);
      if (left == 0) break;
      const size_t at = total_in - left;
      if (!is_gzip(bytes.subspan(at))) {
        return invalid_argument(source + ": unexpected data after the end of the gzip stream");
      }
      if (inflateReset(&zs) != Z_OK) return internal(source + ": cannot reset zlib");
      continue;
    }
    if (ret == Z_OK) {
      if (zs.avail_in == 0 && consumed < total_in) feed();
      continue;
    }
    if (ret == Z_BUF_ERROR) {
      if (zs.avail_in == 0 && consumed < total_in) {
        feed();
        continue;
      }
      if (zs.avail_out == 0) continue;  // the output buffer grows above
      return invalid_argument(source + ": truncated gzip data");
    }
    return invalid_argument(
        source + ": corrupt gzip data (" +
        (zs.msg != nullptr ? std::string(zs.msg) : "zlib error " + std::to_string(ret)) + ")");
  }
  out.resize(produced);
  return out;
}

StatusOr<CsvTable> parse_csv(std::string_view text, const std::string& source,
                             const CsvOptions& options) {
  if (static_cast<int64_t>(text.size()) > options.max_bytes) {
    return invalid_argument(source + ": " + std::to_string(text.size()) + " bytes exceeds the " +
                            format_bytes(options.max_bytes) + " limit");
  }
  if (options.delimiter == '"' || options.delimiter == '\n' || options.delimiter == '\r') {
    return invalid_argument(source + ": invalid delimiter");
  }
  constexpr std::string_view kBom = "\xEF\xBB\xBF";
  if (text.starts_with(kBom)) text.remove_prefix(kBom.size());

  CsvTable table;
  table.source = source;
  bool want_header = options.header;
  std::vector<Cell> cells;
  int64_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    const size_t end = nl == std::string_view::npos ? text.size() : nl;
    std::string_view line = text.substr(pos, end - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (is_blank(line, options.delimiter)) continue;

    AMPD_RETURN_IF_ERROR(
        split_line(line, options.delimiter, options.max_columns, source, line_no, cells));
    const auto width = static_cast<int64_t>(cells.size());
    if (want_header) {
      want_header = false;
      table.num_columns = width;
      table.column_names.reserve(cells.size());
      for (const Cell& c : cells) {
        table.column_names.push_back(c.quoted ? unescape_quotes(c.text) : std::string(c.text));
      }
      continue;
    }
    if (table.num_columns == 0) {
      table.num_columns = width;
    } else if (width != table.num_columns) {
      return invalid_argument(line_prefix(source, line_no) + "expected " +
                              std::to_string(table.num_columns) + " columns, got " +
                              std::to_string(width));
    }
    for (int64_t c = 0; c < width; ++c) {
      float v = 0;
      std::string why = parse_float(cells[c].text, &v);
      if (!why.empty()) return invalid_argument(cell_prefix(source, line_no, c) + why);
      table.values.push_back(v);
    }
    table.row_lines.push_back(line_no);
    ++table.num_rows;
  }
  if (table.num_rows == 0) return invalid_argument(source + ": no data rows");
  return table;
}

StatusOr<CsvTable> read_csv_buffer(std::span<const unsigned char> bytes, const std::string& source,
                                   const CsvOptions& options) {
  if (is_gzip(bytes)) {
    AMPD_ASSIGN_OR_RETURN(std::string text, gunzip(bytes, source, options.max_bytes));
    return parse_csv(text, source, options);
  }
  return parse_csv(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                   source, options);
}

StatusOr<std::string> read_file(const std::string& path, const std::string& source,
                                int64_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return not_found(source + ": no such file");
    return failed_precondition(source + ": cannot open: " + std::strerror(err));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return internal(source + ": cannot stat: " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return invalid_argument(source + ": not a regular file");
  if (st.st_size > max_bytes) {
    return invalid_argument(source + ": the file is " + std::to_string(st.st_size) +
                            " bytes, over the " + format_bytes(max_bytes) + " limit");
  }
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t r = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return internal(source + ": read failed: " + std::strerror(errno));
    }
    if (r == 0) break;  // the file shrank while we read it
    got += static_cast<size_t>(r);
  }
  bytes.resize(got);
  return bytes;
}

StatusOr<CsvTable> read_csv_file(const std::string& path, const std::string& source,
                                 const CsvOptions& options) {
  AMPD_ASSIGN_OR_RETURN(const std::string bytes, read_file(path, source, options.max_bytes));
  return read_csv_buffer(std::span<const unsigned char>(
                             reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()),
                         source, options);
}

}  // namespace ampd::engine
