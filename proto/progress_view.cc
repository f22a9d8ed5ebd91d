#include "proto/progress_view.h"

#include <google/protobuf/util/json_util.h>

#include <cmath>
#include <cstdio>
#include <sstream>

namespace ampd::client {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string human_rate(double v) {
  if (v >= 1e6) return fmt("%.1fM", v / 1e6);
  if (v >= 1e3) return fmt("%.1fk", v / 1e3);
  return fmt("%.0f", v);
}

}  // namespace

std::string to_json_line(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  // Zero counts are information ("overflow_skipped_steps": "0"): print every field.
  opts.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, opts);
  return json;
}

std::string state_name(ampd::v1::JobState state) {
  return ampd::v1::JobState_Name(state);
}

std::string ProgressView::format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  }
  return buf;
}

void ProgressView::clear_line() {
  if (tty_ && bar_visible_) {
    out_ << "\r\033[2K";
    bar_visible_ = false;
  }
}

void ProgressView::line(const std::string& text) {
  clear_line();
  out_ << text << '\n';
  if (tty_ && have_progress_) draw_bar();
  out_.flush();
}

void ProgressView::draw_bar() {
  const auto& p = last_;
  std::ostringstream s;
  const double frac = p.total_steps() > 0
                          ? static_cast<double>(p.step()) / static_cast<double>(p.total_steps())
                          : 0;
  if (tty_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(frac * kWidth);
    s << '[';
    for (int i = 0; i < kWidth; ++i) s << (i < filled ? '#' : (i == filled ? '>' : ' '));
    s << "] " << fmt("%3.0f%%", frac * 100) << ' ';
  }
  s << "step " << p.step() << '/' << p.total_steps() << "  epoch " << p.epoch() << "  loss "
    << fmt("%.4f", p.loss()) << "  lr " << fmt("%.2e", p.learning_rate()) << "  scale "
    << fmt("%g", p.loss_scale()) << "  skipped " << p.overflow_skipped_steps() << "  "
    << human_rate(p.samples_per_second()) << " samples/s  ETA " << format_duration(p.eta_seconds());
  if (tty_) {
    clear_line();
    out_ << s.str();
    bar_visible_ = true;
  } else {
    out_ << s.str() << '\n';
  }
  out_.flush();
}

void ProgressView::on_event(const ampd::v1::JobEvent& e) {
  using E = ampd::v1::JobEvent;
  switch (e.kind_case()) {
    case E::kProgress:
      last_ = e.progress();
      have_progress_ = true;
      draw_bar();
      break;
    case E::kOverflow: {
      const auto& o = e.overflow();
      std::string names;
      for (int i = 0; i < o.tensors_size(); ++i) names += (i ? ", " : "") + o.tensors(i);
      line("overflow at step " + std::to_string(o.step()) + ": loss scale " +
           fmt("%g", o.scale_before()) + " -> " + fmt("%g", o.scale_after()) +
           ", step skipped (non-finite gradient in " + names + ")");
      break;
    }
    case E::kEvaluation:
      if (e.evaluation().val_bits_per_token() > 0) {  // a language model
        line("eval at step " + std::to_string(e.evaluation().step()) + ": val_loss " +
             fmt("%.4f", e.evaluation().val_loss()) + "  (" +
             fmt("%.3f", e.evaluation().val_bits_per_token()) + " bits/char)  next-char accuracy " +
             fmt("%.4f", e.evaluation().val_accuracy()));
      } else {
        line("eval at step " + std::to_string(e.evaluation().step()) + ": val_loss " +
             fmt("%.4f", e.evaluation().val_loss()) + "  val_accuracy " +
             fmt("%.4f", e.evaluation().val_accuracy()));
      }
      break;
    case E::kCheckpoint:
      line(e.checkpoint().error().empty()
               ? "checkpoint at step " + std::to_string(e.checkpoint().step()) + ": " +
                     e.checkpoint().path()
               : "checkpoint at step " + std::to_string(e.checkpoint().step()) +
                     " failed: " + e.checkpoint().error());
      break;
    case E::kStateChange: {
      const auto& sc = e.state_change();
      line("job " + e.job_id() + " " + state_name(sc.state()) +
           (sc.reason().empty() ? "" : ": " + sc.reason()));
      break;
    }
    case E::kTelemetry:  // for dashboards (ampd_job_grad_* metrics) and `--json` consumers
    case E::KIND_NOT_SET: break;
  }
}

void ProgressView::print_summary(const ampd::v1::Job& job) {
  clear_line();
  have_progress_ = false;
  const auto& m = job.metrics();
  out_ << "\n"
       << state_name(job.state()) << "  job " << job.id() << "  (" << job.precision() << " on "
       << job.backend() << ")\n";
  if (!job.failure_reason().empty()) out_ << "  reason:        " << job.failure_reason() << "\n";
  out_ << "  steps:         " << job.step() << "/" << job.total_steps() << "\n"
       << "  train_loss:    " << fmt("%.4f", m.train_loss()) << "\n"
       << "  val_loss:      " << fmt("%.4f", m.val_loss()) << "\n";
  if (m.val_bits_per_token() > 0) {
    out_ << "  bits/char:     " << fmt("%.4f", m.val_bits_per_token()) << "\n"
         << "  next-char acc: " << fmt("%.4f", m.val_accuracy()) << "\n";
  } else if (job.spec().model().loss() != "mse") {
    out_ << "  val_accuracy:  " << fmt("%.4f", m.val_accuracy()) << "\n";
  }
  out_ << "  loss_scale:    " << fmt("%g", job.loss_scale()) << "\n"
       << "  skipped steps: " << job.overflow_skipped_steps() << " (non-finite gradients)\n";
  if (job.has_memory()) {
    out_ << "  memory:        activations " << fmt("%.1f", job.memory().activation_bytes() / 1024.0)
         << " KiB, parameters " << fmt("%.1f", job.memory().parameter_bytes() / 1024.0)
         << " KiB, optimizer " << fmt("%.1f", job.memory().optimizer_bytes() / 1024.0) << " KiB\n";
  }
  if (!job.checkpoint().empty()) out_ << "  checkpoint:    " << job.checkpoint() << "\n";
  out_.flush();
}

}  // namespace ampd::client
