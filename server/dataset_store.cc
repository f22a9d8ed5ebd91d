#include "server/dataset_store.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace ampd::server {

namespace fs = std::filesystem;

namespace {

std::string errno_text() {
  return std::strerror(errno);
}

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

int64_t mtime_ns(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

// 'name' for messages: at most 64 bytes, control characters and NUL escaped, so that a
// hostile name cannot forge log lines or cut a message short.
std::string quote_name(std::string_view s) {
  std::string out = "'";
  const size_t n = std::min<size_t>(s.size(), 64);
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > n) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out + "'";
}

std::string to_lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

// ---- Sha256 ----------------------------------------------------------------------------

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr);
}

Sha256::~Sha256() {
  EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_));
}

void Sha256::update(std::string_view data) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data.data(), data.size());
}

std::string Sha256::hex_digest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), digest, &len);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 15]);
  }
  return out;
}

// ---- DatasetStore ----------------------------------------------------------------------

std::string DatasetStore::name_error(const std::string& name) {
  if (name.empty()) return "must not be empty; name the data set, e.g. iris.csv";
  if (name.size() > kMaxNameBytes) {
    return "must be at most " + std::to_string(kMaxNameBytes) + " characters, got " +
           std::to_string(name.size());
  }
  if (name.find('\0') != std::string::npos) return "must not contain a NUL character";
  if (name.find('/') != std::string::npos || name.find('\\') != std::string::npos) {
    return "must be a plain file name without '/' or '\\' (data sets live directly in the "
           "data directory), got " +
           quote_name(name);
  }
  if (name[0] == '.') {
    return "must not start with '.' ('.', '..' and hidden names are reserved), got " +
           quote_name(name);
  }
  const bool charset_ok = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
  if (!charset_ok) return "may only use the characters [A-Za-z0-9._-], got " + quote_name(name);
  return {};
}

bool DatasetStore::valid_name(const std::string& name) {
  return name_error(name).empty();
}

StatusOr<std::unique_ptr<DatasetStore>> DatasetStore::create(Options options) {
  std::error_code ec;
  fs::create_directories(options.data_dir, ec);
  if (ec || !fs::is_directory(options.data_dir)) {
    return unavailable("data dir " + options.data_dir + ": " +
                       (ec ? ec.message() : "not a directory"));
  }
  // Temporary files of uploads that a crash interrupted are useless: clear them.
  for (const auto& entry : fs::directory_iterator(options.data_dir, ec)) {
    if (entry.path().filename().string().rfind(".upload-", 0) == 0) fs::remove(entry.path(), ec);
  }
  return std::unique_ptr<DatasetStore>(new DatasetStore(std::move(options)));
}

StatusOr<std::unique_ptr<DatasetStore::Upload>> DatasetStore::begin_upload(
    const std::string& name, int64_t size_bytes, const std::string& sha256) {
  if (const std::string why = name_error(name); !why.empty()) {
    return invalid_argument("header.name: " + why);
  }
  if (size_bytes <= 0) return invalid_argument("header.size_bytes: must be > 0");
  if (size_bytes > options_.max_upload_bytes) {
    return resource_exhausted("header.size_bytes: " + std::to_string(size_bytes) +
                              " bytes is over this server's upload limit of " +
                              std::to_string(options_.max_upload_bytes) + " bytes");
  }
  const std::string hash = to_lower(sha256);
  if (hash.size() != 64 || hash.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return invalid_argument("header.sha256: must be 64 hexadecimal digits");
  }
  const fs::path final_path = fs::path(options_.data_dir) / name;
  std::error_code ec;
  if (fs::exists(fs::symlink_status(final_path, ec))) {
    return Status(StatusCode::kAlreadyExists,
                  "header.name: data set '" + name + "' already exists; choose another name");
  }
  static std::atomic<uint64_t> counter{0};
  const std::string temp =
      (fs::path(options_.data_dir) /
       (".upload-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1))))
          .string();
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return unavailable("cannot create " + temp + ": " + errno_text());
  return std::unique_ptr<Upload>(new Upload(this, DatasetInfo{name, size_bytes, hash}, temp, fd));
}

DatasetStore::Upload::Upload(DatasetStore* store, DatasetInfo declared, std::string temp_path,
                             int fd)
    : store_(store), declared_(std::move(declared)), temp_path_(std::move(temp_path)), fd_(fd) {}

DatasetStore::Upload::~Upload() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(temp_path_.c_str());
}

Status DatasetStore::Upload::append(std::string_view chunk) {
  const int64_t next = received_ + static_cast<int64_t>(chunk.size());
  if (next > store_->options_.max_upload_bytes) {
    return resource_exhausted("upload is over this server's limit of " +
                              std::to_string(store_->options_.max_upload_bytes) +
                              " bytes (--max-upload-bytes); nothing was stored");
  }
  if (next > declared_.size_bytes) {
    return invalid_argument("upload is longer than header.size_bytes (" +
                            std::to_string(declared_.size_bytes) + ")");
  }
  if (!write_all(fd_, chunk.data(), chunk.size())) {
    if (errno == ENOSPC) return resource_exhausted("data dir is full");
    return internal("writing " + temp_path_ + ": " + errno_text());
  }
  hash_.update(chunk);
  received_ = next;
  return Status::ok_status();
}

StatusOr<DatasetInfo> DatasetStore::Upload::finish() {
  if (received_ != declared_.size_bytes) {
    return invalid_argument("upload ended after " + std::to_string(received_) +
                            " bytes but header.size_bytes is " +
                            std::to_string(declared_.size_bytes));
  }
  const std::string actual = hash_.hex_digest();
  if (actual != declared_.sha256) {
    return invalid_argument("header.sha256: the content's SHA-256 is " + actual + ", not " +
                            declared_.sha256 + " (nothing was stored)");
  }
  if (::fsync(fd_) != 0) return internal("fsync " + temp_path_ + ": " + errno_text());
  struct stat st {};
  ::fstat(fd_, &st);
  ::close(fd_);
  fd_ = -1;
  const std::string final_path = (fs::path(store_->options_.data_dir) / declared_.name).string();
  if (::link(temp_path_.c_str(), final_path.c_str()) != 0) {
    if (errno == EEXIST) {
      return Status(StatusCode::kAlreadyExists, "data set '" + declared_.name + "' already exists");
    }
    return internal("link " + final_path + ": " + errno_text());
  }
  ::unlink(temp_path_.c_str());
  finished_ = true;
  // Make the new directory entry itself durable.
  const int dfd = ::open(store_->options_.data_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  store_->remember(declared_, mtime_ns(st));
  return declared_;
}

void DatasetStore::remember(const DatasetInfo& info, int64_t mtime) {
  std::lock_guard<std::mutex> lock(mu_);
  hashes_[info.name] = CachedHash{info.size_bytes, mtime, info.sha256};
}

StatusOr<std::vector<DatasetInfo>> DatasetStore::list() {
  std::error_code ec;
  std::vector<DatasetInfo> out;
  for (const auto& entry : fs::directory_iterator(options_.data_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!valid_name(name)) continue;
    // Regular files only, never followed links: a symbolic link put into the data dir by
    // other means could point anywhere, and jobs cannot use one that leaves it either.
    struct stat st {};
    if (::lstat(entry.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    DatasetInfo info{name, static_cast<int64_t>(st.st_size), ""};
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = hashes_.find(name);
      if (it != hashes_.end() && it->second.size == info.size_bytes &&
          it->second.mtime_ns == mtime_ns(st)) {
        info.sha256 = it->second.sha256;
      }
    }
    if (info.sha256.empty()) {
      // A file put there by other means (or changed since): hash it once.
      // O_NOFOLLOW | O_NONBLOCK: the entry may have been swapped for a link or a FIFO
      // since lstat; fstat checks what was actually opened.
      const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
      if (fd < 0) continue;
      struct stat opened {};
      if (::fstat(fd, &opened) != 0 || !S_ISREG(opened.st_mode)) {
        ::close(fd);
        continue;
      }
      Sha256 h;
      std::string buf(1 << 20, '\0');
      ssize_t n;
      while ((n = ::read(fd, buf.data(), buf.size())) > 0) {
        h.update(std::string_view(buf.data(), static_cast<size_t>(n)));
      }
      ::close(fd);
      if (n < 0) continue;
      info.sha256 = h.hex_digest();
      remember(info, mtime_ns(st));
    }
    out.push_back(std::move(info));
  }
  if (ec) return unavailable("listing " + options_.data_dir + ": " + ec.message());
  std::sort(out.begin(), out.end(),
            [](const DatasetInfo& a, const DatasetInfo& b) { return a.name < b.name; });
  return out;
}

}  // namespace ampd::server
