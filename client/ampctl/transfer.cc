// ampctl download | datasets upload | datasets list: the streaming calls that move files.
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "client/ampctl/ampctl.h"
#include "client/ampctl/connection.h"
#include "client/ampctl/interrupts.h"
#include "client/ampctl/output.h"
#include "proto/progress_view.h"

namespace ampd::ampctl {

namespace {

namespace fs = std::filesystem;

// Bytes per UploadDatasetRequest chunk: well under gRPC's 4 MiB message limit.
constexpr size_t kUploadChunkBytes = 256 << 10;

struct DownloadOptions {
  std::string job_id;
  std::string path;  // default: <job_id>.safetensors
};

struct UploadOptions {
  std::string name;
  std::string file;
  std::string output = "text";
};

struct DatasetListOptions {
  std::string output = "text";
};

bool stderr_is_tty() {
  return isatty(STDERR_FILENO) == 1;
}

// A file under construction: removed on destruction unless committed.
class TempFile {
 public:
  explicit TempFile(const fs::path& final_path) : final_(final_path) {}
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_ && !temp_.empty()) ::unlink(temp_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  // Creates ".<name>.part-XXXXXX" next to the final path; "" or an error message.
  std::string open() {
    const fs::path dir = final_.has_parent_path() ? final_.parent_path() : fs::path(".");
    std::string pattern = (dir / ("." + final_.filename().string() + ".part-XXXXXX")).string();
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    fd_ = ::mkstemp(buf.data());
    if (fd_ < 0) return "cannot create a file in " + dir.string() + ": " + std::strerror(errno);
    temp_ = buf.data();
    ::fchmod(fd_, 0644);
    return "";
  }

  std::string write(const std::string& data) {
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::write(fd_, data.data() + off, data.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return "cannot write " + temp_ + ": " + std::strerror(errno);
      off += static_cast<size_t>(n);
    }
    return "";
  }

  // fsync, close, rename over the final path, fsync the directory.
  std::string commit() {
    if (::fsync(fd_) != 0) return "cannot sync " + temp_ + ": " + std::strerror(errno);
    ::close(fd_);
    fd_ = -1;
    if (::rename(temp_.c_str(), final_.c_str()) != 0) {
      return "cannot rename " + temp_ + " to " + final_.string() + ": " + std::strerror(errno);
    }
    committed_ = true;
    const fs::path dir = final_.has_parent_path() ? final_.parent_path() : fs::path(".");
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
    return "";
  }

 private:
  fs::path final_;
  std::string temp_;
  int fd_ = -1;
  bool committed_ = false;
};

int run_download(const GlobalOptions& g, const DownloadOptions& o) {
  const fs::path out = o.path.empty() ? fs::path(o.job_id + ".safetensors") : fs::path(o.path);
  std::error_code ec;
  if (fs::is_directory(out, ec)) {
    return fail(kExitUsage, "download: " + out.string() + " is a directory; give a file name");
  }
  const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  if (!fs::is_directory(dir, ec)) {
    return fail(kExitUsage, "download: no such directory: " + dir.string());
  }
  TempFile file(out);
  if (std::string err = file.open(); !err.empty()) return fail(kExitError, "download: " + err);

  Connection conn(g);
  auto ctx = conn.stream_context();
  InterruptScope scope([&ctx] { ctx->TryCancel(); });
  ampd::v1::DownloadCheckpointRequest req;
  req.set_job_id(o.job_id);
  auto reader = conn.stub().DownloadCheckpoint(ctx.get(), req);
  ByteProgress progress(std::cerr, stderr_is_tty(), "download", 0);
  ampd::v1::CheckpointChunk chunk;
  int64_t written = 0;
  int64_t total = -1;
  int64_t step = 0;
  std::string error;
  while (error.empty() && reader->Read(&chunk)) {
    if (total < 0) {
      total = chunk.total_bytes();
      step = chunk.step();
      progress.set_total(total);
    }
    if (chunk.offset() != written) {
      error = "chunk at offset " + std::to_string(chunk.offset()) + ", expected " +
              std::to_string(written) + " (the checkpoint changed during the download?)";
    } else if (chunk.total_bytes() != total || chunk.step() != step) {
      error = "the checkpoint changed during the download (step " + std::to_string(step) + " -> " +
              std::to_string(chunk.step()) + "); run it again";
    } else {
      error = file.write(chunk.data());
      written += static_cast<int64_t>(chunk.data().size());
      progress.update(written);
    }
  }
  if (!error.empty()) ctx->TryCancel();
  grpc::Status status = reader->Finish();
  progress.finish();
  if (interrupted()) {
    return fail(kExitInterrupted, "download interrupted; " + out.string() + " was not written");
  }
  if (!error.empty()) return fail(kExitError, "download job " + o.job_id + ": " + error);
  if (!status.ok()) return conn.report(status, "download job " + o.job_id);
  if (total < 0 || written != total) {
    return fail(kExitError, "download job " + o.job_id + ": got " + std::to_string(written) +
                                " of " + std::to_string(std::max<int64_t>(total, 0)) +
                                " bytes; run it again");
  }
  if (std::string err = file.commit(); !err.empty()) return fail(kExitError, "download: " + err);
  std::cout << "downloaded the checkpoint of job " << o.job_id << " (step " << step << ", "
            << format_bytes(written) << ") to " << out.string() << "\n";
  return kExitOk;
}

// The server's rule for data set names: [A-Za-z0-9._-], 1..100 chars, no leading '.'.
bool valid_dataset_name(const std::string& name) {
  if (name.empty() || name.size() > 100 || name[0] == '.') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string hex(const unsigned char* bytes, unsigned int n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out += kDigits[bytes[i] >> 4];
    out += kDigits[bytes[i] & 15];
  }
  return out;
}

// SHA-256 of the file (hex), with a progress bar; "" and *error on failure.
std::string sha256_file(const std::string& path, int64_t size, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = "cannot open " + path + ": " + std::strerror(errno);
    return "";
  }
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!md || EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) != 1) {
    *error = "OpenSSL: cannot start SHA-256";
    return "";
  }
  ByteProgress progress(std::cerr, stderr_is_tty() && size > (64 << 20), "sha256", size);
  std::vector<char> buf(1 << 20);
  int64_t done = 0;
  while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
    EVP_DigestUpdate(md.get(), buf.data(), static_cast<size_t>(in.gcount()));
    done += in.gcount();
    progress.update(done);
    if (interrupted()) break;
  }
  progress.finish();
  if (in.bad()) {
    *error = "cannot read " + path;
    return "";
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(md.get(), digest, &n);
  return hex(digest, n);
}

int run_upload(const GlobalOptions& g, const UploadOptions& o) {
  const std::string what = "upload data set " + o.name;
  if (!valid_dataset_name(o.name)) {
    return fail(kExitUsage, what +
                                ": a name is 1 to 100 of A-Z a-z 0-9 . _ - and does not "
                                "start with '.'");
  }
  std::error_code ec;
  if (!fs::is_regular_file(o.file, ec)) {
    return fail(kExitUsage, what + ": " + o.file + ": " +
                                (fs::exists(o.file, ec) ? "not a regular file" : "no such file"));
  }
  const int64_t size = static_cast<int64_t>(fs::file_size(o.file, ec));
  if (ec) return fail(kExitUsage, what + ": " + o.file + ": " + ec.message());

  Connection conn(g);
  auto ctx = conn.stream_context();
  InterruptScope scope([&ctx] { ctx->TryCancel(); });
  std::string error;
  const std::string digest = sha256_file(o.file, size, &error);
  if (interrupted()) return fail(kExitInterrupted, "upload interrupted; nothing was sent");
  if (!error.empty()) return fail(kExitUsage, what + ": " + error);

  ampd::v1::Dataset result;
  auto writer = conn.stub().UploadDataset(ctx.get(), &result);
  ampd::v1::UploadDatasetRequest msg;
  msg.mutable_header()->set_name(o.name);
  msg.mutable_header()->set_size_bytes(size);
  msg.mutable_header()->set_sha256(digest);
  bool open = writer->Write(msg);
  std::ifstream in(o.file, std::ios::binary);
  ByteProgress progress(std::cerr, stderr_is_tty(), "upload", size);
  std::vector<char> buf(kUploadChunkBytes);
  int64_t sent = 0;
  while (open &&
         (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0)) {
    msg.set_chunk(buf.data(), static_cast<size_t>(in.gcount()));
    open = writer->Write(msg);
    if (open) sent += in.gcount();
    progress.update(sent);
  }
  if (open) {
    if (sent != size) {
      error = o.file + " changed while it was being sent (" + std::to_string(sent) + " of " +
              std::to_string(size) + " bytes)";
      ctx->TryCancel();
    } else {
      writer->WritesDone();
    }
  }
  grpc::Status status = writer->Finish();
  progress.finish();
  if (interrupted()) {
    return fail(kExitInterrupted, "upload interrupted; the server discards the partial file");
  }
  if (!error.empty()) return fail(kExitError, what + ": " + error);
  if (!status.ok()) return conn.report(status, what);
  if (o.output == "json") {
    std::cout << client::to_json_line(result) << "\n";
    return kExitOk;
  }
  std::cout << "uploaded data set " << result.name() << ": " << format_bytes(result.size_bytes())
            << ", sha256 " << result.sha256() << "\n"
            << "  use it in a job file:\n"
            << "    data:\n"
            << "      csv: {path: " << result.name() << ", label_column: -1}\n";
  return kExitOk;
}

int run_dataset_list(const GlobalOptions& g, const DatasetListOptions& o) {
  Connection conn(g);
  auto ctx = conn.unary_context();
  ampd::v1::ListDatasetsResponse resp;
  grpc::Status s = conn.stub().ListDatasets(ctx.get(), ampd::v1::ListDatasetsRequest(), &resp);
  if (!s.ok()) return conn.report(s, "list data sets");
  if (o.output == "json") {
    std::vector<std::string> items;
    for (const auto& d : resp.datasets()) items.push_back(client::to_json_line(d));
    std::cout << json_array(items) << "\n";
    return kExitOk;
  }
  if (resp.datasets().empty()) {
    std::cout << "no data sets (upload one: ampctl datasets upload NAME FILE.csv)\n";
    return kExitOk;
  }
  Table table({"NAME", "SIZE", "SHA256"});
  for (const auto& d : resp.datasets()) {
    table.add_row({d.name(), format_bytes(d.size_bytes()), d.sha256()});
  }
  table.print(std::cout);
  return kExitOk;
}

}  // namespace

void add_transfer_commands(CLI::App& app, const GlobalOptions& g, Action* action) {
  auto download = std::make_shared<DownloadOptions>();
  CLI::App* cmd =
      app.add_subcommand("download", "Fetch a job's latest checkpoint (a safetensors file)");
  cmd->add_option("job", download->job_id, "Job ID")->required();
  cmd->add_option("-o,--output", download->path,
                  "Where to write it (default: JOB.safetensors); written to a temporary name "
                  "in the same directory, then renamed");
  cmd->footer(
      "\nThe file holds the FP32 master weights under torch.nn.Sequential names (0.weight,\n"
      "0.bias, ...), the optimizer state, and in its metadata the step, loss-scaler state\n"
      "and job spec. A job without a checkpoint yet exits 5.\n\n"
      "Examples:\n"
      "  ampctl download j-01a2282e7114d768 -o model.safetensors\n"
      "  python3 -c \"from safetensors.numpy import load_file; "
      "print(list(load_file('model.safetensors')))\""
      "\n");
  cmd->callback(
      [&g, download, action] { *action = [&g, download] { return run_download(g, *download); }; });

  CLI::App* datasets =
      app.add_subcommand("datasets", "Upload and list data sets (CSV tables, texts)");
  datasets->require_subcommand(1);
  datasets->footer(
      "\nA job reads an uploaded CSV table as data.csv.path: NAME, and an uploaded text (for a\n"
      "language model) as data.text.path: NAME.\n\n"
      "Examples:\n"
      "  ampctl datasets upload iris.csv ./iris.csv\n"
      "  ampctl datasets upload sonnets.txt ./sonnets.txt\n"
      "  ampctl datasets list"
      "\n");

  auto upload = std::make_shared<UploadOptions>();
  cmd = datasets->add_subcommand("upload",
                                 "Send a CSV table or a text (optionally .gz) to the server");
  cmd->add_option("name", upload->name,
                  "Name on the server ([A-Za-z0-9._-], up to 100 chars; jobs use it as "
                  "data.csv.path or data.text.path)")
      ->required();
  cmd->add_option("file", upload->file, "Local file")->required();
  cmd->add_option("-o,--output", upload->output, "text (default) or json: the stored data set")
      ->check(CLI::IsMember({"text", "json"}));
  cmd->footer(
      "\nThe SHA-256 is computed here and checked by the server, which keeps the file only if\n"
      "size and hash match. A name already in use exits 5; a file over the server's limit 6.\n\n"
      "Example:\n"
      "  ampctl datasets upload digits.csv.gz examples/data/digits.csv.gz"
      "\n");
  cmd->callback(
      [&g, upload, action] { *action = [&g, upload] { return run_upload(g, *upload); }; });

  auto list = std::make_shared<DatasetListOptions>();
  cmd = datasets->add_subcommand("list", "List the data sets on the server");
  cmd->add_option("-o,--output", list->output, "text (default) or json: a JSON array")
      ->check(CLI::IsMember({"text", "json"}));
  cmd->callback(
      [&g, list, action] { *action = [&g, list] { return run_dataset_list(g, *list); }; });
}

}  // namespace ampd::ampctl
