#include "server/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include <cctype>
#include <exception>

namespace ampd::server {

namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;

// gRPC calls: unary calls take microseconds to milliseconds; streams (WatchJob, uploads)
// last as long as the client wants.
const Histogram::BucketBoundaries kRpcBuckets = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
// Training steps: from tens of microseconds (a small MLP on a GPU) to seconds.
const Histogram::BucketBoundaries kStepBuckets = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                  0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
                                                  0.5,     1,      2.5,     5,      10};

constexpr ampd::v1::JobState kStates[] = {ampd::v1::QUEUED, ampd::v1::RUNNING, ampd::v1::SUCCEEDED,
                                          ampd::v1::FAILED, ampd::v1::CANCELLED};

}  // namespace

std::string state_label(ampd::v1::JobState state) {
  std::string s = ampd::v1::JobState_Name(state);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// ampd_jobs{state} and ampd_queue_depth, computed at scrape time.
class ServerMetrics::SnapshotCollector final : public prometheus::Collectable {
 public:
  void set_source(std::function<Snapshot()> source) {
    std::lock_guard<std::mutex> lock(mu_);
    source_ = std::move(source);
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    Snapshot snap;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!source_) return {};
      snap = source_();
    }
    prometheus::MetricFamily jobs;
    jobs.name = "ampd_jobs";
    jobs.help = "Jobs in the store by state";
    jobs.type = prometheus::MetricType::Gauge;
    for (ampd::v1::JobState state : kStates) {
      prometheus::ClientMetric m;
      m.label.push_back({"state", state_label(state)});
      for (const auto& [s, n] : snap.jobs_by_state) {
        if (s == state) m.gauge.value = static_cast<double>(n);
      }
      jobs.metric.push_back(std::move(m));
    }
    prometheus::MetricFamily queue;
    queue.name = "ampd_queue_depth";
    queue.help = "Jobs waiting to run (QUEUED, and RUNNING jobs waiting to resume)";
    queue.type = prometheus::MetricType::Gauge;
    prometheus::ClientMetric q;
    q.gauge.value = static_cast<double>(snap.queue_depth);
    queue.metric.push_back(std::move(q));
    return {std::move(jobs), std::move(queue)};
  }

 private:
  mutable std::mutex mu_;
  std::function<Snapshot()> source_;
};

ServerMetrics::ServerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      snapshot_(std::make_shared<SnapshotCollector>()),
      build_info_(BuildGauge()
                      .Name("ampd_build_info")
                      .Help("Always 1; labels: ampd version, backend and device")
                      .Register(*registry_)),
      submitted_(BuildCounter()
                     .Name("ampd_jobs_submitted_total")
                     .Help("Jobs accepted by SubmitJob")
                     .Register(*registry_)
                     .Add({})),
      checkpoint_failures_(BuildCounter()
                               .Name("ampd_checkpoint_write_failures_total")
                               .Help("Checkpoints that could not be written (disk full, "
                                     "unwritable state dir); the previous one stays")
                               .Register(*registry_)
                               .Add({})),
      finished_(BuildCounter()
                    .Name("ampd_jobs_finished_total")
                    .Help("Jobs that reached a final state, by that state")
                    .Register(*registry_)),
      rpc_requests_(BuildCounter()
                        .Name("ampd_grpc_requests_total")
                        .Help("Finished ampd.v1.Trainer calls by method and gRPC status code")
                        .Register(*registry_)),
      rpc_seconds_(BuildHistogram()
                       .Name("ampd_grpc_request_duration_seconds")
                       .Help("Duration of ampd.v1.Trainer calls (streams: the whole stream)")
                       .Register(*registry_)),
      auth_failures_(BuildCounter()
                         .Name("ampd_auth_failures_total")
                         .Help("ampd.v1.Trainer calls refused UNAUTHENTICATED, by reason "
                               "(missing, malformed, wrong_token)")
                         .Register(*registry_)),
      memory_used_(BuildGauge()
                       .Name("ampd_device_memory_used_bytes")
                       .Help("Backend memory allocated now")
                       .Register(*registry_)
                       .Add({})),
      memory_peak_(BuildGauge()
                       .Name("ampd_device_memory_peak_bytes")
                       .Help("Backend memory high-water mark of the current or last job")
                       .Register(*registry_)
                       .Add({})),
      memory_capacity_(BuildGauge()
                           .Name("ampd_device_memory_capacity_bytes")
                           .Help("Device memory capacity (0 when unknown, e.g. the CPU backend)")
                           .Register(*registry_)
                           .Add({})),
      generated_tokens_(BuildCounter()
                            .Name("ampd_generated_tokens_total")
                            .Help("Tokens produced by Generate calls (characters, for a "
                                  "character vocabulary)")
                            .Register(*registry_)
                            .Add({})),
      generations_active_(BuildGauge()
                              .Name("ampd_generations_active")
                              .Help("Generate calls producing text now (at most "
                                    "--max-generations)")
                              .Register(*registry_)
                              .Add({})),
      steps_(BuildCounter()
                 .Name("ampd_training_steps_total")
                 .Help("Training steps taken (skipped ones included), by precision")
                 .Register(*registry_)),
      samples_(BuildCounter()
                   .Name("ampd_training_samples_total")
                   .Help("Training examples processed, by precision")
                   .Register(*registry_)),
      skipped_(BuildCounter()
                   .Name("ampd_training_overflow_skipped_steps_total")
                   .Help("Steps skipped for non-finite gradients, by precision")
                   .Register(*registry_)),
      step_seconds_(BuildHistogram()
                        .Name("ampd_training_step_duration_seconds")
                        .Help("Wall time of one training step, by precision")
                        .Register(*registry_)),
      job_info_(BuildGauge()
                    .Name("ampd_job_info")
                    .Help("Always 1 while the job runs; labels: job id, name, precision")
                    .Register(*registry_)),
      job_step_(BuildGauge()
                    .Name("ampd_job_step")
                    .Help("Steps the running job has taken")
                    .Register(*registry_)),
      job_total_steps_(BuildGauge()
                           .Name("ampd_job_total_steps")
                           .Help("Steps the running job will take")
                           .Register(*registry_)),
      job_samples_(BuildCounter()
                       .Name("ampd_job_samples_total")
                       .Help("Training examples the running job processed since it started here")
                       .Register(*registry_)),
      job_loss_(BuildGauge()
                    .Name("ampd_job_loss")
                    .Help("Mean training loss over the last progress window")
                    .Register(*registry_)),
      job_lr_(BuildGauge()
                  .Name("ampd_job_learning_rate")
                  .Help("Learning rate of the last optimizer step")
                  .Register(*registry_)),
      job_loss_scale_(BuildGauge()
                          .Name("ampd_job_loss_scale")
                          .Help("Current loss scale (1 without loss scaling)")
                          .Register(*registry_)),
      job_overflow_skipped_(BuildGauge()
                                .Name("ampd_job_overflow_skipped_steps")
                                .Help("Steps of the job skipped for non-finite gradients")
                                .Register(*registry_)),
      job_samples_per_second_(BuildGauge()
                                  .Name("ampd_job_samples_per_second")
                                  .Help("Throughput over the last progress window")
                                  .Register(*registry_)),
      job_val_loss_(BuildGauge()
                        .Name("ampd_job_val_loss")
                        .Help("Loss on the validation split at the last evaluation")
                        .Register(*registry_)),
      job_val_accuracy_(BuildGauge()
                            .Name("ampd_job_val_accuracy")
                            .Help("Accuracy on the validation split at the last evaluation")
                            .Register(*registry_)),
      job_grad_max_(BuildGauge()
                        .Name("ampd_job_grad_max_abs")
                        .Help("Telemetry: largest |gradient| of a parameter (unscaled)")
                        .Register(*registry_)),
      job_grad_subnormal_(
          BuildGauge()
              .Name("ampd_job_grad_fp16_subnormal_ratio")
              .Help("Telemetry: share of gradient elements with 2^-25 < |g*scale| < 2^-14 "
                    "(FP16 subnormal)")
              .Register(*registry_)),
      job_grad_zero_(BuildGauge()
                         .Name("ampd_job_grad_fp16_zero_ratio")
                         .Help("Telemetry: share of nonzero gradient elements with |g*scale| <= "
                               "2^-25 (round to zero in FP16), of all elements")
                         .Register(*registry_)),
      job_drift_(BuildGauge()
                     .Name("ampd_job_loss_drift_ratio")
                     .Help("Telemetry: |loss - FP32 loss| / |FP32 loss| on the same batch")
                     .Register(*registry_)),
      job_fp32_loss_(BuildGauge()
                         .Name("ampd_job_fp32_loss")
                         .Help("Telemetry: the batch loss through an FP32 copy of the masters")
                         .Register(*registry_)) {}

ServerMetrics::~ServerMetrics() = default;

Status ServerMetrics::serve(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
  } catch (const std::exception& e) {
    return unavailable("cannot serve metrics on " + address + ": " + e.what());
  }
  exposer_->RegisterCollectable(registry_);
  exposer_->RegisterCollectable(snapshot_);
  const std::vector<int> ports = exposer_->GetListeningPorts();
  port_ = ports.empty() ? 0 : ports.front();
  return Status::ok_status();
}

void ServerMetrics::set_build_info(const std::string& version, const std::string& backend,
                                   const std::string& device) {
  build_info_.Add({{"version", version}, {"backend", backend}, {"device", device}}).Set(1);
}

void ServerMetrics::set_snapshot_source(std::function<Snapshot()> source) {
  snapshot_->set_source(std::move(source));
}

std::vector<prometheus::MetricFamily> ServerMetrics::collect_all() const {
  std::vector<prometheus::MetricFamily> out = registry_->Collect();
  for (auto& f : snapshot_->Collect()) out.push_back(std::move(f));
  return out;
}

void ServerMetrics::observe_rpc(const std::string& method, const std::string& code,
                                double seconds) {
  rpc_requests_.Add({{"method", method}, {"code", code}}).Increment();
  rpc_seconds_.Add({{"method", method}}, kRpcBuckets).Observe(seconds);
}

void ServerMetrics::observe_auth_failure(const std::string& reason) {
  auth_failures_.Add({{"reason", reason}}).Increment();
}

void ServerMetrics::on_job_submitted() {
  submitted_.Increment();
}

void ServerMetrics::on_job_finished(ampd::v1::JobState state) {
  finished_.Add({{"state", state_label(state)}}).Increment();
}

void ServerMetrics::on_job_started(const ampd::v1::Job& job) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job.id());
  if (it != jobs_.end()) remove_job_series(*it->second);
  auto s = std::make_unique<JobSeries>();
  s->id = job.id();
  const prometheus::Labels l = {{"job_id", job.id()}};
  s->info = &job_info_.Add(
      {{"job_id", job.id()}, {"name", job.spec().name()}, {"precision", job.precision()}});
  s->info->Set(1);
  s->step = &job_step_.Add(l);
  s->step->Set(static_cast<double>(job.step()));
  s->total_steps = &job_total_steps_.Add(l);
  s->total_steps->Set(static_cast<double>(job.total_steps()));
  s->samples = &job_samples_.Add(l);
  s->loss = &job_loss_.Add(l);
  s->lr = &job_lr_.Add(l);
  s->loss_scale = &job_loss_scale_.Add(l);
  s->loss_scale->Set(job.loss_scale() > 0 ? job.loss_scale() : 1.0);
  s->overflow_skipped = &job_overflow_skipped_.Add(l);
  s->overflow_skipped->Set(static_cast<double>(job.overflow_skipped_steps()));
  s->samples_per_second = &job_samples_per_second_.Add(l);
  const prometheus::Labels p = {{"precision", job.precision()}};
  s->agg_steps = &steps_.Add(p);
  s->agg_samples = &samples_.Add(p);
  s->agg_skipped = &skipped_.Add(p);
  s->agg_step_seconds = &step_seconds_.Add(p, kStepBuckets);
  current_ = s.get();
  jobs_[job.id()] = std::move(s);
}

void ServerMetrics::on_job_step(const std::string& job_id, const engine::StepStats& st) {
  std::lock_guard<std::mutex> lock(mu_);
  if (current_ == nullptr || current_->id != job_id) {
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return;
    current_ = it->second.get();
  }
  JobSeries& s = *current_;
  s.agg_steps->Increment();
  s.agg_samples->Increment(static_cast<double>(st.samples));
  if (st.skipped) s.agg_skipped->Increment();
  s.agg_step_seconds->Observe(st.seconds);
  s.samples->Increment(static_cast<double>(st.samples));
  s.step->Set(static_cast<double>(st.step));
}

void ServerMetrics::on_job_event(const ampd::v1::JobEvent& e) {
  std::lock_guard<std::mutex> lock(mu_);
  if (e.has_checkpoint() && !e.checkpoint().error().empty()) checkpoint_failures_.Increment();
  auto it = jobs_.find(e.job_id());
  if (it == jobs_.end()) return;
  JobSeries& s = *it->second;
  const prometheus::Labels l = {{"job_id", s.id}};
  switch (e.kind_case()) {
    case ampd::v1::JobEvent::kProgress: {
      const auto& p = e.progress();
      s.step->Set(static_cast<double>(p.step()));
      s.total_steps->Set(static_cast<double>(p.total_steps()));
      s.loss->Set(p.loss());
      s.lr->Set(p.learning_rate());
      s.loss_scale->Set(p.loss_scale());
      s.overflow_skipped->Set(static_cast<double>(p.overflow_skipped_steps()));
      s.samples_per_second->Set(p.samples_per_second());
      break;
    }
    case ampd::v1::JobEvent::kOverflow:
      s.loss_scale->Set(e.overflow().scale_after());
      s.overflow_skipped->Increment();
      break;
    case ampd::v1::JobEvent::kEvaluation:
      if (s.val_loss == nullptr) {
        s.val_loss = &job_val_loss_.Add(l);
        s.val_accuracy = &job_val_accuracy_.Add(l);
      }
      s.val_loss->Set(e.evaluation().val_loss());
      s.val_accuracy->Set(e.evaluation().val_accuracy());
      break;
    case ampd::v1::JobEvent::kTelemetry: {
      const auto& t = e.telemetry();
      if (s.drift == nullptr) {
        s.drift = &job_drift_.Add(l);
        s.fp32_loss = &job_fp32_loss_.Add(l);
      }
      s.drift->Set(t.loss_drift());
      s.fp32_loss->Set(t.fp32_loss());
      for (const auto& tensor : t.tensors()) {
        const prometheus::Labels tl = {{"job_id", s.id}, {"tensor", tensor.name()}};
        auto get = [&](std::map<std::string, Gauge*>& m, prometheus::Family<Gauge>& f) {
          Gauge*& g = m[tensor.name()];
          if (g == nullptr) g = &f.Add(tl);
          return g;
        };
        get(s.grad_max, job_grad_max_)->Set(tensor.max_abs_grad());
        get(s.grad_subnormal, job_grad_subnormal_)->Set(tensor.fp16_subnormal_fraction());
        get(s.grad_zero, job_grad_zero_)->Set(tensor.fp16_zero_fraction());
      }
      break;
    }
    default: break;
  }
}

void ServerMetrics::on_job_stopped(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  remove_job_series(*it->second);
  if (current_ == it->second.get()) current_ = nullptr;
  jobs_.erase(it);
}

void ServerMetrics::remove_job_series(JobSeries& s) {
  job_info_.Remove(s.info);
  job_step_.Remove(s.step);
  job_total_steps_.Remove(s.total_steps);
  job_samples_.Remove(s.samples);
  job_loss_.Remove(s.loss);
  job_lr_.Remove(s.lr);
  job_loss_scale_.Remove(s.loss_scale);
  job_overflow_skipped_.Remove(s.overflow_skipped);
  job_samples_per_second_.Remove(s.samples_per_second);
  if (s.val_loss != nullptr) job_val_loss_.Remove(s.val_loss);
  if (s.val_accuracy != nullptr) job_val_accuracy_.Remove(s.val_accuracy);
  if (s.drift != nullptr) job_drift_.Remove(s.drift);
  if (s.fp32_loss != nullptr) job_fp32_loss_.Remove(s.fp32_loss);
  for (auto& [name, g] : s.grad_max) job_grad_max_.Remove(g);
  for (auto& [name, g] : s.grad_subnormal) job_grad_subnormal_.Remove(g);
  for (auto& [name, g] : s.grad_zero) job_grad_zero_.Remove(g);
  s.grad_max.clear();
  s.grad_subnormal.clear();
  s.grad_zero.clear();
}

void ServerMetrics::on_device_memory(const MemoryStats& m) {
  memory_used_.Set(static_cast<double>(m.in_use_bytes));
  memory_peak_.Set(static_cast<double>(m.peak_bytes));
  memory_capacity_.Set(static_cast<double>(m.device_total_bytes));
}

void ServerMetrics::on_generation_started() {
  generations_active_.Increment();
}

void ServerMetrics::on_generation_ended() {
  generations_active_.Decrement();
}

void ServerMetrics::on_tokens_generated(int64_t tokens) {
  generated_tokens_.Increment(static_cast<double>(tokens));
}

}  // namespace ampd::server
