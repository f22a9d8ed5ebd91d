#include "server/job_manager.h"

#include <fcntl.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/util/time_util.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "engine/checkpoint.h"
#include "engine/dataset.h"
#include "engine/job_spec.h"
#include "engine/job_summary.h"
#include "engine/trainer.h"
#include "server/log.h"

namespace ampd::server {

namespace fs = std::filesystem;
using ampd::v1::Job;
using ampd::v1::JobEvent;
using ampd::v1::JobSpec;
using ampd::v1::JobState;
using google::protobuf::util::TimeUtil;

namespace {

constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;
constexpr size_t kMaxClientRequestId = 128;

bool is_final(JobState s) {
  return engine::is_final_state(s);
}

std::string state_name(JobState s) {
  return ampd::v1::JobState_Name(s);
}

// "j-" + 12 hex digits of Unix milliseconds + 4 random hex digits. Ids sort by creation
// time (the store lists jobs ORDER BY id), the random part keeps two servers that were
// wrongly pointed at one state dir from minting the same id.
bool is_job_id(const std::string& s) {
  return s.size() == 18 && s.rfind("j-", 0) == 0 &&
         s.find_first_not_of("0123456789abcdef", 2) == std::string::npos;
}

}  // namespace

JobManager::JobManager(std::unique_ptr<Backend> backend, JobManagerOptions options)
    : backend_(std::move(backend)), options_(std::move(options)) {}

StatusOr<std::unique_ptr<JobManager>> JobManager::create(std::unique_ptr<Backend> backend,
                                                         JobManagerOptions options) {
  if (backend == nullptr) return invalid_argument("job manager: no backend");
  std::unique_ptr<JobManager> m(new JobManager(std::move(backend), std::move(options)));
  AMPD_RETURN_IF_ERROR(m->init());
  return m;
}

void JobManager::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (worker_.joinable() || stopping_) return;
  worker_ = std::thread([this] { worker_loop(); });
}

Status JobManager::init() {
  std::error_code ec;
  fs::create_directories(fs::path(options_.state_dir) / "jobs", ec);
  if (ec) return unavailable("state dir " + options_.state_dir + ": " + ec.message());
  AMPD_ASSIGN_OR_RETURN(store_,
                        JobStore::open((fs::path(options_.state_dir) / "ampd.db").string()));
  JobStore* store = store_.get();
  hub_ = std::make_unique<EventHub>(options_.hub,
                                    [store](const std::string& id, int64_t after, int limit) {
                                      return store->list_events(id, after, limit);
                                    });
  DatasetStore::Options dopts;
  dopts.data_dir = options_.data_dir;
  dopts.max_upload_bytes = options_.max_upload_bytes;
  AMPD_ASSIGN_OR_RETURN(datasets_, DatasetStore::create(dopts));

  // The backend is used by the worker thread alone; everything RPCs need from it is read
  // once here.
  static_info_.backend = backend_->name();
  static_info_.device = backend_->device_description();
  for (const char* p : {"fp32", "fp16", "bf16"}) {
    if (backend_->supports(engine::precision_dtype(p))) static_info_.precisions.push_back(p);
  }
  static_info_.device_memory_bytes =
      static_cast<int64_t>(backend_->memory_stats().device_total_bytes);
  static_info_.max_queued_jobs = options_.max_queued_jobs;
  auto_precision_ = engine::resolve_precision("auto", *backend_);
  report_memory();

  AMPD_ASSIGN_OR_RETURN(std::string max_id, store_->max_job_id());
  if (is_job_id(max_id)) last_id_ms_ = std::stoull(max_id.substr(2, 12), nullptr, 16);

  // Unfinished jobs continue in submission order; a RUNNING one was first in line.
  AMPD_ASSIGN_OR_RETURN(auto unfinished,
                        store_->list_jobs({ampd::v1::QUEUED, ampd::v1::RUNNING}, "", INT32_MAX));
  for (const Job& job : unfinished) {
    queue_.push_back(job.id());
    log_line("recovered job " + job.id() + " (" + state_name(job.state()) +
             (job.state() == ampd::v1::RUNNING ? ", step " + std::to_string(job.step()) : "") +
             ")");
  }
  return Status::ok_status();
}

JobManager::~JobManager() {
  shutdown(std::chrono::steady_clock::time_point::max());
  if (worker_.joinable()) worker_.join();
}

std::string JobManager::job_dir(const std::string& id) const {
  return (fs::path(options_.state_dir) / "jobs" / id).string();
}

std::string JobManager::new_job_id() {
  const uint64_t now =
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  // Strictly increasing even within one millisecond or when the clock steps back, so that
  // id order is submission order.
  last_id_ms_ = std::max(now, last_id_ms_ + 1);
  static thread_local std::mt19937 rng{std::random_device{}()};
  char buf[32];
  std::snprintf(buf, sizeof buf, "j-%012llx%04x",
                static_cast<unsigned long long>(last_id_ms_ & 0xffffffffffffULL),
                static_cast<unsigned>(rng() & 0xffff));
  return buf;
}

Status JobManager::check_spec(JobSpec* resolved) const {
  // Data: a CSV path must stay inside the data dir (resolve_data_path rejects absolute
  // paths, "..", and symbolic links that leave it) and exist now, not at run time.
  // Text files (data.text.path) likewise.
  const bool csv = resolved->data().has_csv();
  if (csv || (resolved->data().has_text() && resolved->data().text().has_path())) {
    const std::string field = csv ? "data.csv.path" : "data.text.path";
    const std::string& rel = csv ? resolved->data().csv().path() : resolved->data().text().path();
    auto path = engine::resolve_data_path(options_.data_dir, rel, field);
    if (!path.ok()) return path.status();
    std::error_code ec;
    if (!fs::is_regular_file(*path, ec)) {
      return invalid_argument(field + ": '" + rel + "' is not a regular file");
    }
  }
  const std::string precision =
      resolved->precision() == "auto" ? auto_precision_ : resolved->precision();
  if (std::find(static_info_.precisions.begin(), static_info_.precisions.end(), precision) ==
      static_info_.precisions.end()) {
    return invalid_argument("precision: backend '" + static_info_.backend + "' does not support " +
                            precision);
  }
  const engine::MemoryEstimate need = engine::estimate_memory(*resolved, 0, 0);
  if (static_info_.device_memory_bytes > 0 && need.total_bytes > static_info_.device_memory_bytes) {
    // Names the fields that decide the size, so the client knows what to shrink.
    auto mib = [](int64_t b) {
      return std::to_string(b / 1048576 + (b % 1048576 != 0 ? 1 : 0)) + " MiB";
    };
    return resource_exhausted(
        "model.layers / data.batch_size: the job needs about " + std::to_string(need.total_bytes) +
        " bytes (" + mib(need.total_bytes) + ": parameters " + mib(need.parameter_bytes) +
        ", optimizer state " + mib(need.optimizer_bytes) + ", activations at batch " +
        std::to_string(resolved->data().batch_size()) + " " + mib(need.activation_bytes) +
        ") but the device has " + std::to_string(static_info_.device_memory_bytes) + " bytes (" +
        mib(static_info_.device_memory_bytes) +
        "); use narrower layers (model.layers[].out_features) or a smaller data.batch_size");
  }
  if (resolved->training().checkpoint_every() == 0) {
    resolved->mutable_training()->set_checkpoint_every(options_.default_checkpoint_every);
  }
  return Status::ok_status();
}

Status JobManager::record_event(Job* job, JobState state, const std::string& reason) {
  AMPD_ASSIGN_OR_RETURN(int64_t last, store_->last_seq(job->id()));
  JobEvent e;
  e.set_seq(last + 1);
  e.set_job_id(job->id());
  *e.mutable_time() = TimeUtil::GetCurrentTime();
  e.mutable_state_change()->set_state(state);
  e.mutable_state_change()->set_reason(reason);
  engine::apply_event(e, job);
  AMPD_RETURN_IF_ERROR(store_->append_event(*job, e, /*durable=*/true));
  hub_->publish(e);
  if (is_final(state) && options_.observer != nullptr) options_.observer->on_job_finished(state);
  return Status::ok_status();
}

void JobManager::report_memory() {
  if (options_.observer != nullptr) options_.observer->on_device_memory(backend_->memory_stats());
}

StatusOr<std::vector<std::pair<JobState, int64_t>>> JobManager::count_jobs_by_state() {
  return store_->count_by_state();
}

StatusOr<Job> JobManager::submit(const JobSpec& spec, const std::string& client_request_id) {
  if (client_request_id.size() > kMaxClientRequestId) {
    return invalid_argument("client_request_id: at most 128 characters, got " +
                            std::to_string(client_request_id.size()));
  }
  AMPD_ASSIGN_OR_RETURN(JobSpec resolved, engine::validate_and_resolve(spec));
  AMPD_RETURN_IF_ERROR(check_spec(&resolved));

  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return unavailable("server is shutting down");
  if (!client_request_id.empty()) {
    AMPD_ASSIGN_OR_RETURN(auto existing, store_->find_by_client_request_id(client_request_id));
    if (existing) {
      // A retry of a call whose answer was lost: the same job, not a second one.
      if (google::protobuf::util::MessageDifferencer::Equals(existing->spec(), resolved)) {
        return *existing;
      }
      return Status(StatusCode::kAlreadyExists, "client_request_id '" + client_request_id +
                                                    "' was used for job " + existing->id() +
                                                    " with a different spec");
    }
  }
  // An idle server always takes a job (it starts at once), even with --max-queued-jobs 0.
  const bool idle = running_id_.empty() && queue_.empty();
  if (!idle && static_cast<int>(queue_.size()) >= options_.max_queued_jobs) {
    return resource_exhausted("the queue is full (" + std::to_string(queue_.size()) +
                              " jobs waiting, --max-queued-jobs " +
                              std::to_string(options_.max_queued_jobs) + "); retry later");
  }
  Job job;
  job.set_id(new_job_id());
  job.set_state(ampd::v1::QUEUED);
  *job.mutable_spec() = resolved;
  job.set_client_request_id(client_request_id);
  job.set_precision(resolved.precision() == "auto" ? auto_precision_ : resolved.precision());
  job.set_backend(static_info_.backend);
  if (resolved.training().epochs() == 0) job.set_total_steps(resolved.training().max_steps());
  *job.mutable_created_at() = TimeUtil::GetCurrentTime();
  JobEvent e;
  e.set_seq(1);
  e.set_job_id(job.id());
  *e.mutable_time() = job.created_at();
  e.mutable_state_change()->set_state(ampd::v1::QUEUED);
  AMPD_RETURN_IF_ERROR(store_->insert_job(job, e));
  queue_.push_back(job.id());
  work_cv_.notify_all();
  hub_->publish(e);
  if (options_.observer != nullptr) options_.observer->on_job_submitted();
  log_line("job " + job.id() + " queued" +
           (resolved.name().empty() ? "" : " (" + resolved.name() + ")"));
  return job;
}

StatusOr<Job> JobManager::get(const std::string& job_id) {
  if (job_id.empty()) return invalid_argument("job_id: required");
  return store_->get_job(job_id);
}

StatusOr<JobManager::Page> JobManager::list(const std::vector<JobState>& states, int page_size,
                                            const std::string& page_token) {
  for (JobState s : states) {
    if (s == ampd::v1::JOB_STATE_UNSPECIFIED || !ampd::v1::JobState_IsValid(s)) {
      return invalid_argument("states: invalid job state " + std::to_string(static_cast<int>(s)));
    }
  }
  if (page_size < 0) return invalid_argument("page_size: must be >= 0");
  if (page_size == 0) page_size = kDefaultPageSize;
  page_size = std::min(page_size, kMaxPageSize);
  // The token is the last id of the previous page: stable under inserts (new ids sort
  // last) and meaningful after a restart.
  if (!page_token.empty() && !is_job_id(page_token)) {
    return invalid_argument("page_token: not a token returned by ListJobs");
  }
  AMPD_ASSIGN_OR_RETURN(auto jobs, store_->list_jobs(states, page_token, page_size + 1));
  Page page;
  if (static_cast<int>(jobs.size()) > page_size) {
    jobs.resize(static_cast<size_t>(page_size));
    page.next_page_token = jobs.back().id();
  }
  page.jobs = std::move(jobs);
  return page;
}

StatusOr<Job> JobManager::cancel(const std::string& job_id) {
  if (job_id.empty()) return invalid_argument("job_id: required");
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) return unavailable("server is shutting down");
  AMPD_ASSIGN_OR_RETURN(Job job, store_->get_job(job_id));
  if (is_final(job.state())) {
    return failed_precondition("job " + job_id + " already ended: " + state_name(job.state()));
  }
  if (running_id_ == job_id) {
    // user_cancel_ first: the trainer's CANCELLED event is then recorded, not taken for a
    // shutdown stop.
    user_cancel_.store(true);
    cancel_.store(true);
    log_line("job " + job_id + ": cancel requested");
    done_cv_.wait_for(lock, options_.cancel_wait, [&] { return running_id_ != job_id; });
    return store_->get_job(job_id);
  }
  // Queued (or RUNNING but waiting to be resumed after a restart): ends now; a resumable
  // job's checkpoint stays where it is.
  queue_.erase(std::remove(queue_.begin(), queue_.end(), job_id), queue_.end());
  AMPD_RETURN_IF_ERROR(
      record_event(&job, ampd::v1::CANCELLED,
                   job.state() == ampd::v1::QUEUED
                       ? "cancelled while queued"
                       : "cancelled before it resumed at step " + std::to_string(job.step())));
  log_line("job " + job_id + " cancelled");
  return job;
}

Status JobManager::watch(const std::string& job_id, int64_t since_seq,
                         const std::function<bool(const JobEvent&)>& write,
                         const std::function<bool()>& cancelled) {
  if (job_id.empty()) return invalid_argument("job_id: required");
  if (since_seq < 0) return invalid_argument("since_seq: must be >= 0");
  AMPD_ASSIGN_OR_RETURN(Job job, store_->get_job(job_id));
  // The row and its final event are written in one transaction, so a final state here
  // means the final event is in the store.
  return hub_->watch(job_id, since_seq, is_final(job.state()), write, cancelled);
}

Status JobManager::read_checkpoint(
    const std::string& job_id, int64_t chunk_bytes,
    const std::function<bool(const ampd::v1::CheckpointChunk&)>& write) {
  if (job_id.empty()) return invalid_argument("job_id: required");
  int fd = -1;
  std::string path;
  // The trainer keeps its two newest checkpoints: the one the store names can be deleted
  // between the read and the open; the next read names its successor.
  for (int attempt = 0; attempt < 3 && fd < 0; ++attempt) {
    AMPD_ASSIGN_OR_RETURN(Job job, store_->get_job(job_id));
    path = job.checkpoint();
    if (path.empty()) {
      return failed_precondition("job " + job_id + " has no checkpoint yet (state " +
                                 state_name(job.state()) + ", step " + std::to_string(job.step()) +
                                 ")");
    }
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) {
      return internal("cannot open checkpoint " + path + ": " + std::strerror(errno));
    }
  }
  if (fd < 0) return unavailable("the checkpoint of job " + job_id + " is being replaced; retry");
  // The file is written to a temporary name and renamed into place, so the open file
  // never changes under us, even if the trainer deletes its name.
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return internal("cannot stat " + path);
  const int64_t total = st.st_size;
  const int64_t step = engine::checkpoint_step(path);
  ampd::v1::CheckpointChunk chunk;
  std::string buffer(static_cast<size_t>(std::max<int64_t>(1, chunk_bytes)), '\0');
  int64_t offset = 0;
  while (offset < total) {
    const ssize_t n = ::pread(fd, buffer.data(), buffer.size(), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return internal("reading " + path + " failed at offset " + std::to_string(offset));
    chunk.set_data(buffer.data(), static_cast<size_t>(n));
    chunk.set_offset(offset);
    chunk.set_total_bytes(total);
    chunk.set_step(step);
    if (!write(chunk)) return Status(StatusCode::kCancelled, "client went away");
    offset += n;
  }
  return Status::ok_status();
}

StatusOr<JobManager::CheckpointRef> JobManager::language_model_checkpoint(const std::string& job_id,
                                                                          int64_t step) {
  if (job_id.empty()) return invalid_argument("job_id: required");
  if (step < 0) {
    return invalid_argument("step: must be >= 0 (0 = the job's latest checkpoint), got " +
                            std::to_string(step));
  }
  AMPD_ASSIGN_OR_RETURN(Job job, store_->get_job(job_id));
  if (!job.spec().data().has_text()) {
    return failed_precondition(
        "job " + job_id +
        " is not a language model: text is generated from jobs that train on data.text "
        "(model.gpt), such as examples/shakespeare-char-fp32.yaml");
  }
  if (job.checkpoint().empty()) {
    std::string when;
    if (!is_final(job.state()) && job.spec().training().checkpoint_every() > 0) {
      when = "; it writes one every " + std::to_string(job.spec().training().checkpoint_every()) +
             " steps (training.checkpoint_every) and at its end";
    }
    return failed_precondition("job " + job_id + " has no checkpoint yet (state " +
                               state_name(job.state()) + ", step " + std::to_string(job.step()) +
                               ")" + when);
  }
  if (step == 0) return CheckpointRef{job.checkpoint(), engine::checkpoint_step(job.checkpoint())};
  const std::string path = engine::checkpoint_path(job_dir(job_id), step);
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return CheckpointRef{path, step};
  std::vector<int64_t> kept;
  for (const auto& entry : fs::directory_iterator(job_dir(job_id), ec)) {
    const int64_t s = engine::checkpoint_step(entry.path().filename().string());
    if (s >= 0) kept.push_back(s);
  }
  std::sort(kept.begin(), kept.end());
  std::string list;
  for (int64_t s : kept) list += (list.empty() ? "" : ", ") + std::to_string(s);
  return not_found("job " + job_id + " has no checkpoint at step " + std::to_string(step) +
                   (kept.empty() ? std::string()
                                 : (kept.size() == 1 ? "; it keeps the checkpoint of step "
                                                     : "; it keeps the checkpoints of steps ") +
                                       list + " (step 0 = the latest)"));
}

ManagerInfo JobManager::info() const {
  ManagerInfo info = static_info_;
  std::lock_guard<std::mutex> lock(mu_);
  info.queued_jobs = static_cast<int>(queue_.size());
  info.running_job = running_id_;
  return info;
}

bool JobManager::shutdown(std::chrono::steady_clock::time_point deadline) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      stopping_ = true;
      if (!running_id_.empty()) {
        // shutdown_stop_ before cancel_: the trainer's CANCELLED event is then dropped.
        shutdown_stop_.store(true);
        cancel_.store(true);
        log_line("shutdown: stopping job " + running_id_ + " at its next step boundary");
      }
    }
  }
  work_cv_.notify_all();
  bool exited;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (!worker_.joinable()) worker_exited_ = true;  // never started
    if (deadline == std::chrono::steady_clock::time_point::max()) {
      done_cv_.wait(lock, [&] { return worker_exited_; });
      exited = true;
    } else {
      exited = done_cv_.wait_until(lock, deadline, [&] { return worker_exited_; });
    }
  }
  // Watchers see the job's last checkpoint event before their streams end.
  hub_->shutdown();
  if (exited && worker_.joinable()) worker_.join();
  return exited;
}

void JobManager::worker_loop() {
  // Named so that `top -H`, perf and bench/cpu/service.sh can tell training (this thread
  // and the OpenMP workers it starts, which inherit the name) from the RPC threads.
  pthread_setname_np(pthread_self(), "ampd-train");
  for (;;) {
    std::string id;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) break;
      id = queue_.front();
      queue_.pop_front();
      running_id_ = id;
      cancel_.store(false);
      user_cancel_.store(false);
    }
    try {
      run_job(id);
    } catch (const std::exception& ex) {
      // The engine reports errors as Status; this is a last line (std::bad_alloc) so that
      // one job cannot take the server down.
      log_line("job " + id + ": unexpected exception: " + ex.what());
      auto job = store_->get_job(id);
      if (job.ok() && !is_final(job->state())) {
        (void)record_event(&*job, ampd::v1::FAILED, std::string("internal error: ") + ex.what());
      }
      if (options_.observer != nullptr) options_.observer->on_job_stopped(id);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      running_id_.clear();
    }
    done_cv_.notify_all();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    worker_exited_ = true;
  }
  done_cv_.notify_all();
}

engine::CheckpointSearch JobManager::pick_checkpoint(const std::string& id) const {
  // The newest checkpoint that reads back and verifies; with none usable the job starts
  // over from step 0 (it is deterministic: the result is the same, only later). Every file
  // passed over is named in the note, with the reason. A partial write (a process killed
  // before its rename) is never a checkpoint: removed.
  engine::CheckpointSearch found =
      engine::find_latest_checkpoint(job_dir(id), /*remove_partial_writes=*/true);
  for (const std::string& path : found.removed) {
    log_line("job " + id + ": removed the partial checkpoint write " + path);
  }
  for (const auto& skipped : found.skipped) {
    log_line("job " + id + ": skipping unusable checkpoint " + skipped.path + ": " +
             skipped.reason);
  }
  return found;
}

void JobManager::run_job(const std::string& id) {
  auto loaded = store_->get_job(id);
  if (!loaded.ok()) {
    log_line("job " + id + ": cannot load: " + loaded.status().message());
    return;
  }
  Job job = std::move(loaded).value();
  if (is_final(job.state())) return;
  (void)flush_unstored();  // what an earlier job could not store goes first
  const bool resuming = job.state() == ampd::v1::RUNNING;
  const engine::CheckpointSearch resume_point =
      resuming ? pick_checkpoint(id) : engine::CheckpointSearch{};
  const std::string& resume_from = resume_point.path;
  auto last_seq = store_->last_seq(id);
  if (!last_seq.ok()) {
    log_line("job " + id + ": " + last_seq.status().message());
    return;
  }

  engine::TrainerOptions topts;
  topts.job_id = id;
  topts.data_dir = options_.data_dir;
  topts.checkpoint_dir = job_dir(id);
  topts.resume_from = resume_from;
  topts.resume_note = resume_point.note();
  topts.summary = job;
  topts.write_faults = options_.write_faults;
  topts.first_seq = *last_seq + 1;
  topts.cancel = &cancel_;
  topts.on_event = [this](const JobEvent& e) { on_trainer_event(e); };
  if (options_.observer != nullptr) {
    topts.on_step = [obs = options_.observer, id](const engine::StepStats& st) {
      obs->on_job_step(id, st);
    };
  }
  if (resuming) {
    log_line("job " + id + ": resuming " +
             (resume_from.empty() ? "from step 0 (no usable checkpoint)" : "from " + resume_from));
  }
  auto trainer = engine::Trainer::create(*backend_, job.spec(), std::move(topts));
  if (!trainer.ok()) {
    const std::string reason = "cannot start: " + trainer.status().message();
    log_line("job " + id + " failed: " + reason);
    Status s = record_event(&job, ampd::v1::FAILED, reason);
    if (!s.ok()) log_line("job " + id + ": " + s.message());
    return;
  }
  if (shutdown_stop_.load()) return;  // shutting down: leave it for the next start

  // From here on the trainer's summary is the job's: each event is stored with it.
  const Job& t = (*trainer)->job();
  running_trainer_ = trainer->get();
  running_job_ = t;
  if (options_.observer != nullptr) options_.observer->on_job_started(t);
  report_memory();
  log_line("job " + id + " running: " + std::to_string(t.total_steps()) + " steps, " +
           t.precision() + " on " + static_info_.device);
  (*trainer)->run();
  running_trainer_ = nullptr;
  trainer->reset();  // frees the job's device memory before it is reported
  report_memory();
  if (options_.observer != nullptr) options_.observer->on_job_stopped(id);

  // running_job_ is the summary as of the last event recorded (a shutdown stop's CANCELLED
  // event is not: the row stays RUNNING). Written again, durably.
  const Job& j = running_job_;
  if (flush_unstored()) {
    Status s = store_->update_job(j, /*durable=*/true);
    if (!s.ok()) log_line("job " + id + ": " + s.message());
  } else {
    // The row must not claim a state whose event is not stored yet; the pending events
    // (the final one among them) go in with the next event the store accepts, or the job
    // resumes from its checkpoint after a restart.
    log_line("job " + id + ": " + std::to_string(unstored_.size()) +
             " event(s) not stored yet (job store failing); the job's stored state lags");
  }
  if (is_final(j.state())) {
    log_line("job " + id + " " + state_name(j.state()) + " at step " + std::to_string(j.step()) +
             (j.failure_reason().empty() ? "" : ": " + j.failure_reason()));
  } else {
    log_line("job " + id + " stopped for shutdown at step " + std::to_string(j.step()) +
             " (checkpoint " + j.checkpoint() + "); it resumes on the next start");
  }
}

void JobManager::on_trainer_event(const JobEvent& e) {
  // A stop for shutdown ends the trainer with CANCELLED; the job is not cancelled, so
  // that event is not recorded (its seq is reused after the restart).
  if (e.has_state_change() && e.state_change().state() == ampd::v1::CANCELLED &&
      shutdown_stop_.load() && !user_cancel_.load()) {
    return;
  }
  running_job_ = running_trainer_->job();  // the trainer folded e into it
  if (e.has_checkpoint() && !e.checkpoint().error().empty()) {
    log_line("job " + e.job_id() + ": checkpoint at step " + std::to_string(e.checkpoint().step()) +
             " failed: " + e.checkpoint().error());
  }
  // Metrics follow training as it happens, whether or not the store keeps up.
  if (options_.observer != nullptr) {
    options_.observer->on_job_event(e);
    if (e.has_progress()) report_memory();
    if (e.has_state_change() && is_final(e.state_change().state())) {
      options_.observer->on_job_finished(e.state_change().state());
    }
  }
  if (unstored_.size() >= kMaxUnstoredEvents) {
    log_line("job " + e.job_id() + ": event " + std::to_string(e.seq()) +
             " dropped: the job store has refused " + std::to_string(unstored_.size()) +
             " events in a row");
    return;
  }
  unstored_.emplace_back(running_job_, e);
  flush_unstored();
}

bool JobManager::flush_unstored() {
  while (!unstored_.empty()) {
    const auto& [job, e] = unstored_.front();
    // A state change is worth an fsync; a progress event is not (see job_store.h).
    Status s = store_->append_event(job, e, /*durable=*/e.has_state_change());
    if (!s.ok()) {
      // Kept, in order, and retried before the next event: the stored log stays a
      // gap-free prefix of the job's events, and watchers only see what it holds.
      if (!store_failing_) {
        log_line("job " + e.job_id() + ": event " + std::to_string(e.seq()) +
                 " not stored (kept in memory, retried with the next event): " + s.message());
      }
      store_failing_ = true;
      return false;
    }
    if (store_failing_) {
      log_line("job store: writes succeed again; storing the " + std::to_string(unstored_.size()) +
               " pending event(s)");
      store_failing_ = false;
    }
    hub_->publish(e);
    unstored_.pop_front();
  }
  return true;
}

}  // namespace ampd::server
