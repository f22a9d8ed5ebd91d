#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <system_error>
#include <tuple>
#include <utility>

#include "engine/checkpoint.h"  // the temporary file's name

namespace ampd::engine {
namespace {

using Json = nlohmann::ordered_json;  // keeps the header's key order (and ours when writing)

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // 100 MB, as the reference impl
constexpr char kMetadataKey[] = "__metadata__";

// ---- dtypes ----------------------------------------------------------------------------

std::string_view st_dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI32: return "I32";
    case DType::kU8: return "U8";
  }
  return "?";
}

std::optional<DType> parse_st_dtype(std::string_view s) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  if (s == "I32") return DType::kI32;
  if (s == "U8") return DType::kU8;
  return std::nullopt;
}

// Dtypes of the format that ampd::DType does not hold: a valid file, just not ours.
bool is_other_st_dtype(std::string_view s) {
  static constexpr std::string_view kOthers[] = {"BOOL", "I8",  "I16", "U16",     "U32",
                                                 "I64",  "U64", "F64", "F8_E4M3", "F8_E5M2"};
  return std::find(std::begin(kOthers), std::end(kOthers), s) != std::end(kOthers);
}

// Bytes of a tensor, or nullopt for a negative dimension or an overflow of uint64.
std::optional<uint64_t> tensor_bytes(DType dtype, const std::vector<int64_t>& shape) {
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---- checksum --------------------------------------------------------------------------

uint32_t crc32_update(uint32_t crc, const uint8_t* p, size_t n) {
  while (n > 0) {  // zlib's length is a uInt: feed at most 1 GiB at a time
    const uInt chunk = static_cast<uInt>(std::min<size_t>(n, size_t{1} << 30));
    crc = static_cast<uint32_t>(::crc32(crc, p, chunk));
    p += chunk;
    n -= chunk;
  }
  return crc;
}

std::string checksum_string(uint32_t crc) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "crc32:%08x", crc);
  return buf;
}

// One tensor of the header as the checksum sees it.
struct HeaderTensor {
  const std::string* name;
  DType dtype;
  const std::vector<int64_t>* shape;
  uint64_t begin, end;
};

// kStHeaderChecksumKey: the CRC-32 of the parsed header in a canonical form (see the
// header file), so that it does not depend on JSON formatting.
uint32_t header_crc(const std::map<std::string, std::string>& metadata,
                    const std::vector<HeaderTensor>& tensors) {
  std::string canon;
  for (const auto& [k, v] : metadata) {  // std::map: sorted by key
    if (k == kStChecksumKey || k == kStHeaderChecksumKey) continue;
    canon.append(k).push_back('\0');
    canon.append(v).push_back('\0');
  }
  canon.push_back('\x01');
  for (const HeaderTensor& t : tensors) {
    canon.append(*t.name).push_back('\0');
    canon.append(st_dtype_name(t.dtype)).push_back('\0');
    for (size_t i = 0; i < t.shape->size(); ++i) {
      if (i) canon.push_back(',');
      canon += std::to_string((*t.shape)[i]);
    }
    canon.push_back('\0');
    canon += std::to_string(t.begin) + "," + std::to_string(t.end);
    canon.push_back('\0');
  }
  return crc32_update(static_cast<uint32_t>(::crc32(0L, Z_NULL, 0)),
                      reinterpret_cast<const uint8_t*>(canon.data()), canon.size());
}

// ---- I/O helpers -----------------------------------------------------------------------

std::string errno_text(int err) {
  return std::error_code(err, std::generic_category()).message();
}

// Maps an errno from writing `path` to a Status naming the path, the step and the error.
// `noun` precedes the path in the message ("checkpoint ", or "" for any file).
Status write_error(const std::string& noun, const std::string& path, const char* what, int err) {
  std::string msg = "write " + noun + path + ": " + what + ": " + errno_text(err);
  switch (err) {
    case ENOSPC:
    case EDQUOT: return resource_exhausted(std::move(msg));
    case ENOENT:
    case EACCES:
    case EPERM:
    case EROFS:
    case ENOTDIR:
    case EISDIR: return failed_precondition(std::move(msg));
    default: return internal(std::move(msg));
  }
}

// write(2) until all of [p, p+n) is written. Returns 0 or an errno (EIO for a write that
// made no progress).
int write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (w == 0) return EIO;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return 0;
}

// read(2) up to n bytes; returns the count read (short only at end of file) or -errno.
int64_t read_all(int fd, uint8_t* p, size_t n) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::read(fd, p + done, n - done);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -static_cast<int64_t>(errno);
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return static_cast<int64_t>(done);
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now and returns 0 or the errno of close(2) (which can report a failed write).
  int close() {
    const int fd = std::exchange(fd_, -1);
    return fd >= 0 && ::close(fd) != 0 ? errno : 0;
  }

 private:
  int fd_;
};

// ---- writing ---------------------------------------------------------------------------

// The layout: tensors of 4-byte elements, then 2-byte, then 1-byte, each group in the
// caller's order. The buffer starts 8-byte aligned, so every tensor is aligned to its
// element size (what the reference writer does too, for zero-copy readers).
std::vector<const StTensor*> layout_order(const StFile& file) {
  std::vector<const StTensor*> order;
  for (const StTensor& t : file.tensors) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(), [](const StTensor* a, const StTensor* b) {
    return dtype_size(a->dtype) > dtype_size(b->dtype);
  });
  return order;
}

// The header JSON for tensors laid out in `order`, padded with spaces to a multiple of 8
// bytes. Validates the tensors and computes the checksum of the buffer.
StatusOr<std::string> build_header(const std::string& path, const StFile& file,
                                   const std::vector<const StTensor*>& order) {
  std::set<std::string_view> names;
  uint32_t crc = ::crc32(0L, Z_NULL, 0);
  for (const StTensor* t : order) {
    if (t->name.empty() || t->name == kMetadataKey || !names.insert(t->name).second) {
      return invalid_argument("write checkpoint " + path + ": invalid or duplicate tensor name '" +
                              t->name + "'");
    }
    const std::optional<uint64_t> bytes = tensor_bytes(t->dtype, t->shape);
    if (!bytes || *bytes != t->data.size()) {
      return invalid_argument("write checkpoint " + path + ": tensor '" + t->name + "' (" +
                              std::string(st_dtype_name(t->dtype)) + " " + shape_string(t->shape) +
                              ") has " + std::to_string(t->data.size()) + " bytes of data");
    }
    crc = crc32_update(crc, t->data.data(), t->data.size());
  }

  std::map<std::string, std::string> metadata = file.metadata;
  metadata.try_emplace(kStFormatKey, kStFormatValue);
  std::vector<HeaderTensor> layout;
  uint64_t at = 0;
  for (const StTensor* t : order) {
    layout.push_back(HeaderTensor{&t->name, t->dtype, &t->shape, at, at + t->data.size()});
    at += t->data.size();
  }
  metadata[kStChecksumKey] = checksum_string(crc);
  metadata[kStHeaderChecksumKey] = checksum_string(header_crc(metadata, layout));

  Json header = Json::object();
  Json& meta = header[kMetadataKey];
  for (const auto& [k, v] : metadata) meta[k] = v;
  uint64_t offset = 0;
  for (const StTensor* t : order) {
    const uint64_t end = offset + t->data.size();
    header[t->name] = {
        {"dtype", st_dtype_name(t->dtype)}, {"shape", t->shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();  // strict: throws on invalid UTF-8
  } catch (const std::exception& e) {
    return invalid_argument("write checkpoint " + path + ": header: " + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

// ---- reading ---------------------------------------------------------------------------

struct Entry {
  size_t index;  // position in the header, to order equal offsets stably
  StTensor tensor;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Checks one tensor entry of the header; fills `e` or returns the problem (DataLoss text).
Status parse_entry(const std::string& name, const Json& v, Entry* e) {
  auto bad = [&](const std::string& what) { return data_loss("tensor '" + name + "': " + what); };
  if (!v.is_object()) return bad("entry is not an object");
  const auto dt = v.find("dtype");
  const auto sh = v.find("shape");
  const auto off = v.find("data_offsets");
  if (dt == v.end() || !dt->is_string()) return bad("missing or non-string \"dtype\"");
  if (sh == v.end() || !sh->is_array()) return bad("missing or non-array \"shape\"");
  if (off == v.end() || !off->is_array() || off->size() != 2) {
    return bad("\"data_offsets\" is not an array of two offsets");
  }
  const std::string& dtype_str = dt->get_ref<const std::string&>();
  const std::optional<DType> dtype = parse_st_dtype(dtype_str);
  if (!dtype) {
    if (is_other_st_dtype(dtype_str)) {
      return unimplemented("tensor '" + name + "': dtype " + dtype_str + " is not supported");
    }
    return bad("unknown dtype \"" + dtype_str + "\"");
  }
  e->tensor.name = name;
  e->tensor.dtype = *dtype;
  for (const Json& d : *sh) {
    if (!d.is_number_unsigned() ||
        d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return bad("shape " + sh->dump() + " has a dimension that is not a non-negative integer");
    }
    e->tensor.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
  }
  for (const Json& o : *off) {
    if (!o.is_number_unsigned()) return bad("data_offsets " + off->dump() + " are not offsets");
  }
  e->begin = (*off)[0].get<uint64_t>();
  e->end = (*off)[1].get<uint64_t>();
  const std::optional<uint64_t> bytes = tensor_bytes(*dtype, e->tensor.shape);
  if (!bytes) return bad("shape " + sh->dump() + " overflows");
  if (e->end < e->begin || e->end - e->begin != *bytes) {
    return bad("data_offsets " + off->dump() + " do not match " + dtype_str + " " + sh->dump() +
               " (" + std::to_string(*bytes) + " bytes)");
  }
  return Status::ok_status();
}

// Parses and validates the header against a buffer of `buffer_size` bytes. Returns the
// tensors (without data) in file order and fills `metadata`.
StatusOr<std::vector<Entry>> parse_header(std::string_view text, uint64_t buffer_size,
                                          std::map<std::string, std::string>* metadata) {
  // Duplicate top-level keys would silently shadow a tensor: catch them while parsing.
  std::set<std::string> keys;
  std::string duplicate;
  const Json::parser_callback_t cb = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (depth == 1 && event == Json::parse_event_t::key && parsed.is_string()) {
      if (!keys.insert(parsed.get<std::string>()).second && duplicate.empty()) {
        duplicate = parsed.get<std::string>();
      }
    }
    return true;
  };
  const Json header = Json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  if (header.is_discarded()) return data_loss("header is not valid JSON");
  if (!header.is_object()) return data_loss("header is not a JSON object");
  if (!duplicate.empty()) return data_loss("header has a duplicate key '" + duplicate + "'");

  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == kMetadataKey) {
      if (!it->is_object()) return data_loss("__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string())
          return data_loss("__metadata__ value '" + m.key() + "' is not a string");
        (*metadata)[m.key()] = m->get<std::string>();
      }
      continue;
    }
    Entry e;
    e.index = entries.size();
    AMPD_RETURN_IF_ERROR(parse_entry(it.key(), *it, &e));
    entries.push_back(std::move(e));
  }

  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end, a.index) < std::tie(b.begin, b.end, b.index);
  });
  uint64_t pos = 0;
  for (const Entry& e : entries) {
    const std::string where = "tensor '" + e.tensor.name + "' at [" + std::to_string(e.begin) +
                              ", " + std::to_string(e.end) + ")";
    if (e.end > buffer_size) {
      return data_loss(where + " runs past the end of the file (buffer is " +
                       std::to_string(buffer_size) + " bytes): truncated?");
    }
    if (e.begin < pos) return data_loss(where + " overlaps the tensor before it");
    if (e.begin > pos)
      return data_loss(where + " leaves a gap after offset " + std::to_string(pos));
    pos = e.end;
  }
  if (pos != buffer_size) {
    return data_loss("tensors cover " + std::to_string(pos) + " of the " +
                     std::to_string(buffer_size) + " bytes of the buffer");
  }
  return entries;
}

}  // namespace

const StTensor* StFile::find(std::string_view name) const {
  for (const StTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

namespace {

// Writes `pieces` in order to `path` atomically: a temporary file beside it, fsync, rename,
// fsync of the directory. `fault` (tests) fails one stage; an injected write fault strikes
// after the first `write_fault_after` pieces (a half-written file).
Status atomic_write(const std::string& noun, const std::string& path,
                    std::span<const std::span<const uint8_t>> pieces, const StWriteFault& fault,
                    size_t write_fault_after) {
  auto injected = [&](StWriteStage stage) { return fault.err != 0 && fault.stage == stage; };
  const std::string tmp = checkpoint_temp_path(path);
  if (injected(StWriteStage::kCreate)) {
    return write_error(noun, path, "create temporary file", fault.err);
  }
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) return write_error(noun, path, "create temporary file", errno);

  // Until the rename succeeds, every exit removes the temporary file.
  auto fail = [&](const char* what, int err) {
    fd.close();
    ::unlink(tmp.c_str());
    return write_error(noun, path, what, err);
  };
  int err = 0;
  for (size_t i = 0; err == 0 && i < pieces.size(); ++i) {
    if (i == write_fault_after && injected(StWriteStage::kWrite)) {
      err = fault.err;
      break;
    }
    err = write_all(fd.get(), pieces[i].data(), pieces[i].size());
  }
  if (err != 0) return fail("write", err);
  if (injected(StWriteStage::kFsync)) return fail("fsync", fault.err);
  if (::fsync(fd.get()) != 0) return fail("fsync", errno);
  if ((err = fd.close()) != 0) return fail("close", err);
  if (injected(StWriteStage::kRename)) return fail("rename", fault.err);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename", errno);

  // Make the rename itself durable. Some file systems cannot fsync a directory (EINVAL).
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() < 0) return write_error(noun, path, "open directory for fsync", errno);
  if (::fsync(dfd.get()) != 0 && errno != EINVAL) {
    return write_error(noun, path, "fsync directory", errno);
  }
  return Status::ok_status();
}

}  // namespace

Status write_safetensors(const std::string& path, const StFile& file, WriteFaults* faults) {
  const std::vector<const StTensor*> order = layout_order(file);
  AMPD_ASSIGN_OR_RETURN(const std::string header, build_header(path, file, order));
  uint8_t prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<uint8_t>(uint64_t{header.size()} >> (8 * i));
  std::vector<std::span<const uint8_t>> pieces;
  pieces.reserve(order.size() + 2);
  pieces.emplace_back(prefix, sizeof prefix);
  pieces.emplace_back(reinterpret_cast<const uint8_t*>(header.data()), header.size());
  for (const StTensor* t : order) pieces.emplace_back(t->data.data(), t->data.size());
  const StWriteFault fault = faults != nullptr ? faults->next(path) : StWriteFault{};
  return atomic_write("checkpoint ", path, pieces, fault, /*write_fault_after=*/2);
}

Status write_file_atomically(const std::string& path, std::string_view bytes) {
  const std::span<const uint8_t> piece(reinterpret_cast<const uint8_t*>(bytes.data()),
                                       bytes.size());
  return atomic_write("", path, std::span(&piece, 1), StWriteFault{}, 0);
}

StatusOr<StFile> read_safetensors(const std::string& path) {
  auto corrupt = [&](const std::string& what) {
    return data_loss("checkpoint " + path + " is corrupt: " + what);
  };
  auto io_error = [&](const char* what, int err) {
    std::string msg = "read checkpoint " + path + ": " + what + ": " + errno_text(err);
    if (err == ENOENT) return not_found(std::move(msg));
    if (err == EACCES || err == EPERM || err == EISDIR || err == ENOTDIR) {
      return failed_precondition(std::move(msg));
    }
    return internal(std::move(msg));
  };

  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return io_error("open", errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return io_error("stat", errno);
  if (!S_ISREG(st.st_mode)) return failed_precondition("read checkpoint " + path + ": not a file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    return corrupt("truncated: " + std::to_string(file_size) +
                   " bytes, less than the 8-byte prefix");
  }

  uint8_t prefix[8];
  int64_t got = read_all(fd.get(), prefix, sizeof prefix);
  if (got < 0) return io_error("read", static_cast<int>(-got));
  if (got < 8) return corrupt("truncated prefix");
  uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) header_size |= uint64_t{prefix[i]} << (8 * i);
  if (header_size > kMaxHeaderBytes) {
    return corrupt("header size " + std::to_string(header_size) + " is over the 100 MB limit");
  }
  if (header_size > file_size - 8) {
    return corrupt("truncated: header size " + std::to_string(header_size) +
                   " is past the end of the " + std::to_string(file_size) + "-byte file");
  }

  std::string text(header_size, '\0');
  got = read_all(fd.get(), reinterpret_cast<uint8_t*>(text.data()), text.size());
  if (got < 0) return io_error("read", static_cast<int>(-got));
  if (static_cast<uint64_t>(got) < header_size) return corrupt("truncated header");

  StFile out;
  const uint64_t buffer_size = file_size - 8 - header_size;
  std::vector<Entry> entries;
  try {  // nlohmann throws nothing with allow_exceptions=false; bad_alloc remains possible
    StatusOr<std::vector<Entry>> parsed = parse_header(text, buffer_size, &out.metadata);
    if (!parsed.ok()) {
      if (parsed.status().code() != StatusCode::kDataLoss) {
        return parsed.status().with_context("read checkpoint " + path);
      }
      return corrupt(parsed.status().message());
    }
    entries = std::move(parsed).value();
  } catch (const std::exception& e) {
    return corrupt(std::string("header: ") + e.what());
  }

  if (const auto it = out.metadata.find(kStHeaderChecksumKey); it != out.metadata.end()) {
    std::vector<HeaderTensor> layout;
    for (const Entry& e : entries) {
      layout.push_back(
          HeaderTensor{&e.tensor.name, e.tensor.dtype, &e.tensor.shape, e.begin, e.end});
    }
    if (it->second != checksum_string(header_crc(out.metadata, layout))) {
      return corrupt("header checksum mismatch");
    }
  }

  // The tensors are contiguous and in order: read each straight into its own vector.
  uint32_t crc = ::crc32(0L, Z_NULL, 0);
  out.tensors.reserve(entries.size());
  for (Entry& e : entries) {
    std::vector<uint8_t>& data = e.tensor.data;
    data.resize(e.end - e.begin);
    got = read_all(fd.get(), data.data(), data.size());
    if (got < 0) return io_error("read", static_cast<int>(-got));
    if (static_cast<uint64_t>(got) < data.size()) {
      return corrupt("truncated in tensor '" + e.tensor.name + "'");
    }
    crc = crc32_update(crc, data.data(), data.size());
    out.tensors.push_back(std::move(e.tensor));
  }

  if (const auto it = out.metadata.find(kStChecksumKey); it != out.metadata.end()) {
    if (it->second != checksum_string(crc)) return corrupt("checksum mismatch");
  }
  return out;
}

}  // namespace ampd::engine
