// The training loop: one job, in-process, on one backend.
//
// One step (docs/ARCHITECTURE.md, One training step):
//   gather batch -> cast input to the working dtype -> forward -> FP32 loss ->
//   backward of (mean loss x loss scale) -> one fused pass that unscales every FP32
//   gradient and flags non-finite tensors -> read the flags (the step's one small
//   device-to-host read without clipping; with grad_clip_norm the global norm is a
//   second) -> skip (count, back off, overflow event naming the tensors)
//   or clip + optimizer step on the FP32 masters (which rewrites the low-precision
//   copies) -> scaler update -> events, evaluation, checkpoint, cancellation check.
//
// Faults (the policies, each tested in tests/engine/test_numerical_faults.cc):
//   * A non-finite value anywhere in a step (input data, the FP32 loss, any gradient, the
//     global norm) skips the optimizer step and counts it (overflow_skipped_steps, an
//     overflow event naming "loss" and/or the tensors), in every precision. The FP32
//     master weights and optimizer state are untouched, BatchNorm running statistics
//     that the step made non-finite are put back, and the loss of the step is left out
//     of the reported training loss. So no NaN/inf ever reaches the masters or the state.
//   * FP16 with dynamic scaling: the scale backs off; an overflow at the floor (min_scale)
//     fails the job with that reason. FP32/BF16 (no scale to back off) and static
//     scaling: LossScaler::kMaxConsecutiveSkipsWithoutDynamicScale skipped steps in a row
//     mean the run diverged, and the job fails naming the step and what was non-finite.
//   * A periodic checkpoint that cannot be written (disk full, unwritable directory) is
//     reported (a checkpoint event with `error`, naming the path and the errno text) and
//     training goes on: the previous checkpoint stays, and the next interval tries again.
//     The final checkpoint failing fails the job: its weights could not be delivered.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "engine/checkpoint.h"
#include "engine/dataset.h"
#include "engine/loss_scaler.h"
#include "engine/lr_schedule.h"
#include "engine/model.h"
#include "engine/optimizer.h"
#include "engine/telemetry.h"
#include "engine/text_data.h"
#include "kernels/backend.h"

namespace ampd::engine {

// What one training step did, for per-step metrics (TrainerOptions::on_step).
struct StepStats {
  int64_t step = 0;      // 1-based, as in progress events
  int64_t samples = 0;   // batch rows
  double seconds = 0;    // wall time of the step (forward, backward, optimizer)
  bool skipped = false;  // non-finite gradients: the optimizer step was skipped
};

struct TrainerOptions {
  std::string job_id = "local";
  std::string data_dir = ".";  // root of csv paths
  std::string checkpoint_dir;  // empty: no checkpoints
  std::string resume_from;     // checkpoint to continue from
  // Receives every event in order (seq starts at first_seq). Called on the training
  // thread: keep it cheap (the server only enqueues).
  std::function<void(const ampd::v1::JobEvent&)> on_event;
  int64_t first_seq = 1;
  // Checked at every step boundary; when set the job ends CANCELLED after a checkpoint.
  const std::atomic<bool>* cancel = nullptr;
  // Called after every step on the training thread (metrics); keep it cheap. Unset, the
  // step is not even timed.
  std::function<void(const StepStats&)> on_step;
  // Test seams for fault injection (numerical faults); unset in production. `step` is the
  // 0-based step about to be taken.
  //   on_batch:       the host batch just gathered, before it is rounded and uploaded:
  //                   features (rows x cols) and, for regression, targets (or nullptr).
  //   after_forward:  after the forward pass and the per-row loss (Model::loss_rows).
  //   after_backward: after backward, before the non-finite check (the gradients).
  std::function<void(int64_t step, int64_t rows, int64_t cols, float* features, float* targets)>
      on_batch;
  std::function<Status(Model&, int64_t step)> after_forward;
  std::function<Status(Model&, int64_t step)> after_backward;
  // Test seam for checkpoint write faults (engine/safetensors.h WriteFaults; unset in
  // production): consulted once per checkpoint written. Must outlive the trainer.
  WriteFaults* write_faults = nullptr;
  // Appended to the reason of the RUNNING event of a resumed job (why a newer checkpoint
  // was passed over, say).
  std::string resume_note;
  // The summary to continue from (a served job's stored row; empty for a new one). The
  // trainer keeps what it does not own (created_at, client_request_id, started_at, the
  // spec when set, earlier metrics) and sets the rest: see Trainer::job().
  ampd::v1::Job summary;
};

// "fp32" / "fp16" / "bf16" for a spec's precision on a backend ("auto" resolved).
std::string resolve_precision(const std::string& requested, const Backend& backend);
DType precision_dtype(const std::string& precision);

class Trainer {
 public:
  // Validates and resolves the spec, loads the data, builds model and optimizer, and
  // restores a checkpoint when options.resume_from is set.
  static StatusOr<std::unique_ptr<Trainer>> create(Backend& backend, const ampd::v1::JobSpec& spec,
                                                   TrainerOptions options);

  // Runs to completion, failure or cancellation; returns the final job summary.
  ampd::v1::Job run();

  // The job summary: options.summary, with id, spec, precision, backend, total steps,
  // memory and the starting point (step, epoch, loss scale, skipped steps, checkpoint: a
  // resumed job's from its checkpoint, else zero) set by create; then every emitted
  // event is folded in (engine/job_summary.h apply_event) before on_event sees it. The
  // only fields set outside events: step, epoch and loss scale after every step (events
  // carry them only every report_every steps) and the memory peak at the end. So in
  // on_event, job() is the summary as of that event.
  const ampd::v1::Job& job() const { return job_; }
  Model& model() { return *model_; }
  const Model& model() const { return *model_; }
  Optimizer& optimizer() { return *optimizer_; }
  LossScaler& scaler() { return *scaler_; }
  const DataSplit& data() const { return data_; }
  // Text data (a language model), or null.
  const TextData* text() const { return text_ ? &*text_ : nullptr; }
  int64_t total_steps() const { return total_steps_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }

  // Evaluates on the validation split (or the training split when there is none).
  struct Evaluation {
    double loss = 0;
    double accuracy = 0;  // classification; next-token accuracy for language models
  };
  StatusOr<Evaluation> evaluate();
  // Writes a checkpoint now (to checkpoint_dir/step-<n>.safetensors and latest).
  StatusOr<std::string> checkpoint();

 private:
  Trainer(Backend& backend, TrainerOptions options)
      : backend_(&backend), options_(std::move(options)) {}
  Status init(const ampd::v1::JobSpec& spec);
  Status train_step(int64_t step);
  // Stages the step's batch on the model (host gather + upload); returns its examples.
  StatusOr<int64_t> stage_batch(int64_t step);
  StatusOr<Evaluation> evaluate_text();
  void emit(ampd::v1::JobEvent event);
  void emit_state(ampd::v1::JobState state, const std::string& reason);
  Status report_progress(int64_t step);
  Status run_evaluation(int64_t step);
  std::string step_checkpoint_path() const;  // of a checkpoint at step_
  void report_checkpoint_failure(const Status& status);

  Backend* backend_;
  TrainerOptions options_;
  ampd::v1::JobSpec spec_;
  ampd::v1::Job job_;
  std::string precision_;
  std::string standardization_json_;
  DataSplit data_;
  std::optional<TextData> text_;
  int64_t time_ = 1;  // positions per example
  std::vector<int32_t> batch_tokens_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<LossScaler> scaler_;
  std::unique_ptr<LrSchedule> schedule_;
  std::vector<Tensor> grads_;
  std::vector<std::string> grad_names_;
  Buffer flags_, norm_, loss_accum_;
  // BatchNorm running statistics as they were before the step (restored when a skipped
  // step made them non-finite); one buffer per state tensor, empty without BatchNorm.
  std::vector<Buffer> state_backup_;
  std::vector<Tensor> state_tensors_;
  // What the step checks for non-finite values at scale 1 besides the gradients: [0] the
  // loss rows (set each step: the batch size can change), then the state tensors.
  std::vector<Tensor> output_checks_;
  std::vector<int32_t> host_flags_;
  std::vector<float> host_loss_accum_;  // the report window's per-row loss sums
  std::vector<float> batch_x_, batch_t_;
  std::vector<int32_t> batch_y_;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
  int64_t batch_size_ = 0;
  int64_t steps_per_epoch_ = 0;
  int64_t total_steps_ = 0;
  int64_t step_ = 0;  // steps taken so far
  // Numerics telemetry (spec training.telemetry_every; 0 = off, telemetry_ null).
  int64_t telemetry_every_ = 0;
  std::unique_ptr<NumericsTelemetry> telemetry_;
  // The last step, for on_step.
  int64_t last_step_samples_ = 0;
  bool last_step_skipped_ = false;
  int64_t next_seq_ = 1;
  // Report window.
  int64_t window_samples_ = 0;
  double last_lr_ = 0;
  std::chrono::steady_clock::time_point window_start_;
  std::chrono::steady_clock::time_point run_start_;
  int64_t run_start_step_ = 0;
};

}  // namespace ampd::engine
