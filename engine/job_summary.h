// The job summary (ampd.v1.Job) from its events: the one place that folds an event into
// the summary. The trainer folds every event it emits into its Job (Trainer::job()), and
// the server folds the events it produces itself (QUEUED, CANCELLED while queued, FAILED
// before start) into the stored row; while a job runs the server stores the trainer's
// summary with each event, so the two can never disagree.
//
// What events carry: state (and failure_reason, started_at, finished_at) from state
// changes; step, total_steps, epoch, loss_scale, overflow_skipped_steps, train_loss and
// samples_per_second from progress; loss_scale and one more skipped step from overflow;
// step and the validation metrics from evaluation; the checkpoint path from a checkpoint
// written (a failed write leaves the previous one). Everything else (id, spec, precision,
// backend, memory, and a resumed job's starting point) is set by whoever creates the
// summary: the trainer from the spec, the backend and the checkpoint.
#pragma once

#include "ampd/v1/job.pb.h"

namespace ampd::engine {

// Applies `event` to the summary of the job it belongs to.
void apply_event(const ampd::v1::JobEvent& event, ampd::v1::Job* job);

// SUCCEEDED, FAILED or CANCELLED.
bool is_final_state(ampd::v1::JobState state);

}  // namespace ampd::engine
