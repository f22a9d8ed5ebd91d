#include "engine/trainer.h"

#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <numeric>

#include "engine/job_spec.h"
#include "engine/job_summary.h"

namespace ampd::engine {

namespace fs = std::filesystem;
using ampd::v1::JobEvent;
using ampd::v1::JobState;

std::string resolve_precision(const std::string& requested, const Backend& backend) {
  if (requested == "auto" || requested.empty()) {
    return backend.prefers_bf16() && backend.supports(DType::kBF16) ? "bf16" : "fp16";
  }
  return requested;
}

DType precision_dtype(const std::string& precision) {
  if (precision == "fp16") return DType::kF16;
  if (precision == "bf16") return DType::kBF16;
  return DType::kF32;
}

StatusOr<std::unique_ptr<Trainer>> Trainer::create(Backend& backend, const ampd::v1::JobSpec& spec,
                                                   TrainerOptions options) {
  std::unique_ptr<Trainer> t(new Trainer(backend, std::move(options)));
  AMPD_RETURN_IF_ERROR(t->init(spec));
  return t;
}

Status Trainer::init(const ampd::v1::JobSpec& raw_spec) {
  std::optional<LoadedCheckpoint> ckpt;
  ampd::v1::JobSpec input = raw_spec;
  if (!options_.resume_from.empty()) {
    AMPD_ASSIGN_OR_RETURN(auto loaded, read_checkpoint(options_.resume_from));
    input = loaded.meta.spec;  // the checkpoint's spec is authoritative
    ckpt = std::move(loaded);
  }
  AMPD_ASSIGN_OR_RETURN(spec_, validate_and_resolve(input));
  next_seq_ = options_.first_seq;

  precision_ = resolve_precision(spec_.precision(), *backend_);
  if (ckpt && !ckpt->meta.precision.empty() && ckpt->meta.precision != precision_) {
    return failed_precondition("checkpoint was written in " + ckpt->meta.precision +
                               " but this backend resolves the spec to " + precision_);
  }
  const DType dt = precision_dtype(precision_);
  if (!backend_->supports(dt)) {
    return invalid_argument("precision: backend '" + backend_->name() + "' does not support " +
                            precision_);
  }

  // Data.
  const bool classification = spec_.model().loss() != "mse";
  const TaskKind task = classification ? TaskKind::kClassification : TaskKind::kRegression;
  Model::Options mo;
  if (spec_.data().has_text()) {
    // A language model: windows of block_size tokens; an "epoch" is as many windows as
    // cover the training split once (for progress only: windows are drawn at random).
    time_ = spec_.model().block_size();
    AMPD_ASSIGN_OR_RETURN(text_, load_text(spec_.data().text(), options_.data_dir, time_));
    if (ckpt && !ckpt->meta.vocabulary.empty() &&
        ckpt->meta.vocabulary != text_->vocab.to_string()) {
      return failed_precondition("checkpoint's vocabulary differs from the text's (" + text_->name +
                                 " changed since the checkpoint was written)");
    }
    batch_size_ = spec_.data().batch_size();
    steps_per_epoch_ =
        std::max<int64_t>(1, static_cast<int64_t>(text_->train.size()) / (batch_size_ * time_));
    mo.token_input = true;
    mo.in_features = text_->vocab.size();
    mo.out_features = text_->vocab.size();
  } else {
    AMPD_ASSIGN_OR_RETURN(
        Dataset all, load_dataset(spec_.data(), task, options_.data_dir, spec_.training().seed()));
    const float vf =
        spec_.data().has_validation_fraction() ? spec_.data().validation_fraction() : 0.2f;
    AMPD_ASSIGN_OR_RETURN(data_, split_dataset(std::move(all), vf, spec_.data().standardize(),
                                               spec_.training().seed()));
    const int64_t n_train = data_.train.num_examples;
    if (n_train <= 0) return invalid_argument("data: the training split is empty");
    batch_size_ = std::min<int64_t>(spec_.data().batch_size(), n_train);
    steps_per_epoch_ = (n_train + batch_size_ - 1) / batch_size_;
    mo.in_features = data_.train.num_features;
    mo.out_features = classification ? data_.train.num_classes : data_.train.num_targets;
  }
  int64_t total = std::numeric_limits<int64_t>::max();
  if (spec_.training().epochs() > 0) total = spec_.training().epochs() * steps_per_epoch_;
  if (spec_.training().max_steps() > 0) total = std::min(total, spec_.training().max_steps());
  total_steps_ = total;

  // Model, optimizer, scaler, schedule.
  mo.act_dtype = dt;
  mo.max_batch = batch_size_;
  mo.time = time_;
  mo.loss = classification ? LossKind::kCrossEntropy : LossKind::kMse;
  mo.seed = spec_.training().seed();
  backend_->reset_peak_memory();
  AMPD_ASSIGN_OR_RETURN(model_, Model::create(*backend_, spec_.model(), mo));
  AMPD_ASSIGN_OR_RETURN(optimizer_,
                        Optimizer::create(*backend_, spec_.optimizer(), model_->params()));

  // Loss scaling applies to fp16 only (docs/ARCHITECTURE.md, Numerics): bf16 and fp32 run
  // at scale 1 unless a static scale was asked for; the non-finite check runs in every mode.
  LossScaler::Options so = LossScaler::options_from_spec(spec_.loss_scaling());
  if (precision_ != "fp16" && so.mode == LossScaler::Mode::kDynamic) {
    so.mode = LossScaler::Mode::kOff;
    so.init_scale = 1.0;
  }
  scaler_ = std::make_unique<LossScaler>(so);
  schedule_ =
      std::make_unique<LrSchedule>(spec_.lr_schedule(), optimizer_->peak_lr(), total_steps_);
  telemetry_every_ = spec_.training().telemetry_every();
  if (telemetry_every_ > 0) {
    telemetry_ = std::make_unique<NumericsTelemetry>(*backend_, spec_.model(), mo);
  }

  for (Param* p : model_->params()) {
    grads_.push_back(p->grad_t());
    grad_names_.push_back(p->display);
  }
  for (StateTensor* st : model_->states()) {
    state_tensors_.push_back(st->t());
    AMPD_ASSIGN_OR_RETURN(Buffer backup, backend_->allocate(st->t().bytes()));
    state_backup_.push_back(std::move(backup));
  }
  output_checks_.assign(1, Tensor{});
  output_checks_.insert(output_checks_.end(), state_tensors_.begin(), state_tensors_.end());
  const auto n_grads = static_cast<int64_t>(grads_.size());
  // Flags: one per gradient, one for the loss, one per state tensor.
  const auto n_flags = n_grads + 1 + static_cast<int64_t>(state_tensors_.size());
  AMPD_ASSIGN_OR_RETURN(flags_, backend_->allocate(sizeof(int32_t) * n_flags));
  AMPD_ASSIGN_OR_RETURN(norm_, backend_->allocate(sizeof(float)));
  const int64_t max_rows = batch_size_ * time_;  // loss rows per batch
  AMPD_ASSIGN_OR_RETURN(loss_accum_, backend_->allocate(sizeof(float) * max_rows));
  AMPD_RETURN_IF_ERROR(backend_->fill(loss_accum_.view(DType::kF32, 1, max_rows), 0.0f));
  host_flags_.resize(static_cast<size_t>(n_flags));
  host_loss_accum_.resize(static_cast<size_t>(max_rows));
  if (text_) {
    batch_tokens_.resize(static_cast<size_t>(max_rows));
    batch_y_.resize(static_cast<size_t>(max_rows));
  } else {
    batch_x_.resize(static_cast<size_t>(batch_size_ * mo.in_features));
  }
  if (text_) {
  } else if (classification) {
    batch_y_.resize(static_cast<size_t>(batch_size_));
  } else {
    batch_t_.resize(static_cast<size_t>(batch_size_ * mo.out_features));
  }

  if (data_.standardization) {
    auto list = [](const std::vector<float>& v) {
      std::string out = "[";
      char buf[32];
      for (size_t i = 0; i < v.size(); ++i) {
        std::snprintf(buf, sizeof buf, "%s%.9g", i ? "," : "", static_cast<double>(v[i]));
        out += buf;
      }
      return out + "]";
    };
    standardization_json_ = "{\"mean\":" + list(data_.standardization->mean) +
                            ",\"stddev\":" + list(data_.standardization->stddev) + "}";
  }

  job_ = std::move(options_.summary);
  job_.set_id(options_.job_id);
  if (!job_.has_spec()) *job_.mutable_spec() = spec_;
  job_.set_precision(precision_);
  job_.set_backend(backend_->name());
  job_.set_total_steps(total_steps_);
  int64_t skipped = 0;
  if (ckpt) {
    AMPD_RETURN_IF_ERROR(restore_checkpoint(*ckpt, *model_, *optimizer_));
    scaler_->restore(ckpt->meta.scaler);
    step_ = ckpt->meta.step;
    skipped = ckpt->meta.overflow_skipped_steps;
  }
  job_.set_step(step_);
  job_.set_epoch(static_cast<int32_t>(step_ > 0 ? (step_ - 1) / steps_per_epoch_ : 0));
  job_.set_overflow_skipped_steps(skipped);
  job_.set_checkpoint(ckpt ? options_.resume_from : std::string());
  job_.set_loss_scale(scaler_->scale());
  auto* mem = job_.mutable_memory();
  mem->Clear();
  mem->set_parameter_bytes(model_->parameter_bytes());
  mem->set_optimizer_bytes(optimizer_->state_bytes());
  mem->set_activation_bytes(model_->activation_bytes());
  return Status::ok_status();
}

void Trainer::emit(JobEvent event) {
  event.set_seq(next_seq_++);
  event.set_job_id(job_.id());
  *event.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
  apply_event(event, &job_);
  if (options_.on_event) options_.on_event(event);
}

void Trainer::emit_state(JobState state, const std::string& reason) {
  JobEvent e;
  e.mutable_state_change()->set_state(state);
  e.mutable_state_change()->set_reason(reason);
  emit(std::move(e));
}

StatusOr<Trainer::Evaluation> Trainer::evaluate_text() {
  // The same validation windows at every evaluation (draws from a stream of their own).
  PassContext ctx{backend_, /*training=*/false, step_, spec_.training().seed()};
  const int64_t rows = batch_size_ * time_;
  std::vector<float> losses(static_cast<size_t>(rows));
  std::vector<int32_t> preds(static_cast<size_t>(rows));
  double loss_sum = 0;
  int64_t correct = 0, count = 0;
  const int batches = spec_.data().text().eval_batches();
  const uint64_t eval_stream = uint64_t{1} << 62;
  for (int b = 0; b < batches; ++b) {
    draw_windows(text_->validation, time_, batch_size_, spec_.training().seed(),
                 eval_stream + static_cast<uint64_t>(b), batch_tokens_.data(), batch_y_.data());
    AMPD_RETURN_IF_ERROR(model_->load_tokens(batch_size_, batch_tokens_.data(), batch_y_.data()));
    AMPD_RETURN_IF_ERROR(model_->forward(ctx, batch_size_));
    AMPD_RETURN_IF_ERROR(model_->read_losses(batch_size_, losses.data()));
    AMPD_RETURN_IF_ERROR(model_->read_predictions(batch_size_, preds.data()));
    for (int64_t i = 0; i < rows; ++i) {
      loss_sum += losses[static_cast<size_t>(i)];
      correct += preds[static_cast<size_t>(i)] == batch_y_[static_cast<size_t>(i)] ? 1 : 0;
    }
    count += rows;
  }
  Evaluation ev;
  ev.loss = loss_sum / static_cast<double>(std::max<int64_t>(1, count));
  ev.accuracy = static_cast<double>(correct) / static_cast<double>(std::max<int64_t>(1, count));
  return ev;
}

StatusOr<Trainer::Evaluation> Trainer::evaluate() {
  if (text_) return evaluate_text();
  const Dataset& d = data_.validation.num_examples > 0 ? data_.validation : data_.train;
  const bool classification = d.task == TaskKind::kClassification;
  PassContext ctx{backend_, /*training=*/false, step_, spec_.training().seed()};
  std::vector<int64_t> order(static_cast<size_t>(d.num_examples));
  std::iota(order.begin(), order.end(), 0);
  std::vector<float> losses(static_cast<size_t>(batch_size_));
  std::vector<int32_t> preds(static_cast<size_t>(batch_size_));
  double loss_sum = 0;
  int64_t correct = 0;
  for (int64_t begin = 0; begin < d.num_examples; begin += batch_size_) {
    const int64_t n = std::min(batch_size_, d.num_examples - begin);
    gather_batch(d, order, begin, n, batch_x_.data(), classification ? batch_y_.data() : nullptr,
                 classification ? nullptr : batch_t_.data());
    AMPD_RETURN_IF_ERROR(model_->load_batch(n, batch_x_.data(), batch_y_.data(), batch_t_.data()));
    AMPD_RETURN_IF_ERROR(model_->forward(ctx, n));
    AMPD_RETURN_IF_ERROR(model_->read_losses(n, losses.data()));
    for (int64_t i = 0; i < n; ++i) loss_sum += losses[static_cast<size_t>(i)];
    if (classification) {
      AMPD_RETURN_IF_ERROR(model_->read_predictions(n, preds.data()));
      for (int64_t i = 0; i < n; ++i) {
        correct += preds[static_cast<size_t>(i)] == batch_y_[static_cast<size_t>(i)] ? 1 : 0;
      }
    }
  }
  Evaluation ev;
  ev.loss = loss_sum / static_cast<double>(std::max<int64_t>(1, d.num_examples));
  ev.accuracy =
      classification ? static_cast<double>(correct) / static_cast<double>(d.num_examples) : 0.0;
  return ev;
}

std::string Trainer::step_checkpoint_path() const {
  return checkpoint_path(options_.checkpoint_dir, step_);
}

void Trainer::report_checkpoint_failure(const Status& status) {
  JobEvent e;
  e.mutable_checkpoint()->set_step(step_);
  e.mutable_checkpoint()->set_path(step_checkpoint_path());
  e.mutable_checkpoint()->set_error(status.message());
  emit(std::move(e));
}

StatusOr<std::string> Trainer::checkpoint() {
  if (options_.checkpoint_dir.empty()) return std::string();
  std::error_code ec;
  fs::create_directories(options_.checkpoint_dir, ec);
  if (ec) {
    return failed_precondition("cannot create checkpoint directory " + options_.checkpoint_dir +
                               ": " + ec.message());
  }
  CheckpointMeta meta;
  meta.step = step_;
  meta.applied_steps = optimizer_->applied_steps();
  meta.epoch = static_cast<int32_t>(steps_per_epoch_ > 0 ? step_ / steps_per_epoch_ : 0);
  meta.overflow_skipped_steps = job_.overflow_skipped_steps();
  meta.scaler = scaler_->state();
  meta.spec = spec_;
  meta.precision = precision_;
  meta.backend = backend_->name();
  meta.standardization = standardization_json_;
  if (text_) meta.vocabulary = text_->vocab.to_string();
  const std::string path = step_checkpoint_path();
  AMPD_ASSIGN_OR_RETURN(int64_t bytes,
                        save_checkpoint(path, *model_, *optimizer_, meta, options_.write_faults));
  // Keep the newest two: the previous one stays until the next is safely on disk.
  if (!job_.checkpoint().empty() && job_.checkpoint() != path &&
      job_.checkpoint() != options_.resume_from) {
    prune_checkpoints(options_.checkpoint_dir, {path, job_.checkpoint()});
  }
  JobEvent e;
  e.mutable_checkpoint()->set_step(step_);
  e.mutable_checkpoint()->set_path(path);
  e.mutable_checkpoint()->set_bytes(bytes);
  emit(std::move(e));
  return path;
}

Status Trainer::report_progress(int64_t step) {
  const auto now = std::chrono::steady_clock::now();
  std::vector<float>& acc = host_loss_accum_;
  const Tensor accum = loss_accum_.view(DType::kF32, 1, batch_size_ * time_);
  AMPD_RETURN_IF_ERROR(backend_->download(acc.data(), accum));
  AMPD_RETURN_IF_ERROR(backend_->fill(accum, 0.0f));
  double sum = 0;
  for (float v : acc) sum += v;
  const double mean_loss =
      window_samples_ > 0 ? sum / static_cast<double>(window_samples_ * time_) : 0.0;
  const double secs = std::chrono::duration<double>(now - window_start_).count();
  const double sps = secs > 0 ? static_cast<double>(window_samples_) / secs : 0.0;
  const double run_secs = std::chrono::duration<double>(now - run_start_).count();
  const int64_t done_here = step - run_start_step_;
  const double eta = done_here > 0 ? run_secs / static_cast<double>(done_here) *
                                         static_cast<double>(total_steps_ - step)
                                   : 0.0;
  JobEvent e;
  auto* p = e.mutable_progress();
  p->set_step(step);
  p->set_total_steps(total_steps_);
  p->set_epoch(static_cast<int32_t>((step - 1) / steps_per_epoch_));
  p->set_loss(mean_loss);
  p->set_learning_rate(last_lr_);
  p->set_loss_scale(scaler_->scale());
  p->set_overflow_skipped_steps(job_.overflow_skipped_steps());
  p->set_samples_per_second(sps);
  p->set_eta_seconds(eta);
  emit(std::move(e));
  window_samples_ = 0;
  window_start_ = now;
  return Status::ok_status();
}

Status Trainer::run_evaluation(int64_t step) {
  AMPD_ASSIGN_OR_RETURN(Evaluation ev, evaluate());
  JobEvent e;
  e.mutable_evaluation()->set_step(step);
  e.mutable_evaluation()->set_val_loss(ev.loss);
  e.mutable_evaluation()->set_val_accuracy(ev.accuracy);
  e.mutable_evaluation()->set_train_loss(job_.metrics().train_loss());
  if (text_) e.mutable_evaluation()->set_val_bits_per_token(ev.loss / std::log(2.0));
  emit(std::move(e));
  return Status::ok_status();
}

StatusOr<int64_t> Trainer::stage_batch(int64_t step) {
  if (text_) {
    draw_windows(text_->train, time_, batch_size_, spec_.training().seed(),
                 static_cast<uint64_t>(step), batch_tokens_.data(), batch_y_.data());
    AMPD_RETURN_IF_ERROR(model_->load_tokens(batch_size_, batch_tokens_.data(), batch_y_.data()));
    return batch_size_;
  }
  const Dataset& d = data_.train;
  const bool classification = d.task == TaskKind::kClassification;
  const int64_t epoch = step / steps_per_epoch_;
  const int64_t index = step % steps_per_epoch_;
  if (epoch != order_epoch_) {
    const bool shuffle = !spec_.data().has_shuffle() || spec_.data().shuffle();
    order_ = epoch_order(d.num_examples, spec_.training().seed(), epoch, shuffle);
    order_epoch_ = epoch;
  }
  const int64_t begin = index * batch_size_;
  const int64_t n = std::min(batch_size_, d.num_examples - begin);
  gather_batch(d, order_, begin, n, batch_x_.data(), classification ? batch_y_.data() : nullptr,
               classification ? nullptr : batch_t_.data());
  if (options_.on_batch) {
    options_.on_batch(step, n, d.num_features, batch_x_.data(),
                      classification ? nullptr : batch_t_.data());
  }
  AMPD_RETURN_IF_ERROR(model_->load_batch(n, batch_x_.data(), batch_y_.data(), batch_t_.data()));
  return n;
}

Status Trainer::train_step(int64_t step) {
  PassContext ctx{backend_, /*training=*/true, step, spec_.training().seed()};
  const double scale = scaler_->scale();
  // The forward pass updates BatchNorm running statistics: keep the old ones in case
  // this step turns out non-finite.
  for (size_t i = 0; i < state_tensors_.size(); ++i) {
    const Tensor& t = state_tensors_[i];
    AMPD_RETURN_IF_ERROR(backend_->copy(state_backup_[i].view(t.dtype, t.rows(), t.cols()), t));
  }
  AMPD_ASSIGN_OR_RETURN(const int64_t n, stage_batch(step));
  AMPD_RETURN_IF_ERROR(model_->forward(ctx, n));
  if (options_.after_forward) AMPD_RETURN_IF_ERROR(options_.after_forward(*model_, step));
  AMPD_RETURN_IF_ERROR(model_->backward(ctx, n, static_cast<float>(scale)));
  if (options_.after_backward) AMPD_RETURN_IF_ERROR(options_.after_backward(*model_, step));

  // Unscale and look for inf/NaN in one pass over the gradients, and look (scale 1: no
  // writes) at the FP32 loss and the running statistics; reading the flags is the step's
  // one sync point unless clipping reads the global norm below.
  const auto n_grads = static_cast<int64_t>(grads_.size());
  const auto n_flags = static_cast<int64_t>(host_flags_.size());
  const Tensor flags = flags_.view(DType::kI32, n_flags, 1);
  AMPD_RETURN_IF_ERROR(backend_->unscale_and_check(grads_, static_cast<float>(1.0 / scale),
                                                   flags.row_slice(0, n_grads)));
  output_checks_[0] = model_->loss_rows(n);
  AMPD_RETURN_IF_ERROR(backend_->unscale_and_check(output_checks_, 1.0f,
                                                   flags.row_slice(n_grads, n_flags - n_grads)));
  AMPD_RETURN_IF_ERROR(backend_->download(host_flags_.data(), flags));
  std::vector<std::string> bad;
  const bool loss_bad = host_flags_[static_cast<size_t>(n_grads)] != 0;
  if (loss_bad) bad.push_back("loss");
  for (int64_t i = 0; i < n_grads; ++i) {
    if (host_flags_[static_cast<size_t>(i)] != 0)
      bad.push_back(grad_names_[static_cast<size_t>(i)]);
  }
  bool states_bad = false;
  for (int64_t i = n_grads + 1; i < n_flags; ++i)
    states_bad |= host_flags_[static_cast<size_t>(i)] != 0;
  // The reported training loss is the mean over the finite steps of the window.
  if (!loss_bad) {
    AMPD_RETURN_IF_ERROR(
        backend_->accumulate(model_->loss_rows(n), loss_accum_.view(DType::kF32, 1, n * time_)));
    window_samples_ += n;
  }
  // Clipping needs the global norm; an infinite norm (finite gradients whose squares
  // overflow FP32) is treated like a non-finite gradient.
  float clip = 1.0f;
  const float max_norm = spec_.optimizer().grad_clip_norm();
  if (bad.empty() && max_norm > 0) {
    AMPD_RETURN_IF_ERROR(backend_->global_norm(grads_, norm_.view(DType::kF32, 1, 1)));
    float norm = 0;
    AMPD_RETURN_IF_ERROR(backend_->download(&norm, norm_.view(DType::kF32, 1, 1)));
    if (!std::isfinite(norm)) {
      bad.push_back("global gradient norm");
    } else {
      // torch.nn.utils.clip_grad_norm_: factor = max_norm / (norm + 1e-6), capped at 1.
      clip = std::min(1.0f, max_norm / (norm + 1e-6f));
    }
  }
  // Telemetry sees the gradients and the masters this step was computed with: before the
  // optimizer changes them. Off, this is the one integer compare it costs.
  if (telemetry_every_ > 0 && (step + 1) % telemetry_every_ == 0) {
    AMPD_ASSIGN_OR_RETURN(
        ampd::v1::TelemetryEvent t,
        telemetry_->collect(*model_, ctx, n, batch_x_.data(), batch_y_.data(), batch_t_.data(),
                            scale, !bad.empty(), step + 1, text_ ? batch_tokens_.data() : nullptr));
    JobEvent e;
    *e.mutable_telemetry() = std::move(t);
    emit(std::move(e));
  }
  const LossScaler::Decision dec = scaler_->update(!bad.empty());
  if (dec.skip_step) {
    JobEvent e;
    auto* o = e.mutable_overflow();
    o->set_step(step + 1);
    o->set_scale_before(dec.scale_before);
    o->set_scale_after(dec.scale_after);
    for (auto& name : bad) o->add_tensors(name);
    emit(std::move(e));
    // A skipped step leaves no non-finite value behind: put back running statistics it
    // poisoned (the masters and the optimizer state were never touched).
    if (states_bad) {
      for (size_t i = 0; i < state_tensors_.size(); ++i) {
        const Tensor& t = state_tensors_[i];
        AMPD_RETURN_IF_ERROR(backend_->copy(t, state_backup_[i].view(t.dtype, t.rows(), t.cols())));
      }
    }
    if (dec.failure) {
      std::string names;
      for (size_t i = 0; i < bad.size(); ++i) names += (i ? ", " : "") + bad[i];
      return failed_precondition(*dec.failure + " (" + precision_ +
                                 "; non-finite at this step: " + names + ")");
    }
  } else {
    last_lr_ = schedule_->lr(optimizer_->applied_steps());
    AMPD_RETURN_IF_ERROR(optimizer_->step(last_lr_, clip));
  }
  job_.set_loss_scale(scaler_->scale());
  last_step_samples_ = n;
  last_step_skipped_ = dec.skip_step;
  return Status::ok_status();
}

ampd::v1::Job Trainer::run() {
  std::string running_reason;
  if (!options_.resume_from.empty()) {
    running_reason = "resumed from " + options_.resume_from;
  } else if (!options_.resume_note.empty()) {
    running_reason = "started from step 0";
  }
  if (!options_.resume_note.empty()) running_reason += " (" + options_.resume_note + ")";
  emit_state(ampd::v1::RUNNING, running_reason);
  run_start_ = window_start_ = std::chrono::steady_clock::now();
  run_start_step_ = step_;
  const auto& tr = spec_.training();
  const int64_t report_every = tr.report_every() > 0 ? tr.report_every() : 10;
  Status status;
  std::string failure;  // the FAILED reason when status is not ok
  bool cancelled = false;
  if (step_ > 0 && step_ >= total_steps_) {
    // Resumed from the final checkpoint (the process died before the job was marked
    // done): nothing to train, but the summary still gets its validation metrics.
    status = run_evaluation(step_);
    if (!status.ok()) failure = "step " + std::to_string(step_) + ": " + status.message();
  }
  while (status.ok() && step_ < total_steps_) {
    if (options_.cancel != nullptr && options_.cancel->load()) {
      cancelled = true;
      break;
    }
    const auto step_start = options_.on_step ? std::chrono::steady_clock::now()
                                             : std::chrono::steady_clock::time_point{};
    status = train_step(step_);
    if (!status.ok()) {
      failure = "step " + std::to_string(step_ + 1) + ": " + status.message();
      break;
    }
    ++step_;
    if (options_.on_step) {
      options_.on_step(StepStats{
          step_, last_step_samples_,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count(),
          last_step_skipped_});
    }
    job_.set_step(step_);
    job_.set_epoch(static_cast<int32_t>((step_ - 1) / steps_per_epoch_));
    const bool last = step_ == total_steps_;
    if (step_ % report_every == 0 || last) {
      status = report_progress(step_);
      if (!status.ok()) {
        failure = "step " + std::to_string(step_) + ": " + status.message();
        break;
      }
    }
    if ((tr.eval_every() > 0 && step_ % tr.eval_every() == 0) || last) {
      // Evaluation time is not training time: the next progress window starts after it.
      const auto eval_start = std::chrono::steady_clock::now();
      status = run_evaluation(step_);
      window_start_ += std::chrono::steady_clock::now() - eval_start;
      if (!status.ok()) {
        failure = "step " + std::to_string(step_) + ": " + status.message();
        break;
      }
    }
    if ((tr.checkpoint_every() > 0 && step_ % tr.checkpoint_every() == 0) || last) {
      auto ck = checkpoint();
      if (!ck.ok()) {
        // The write left the previous checkpoint as it was. A periodic one is worth
        // hours of training, not the job: report it and try again at the next interval.
        // Without the final one the job's result cannot be delivered: that fails it.
        report_checkpoint_failure(ck.status());
        if (last) {
          status = ck.status();
          failure =
              "step " + std::to_string(step_) +
              ": the final checkpoint could not be written: " + ck.status().message() +
              (job_.checkpoint().empty() ? std::string(" (no earlier checkpoint)")
                                         : " (the last one written is " + job_.checkpoint() + ")");
          break;
        }
      }
    }
  }
  auto* mem = job_.mutable_memory();
  mem->set_peak_bytes(static_cast<int64_t>(backend_->memory_stats().peak_bytes));
  if (!status.ok()) {
    emit_state(ampd::v1::FAILED, failure);
  } else if (cancelled) {
    if (window_samples_ > 0) (void)report_progress(step_);
    auto ck = checkpoint();
    if (!ck.ok()) report_checkpoint_failure(ck.status());
    emit_state(ampd::v1::CANCELLED,
               ck.ok() ? "cancelled at step " + std::to_string(step_)
                       : "cancelled; final checkpoint failed: " + ck.status().message());
  } else {
    emit_state(ampd::v1::SUCCEEDED, "");
  }
  return job_;
}

}  // namespace ampd::engine
