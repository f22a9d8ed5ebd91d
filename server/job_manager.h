// The core of `ampd serve`: the job queue, the job state machine, persistence and the
// worker that runs jobs, with no gRPC in sight (server/trainer_service.* is the thin RPC
// layer over this, as in Triton's core/frontend split).
//
// Job lifecycle (ampd.v1.JobState):
//   QUEUED     accepted and persisted; waits in submission order.
//   RUNNING    the worker runs it (or ran it when the server stopped: it resumes on the
//              next start from its newest valid checkpoint, or from step 0 without one).
//   SUCCEEDED  trained to the end.
//   FAILED     the spec could not start (data gone, checkpoint unusable) or a step failed.
//   CANCELLED  a user cancelled it: at once while QUEUED, at the next step boundary and
//              after a checkpoint while RUNNING.
// A server shutdown is not a cancel: the running job stops at a step boundary after a
// checkpoint but stays RUNNING in the store (the trainer's CANCELLED event is not
// recorded), so that the next start resumes it.
//
// The job summary is folded from events by engine/job_summary.h alone: the manager folds
// the events it produces itself (QUEUED, CANCELLED while queued, FAILED before start); while
// a job runs, each event is stored with the trainer's summary as of that event
// (engine::Trainer::job()), which the trainer folded with the same function.
//
// Every job event is persisted (JobStore) before it is published to watchers (EventHub);
// event seqs of a job are contiguous from 1 across restarts (first_seq = last stored + 1).
// When the store refuses a write (disk full), the job keeps training: its events wait in
// memory, in order, and go in with the next write that succeeds; calls that must write
// (SubmitJob, a cancel) fail with the store's error; nothing takes the server down.
//
// Restarts: a RUNNING job resumes from the newest of its checkpoints that verifies
// (engine/safetensors.h: both checksums); files passed over are named, with the reason,
// in the reason of its next RUNNING event; with none usable it starts again from step 0.
// Partial writes (".safetensors.tmp-*", from a process killed mid-write) are removed.
//
// One worker thread runs one job at a time on the one backend: a device trains one job at
// a time, and running two would only make both slower and their timings meaningless.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "ampd/v1/trainer.pb.h"
#include "base/status.h"
#include "engine/checkpoint.h"
#include "engine/trainer.h"
#include "kernels/backend.h"
#include "server/dataset_store.h"
#include "server/event_hub.h"
#include "server/job_store.h"

namespace ampd::server {

// Sees what the manager does, for metrics (server/metrics.h), without the manager
// knowing about Prometheus. The job methods run on the worker thread (on_job_step after
// every step: keep it cheap); on_job_submitted and on_job_finished may run on RPC threads.
class JobObserver {
 public:
  virtual ~JobObserver() = default;
  virtual void on_job_submitted() {}
  // A job reached SUCCEEDED, FAILED or CANCELLED (once per job).
  virtual void on_job_finished(ampd::v1::JobState /*state*/) {}
  // The worker starts (or resumes) a job; precision is resolved ("fp16").
  virtual void on_job_started(const ampd::v1::Job& /*job*/) {}
  virtual void on_job_step(const std::string& /*job_id*/, const engine::StepStats& /*step*/) {}
  // Every event the trainer emits (recorded, or the store refused it: then kept and
  // retried; metrics follow training either way).
  virtual void on_job_event(const ampd::v1::JobEvent& /*event*/) {}
  // The worker is done with the job: it ended, or stopped for a shutdown.
  virtual void on_job_stopped(const std::string& /*job_id*/) {}
  // The backend's memory, read on the worker thread (at start, on progress, at job end).
  virtual void on_device_memory(const MemoryStats& /*stats*/) {}
};

struct JobManagerOptions {
  std::string state_dir;  // ampd.db and jobs/<id>/ checkpoints
  std::string data_dir;   // root of data.csv.path and of uploads
  // QUEUED jobs accepted beyond the running one; more is RESOURCE_EXHAUSTED.
  int max_queued_jobs = 100;
  // checkpoint_every given to served jobs whose spec sets none (0), so that a restart
  // repeats at most this many steps.
  int64_t default_checkpoint_every = 50;
  int64_t max_upload_bytes = int64_t{256} << 20;
  EventHub::Options hub;
  // How long CancelJob waits for a running job to reach its step boundary and
  // checkpoint, so that the answer usually shows CANCELLED.
  std::chrono::milliseconds cancel_wait{5000};
  // Optional; must outlive the manager.
  JobObserver* observer = nullptr;
  // Test seam: checkpoint write faults (engine/write_faults.h), given to every job's
  // trainer; null in production. Must outlive the manager.
  engine::WriteFaults* write_faults = nullptr;
};

// What GetServerInfo reports beyond the version.
struct ManagerInfo {
  std::string backend;
  std::string device;
  std::vector<std::string> precisions;
  int64_t device_memory_bytes = 0;
  int max_queued_jobs = 0;
  int queued_jobs = 0;
  std::string running_job;
};

class JobManager {
 public:
  // Opens the store and queues the unfinished jobs (QUEUED and RUNNING, in submission
  // order). Nothing runs before start().
  static StatusOr<std::unique_ptr<JobManager>> create(std::unique_ptr<Backend> backend,
                                                      JobManagerOptions options);
  // Starts the worker: the serve command calls it once the server listens, so that a
  // server that cannot bind its port has not started a job. Once only.
  void start();
  ~JobManager();
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // Validates the spec (InvalidArgument naming the field; NotFound for a missing data
  // set; ResourceExhausted for a job that cannot fit the device), applies the served
  // defaults and queues it. With a client_request_id already used: the same job when the
  // spec is the same, AlreadyExists when it differs. ResourceExhausted when the queue is
  // full; Unavailable while shutting down.
  StatusOr<ampd::v1::Job> submit(const ampd::v1::JobSpec& spec,
                                 const std::string& client_request_id);

  StatusOr<ampd::v1::Job> get(const std::string& job_id);

  struct Page {
    std::vector<ampd::v1::Job> jobs;
    std::string next_page_token;  // "" on the last page
  };
  // Oldest first. page_size 0 means 50; above 1000 is read as 1000.
  StatusOr<Page> list(const std::vector<ampd::v1::JobState>& states, int page_size,
                      const std::string& page_token);

  // FailedPrecondition for a job that already ended. A queued job is CANCELLED at once;
  // a running one at its next step boundary (waits up to options.cancel_wait for that,
  // then returns the job as it is).
  StatusOr<ampd::v1::Job> cancel(const std::string& job_id);

  // Streams events with seq > since_seq until the job's final one (see EventHub::watch).
  Status watch(const std::string& job_id, int64_t since_seq,
               const std::function<bool(const ampd::v1::JobEvent&)>& write,
               const std::function<bool()>& cancelled);

  // Streams the job's newest checkpoint file in chunks of chunk_bytes. FailedPrecondition
  // when it has none yet.
  Status read_checkpoint(const std::string& job_id, int64_t chunk_bytes,
                         const std::function<bool(const ampd::v1::CheckpointChunk&)>& write);

  // A checkpoint of a language model job to generate from (server/generator.h): the
  // job's latest (step 0) or its file of `step`. NotFound for an unknown job, or a step
  // whose file the job does not keep (the message lists the steps it keeps);
  // FailedPrecondition for a job that is not a language model (no data.text) or has no
  // checkpoint yet. Reads the store only; never waits for the worker.
  struct CheckpointRef {
    std::string path;
    int64_t step = 0;
  };
  StatusOr<CheckpointRef> language_model_checkpoint(const std::string& job_id, int64_t step);

  DatasetStore& datasets() { return *datasets_; }
  ManagerInfo info() const;
  // How many jobs the store holds in each state (states without jobs are absent).
  StatusOr<std::vector<std::pair<ampd::v1::JobState, int64_t>>> count_jobs_by_state();

  // Stops taking work: no new job starts, the running one stops at its next step boundary
  // after a checkpoint and stays RUNNING in the store, then every watch ends
  // (Unavailable). Returns false when the worker did not stop by `deadline` (a step
  // longer than the shutdown budget); the caller should then exit without destroying
  // this object. Idempotent.
  bool shutdown(std::chrono::steady_clock::time_point deadline);

 private:
  JobManager(std::unique_ptr<Backend> backend, JobManagerOptions options);
  Status init();
  void worker_loop();
  void run_job(const std::string& id);
  void on_trainer_event(const ampd::v1::JobEvent& event);
  // Stores and publishes unstored_ in order; false when the store still refuses.
  bool flush_unstored();
  // Records an event the manager itself produces (QUEUED, CANCELLED while queued,
  // FAILED before start): applies it to *job, persists both, publishes.
  Status record_event(ampd::v1::Job* job, ampd::v1::JobState state, const std::string& reason);
  std::string new_job_id();  // requires mu_
  // Where a RUNNING job resumes (engine::find_latest_checkpoint over its directory, partial
  // writes removed), with what it did logged.
  engine::CheckpointSearch pick_checkpoint(const std::string& id) const;
  std::string job_dir(const std::string& id) const;
  void report_memory();  // worker thread (or before it starts)
  Status check_spec(ampd::v1::JobSpec* resolved) const;

  std::unique_ptr<Backend> backend_;
  const JobManagerOptions options_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<EventHub> hub_;
  std::unique_ptr<DatasetStore> datasets_;
  ManagerInfo static_info_;
  std::string auto_precision_;  // what "auto" resolves to on this backend

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // queue_ or stopping_ changed
  std::condition_variable done_cv_;  // running_id_ or worker_exited_ changed
  std::deque<std::string> queue_;    // ids, submission order
  std::string running_id_;
  bool stopping_ = false;
  bool worker_exited_ = false;
  uint64_t last_id_ms_ = 0;

  // Stop requests for the running job, read by the trainer at step boundaries.
  std::atomic<bool> cancel_{false};
  std::atomic<bool> user_cancel_{false};
  std::atomic<bool> shutdown_stop_{false};
  // The running job's trainer (its summary is stored with each of its events) and that
  // summary as of the last event recorded; touched only on the worker thread.
  const engine::Trainer* running_trainer_ = nullptr;
  ampd::v1::Job running_job_;
  // Events the store refused (disk full), each with the job as of that event, oldest
  // first; retried before every later event (worker thread only). Past the cap, events
  // are dropped (logged) rather than held without bound.
  static constexpr size_t kMaxUnstoredEvents = 10000;
  std::deque<std::pair<ampd::v1::Job, ampd::v1::JobEvent>> unstored_;
  bool store_failing_ = false;

  std::thread worker_;
};

}  // namespace ampd::server
