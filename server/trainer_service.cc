#include "server/trainer_service.h"

#include <sched.h>

#include <chrono>
#include <exception>
#include <string>
#include <vector>

#include "server/log.h"

namespace ampd::server {

grpc::Status to_grpc_status(const Status& status) {
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  switch (status.code()) {
    case StatusCode::kOk: return grpc::Status::OK;
    case StatusCode::kInvalidArgument: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case StatusCode::kNotFound: code = grpc::StatusCode::NOT_FOUND; break;
    case StatusCode::kAlreadyExists: code = grpc::StatusCode::ALREADY_EXISTS; break;
    case StatusCode::kFailedPrecondition: code = grpc::StatusCode::FAILED_PRECONDITION; break;
    case StatusCode::kResourceExhausted: code = grpc::StatusCode::RESOURCE_EXHAUSTED; break;
    case StatusCode::kUnavailable: code = grpc::StatusCode::UNAVAILABLE; break;
    case StatusCode::kInternal: code = grpc::StatusCode::INTERNAL; break;
    case StatusCode::kCancelled: code = grpc::StatusCode::CANCELLED; break;
    case StatusCode::kDataLoss: code = grpc::StatusCode::DATA_LOSS; break;
    case StatusCode::kUnimplemented: code = grpc::StatusCode::UNIMPLEMENTED; break;
  }
  // The message travels percent-encoded in the grpc-message trailer (bytes outside
  // printable ASCII, and '%', take 3), and clients refuse trailers over 8 KiB with
  // RESOURCE_EXHAUSTED instead of the real code: a message that echoes a huge request field
  // (a 10 000-character job id) is cut to 6 KiB encoded, on a UTF-8 boundary.
  constexpr size_t kMaxEncodedBytes = 6144;
  const std::string& m = status.message();
  size_t encoded = 0, cut = 0;
  for (; cut < m.size(); ++cut) {
    const auto c = static_cast<unsigned char>(m[cut]);
    encoded += (c < 0x20 || c >= 0x7f || c == '%') ? 3 : 1;
    if (encoded > kMaxEncodedBytes) break;
  }
  if (cut == m.size()) return grpc::Status(code, m);
  while (cut > 0 && (static_cast<unsigned char>(m[cut]) & 0xC0) == 0x80) --cut;
  return grpc::Status(code, m.substr(0, cut) + "... (" + std::to_string(m.size()) + " bytes)");
}

namespace {

// "NOT_FOUND": the code names of the gRPC specification, as label values.
const char* code_name(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

}  // namespace

grpc::Status TrainerService::authenticate(grpc::ServerContext* context, const char* method) {
  std::vector<std::string_view> values;
  const auto& metadata = context->client_metadata();
  for (auto [it, end] = metadata.equal_range("authorization"); it != end; ++it) {
    values.emplace_back(it->second.data(), it->second.size());
  }
  const AuthResult result = options_.auth->check(values);
  if (result == AuthResult::kOk) return grpc::Status::OK;
  if (options_.metrics != nullptr)
    options_.metrics->observe_auth_failure(auth_result_label(result));
  // One line a second at most, so that a client hammering with a wrong token cannot flood
  // the log. The line names the peer and the reason, never what was sent.
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t last = auth_last_log_ns_.load();
  if (now - last >= 1'000'000'000 && auth_last_log_ns_.compare_exchange_strong(last, now)) {
    const int64_t more = auth_failures_unlogged_.exchange(0);
    log_line(
        std::string(method) + " from " + context->peer() + ": UNAUTHENTICATED (" +
        auth_result_label(result) + ")" +
        (more > 0 ? " (and " + std::to_string(more) + " more refused since the last line)" : ""));
  } else {
    auth_failures_unlogged_.fetch_add(1);
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, auth_failure_message(result));
}

template <typename Body>
grpc::Status TrainerService::handle(grpc::ServerContext* context, const char* method, Body&& body) {
  if (options_.metrics == nullptr) {
    return handle_unmeasured(context, method, std::forward<Body>(body));
  }
  const auto start = std::chrono::steady_clock::now();
  grpc::Status status = handle_unmeasured(context, method, std::forward<Body>(body));
  options_.metrics->observe_rpc(
      method, code_name(status.error_code()),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return status;
}

template <typename Body>
grpc::Status TrainerService::handle_unmeasured(grpc::ServerContext* context, const char* method,
                                               Body&& body) {
  // First: a caller without the token learns nothing, not even that the server drains.
  if (options_.auth != nullptr) {
    if (grpc::Status s = authenticate(context, method); !s.ok()) return s;
  }
  if (draining_.load()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down");
  }
  try {
    return body();
  } catch (const std::exception& e) {
    log_line(std::string(method) + ": internal error: " + e.what());
    return grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    log_line(std::string(method) + ": internal error");
    return grpc::Status(grpc::StatusCode::INTERNAL, "internal error");
  }
}

grpc::Status TrainerService::SubmitJob(grpc::ServerContext* context,
                                       const ampd::v1::SubmitJobRequest* request,
                                       ampd::v1::Job* response) {
  return handle(context, "SubmitJob", [&] {
    auto job = manager_->submit(request->spec(), request->client_request_id());
    if (!job.ok()) return to_grpc_status(job.status());
    *response = std::move(job).value();
    return grpc::Status::OK;
  });
}

grpc::Status TrainerService::GetJob(grpc::ServerContext* context,
                                    const ampd::v1::GetJobRequest* request,
                                    ampd::v1::Job* response) {
  return handle(context, "GetJob", [&] {
    auto job = manager_->get(request->job_id());
    if (!job.ok()) return to_grpc_status(job.status());
    *response = std::move(job).value();
    return grpc::Status::OK;
  });
}

grpc::Status TrainerService::ListJobs(grpc::ServerContext* context,
                                      const ampd::v1::ListJobsRequest* request,
                                      ampd::v1::ListJobsResponse* response) {
  return handle(context, "ListJobs", [&] {
    std::vector<ampd::v1::JobState> states;
    for (int s : request->states()) states.push_back(static_cast<ampd::v1::JobState>(s));
    auto page = manager_->list(states, request->page_size(), request->page_token());
    if (!page.ok()) return to_grpc_status(page.status());
    for (auto& job : page->jobs) *response->add_jobs() = std::move(job);
    response->set_next_page_token(page->next_page_token);
    return grpc::Status::OK;
  });
}

grpc::Status TrainerService::CancelJob(grpc::ServerContext* context,
                                       const ampd::v1::CancelJobRequest* request,
                                       ampd::v1::Job* response) {
  return handle(context, "CancelJob", [&] {
    auto job = manager_->cancel(request->job_id());
    if (!job.ok()) return to_grpc_status(job.status());
    *response = std::move(job).value();
    return grpc::Status::OK;
  });
}

namespace {

// SCHED_BATCH for this thread while it lives, then SCHED_OTHER again (an unprivileged
// thread may switch between the two). A watcher's thread sleeps until the trainer
// publishes an event; as SCHED_BATCH its wake-up does not preempt the thread that woke it
// (the scheduler runs it at the next regular switch, within milliseconds). With 50
// watchers, publishing an event cost the training thread 0.65-0.95 ms before (each woken
// watcher ran at once, on its core), 0.26 ms after (bench/RESULTS.md).
// Only a thread in the default policy is switched, so a server the operator started under
// another policy (chrt) keeps it.
class BatchScheduling {
 public:
  BatchScheduling() {
    sched_param p{};
    ok_ = sched_getscheduler(0) == SCHED_OTHER && sched_setscheduler(0, SCHED_BATCH, &p) == 0;
  }
  ~BatchScheduling() {
    sched_param p{};
    if (ok_) sched_setscheduler(0, SCHED_OTHER, &p);
  }
  BatchScheduling(const BatchScheduling&) = delete;
  BatchScheduling& operator=(const BatchScheduling&) = delete;

 private:
  bool ok_ = false;
};

}  // namespace

grpc::Status TrainerService::WatchJob(grpc::ServerContext* context,
                                      const ampd::v1::WatchJobRequest* request,
                                      grpc::ServerWriter<ampd::v1::JobEvent>* writer) {
  const BatchScheduling batch;
  return handle(context, "WatchJob", [&] {
    // A blocking Write only holds up this stream's thread: the hub drops this watcher's
    // buffered events meanwhile and it catches up from the store.
    return to_grpc_status(manager_->watch(
        request->job_id(), request->since_seq(),
        [&](const ampd::v1::JobEvent& e) { return writer->Write(e); },
        [&] { return context->IsCancelled(); }));
  });
}

grpc::Status TrainerService::UploadDataset(
    grpc::ServerContext* context, grpc::ServerReader<ampd::v1::UploadDatasetRequest>* reader,
    ampd::v1::Dataset* response) {
  return handle(context, "UploadDataset", [&] {
    ampd::v1::UploadDatasetRequest message;
    if (!reader->Read(&message)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty upload: send a header");
    }
    if (!message.has_header()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "header: the first message of an upload must be its header");
    }
    const auto& h = message.header();
    auto upload = manager_->datasets().begin_upload(h.name(), h.size_bytes(), h.sha256());
    if (!upload.ok()) return to_grpc_status(upload.status());
    while (reader->Read(&message)) {
      if (message.has_header()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "header: only the first message may be a header");
      }
      // Returning early ends the call; the client's remaining messages are discarded and
      // the Upload's destructor removes the partial file.
      Status s = (*upload)->append(message.chunk());
      if (!s.ok()) return to_grpc_status(s);
    }
    auto info = (*upload)->finish();
    if (!info.ok()) return to_grpc_status(info.status());
    response->set_name(info->name);
    response->set_size_bytes(info->size_bytes);
    response->set_sha256(info->sha256);
    log_line("data set " + info->name + " uploaded (" + std::to_string(info->size_bytes) +
             " bytes)");
    return grpc::Status::OK;
  });
}

grpc::Status TrainerService::ListDatasets(grpc::ServerContext* context,
                                          const ampd::v1::ListDatasetsRequest*,
                                          ampd::v1::ListDatasetsResponse* response) {
  return handle(context, "ListDatasets", [&] {
    auto list = manager_->datasets().list();
    if (!list.ok()) return to_grpc_status(list.status());
    for (const auto& d : *list) {
      auto* out = response->add_datasets();
      out->set_name(d.name);
      out->set_size_bytes(d.size_bytes);
      out->set_sha256(d.sha256);
    }
    return grpc::Status::OK;
  });
}

grpc::Status TrainerService::DownloadCheckpoint(
    grpc::ServerContext* context, const ampd::v1::DownloadCheckpointRequest* request,
    grpc::ServerWriter<ampd::v1::CheckpointChunk>* writer) {
  return handle(context, "DownloadCheckpoint", [&] {
    return to_grpc_status(manager_->read_checkpoint(
        request->job_id(), options_.checkpoint_chunk_bytes,
        [&](const ampd::v1::CheckpointChunk& chunk) { return writer->Write(chunk); }));
  });
}

grpc::Status TrainerService::GetServerInfo(grpc::ServerContext* context,
                                           const ampd::v1::GetServerInfoRequest*,
                                           ampd::v1::ServerInfo* response) {
  return handle(context, "GetServerInfo", [&] {
    const ManagerInfo info = manager_->info();
    response->set_version(options_.version);
    response->set_backend(info.backend);
    response->set_device(info.device);
    for (const auto& p : info.precisions) response->add_precisions(p);
    response->set_device_memory_bytes(info.device_memory_bytes);
    response->set_max_queued_jobs(info.max_queued_jobs);
    response->set_queued_jobs(info.queued_jobs);
    response->set_running_job(info.running_job);
    return grpc::Status::OK;
  });
}

grpc::Status TrainerService::Generate(grpc::ServerContext* context,
                                      const ampd::v1::GenerateRequest* request,
                                      grpc::ServerWriter<ampd::v1::GenerateResponse>* writer) {
  return handle(context, "Generate", [&] {
    if (options_.generator == nullptr) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this server does not generate text");
    }
    GenerateArgs args;
    args.job_id = request->job_id();
    args.step = request->step();
    args.sample.prompt = request->prompt();
    args.sample.max_tokens = request->max_tokens();
    if (request->has_temperature()) args.sample.temperature = request->temperature();
    if (request->has_top_k()) args.sample.top_k = request->top_k();
    args.sample.seed = request->seed();

    // Text is batched into messages of a few tokens (or one, for a slow model); the
    // client's cancel, a broken stream or the drain stops the generation at the next token.
    using Clock = std::chrono::steady_clock;
    ampd::v1::GenerateResponse message;
    std::string pending;
    Clock::time_point last_write = Clock::now();
    bool broken = false, draining = false;
    auto flush = [&] {
      if (pending.empty()) return true;
      message.set_text(pending);
      pending.clear();
      last_write = Clock::now();
      if (!writer->Write(message)) broken = true;
      return !broken;
    };
    auto result = options_.generator->generate(args, [&](const std::string& text) {
      if (context->IsCancelled()) return false;
      if (draining_.load()) {
        draining = true;
        return false;
      }
      pending += text;
      if (pending.size() >= options_.generate_chunk_bytes ||
          Clock::now() - last_write >= options_.generate_flush_interval) {
        return flush();
      }
      return true;
    });
    if (!result.ok()) return to_grpc_status(result.status());
    if (context->IsCancelled() || broken) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the generation");
    }
    if (draining) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "server is shutting down; the generation stopped after " +
                              std::to_string(result->tokens) + " tokens");
    }
    if (!flush()) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the generation");
    }
    ampd::v1::GenerateSummary* done = message.mutable_done();
    done->set_tokens(result->tokens);
    done->set_seconds(result->seconds);
    done->set_step(result->step);
    done->set_load_seconds(result->load_seconds);
    done->set_prompt_tokens(result->prompt_tokens);
    writer->Write(message);
    return grpc::Status::OK;
  });
}

}  // namespace ampd::server
