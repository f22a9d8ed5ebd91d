#include "client/ampctl/output.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>

#include "proto/progress_view.h"

namespace ampd::ampctl {

namespace {

using ampd::v1::Job;
using ampd::v1::JobState;

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// Display width: code points (the names in a table are mostly ASCII).
size_t width(const std::string& s) {
  return static_cast<size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

bool has_accuracy(const Job& job) {
  return job.spec().model().loss() != "mse" &&
         (job.metrics().val_accuracy() != 0 || job.metrics().val_loss() != 0);
}

}  // namespace

void Table::print(std::ostream& out) const {
  std::vector<size_t> widths;
  for (const auto& row : rows_) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], width(row[i]));
  }
  for (const auto& row : rows_) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - width(row[i]) + 2, ' ');
    }
    out << line << '\n';
  }
}

std::string format_age(int64_t s) {
  if (s < 0) return "-";
  if (s < 120) return std::to_string(s) + "s";
  if (s < 2 * 3600) return std::to_string(s / 60) + "m";
  if (s < 2 * 86400) return std::to_string(s / 3600) + "h";
  return std::to_string(s / 86400) + "d";
}

std::string format_bytes(int64_t bytes) {
  if (bytes < 1024) return std::to_string(bytes) + " B";
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = -1;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  return fmt(v < 10 ? "%.2f " : v < 100 ? "%.1f " : "%.0f ", v) + units[u];
}

std::optional<int64_t> seconds_since(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return std::nullopt;
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  return now - t.seconds();
}

std::string format_time(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  const std::time_t secs = static_cast<std::time_t>(t.seconds());
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::optional<JobState> parse_state(std::string_view name) {
  std::string upper(name);
  std::transform(upper.begin(), upper.end(), upper.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  if (upper == "CANCELED") upper = "CANCELLED";
  JobState state;
  if (!ampd::v1::JobState_Parse(upper, &state) || state == ampd::v1::JOB_STATE_UNSPECIFIED) {
    return std::nullopt;
  }
  return state;
}

std::string state_names() {
  return "QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED";
}

bool is_terminal(JobState state) {
  return state == ampd::v1::SUCCEEDED || state == ampd::v1::FAILED || state == ampd::v1::CANCELLED;
}

std::vector<std::string> job_table_header() {
  return {"ID",      "STATE",      "NAME",    "PRECISION", "STEP/TOTAL",
          "VAL_ACC", "LOSS_SCALE", "SKIPPED", "AGE"};
}

std::vector<std::string> job_row(const Job& job) {
  std::string precision = job.precision();
  if (precision.empty()) precision = job.spec().precision();
  if (precision.empty()) precision = "-";
  std::optional<int64_t> age = seconds_since(job.created_at());
  return {job.id(),
          client::state_name(job.state()),
          job.spec().name().empty() ? "-" : job.spec().name(),
          precision,
          std::to_string(job.step()) + "/" + std::to_string(job.total_steps()),
          has_accuracy(job) ? fmt("%.4f", job.metrics().val_accuracy()) : "-",
          fmt("%g", job.loss_scale()),
          std::to_string(job.overflow_skipped_steps()),
          age ? format_age(*age) : "-"};
}

std::string job_json(const Job& job) {
  Job copy = job;
  copy.mutable_metrics();  // present even before the first report
  return client::to_json_line(copy);
}

std::string json_array(const std::vector<std::string>& items) {
  if (items.empty()) return "[]";
  std::string out = "[\n";
  for (size_t i = 0; i < items.size(); ++i) {
    out += "  " + items[i] + (i + 1 < items.size() ? ",\n" : "\n");
  }
  return out + "]";
}

void print_job(std::ostream& out, const Job& job) {
  const auto& m = job.metrics();
  auto row = [&out](const char* key, const std::string& value) {
    out << "  " << key << std::string(16 - std::string_view(key).size(), ' ') << value << "\n";
  };
  out << "job " << job.id() << (job.spec().name().empty() ? "" : "  " + job.spec().name()) << "\n";
  row("state:", client::state_name(job.state()));
  if (!job.failure_reason().empty()) row("reason:", job.failure_reason());
  std::string precision = job.precision().empty() ? job.spec().precision() : job.precision();
  row("precision:", precision + (job.backend().empty() ? "" : " on " + job.backend()));
  row("step:", std::to_string(job.step()) + "/" + std::to_string(job.total_steps()) + "  (epoch " +
                   std::to_string(job.epoch()) + ")");
  row("train_loss:", fmt("%.4f", m.train_loss()));
  row("val_loss:", fmt("%.4f", m.val_loss()));
  if (m.val_bits_per_token() > 0) {
    row("bits/char:", fmt("%.4f", m.val_bits_per_token()));
    row("next-char acc:", fmt("%.4f", m.val_accuracy()));
  } else if (job.spec().model().loss() != "mse") {
    row("val_accuracy:", fmt("%.4f", m.val_accuracy()));
  }
  if (m.samples_per_second() > 0) row("samples/s:", fmt("%.0f", m.samples_per_second()));
  row("loss_scale:", fmt("%g", job.loss_scale()));
  row("skipped steps:", std::to_string(job.overflow_skipped_steps()) + " (non-finite gradients)");
  if (job.has_memory()) {
    const auto& mem = job.memory();
    row("memory:", "parameters " + format_bytes(mem.parameter_bytes()) + ", optimizer " +
                       format_bytes(mem.optimizer_bytes()) + ", activations " +
                       format_bytes(mem.activation_bytes()) +
                       (mem.peak_bytes() > 0 ? ", peak " + format_bytes(mem.peak_bytes()) : ""));
  }
  row("checkpoint:", job.checkpoint().empty() ? "-" : job.checkpoint());
  row("created:", format_time(job.created_at()));
  row("started:", format_time(job.started_at()));
  row("finished:", format_time(job.finished_at()));
  if (!job.client_request_id().empty()) row("request id:", job.client_request_id());
}

ByteProgress::ByteProgress(std::ostream& out, bool tty, std::string label, int64_t total_bytes)
    : out_(out),
      tty_(tty),
      label_(std::move(label)),
      total_(total_bytes),
      start_(std::chrono::steady_clock::now()) {}

void ByteProgress::update(int64_t done_bytes) {
  done_ = done_bytes;
  if (!tty_) return;
  const auto now = std::chrono::steady_clock::now();
  if (visible_ && now - last_draw_ < std::chrono::milliseconds(100) && done_ != total_) return;
  last_draw_ = now;
  draw();
}

void ByteProgress::draw() {
  const double frac =
      total_ > 0 ? std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_)) : 0;
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar = "[";
  for (int i = 0; i < kWidth; ++i) bar += i < filled ? '#' : (i == filled ? '>' : ' ');
  bar += "]";
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = secs > 0 ? static_cast<double>(done_) / secs : 0;
  out_ << "\r\033[2K" << label_ << " " << bar << " " << fmt("%3.0f%%", frac * 100) << "  "
       << format_bytes(done_) << " / " << format_bytes(total_) << "  "
       << format_bytes(static_cast<int64_t>(rate)) << "/s";
  out_.flush();
  visible_ = true;
}

void ByteProgress::finish() {
  if (tty_ && visible_) {
    out_ << "\r\033[2K";
    out_.flush();
  }
  visible_ = false;
}

}  // namespace ampd::ampctl
