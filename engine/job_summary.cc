#include "engine/job_summary.h"

namespace ampd::engine {

using ampd::v1::Job;
using ampd::v1::JobEvent;
using ampd::v1::JobState;

bool is_final_state(JobState s) {
  return s == ampd::v1::SUCCEEDED || s == ampd::v1::FAILED || s == ampd::v1::CANCELLED;
}

void apply_event(const JobEvent& e, Job* job) {
  switch (e.kind_case()) {
    case JobEvent::kStateChange: {
      const JobState s = e.state_change().state();
      job->set_state(s);
      if (s == ampd::v1::FAILED) job->set_failure_reason(e.state_change().reason());
      if (s == ampd::v1::RUNNING && !job->has_started_at()) *job->mutable_started_at() = e.time();
      if (is_final_state(s)) *job->mutable_finished_at() = e.time();
      break;
    }
    case JobEvent::kProgress: {
      const auto& p = e.progress();
      job->set_step(p.step());
      job->set_total_steps(p.total_steps());
      job->set_epoch(p.epoch());
      job->set_loss_scale(p.loss_scale());
      job->set_overflow_skipped_steps(p.overflow_skipped_steps());
      job->mutable_metrics()->set_train_loss(p.loss());
      job->mutable_metrics()->set_samples_per_second(p.samples_per_second());
      break;
    }
    case JobEvent::kOverflow:
      job->set_loss_scale(e.overflow().scale_after());
      job->set_overflow_skipped_steps(job->overflow_skipped_steps() + 1);
      break;
    case JobEvent::kEvaluation:
      job->set_step(e.evaluation().step());
      job->mutable_metrics()->set_val_loss(e.evaluation().val_loss());
      job->mutable_metrics()->set_val_accuracy(e.evaluation().val_accuracy());
      job->mutable_metrics()->set_val_bits_per_token(e.evaluation().val_bits_per_token());
      break;
    case JobEvent::kCheckpoint:
      // A failed write (error set) leaves the previous checkpoint the job's checkpoint.
      if (e.checkpoint().error().empty()) job->set_checkpoint(e.checkpoint().path());
      break;
    case JobEvent::kTelemetry:  // dashboards and watchers only; the summary is unchanged
    case JobEvent::KIND_NOT_SET: break;
  }
}

}  // namespace ampd::engine
