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
// Integrity: the writer adds metadata "ampd.checksum" = "crc32:<8 lowercase hex>", the
// zlib CRC-32 of the whole byte buffer, and the reader verifies it when present (files
// written by other tools have none and are accepted after the structural checks).
//
// Fault injection (tests only; off by default): while the environment variable
// AMPD_FAULT_WRITE_ENOSPC is set to a non-empty value other than "0", every write(2) that
// write_safetensors issues fails with ENOSPC, as on a full disk. It is read on each write,
// so a test may set and unset it around a single call (setenv is not thread-safe: do it
// while no other thread is writing a checkpoint).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/status.h"

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
inline constexpr char kStFormatKey[] = "ampd.format";      // kept if the caller set it
inline constexpr char kStFormatValue[] = "ampd-checkpoint-v1";

// Writes `file` to `path` atomically (tensor layout as described at the top): to
// "<path>.tmp-<pid>-<random>" in the same directory, fsync, rename over `path`, fsync the
// directory. Sets kStChecksumKey (overwriting any caller value) and kStFormatKey (unless the caller
// set it). Errors:
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
// may not survive a power loss).
Status write_safetensors(const std::string& path, const StFile& file);

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
//                       non-string metadata, and "checksum mismatch" when kStChecksumKey is
//                       present and does not match the buffer;
//   Unimplemented       a valid safetensors dtype that ampd::DType cannot hold (I64, F64...);
//   Internal            any other I/O error.
StatusOr<StFile> read_safetensors(const std::string& path);

}  // namespace ampd::engine
