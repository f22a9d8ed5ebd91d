#include "server/dataset_store.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
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

void Sha256::Update(std::string_view data) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data.data(), data.size());
}

std::string Sha256::HexDigest() {
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

bool DatasetStore::ValidName(const std::string& name) {
  if (name.empty() || name.size() > 100 || name[0] == '.') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

StatusOr<std::unique_ptr<DatasetStore>> DatasetStore::Create(Options options) {
  std::error_code ec;
  fs::create_directories(options.data_dir, ec);
  if (ec || !fs::is_directory(options.data_dir)) {
    return Unavailable("data dir " + options.data_dir + ": " +
                       (ec ? ec.message() : "not a directory"));
  }
  // Temporary files of uploads that a crash interrupted are useless: clear them.
  for (const auto& entry : fs::directory_iterator(options.data_dir, ec)) {
    if (entry.path().filename().string().rfind(".upload-", 0) == 0) fs::remove(entry.path(), ec);
  }
  return std::unique_ptr<DatasetStore>(new DatasetStore(std::move(options)));
}

StatusOr<std::unique_ptr<DatasetStore::Upload>> DatasetStore::BeginUpload(
    const std::string& name, int64_t size_bytes, const std::string& sha256) {
  if (!ValidName(name)) {
    return InvalidArgument(
        "header.name: must be 1..100 characters of [A-Za-z0-9._-] not starting with '.', got '" +
        name.substr(0, 120) + "'");
  }
  if (size_bytes <= 0) return InvalidArgument("header.size_bytes: must be > 0");
  if (size_bytes > options_.max_upload_bytes) {
    return ResourceExhausted("header.size_bytes: " + std::to_string(size_bytes) +
                             " bytes is over this server's upload limit of " +
                             std::to_string(options_.max_upload_bytes) + " bytes");
  }
  const std::string hash = to_lower(sha256);
  if (hash.size() != 64 || hash.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return InvalidArgument("header.sha256: must be 64 hexadecimal digits");
  }
  const fs::path final_path = fs::path(options_.data_dir) / name;
  std::error_code ec;
  if (fs::exists(fs::symlink_status(final_path, ec))) {
    return Status(StatusCode::kAlreadyExists, "data set '" + name + "' already exists");
  }
  static std::atomic<uint64_t> counter{0};
  const std::string temp =
      (fs::path(options_.data_dir) /
       (".upload-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1))))
          .string();
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return Unavailable("cannot create " + temp + ": " + errno_text());
  return std::unique_ptr<Upload>(new Upload(this, DatasetInfo{name, size_bytes, hash}, temp, fd));
}

DatasetStore::Upload::Upload(DatasetStore* store, DatasetInfo declared, std::string temp_path,
                             int fd)
    : store_(store), declared_(std::move(declared)), temp_path_(std::move(temp_path)), fd_(fd) {}

DatasetStore::Upload::~Upload() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(temp_path_.c_str());
}

Status DatasetStore::Upload::Append(std::string_view chunk) {
  const int64_t next = received_ + static_cast<int64_t>(chunk.size());
  if (next > store_->options_.max_upload_bytes) {
    return ResourceExhausted("upload is over this server's limit of " +
                             std::to_string(store_->options_.max_upload_bytes) + " bytes");
  }
  if (next > declared_.size_bytes) {
    return InvalidArgument("upload is longer than header.size_bytes (" +
                           std::to_string(declared_.size_bytes) + ")");
  }
  if (!write_all(fd_, chunk.data(), chunk.size())) {
    if (errno == ENOSPC) return ResourceExhausted("data dir is full");
    return Internal("writing " + temp_path_ + ": " + errno_text());
  }
  hash_.Update(chunk);
  received_ = next;
  return Status::Ok();
}

StatusOr<DatasetInfo> DatasetStore::Upload::Finish() {
  if (received_ != declared_.size_bytes) {
    return InvalidArgument("upload ended after " + std::to_string(received_) +
                           " bytes but header.size_bytes is " +
                           std::to_string(declared_.size_bytes));
  }
  const std::string actual = hash_.HexDigest();
  if (actual != declared_.sha256) {
    return InvalidArgument("header.sha256: the content's SHA-256 is " + actual + ", not " +
                           declared_.sha256 + " (nothing was stored)");
  }
  if (::fsync(fd_) != 0) return Internal("fsync " + temp_path_ + ": " + errno_text());
  struct stat st {};
  ::fstat(fd_, &st);
  ::close(fd_);
  fd_ = -1;
  const std::string final_path = (fs::path(store_->options_.data_dir) / declared_.name).string();
  if (::link(temp_path_.c_str(), final_path.c_str()) != 0) {
    if (errno == EEXIST) {
      return Status(StatusCode::kAlreadyExists, "data set '" + declared_.name + "' already exists");
    }
    return Internal("link " + final_path + ": " + errno_text());
  }
  ::unlink(temp_path_.c_str());
  finished_ = true;
  // Make the new directory entry itself durable.
  const int dfd = ::open(store_->options_.data_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  store_->Remember(declared_, mtime_ns(st));
  return declared_;
}

void DatasetStore::Remember(const DatasetInfo& info, int64_t mtime) {
  std::lock_guard<std::mutex> lock(mu_);
  hashes_[info.name] = CachedHash{info.size_bytes, mtime, info.sha256};
}

StatusOr<std::vector<DatasetInfo>> DatasetStore::List() {
  std::error_code ec;
  std::vector<DatasetInfo> out;
  for (const auto& entry : fs::directory_iterator(options_.data_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!ValidName(name)) continue;
    struct stat st {};
    if (::stat(entry.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
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
      const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      Sha256 h;
      std::string buf(1 << 20, '\0');
      ssize_t n;
      while ((n = ::read(fd, buf.data(), buf.size())) > 0) {
        h.Update(std::string_view(buf.data(), static_cast<size_t>(n)));
      }
      ::close(fd);
      if (n < 0) continue;
      info.sha256 = h.HexDigest();
      Remember(info, mtime_ns(st));
    }
    out.push_back(std::move(info));
  }
  if (ec) return Unavailable("listing " + options_.data_dir + ": " + ec.message());
  std::sort(out.begin(), out.end(),
            [](const DatasetInfo& a, const DatasetInfo& b) { return a.name < b.name; });
  return out;
}

}  // namespace ampd::server
