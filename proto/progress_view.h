// Renders a job's event stream for people: a live one-line progress bar on a terminal,
// plain lines otherwise, and a final summary. Shared by `ampd train` and `ampctl watch`;
// depends on the proto alone.
#pragma once

#include <chrono>
#include <ostream>
#include <string>

#include "ampd/v1/job.pb.h"

namespace ampd::client {

class ProgressView {
 public:
  // tty: redraw one line in place (\r) and draw a bar; else print one line per event.
  ProgressView(std::ostream& out, bool tty) : out_(out), tty_(tty) {}

  void on_event(const ampd::v1::JobEvent& event);
  // The closing block: state, metrics, loss scale, skipped steps, checkpoint.
  void print_summary(const ampd::v1::Job& job);

  // A line of text above the bar (the bar is redrawn below it): reconnect notices.
  void message(const std::string& text) { line(text); }
  // Erases the bar, leaving the cursor at the start of an empty line (before exiting early).
  void finish_line() { clear_line(); }

  static std::string format_duration(double seconds);  // "1:02:03", "4:05"

 private:
  void clear_line();
  void draw_bar();
  void line(const std::string& text);

  std::ostream& out_;
  bool tty_;
  bool bar_visible_ = false;
  ampd::v1::ProgressEvent last_;
  bool have_progress_ = false;
};

// JSON of a proto message with the original field names (one line).
std::string to_json_line(const google::protobuf::Message& message);

// The proto JSON name of a job state: "SUCCEEDED".
std::string state_name(ampd::v1::JobState state);

}  // namespace ampd::client
