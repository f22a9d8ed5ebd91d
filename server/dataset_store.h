// Data sets in the server's data directory: verified uploads and listing. No gRPC here.
//
// An upload is written to a hidden temporary file in the data directory (names starting
// with '.' are never valid data set names, so it cannot collide with one), counted and
// hashed (SHA-256, OpenSSL's libcrypto) as it arrives, fsynced, and linked to its final
// name only when the size and the hash match what the header declared. link(2) fails if
// the name exists, so two concurrent uploads of one name cannot overwrite each other and
// a job never sees a half-written file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace ampd::server {

struct DatasetInfo {
  std::string name;
  int64_t size_bytes = 0;
  std::string sha256;  // lowercase hex
};

// Incremental SHA-256 over libcrypto's EVP interface.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(std::string_view data);
  std::string hex_digest();  // finishes; call once

 private:
  void* ctx_;  // EVP_MD_CTX*, kept opaque so that callers need no OpenSSL headers
};

class DatasetStore {
 public:
  struct Options {
    std::string data_dir;
    int64_t max_upload_bytes = int64_t{256} << 20;
  };

  // One upload in progress. Destroying it without a successful Finish removes the
  // temporary file.
  class Upload {
   public:
    ~Upload();
    Upload(const Upload&) = delete;
    Upload& operator=(const Upload&) = delete;
    // ResourceExhausted past the server's limit; InvalidArgument past the declared size.
    Status append(std::string_view chunk);
    // InvalidArgument when the size or the SHA-256 differs from the header (the client
    // sent something other than what it described; nothing is stored), AlreadyExists
    // when the name was taken meanwhile.
    StatusOr<DatasetInfo> finish();

   private:
    friend class DatasetStore;
    Upload(DatasetStore* store, DatasetInfo declared, std::string temp_path, int fd);
    DatasetStore* store_;
    DatasetInfo declared_;
    std::string temp_path_;
    int fd_;
    int64_t received_ = 0;
    Sha256 hash_;
    bool finished_ = false;
  };

  static StatusOr<std::unique_ptr<DatasetStore>> create(Options options);

  // Validates the header: name ([A-Za-z0-9._-], 1..100, no leading '.'), size
  // (ResourceExhausted above the limit), sha256 (64 hex digits); AlreadyExists for a name
  // in use.
  StatusOr<std::unique_ptr<Upload>> begin_upload(const std::string& name, int64_t size_bytes,
                                                 const std::string& sha256);

  // Regular files directly in the data directory whose names are valid data set names,
  // sorted by name; symbolic links (which could point outside it) are not listed. Hashes are
  // computed once per (size, mtime) and remembered.
  StatusOr<std::vector<DatasetInfo>> list();

  const Options& options() const { return options_; }
  // Data set names are plain file names directly in the data dir: 1..100 characters of
  // [A-Za-z0-9._-], not starting with '.'. Anything else (a '/', "..", a NUL, a control
  // character, an absolute path, a longer name) is refused, never rewritten.
  static constexpr size_t kMaxNameBytes = 100;
  static bool valid_name(const std::string& name);
  // Why `name` is not a valid data set name (without the field prefix), or "" when it is.
  static std::string name_error(const std::string& name);

 private:
  explicit DatasetStore(Options options) : options_(std::move(options)) {}
  void remember(const DatasetInfo& info, int64_t mtime_ns);

  const Options options_;
  std::mutex mu_;
  struct CachedHash {
    int64_t size = 0;
    int64_t mtime_ns = 0;
    std::string sha256;
  };
  std::map<std::string, CachedHash> hashes_;
};

}  // namespace ampd::server
