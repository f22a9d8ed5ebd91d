// Output pieces of ampctl: aligned tables, human sizes and ages, a byte progress bar for
// uploads and downloads, and the text and JSON forms of jobs.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "google/protobuf/timestamp.pb.h"

namespace ampd::ampctl {

// Columns padded to their widest cell (UTF-8 aware), two spaces apart, no trailing blanks.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void add_row(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void print(std::ostream& out) const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

// "12s", "5m", "3h", "2d"; "-" for a negative or unknown age.
std::string format_age(int64_t seconds);
// "512 B", "1.5 KiB", "12.3 MiB", "4.00 GiB".
std::string format_bytes(int64_t bytes);
// Seconds since `t` (unset: nullopt).
std::optional<int64_t> seconds_since(const google::protobuf::Timestamp& t);
// "2026-11-29 16:26:44 UTC" (unset: "-").
std::string format_time(const google::protobuf::Timestamp& t);

// A state from what a user types: "running", "RUNNING", "Running"; nullopt otherwise.
std::optional<ampd::v1::JobState> parse_state(std::string_view name);
// "QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED"
std::string state_names();
bool is_terminal(ampd::v1::JobState state);

// The row `ampctl list` prints for a job.
std::vector<std::string> job_row(const ampd::v1::Job& job);
std::vector<std::string> job_table_header();

// A job as `get -o json` prints it: the fields of `ampd train --json`'s summary; metrics
// is always present (zeros before the first report) so that scripts need not test for it.
std::string job_json(const ampd::v1::Job& job);
// JSON array of the given JSON values, one per line.
std::string json_array(const std::vector<std::string>& items);

// `ampctl get` in text: every field a person asks about, one per line.
void print_job(std::ostream& out, const ampd::v1::Job& job);

// A byte counter for uploads and downloads. On a terminal, one line redrawn in place at
// most ten times a second ("upload [#####>    ]  45%  12.3 MiB / 27.1 MiB  3.2 MiB/s");
// elsewhere, silent (the command prints its own result line).
class ByteProgress {
 public:
  ByteProgress(std::ostream& out, bool tty, std::string label, int64_t total_bytes);
  void set_total(int64_t total_bytes) { total_ = total_bytes; }
  void update(int64_t done_bytes);
  // Erases the line.
  void finish();

 private:
  void draw();

  std::ostream& out_;
  bool tty_;
  std::string label_;
  int64_t total_;
  int64_t done_ = 0;
  bool visible_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace ampd::ampctl
