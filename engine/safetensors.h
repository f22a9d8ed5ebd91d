// Reading and writing the safetensors format, the on-disk form of checkpoints.
//
// File layout (https://github.com/huggingface/safetensors, "Format"):
//   [8 bytes]  N, little-endian u64: the size of the header
//   [N bytes]  UTF-8 JSON object: tensor name -> {"dtype": "F32", "shape": [2, 3],
//              "data_offsets": [begin, end]}, plus an optional "__metadata__" object of
//              string -> string. Offsets are relative to the start of the byte buffer.
//   [rest]     the byte buffer: every tensor's bytes, little-endian, row-major; the tensors
//              are contiguous, do not overlap and cover the buffer exactly.
// The writer pads the header with spaces so that the buffer starts 8-byte aligned, puts
// "__metadata__" first, and lays the tensors out by element size (F32/I32, then F16/BF16,
// then U8; the caller's order within each size) so each is aligned to its element size.
// The result loads with safetensors.torch.load_file / safetensors.numpy.load_file.
//
// Integrity: the writer adds two metadata entries, both zlib CRC-32 as "crc32:<8 lowercase
// hex>", and the reader verifies each one that is present (files written by other tools
// have neither and are accepted after the structural checks):
//   ampd.checksum         the whole byte buffer (every tensor's bytes);
//   ampd.header_checksum  the header as parsed: every other metadata entry (sorted by key,
//                         key NUL value NUL) then '\x01', then every tensor in offset order
//                         (name NUL dtype NUL dims joined by ',' NUL begin ',' end NUL).
// Together they cover every byte that carries meaning, so a single flipped byte anywhere
// in the file is either a parse error or a checksum mismatch (DataLoss); only a flip
// between two JSON whitespace characters goes unnoticed, and it changes nothing.
//
// Fault injection (tests only). write_safetensors takes an optional WriteFaults, consulted
// once per call; production callers pass none, so a release path carries one null-pointer
// test per file written and nothing else: no global hook, no lock, no environment lookup.
// The schedules tests use (AMPD_FAULT_WRITE_ENOSPC / _EROFS for a child `ampd serve`)
// are engine/write_faults.h, a library that only test binaries and, when the CMake option
// AMPD_FAULT_INJECTION is ON (the default; release images turn it off), `ampd serve` link.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "kernels/dtype.h"

namespace ampd::engine {

// One named tensor. data holds exactly product(shape) * dtype_size(dtype) bytes,
// little-endian, row-major; shape {} is a scalar (one element).
struct StTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

struct StFile {
  std::vector<StTensor> tensors;                // read: file order (ascending offset)
  std::map<std::string, std::string> metadata;  // the "__metadata__" object
  // The tensor called `name`, or nullptr.
  const StTensor* find(std::string_view name) const;
};

// Metadata keys the writer sets.
inline constexpr char kStChecksumKey[] = "ampd.checksum";  // "crc32:1a2b3c4d"
inline constexpr char kStHeaderChecksumKey[] = "ampd.header_checksum";
inline constexpr char kStFormatKey[] = "ampd.format";  // kept if the caller set it
inline constexpr char kStFormatValue[] = "ampd-checkpoint-v1";

// A write fault to inject: the stage whose system call "fails", and its errno.
enum class StWriteStage { kCreate, kWrite, kFsync, kRename };
struct StWriteFault {
  int err = 0;  // 0: no fault; else the errno the stage's system call "returns"
  StWriteStage stage = StWriteStage::kWrite;
};
// The test seam: decides, once at the start of each write_safetensors call it is given
// to, whether and where that write fails. Implementations: engine/write_faults.h, tests.
class WriteFaults {
 public:
  virtual ~WriteFaults() = default;
  virtual StWriteFault next(const std::string& path) = 0;
};

// Writes `file` to `path` atomically (tensor layout as described at the top): to
// checkpoint_temp_path(path) (engine/checkpoint.h: "<path>.tmp-<pid>-<random>") in the
// same directory, fsync, rename over `path`, fsync the
// directory. Sets kStChecksumKey and kStHeaderChecksumKey (overwriting any caller values) and
// kStFormatKey (unless the caller set it). Errors:
//   InvalidArgument     a tensor whose data size does not match dtype and shape, a negative
//                       dimension, an empty, duplicate or "__metadata__" name, non-UTF-8
//                       text in a name or the metadata;
//   ResourceExhausted   ENOSPC / EDQUOT;
//   FailedPrecondition  the directory is missing, unwritable or read-only (ENOENT, EACCES,
//                       EPERM, EROFS, ENOTDIR, EISDIR);
//   Internal            any other I/O error, or a short write.
// The message names the path and the system error. On any failure before the rename the
// temporary file is removed and an existing file at `path` is left untouched. A failure
// to fsync the directory after the rename is still reported (the new file is in place but
// may not survive a power loss). `faults`, when given, injects a failure (tests only).
Status write_safetensors(const std::string& path, const StFile& file,
                         WriteFaults* faults = nullptr);

// Writes `bytes` to `path` the same way (temporary file, fsync, rename, fsync of the
// directory), with the same errors; the message reads "write <path>: ...".
Status write_file_atomically(const std::string& path, std::string_view bytes);

// Reads and validates the file at `path`. Returns the tensors in file order (ascending
// offset) and the metadata.
// Errors:
//   NotFound            no file at `path`;
//   FailedPrecondition  it cannot be opened (EACCES...) or is not a regular file;
//   DataLoss            "checkpoint <path> is corrupt: <what>": truncated file, header size
//                       over 100 MB or past the end of the file, a header that is not a JSON
//                       object of the form above, an unknown dtype string, a negative
//                       dimension or an element count that overflows, offsets inconsistent
//                       with dtype and shape, overlapping tensors, gaps or trailing bytes,
//                       non-string metadata, "checksum mismatch" when kStChecksumKey is
//                       present and does not match the buffer, and "header checksum
//                       mismatch" when kStHeaderChecksumKey is present and does not match;
//   Unimplemented       a valid safetensors dtype that ampd::DType cannot hold (I64, F64...);
//   Internal            any other I/O error.
StatusOr<StFile> read_safetensors(const std::string& path);

}  // namespace ampd::engine
