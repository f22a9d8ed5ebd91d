// Prometheus metrics of `ampd serve` (prometheus-cpp, served on --metrics-addr /metrics).
//
// Names follow the Prometheus conventions: prefix ampd_, base units (seconds, bytes),
// _total for counters. Three kinds of series:
//   * server:    ampd_build_info, ampd_jobs{state}, ampd_queue_depth,
//                ampd_jobs_submitted_total, ampd_jobs_finished_total{state},
//                ampd_checkpoint_write_failures_total (checkpoints a job could not write:
//                disk full, unwritable state dir; the job goes on until its final one),
//                ampd_grpc_requests_total{method,code},
//                ampd_grpc_request_duration_seconds{method},
//                ampd_auth_failures_total{reason} (missing, malformed, wrong_token),
//                ampd_device_memory_{used,peak,capacity}_bytes
//   * text generation (the Generate RPC): ampd_generated_tokens_total,
//                ampd_generations_active
//   * training aggregates, by precision, surviving their jobs:
//                ampd_training_steps_total, ampd_training_samples_total,
//                ampd_training_overflow_skipped_steps_total,
//                ampd_training_step_duration_seconds (histogram)
//   * per job (label job_id: Prometheus itself sets `job` on every series, to the scrape
//     job's name), removed when the job ends or stops for a shutdown:
//                ampd_job_info{job_id,name,precision}, ampd_job_step, ampd_job_total_steps,
//                ampd_job_samples_total, ampd_job_loss, ampd_job_learning_rate,
//                ampd_job_loss_scale, ampd_job_overflow_skipped_steps,
//                ampd_job_samples_per_second, ampd_job_val_loss, ampd_job_val_accuracy,
//                and from numerics telemetry (TrainingSpec.telemetry_every):
//                ampd_job_grad_max_abs{tensor}, ampd_job_grad_fp16_subnormal_ratio{tensor},
//                ampd_job_grad_fp16_zero_ratio{tensor}, ampd_job_loss_drift_ratio,
//                ampd_job_fp32_loss
// Jobs by state and the queue depth are read when Prometheus scrapes (from the job store
// and the manager), so they are right across restarts without bookkeeping.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"
#include "server/generator.h"
#include "server/job_manager.h"

namespace prometheus {
class Exposer;
}

namespace ampd::server {

class ServerMetrics final : public JobObserver, public GenerationObserver {
 public:
  // Scrape-time view of the manager.
  struct Snapshot {
    std::vector<std::pair<ampd::v1::JobState, int64_t>> jobs_by_state;
    int64_t queue_depth = 0;
  };

  ServerMetrics();
  ~ServerMetrics() override;
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // Serves /metrics on host:port (port 0: any free port; see port()). Unavailable when
  // the address cannot be bound.
  Status serve(const std::string& address);
  int port() const { return port_; }

  void set_build_info(const std::string& version, const std::string& backend,
                      const std::string& device);
  // Called at every scrape (from the HTTP server's thread); must be thread-safe.
  void set_snapshot_source(std::function<Snapshot()> source);

  // One finished RPC: its method ("SubmitJob"), gRPC code name ("OK", "NOT_FOUND") and
  // duration (streams: the whole stream).
  void observe_rpc(const std::string& method, const std::string& code, double seconds);
  // One call refused for its credentials; `reason` is an auth_result_label ("wrong_token").
  // The call is also counted by observe_rpc, with code UNAUTHENTICATED.
  void observe_auth_failure(const std::string& reason);

  // JobObserver.
  void on_job_submitted() override;
  void on_job_finished(ampd::v1::JobState state) override;
  void on_job_started(const ampd::v1::Job& job) override;
  void on_job_step(const std::string& job_id, const engine::StepStats& step) override;
  void on_job_event(const ampd::v1::JobEvent& event) override;
  void on_job_stopped(const std::string& job_id) override;
  void on_device_memory(const MemoryStats& stats) override;

  // GenerationObserver.
  void on_generation_started() override;
  void on_generation_ended() override;
  void on_tokens_generated(int64_t tokens) override;

  // The registry (tests serialize it without HTTP).
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }
  // Every family, including the scrape-time ones.
  std::vector<prometheus::MetricFamily> collect_all() const;

 private:
  class SnapshotCollector;
  // The series of the running job (the worker runs one at a time).
  struct JobSeries {
    std::string id;
    prometheus::Gauge* info = nullptr;
    prometheus::Gauge* step = nullptr;
    prometheus::Gauge* total_steps = nullptr;
    prometheus::Counter* samples = nullptr;
    prometheus::Gauge* loss = nullptr;
    prometheus::Gauge* lr = nullptr;
    prometheus::Gauge* loss_scale = nullptr;
    prometheus::Gauge* overflow_skipped = nullptr;
    prometheus::Gauge* samples_per_second = nullptr;
    prometheus::Gauge* val_loss = nullptr;
    prometheus::Gauge* val_accuracy = nullptr;
    prometheus::Gauge* drift = nullptr;
    prometheus::Gauge* fp32_loss = nullptr;
    // Per tensor (name -> gauge), created at the first telemetry event.
    std::map<std::string, prometheus::Gauge*> grad_max, grad_subnormal, grad_zero;
    // Aggregates of the job's precision.
    prometheus::Counter* agg_steps = nullptr;
    prometheus::Counter* agg_samples = nullptr;
    prometheus::Counter* agg_skipped = nullptr;
    prometheus::Histogram* agg_step_seconds = nullptr;
  };
  void remove_job_series(JobSeries& s);  // requires mu_

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<SnapshotCollector> snapshot_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;

  prometheus::Family<prometheus::Gauge>& build_info_;
  prometheus::Counter& submitted_;
  prometheus::Counter& checkpoint_failures_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Counter>& rpc_requests_;
  prometheus::Family<prometheus::Histogram>& rpc_seconds_;
  prometheus::Family<prometheus::Counter>& auth_failures_;
  prometheus::Gauge& memory_used_;
  prometheus::Gauge& memory_peak_;
  prometheus::Gauge& memory_capacity_;
  prometheus::Counter& generated_tokens_;
  prometheus::Gauge& generations_active_;
  prometheus::Family<prometheus::Counter>& steps_;
  prometheus::Family<prometheus::Counter>& samples_;
  prometheus::Family<prometheus::Counter>& skipped_;
  prometheus::Family<prometheus::Histogram>& step_seconds_;
  prometheus::Family<prometheus::Gauge>& job_info_;
  prometheus::Family<prometheus::Gauge>& job_step_;
  prometheus::Family<prometheus::Gauge>& job_total_steps_;
  prometheus::Family<prometheus::Counter>& job_samples_;
  prometheus::Family<prometheus::Gauge>& job_loss_;
  prometheus::Family<prometheus::Gauge>& job_lr_;
  prometheus::Family<prometheus::Gauge>& job_loss_scale_;
  prometheus::Family<prometheus::Gauge>& job_overflow_skipped_;
  prometheus::Family<prometheus::Gauge>& job_samples_per_second_;
  prometheus::Family<prometheus::Gauge>& job_val_loss_;
  prometheus::Family<prometheus::Gauge>& job_val_accuracy_;
  prometheus::Family<prometheus::Gauge>& job_grad_max_;
  prometheus::Family<prometheus::Gauge>& job_grad_subnormal_;
  prometheus::Family<prometheus::Gauge>& job_grad_zero_;
  prometheus::Family<prometheus::Gauge>& job_drift_;
  prometheus::Family<prometheus::Gauge>& job_fp32_loss_;

  std::mutex mu_;
  std::map<std::string, std::unique_ptr<JobSeries>> jobs_;  // live jobs by id
  // The last job's (id, series) looked up by on_job_step, to skip the map per step.
  JobSeries* current_ = nullptr;
};

// "SUCCEEDED" -> "succeeded": label values of ampd_jobs and ampd_jobs_finished_total.
std::string state_label(ampd::v1::JobState state);

}  // namespace ampd::server
