// The service end to end: every test starts a real `ampd serve` (CPU backend, one thread)
// on a free loopback port with a fresh state dir and talks to it through the generated
// C++ stubs, the way ampctl does.
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "ampd/v1/trainer.grpc.pb.h"
#include "engine/job_spec.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "server_process.h"

namespace ampd::testing {
namespace {

namespace fs = std::filesystem;
using ampd::v1::Job;
using ampd::v1::JobEvent;
using ampd::v1::JobSpec;
using ampd::v1::JobState;
using grpc::health::v1::HealthCheckResponse;
using Stub = ampd::v1::Trainer::Stub;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr int64_t kChunk = 1 << 20;

// ---- specs -------------------------------------------------------------------------------

JobSpec spec_from_yaml(const std::string& yaml) {
  auto spec = engine::parse_job_spec(yaml, "yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().to_string();
  return spec.ok() ? spec.value() : JobSpec();
}

// A few milliseconds of training on synthetic blobs.
JobSpec tiny_spec(int64_t max_steps, const std::string& name = "tiny") {
  return spec_from_yaml("name: " + name +
                        "\n"
                        "precision: fp32\n"
                        "model: {layers: [{linear: {out_features: 16}}, {relu: {}}, "
                        "{linear: {out_features: 3}}]}\n"
                        "data: {synthetic: {kind: blobs, samples: 256, features: 8, classes: 3}, "
                        "batch_size: 32}\n"
                        "optimizer: {sgd: {lr: 0.1}}\n"
                        "training: {max_steps: " +
                        std::to_string(max_steps) + ", seed: 3}\n");
}

// The digits MLP of examples/digits-fp16.yaml (~0.7 ms a step on one thread).
JobSpec digits_spec(int64_t max_steps, int64_t report_every) {
  auto spec = engine::load_job_spec_file(AMPD_SOURCE_DIR "/examples/digits-fp16.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().to_string();
  JobSpec s = spec.ok() ? spec.value() : JobSpec();
  if (max_steps > 0) {
    s.mutable_training()->set_epochs(0);
    s.mutable_training()->set_max_steps(max_steps);
    s.mutable_training()->set_eval_every(0);
  }
  if (report_every > 0) s.mutable_training()->set_report_every(report_every);
  return s;
}

// Runs until cancelled (a million steps).
JobSpec endless_spec() {
  JobSpec s = tiny_spec(1000000, "endless");
  s.mutable_training()->set_report_every(5);
  return s;
}

// ---- calls ---------------------------------------------------------------------------------

void set_deadline(grpc::ClientContext* ctx, std::chrono::milliseconds d = seconds(20)) {
  ctx->set_deadline(std::chrono::system_clock::now() + d);
}

grpc::Status submit(Stub& stub, const JobSpec& spec, Job* job,
                    const std::string& client_request_id = "") {
  grpc::ClientContext ctx;
  set_deadline(&ctx);
  ampd::v1::SubmitJobRequest req;
  *req.mutable_spec() = spec;
  req.set_client_request_id(client_request_id);
  return stub.SubmitJob(&ctx, req, job);
}

Job must_submit(Stub& stub, const JobSpec& spec, const std::string& client_request_id = "") {
  Job job;
  grpc::Status s = submit(stub, spec, &job, client_request_id);
  EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  return job;
}

grpc::Status get_job(Stub& stub, const std::string& id, Job* job) {
  grpc::ClientContext ctx;
  set_deadline(&ctx);
  ampd::v1::GetJobRequest req;
  req.set_job_id(id);
  return stub.GetJob(&ctx, req, job);
}

grpc::Status cancel_job(Stub& stub, const std::string& id, Job* job) {
  grpc::ClientContext ctx;
  set_deadline(&ctx);
  ampd::v1::CancelJobRequest req;
  req.set_job_id(id);
  return stub.CancelJob(&ctx, req, job);
}

grpc::Status list_jobs(Stub& stub, const std::vector<JobState>& states, int page_size,
                       const std::string& token, ampd::v1::ListJobsResponse* resp) {
  grpc::ClientContext ctx;
  set_deadline(&ctx);
  ampd::v1::ListJobsRequest req;
  for (JobState s : states) req.add_states(s);
  req.set_page_size(page_size);
  req.set_page_token(token);
  return stub.ListJobs(&ctx, req, resp);
}

// Reads a job's events from since_seq. `stop_after` > 0 disconnects (cancels the call)
// after that many events, like a client that goes away; `per_event` runs after each.
struct WatchResult {
  std::vector<JobEvent> events;
  grpc::Status status;
};
WatchResult watch(Stub& stub, const std::string& id, int64_t since_seq, size_t stop_after = 0,
                  const std::function<void(const JobEvent&)>& per_event = nullptr,
                  std::chrono::milliseconds deadline = seconds(90)) {
  WatchResult r;
  grpc::ClientContext ctx;
  set_deadline(&ctx, deadline);
  ampd::v1::WatchJobRequest req;
  req.set_job_id(id);
  req.set_since_seq(since_seq);
  auto reader = stub.WatchJob(&ctx, req);
  JobEvent e;
  while (reader->Read(&e)) {
    r.events.push_back(e);
    if (per_event) per_event(e);
    if (stop_after > 0 && r.events.size() >= stop_after) {
      ctx.TryCancel();
      break;
    }
  }
  r.status = reader->Finish();
  return r;
}

std::vector<std::string> serialized(const std::vector<JobEvent>& events) {
  std::vector<std::string> out;
  for (const auto& e : events) out.push_back(e.SerializeAsString());
  return out;
}

grpc::Status Upload(Stub& stub, const std::string& name, const std::string& content,
                    const std::string& sha256, int64_t declared_size, size_t chunk,
                    ampd::v1::Dataset* out) {
  grpc::ClientContext ctx;
  set_deadline(&ctx);
  auto writer = stub.UploadDataset(&ctx, out);
  ampd::v1::UploadDatasetRequest req;
  req.mutable_header()->set_name(name);
  req.mutable_header()->set_size_bytes(declared_size);
  req.mutable_header()->set_sha256(sha256);
  if (writer->Write(req)) {
    for (size_t off = 0; off < content.size(); off += chunk) {
      ampd::v1::UploadDatasetRequest part;
      part.set_chunk(content.substr(off, chunk));
      if (!writer->Write(part)) break;  // the server already answered
    }
    writer->WritesDone();
  }
  return writer->Finish();
}

// ---- fixture -------------------------------------------------------------------------------

using ServiceTest = ServerTest;

// ---- submit, watch, result ---------------------------------------------------------------

TEST_F(ServiceTest, DigitsJobMatchesAmpdTrainAndCheckpointDownloads) {
  // The same job in-process: same backend and thread count, so the same numbers.
  const std::string cmd = std::string(AMPD_BINARY) +
                          " train -f " AMPD_SOURCE_DIR
                          "/examples/digits-fp16.yaml --backend cpu --threads 1 --json --out " +
                          (root_ / "train-out").string() + " 2>/dev/null";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  ASSERT_EQ(::pclose(pipe), 0) << out;
  out.erase(out.find_last_not_of('\n') + 1);
  Job local;
  google::protobuf::util::JsonParseOptions jopts;
  jopts.ignore_unknown_fields = true;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(out.substr(out.rfind('\n') + 1), &local, jopts)
          .ok());
  ASSERT_EQ(local.state(), ampd::v1::SUCCEEDED);

  ASSERT_NE(start_server(), nullptr);
  {
    grpc::ClientContext ctx;
    set_deadline(&ctx);
    ampd::v1::ServerInfo info;
    AMPD_ASSERT_GRPC_OK(stub().GetServerInfo(&ctx, {}, &info));
    EXPECT_FALSE(info.version().empty());
    EXPECT_EQ(info.backend(), "cpu");
    EXPECT_FALSE(info.device().empty());
    EXPECT_NE(std::find(info.precisions().begin(), info.precisions().end(), "fp16"),
              info.precisions().end());
    EXPECT_EQ(info.max_queued_jobs(), 100);
  }

  const Job submitted = must_submit(stub(), digits_spec(0, 0));
  EXPECT_EQ(submitted.state(), ampd::v1::QUEUED);
  EXPECT_EQ(submitted.id().size(), 18u) << submitted.id();
  EXPECT_EQ(submitted.id().rfind("j-", 0), 0u);
  // Served jobs get a checkpoint interval when the spec has none.
  EXPECT_EQ(submitted.spec().training().checkpoint_every(), 50);

  const WatchResult w = watch(stub(), submitted.id(), 0);
  AMPD_ASSERT_GRPC_OK(w.status);
  expect_complete_history(w.events, submitted.id());
  ASSERT_TRUE(w.events.front().has_state_change());
  EXPECT_EQ(w.events.front().state_change().state(), ampd::v1::QUEUED);
  EXPECT_EQ(w.events.back().state_change().state(), ampd::v1::SUCCEEDED);

  Job done;
  AMPD_ASSERT_GRPC_OK(get_job(stub(), submitted.id(), &done));
  EXPECT_EQ(done.state(), ampd::v1::SUCCEEDED);
  EXPECT_EQ(done.step(), local.step());
  EXPECT_EQ(done.metrics().val_accuracy(), local.metrics().val_accuracy());
  EXPECT_EQ(done.metrics().val_loss(), local.metrics().val_loss());
  EXPECT_GT(done.metrics().val_accuracy(), 0.9);
  EXPECT_EQ(done.precision(), "fp16");
  EXPECT_TRUE(done.has_started_at());
  EXPECT_TRUE(done.has_finished_at());
  ASSERT_FALSE(done.checkpoint().empty());
  EXPECT_EQ(fs::path(done.checkpoint()).parent_path(),
            fs::path(state_dir_) / "jobs" / submitted.id());

  // DownloadCheckpoint: 1 MiB chunks, in order, byte-identical to the file.
  std::ifstream in(done.checkpoint(), std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(file.empty());
  grpc::ClientContext ctx;
  set_deadline(&ctx);
  ampd::v1::DownloadCheckpointRequest req;
  req.set_job_id(submitted.id());
  auto reader = stub().DownloadCheckpoint(&ctx, req);
  ampd::v1::CheckpointChunk chunk;
  std::string got;
  while (reader->Read(&chunk)) {
    EXPECT_EQ(chunk.offset(), static_cast<int64_t>(got.size()));
    EXPECT_LE(chunk.data().size(), static_cast<size_t>(kChunk));
    EXPECT_EQ(chunk.total_bytes(), static_cast<int64_t>(file.size()));
    EXPECT_EQ(chunk.step(), done.step());
    got += chunk.data();
  }
  AMPD_ASSERT_GRPC_OK(reader->Finish());
  EXPECT_TRUE(got == file);
}

TEST_F(ServiceTest, ListAndGetWithPaging) {
  ASSERT_NE(start_server(), nullptr);
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(must_submit(stub(), tiny_spec(3)).id());
  for (const auto& id : ids) AMPD_ASSERT_GRPC_OK(watch(stub(), id, 0).status);

  std::vector<std::string> listed;
  std::string token;
  int pages = 0;
  do {
    ampd::v1::ListJobsResponse resp;
    AMPD_ASSERT_GRPC_OK(list_jobs(stub(), {}, 2, token, &resp));
    EXPECT_LE(resp.jobs_size(), 2);
    for (const auto& j : resp.jobs()) listed.push_back(j.id());
    token = resp.next_page_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(listed, ids);  // oldest first = submission order

  ampd::v1::ListJobsResponse succeeded, queued, both;
  AMPD_ASSERT_GRPC_OK(list_jobs(stub(), {ampd::v1::SUCCEEDED}, 0, "", &succeeded));
  EXPECT_EQ(succeeded.jobs_size(), 5);
  EXPECT_TRUE(succeeded.next_page_token().empty());
  AMPD_ASSERT_GRPC_OK(list_jobs(stub(), {ampd::v1::QUEUED, ampd::v1::RUNNING}, 0, "", &queued));
  EXPECT_EQ(queued.jobs_size(), 0);

  for (const auto& id : ids) {
    Job j;
    AMPD_ASSERT_GRPC_OK(get_job(stub(), id, &j));
    EXPECT_EQ(j.id(), id);
    EXPECT_EQ(j.state(), ampd::v1::SUCCEEDED);
    EXPECT_EQ(j.step(), 3);
  }
  ampd::v1::ListJobsResponse bad;
  EXPECT_EQ(list_jobs(stub(), {}, 2, "not-a-token", &bad).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(list_jobs(stub(), {static_cast<JobState>(42)}, 2, "", &bad).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, CancelRunningJobKeepsCheckpointAndCancelQueuedJobAtOnce) {
  ASSERT_NE(start_server(), nullptr);
  const Job running = must_submit(stub(), endless_spec());
  const Job queued = must_submit(stub(), tiny_spec(5));
  ASSERT_TRUE(wait_for_step(stub(), running.id(), 60));

  Job j;
  AMPD_ASSERT_GRPC_OK(cancel_job(stub(), queued.id(), &j));
  EXPECT_EQ(j.state(), ampd::v1::CANCELLED);
  EXPECT_TRUE(j.checkpoint().empty());

  AMPD_ASSERT_GRPC_OK(cancel_job(stub(), running.id(), &j));
  EXPECT_EQ(j.state(), ampd::v1::CANCELLED);  // CancelJob waits for the step boundary
  EXPECT_GE(j.step(), 60);
  ASSERT_FALSE(j.checkpoint().empty());
  EXPECT_TRUE(fs::exists(j.checkpoint())) << j.checkpoint();
  EXPECT_EQ(fs::path(j.checkpoint()).filename().string(),
            "step-" + std::to_string(j.step()) + ".safetensors");

  const WatchResult w = watch(stub(), running.id(), 0);
  AMPD_ASSERT_GRPC_OK(w.status);
  expect_complete_history(w.events, running.id());
  EXPECT_EQ(w.events.back().state_change().state(), ampd::v1::CANCELLED);
  ASSERT_GE(w.events.size(), 2u);
  const JobEvent& ck = w.events[w.events.size() - 2];
  ASSERT_TRUE(ck.has_checkpoint());
  EXPECT_EQ(ck.checkpoint().step(), j.step());

  const WatchResult wq = watch(stub(), queued.id(), 0);
  AMPD_ASSERT_GRPC_OK(wq.status);
  ASSERT_EQ(wq.events.size(), 2u);  // QUEUED, CANCELLED
  EXPECT_EQ(wq.events.back().state_change().state(), ampd::v1::CANCELLED);

  // Both ended: a second cancel is a precondition failure.
  EXPECT_EQ(cancel_job(stub(), running.id(), &j).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(cancel_job(stub(), queued.id(), &j).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // The cancelled queued job never ran: nothing to download.
  grpc::ClientContext ctx;
  set_deadline(&ctx);
  ampd::v1::DownloadCheckpointRequest req;
  req.set_job_id(queued.id());
  auto reader = stub().DownloadCheckpoint(&ctx, req);
  ampd::v1::CheckpointChunk chunk;
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ServiceTest, ResubmissionWithSameClientRequestIdReturnsTheSameJob) {
  ASSERT_NE(start_server(), nullptr);
  const Job first = must_submit(stub(), tiny_spec(4), "req-1");
  const Job again = must_submit(stub(), tiny_spec(4), "req-1");
  EXPECT_EQ(again.id(), first.id());
  EXPECT_EQ(again.client_request_id(), "req-1");
  ampd::v1::ListJobsResponse all;
  AMPD_ASSERT_GRPC_OK(list_jobs(stub(), {}, 0, "", &all));
  EXPECT_EQ(all.jobs_size(), 1);

  Job other;
  EXPECT_EQ(submit(stub(), tiny_spec(7), &other, "req-1").error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(submit(stub(), tiny_spec(4), &other, std::string(129, 'x')).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // After the job ended, a retry still answers with it.
  AMPD_ASSERT_GRPC_OK(watch(stub(), first.id(), 0).status);
  const Job later = must_submit(stub(), tiny_spec(4), "req-1");
  EXPECT_EQ(later.id(), first.id());
  EXPECT_EQ(later.state(), ampd::v1::SUCCEEDED);
}

// ---- watchers ------------------------------------------------------------------------------

TEST_F(ServiceTest, LateSlowAndReconnectingWatchersSeeEveryEventOnceInOrder) {
  // A 4-event buffer per watcher: the slow watcher overflows it and replays from the store.
  ASSERT_NE(start_server({"--watch-buffer-events", "4"}), nullptr);
  const Job job = must_submit(stub(), digits_spec(2500, 1));

  WatchResult full, slow, late, reconnect_first, reconnect_rest;
  std::thread t_full([&] { full = watch(stub(), job.id(), 0); });
  std::thread t_slow([&] {
    size_t n = 0;
    slow = watch(stub(), job.id(), 0, 0, [&](const JobEvent&) {
      if (++n < 400) std::this_thread::sleep_for(milliseconds(2));
    });
  });
  // Reconnect: read 150 events, hang up, continue from the last seq seen.
  reconnect_first = watch(stub(), job.id(), 0, 150);
  ASSERT_EQ(reconnect_first.events.size(), 150u);
  EXPECT_EQ(reconnect_first.status.error_code(), grpc::StatusCode::CANCELLED);
  // Late: joins when the job is well under way.
  ASSERT_TRUE(wait_for_step(stub(), job.id(), 1000));
  std::thread t_late([&] { late = watch(stub(), job.id(), 0); });
  reconnect_rest = watch(stub(), job.id(), reconnect_first.events.back().seq());
  t_full.join();
  t_slow.join();
  t_late.join();

  // The reference: the whole history, read after the end (from the store alone).
  const WatchResult after = watch(stub(), job.id(), 0);
  AMPD_ASSERT_GRPC_OK(after.status);
  expect_complete_history(after.events, job.id());
  EXPECT_GT(after.events.size(), 2500u);
  const auto reference = serialized(after.events);

  for (const WatchResult* r : {&full, &slow, &late, &reconnect_rest})
    AMPD_ASSERT_GRPC_OK(r->status);
  EXPECT_EQ(serialized(full.events), reference);
  EXPECT_EQ(serialized(slow.events), reference);
  EXPECT_EQ(serialized(late.events), reference);
  std::vector<JobEvent> joined = reconnect_first.events;
  joined.insert(joined.end(), reconnect_rest.events.begin(), reconnect_rest.events.end());
  EXPECT_EQ(serialized(joined), reference);

  // Past the end: nothing more, and the stream ends at once.
  const WatchResult tail = watch(stub(), job.id(), after.events.back().seq());
  AMPD_ASSERT_GRPC_OK(tail.status);
  EXPECT_TRUE(tail.events.empty());
}

// ---- restarts --------------------------------------------------------------------------------

class RestartTest : public ServiceTest {
 protected:
  // Stops the server mid-job with `sig`, restarts it on the same state dir, and checks
  // that the job finishes with an intact history and the result of an uninterrupted run.
  void Run(int sig) {
    ASSERT_NE(start_server(), nullptr);
    const JobSpec spec = digits_spec(1200, 10);
    const Job job = must_submit(stub(), spec);
    ASSERT_TRUE(wait_for_step(stub(), job.id(), 400));
    const auto t0 = std::chrono::steady_clock::now();
    const int code = server().stop(sig, seconds(25));
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (sig == SIGTERM) {
      EXPECT_EQ(code, 0) << server().log();
      EXPECT_LT(took, 20.0);
      EXPECT_NE(server().log().find("stopped for shutdown"), std::string::npos) << server().log();
    } else {
      EXPECT_EQ(code, 128 + SIGKILL);
    }

    ASSERT_NE(start_server(), nullptr);
    Job now;
    AMPD_ASSERT_GRPC_OK(get_job(stub(), job.id(), &now));
    EXPECT_TRUE(now.state() == ampd::v1::RUNNING || now.state() == ampd::v1::SUCCEEDED)
        << ampd::v1::JobState_Name(now.state());
    const WatchResult w = watch(stub(), job.id(), 0);
    AMPD_ASSERT_GRPC_OK(w.status);
    expect_complete_history(w.events, job.id());
    EXPECT_EQ(w.events.back().state_change().state(), ampd::v1::SUCCEEDED);
    std::vector<std::string> running_reasons;
    for (const auto& e : w.events) {
      if (e.has_state_change() && e.state_change().state() == ampd::v1::RUNNING) {
        running_reasons.push_back(e.state_change().reason());
      }
      EXPECT_FALSE(e.has_state_change() && e.state_change().state() == ampd::v1::CANCELLED);
    }
    ASSERT_EQ(running_reasons.size(), 2u);
    // It resumed from a checkpoint at or after step 350 (SIGKILL: the last periodic one,
    // every 50 steps; SIGTERM: the one the drain wrote at its stop, >= 400).
    const std::string& reason = running_reasons[1];
    ASSERT_EQ(reason.rfind("resumed from ", 0), 0u) << reason;
    const auto pos = reason.rfind("step-");
    ASSERT_NE(pos, std::string::npos) << reason;
    const int64_t resumed_at = std::stoll(reason.substr(pos + 5));
    EXPECT_GE(resumed_at, sig == SIGTERM ? 400 : 350) << reason;

    Job resumed;
    AMPD_ASSERT_GRPC_OK(get_job(stub(), job.id(), &resumed));
    EXPECT_EQ(resumed.state(), ampd::v1::SUCCEEDED);
    EXPECT_EQ(resumed.step(), 1200);
    // Resume is bit-exact (same backend and threads): an uninterrupted run ends the same.
    const Job fresh = must_submit(stub(), spec);
    AMPD_ASSERT_GRPC_OK(watch(stub(), fresh.id(), 0).status);
    Job reference;
    AMPD_ASSERT_GRPC_OK(get_job(stub(), fresh.id(), &reference));
    EXPECT_EQ(resumed.metrics().val_accuracy(), reference.metrics().val_accuracy());
    EXPECT_EQ(resumed.metrics().val_loss(), reference.metrics().val_loss());
  }
};

TEST_F(RestartTest, SigtermMidJobResumesAfterRestart) {
  Run(SIGTERM);
}
TEST_F(RestartTest, SigkillMidJobResumesAfterRestart) {
  Run(SIGKILL);
}

// ---- concurrency -----------------------------------------------------------------------------

TEST_F(ServiceTest, TwentyJobsFromTenConcurrentClientsAreAllAccountedFor) {
  ASSERT_NE(start_server(), nullptr);
  constexpr int kClients = 10, kPerClient = 2;
  std::mutex mu;
  std::vector<std::string> ids;
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = ampd::v1::Trainer::NewStub(server().new_channel());
      std::string first_id;
      for (int k = 0; k < kPerClient; ++k) {
        Job job;
        const std::string rid = "client-" + std::to_string(c) + "-" + std::to_string(k);
        if (!submit(*stub, tiny_spec(2 + k), &job, rid).ok()) {
          ++failures;
          continue;
        }
        if (k == 0) first_id = job.id();
        std::lock_guard<std::mutex> lock(mu);
        ids.push_back(job.id());
      }
      // A retry of the first request, racing the others: still the same job.
      Job retry;
      if (!submit(*stub, tiny_spec(2), &retry, "client-" + std::to_string(c) + "-0").ok() ||
          retry.id() != first_id) {
        ++failures;
      }
    });
  }
  for (auto& t : clients) t.join();
  ASSERT_EQ(failures.load(), 0);
  ASSERT_EQ(ids.size(), static_cast<size_t>(kClients * kPerClient));
  const std::set<std::string> unique(ids.begin(), ids.end());
  EXPECT_EQ(unique.size(), ids.size());

  for (const auto& id : ids) {
    const WatchResult w = watch(stub(), id, 0);
    AMPD_ASSERT_GRPC_OK(w.status);
    expect_complete_history(w.events, id);
    EXPECT_EQ(w.events.back().state_change().state(), ampd::v1::SUCCEEDED);
  }
  ampd::v1::ListJobsResponse all;
  AMPD_ASSERT_GRPC_OK(list_jobs(stub(), {}, 100, "", &all));
  std::set<std::string> listed;
  for (const auto& j : all.jobs()) {
    listed.insert(j.id());
    EXPECT_EQ(j.state(), ampd::v1::SUCCEEDED);
  }
  EXPECT_EQ(all.jobs_size(), kClients * kPerClient);
  EXPECT_EQ(listed, unique);
  // Submission order is run order: each job started after the previous one ended.
  std::vector<Job> by_id(all.jobs().begin(), all.jobs().end());
  for (size_t i = 1; i < by_id.size(); ++i) {
    EXPECT_GE(google::protobuf::util::TimeUtil::TimestampToNanoseconds(by_id[i].started_at()),
              google::protobuf::util::TimeUtil::TimestampToNanoseconds(by_id[i - 1].finished_at()));
  }
}

// ---- health, reflection, drain ----------------------------------------------------------------

TEST_F(ServiceTest, HealthReflectionAndDrainOnSigterm) {
  ASSERT_NE(start_server({"--drain-grace", "1.5s"}), nullptr);
  auto channel = server().new_channel();
  auto health = grpc::health::v1::Health::NewStub(channel);
  for (const char* service : {"", "ampd.v1.Trainer"}) {
    grpc::ClientContext ctx;
    set_deadline(&ctx);
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    HealthCheckResponse resp;
    AMPD_ASSERT_GRPC_OK(health->Check(&ctx, req, &resp));
    EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING) << service;
  }

  // Reflection (what grpcurl uses): the service is listed and its file is served.
  {
    auto refl = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
    grpc::ClientContext ctx;
    set_deadline(&ctx);
    auto stream = refl->ServerReflectionInfo(&ctx);
    grpc::reflection::v1alpha::ServerReflectionRequest req;
    req.set_list_services("");
    ASSERT_TRUE(stream->Write(req));
    grpc::reflection::v1alpha::ServerReflectionResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    std::set<std::string> services;
    for (const auto& s : resp.list_services_response().service()) services.insert(s.name());
    EXPECT_TRUE(services.count("ampd.v1.Trainer")) << resp.DebugString();
    EXPECT_TRUE(services.count("grpc.health.v1.Health")) << resp.DebugString();
    req.set_file_containing_symbol("ampd.v1.Trainer");
    ASSERT_TRUE(stream->Write(req));
    ASSERT_TRUE(stream->Read(&resp));
    ASSERT_GT(resp.file_descriptor_response().file_descriptor_proto_size(), 0)
        << resp.DebugString();
    bool found = false;
    for (const auto& bytes : resp.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      ASSERT_TRUE(file.ParseFromString(bytes));
      for (const auto& svc : file.service()) {
        if (svc.name() != "Trainer") continue;
        found = true;
        EXPECT_EQ(file.name(), "ampd/v1/trainer.proto");
        EXPECT_EQ(svc.method_size(), 10);
      }
    }
    EXPECT_TRUE(found);
    stream->WritesDone();
    AMPD_ASSERT_GRPC_OK(stream->Finish());
  }

  const Job job = must_submit(stub(), endless_spec());
  ASSERT_TRUE(wait_for_step(stub(), job.id(), 20));

  grpc::ClientContext watch_ctx;
  grpc::health::v1::HealthCheckRequest watch_req;
  auto health_watch = health->Watch(&watch_ctx, watch_req);
  HealthCheckResponse update;
  ASSERT_TRUE(health_watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);

  const auto t0 = std::chrono::steady_clock::now();
  server().signal(SIGTERM);
  ASSERT_TRUE(health_watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  // Draining (the grace period): probes see NOT_SERVING, new calls get UNAVAILABLE.
  {
    grpc::ClientContext ctx;
    set_deadline(&ctx);
    HealthCheckResponse resp;
    AMPD_ASSERT_GRPC_OK(health->Check(&ctx, watch_req, &resp));
    EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
  }
  Job ignored;
  EXPECT_EQ(submit(stub(), tiny_spec(2), &ignored).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(get_job(stub(), job.id(), &ignored).error_code(), grpc::StatusCode::UNAVAILABLE);
  watch_ctx.TryCancel();
  (void)health_watch->Finish();

  EXPECT_EQ(server().wait(seconds(25)), 0);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(took, 1.5 + 10.0);

  // A shutdown is not a cancel: after a restart the job is RUNNING again, not CANCELLED.
  ASSERT_NE(start_server(), nullptr);
  Job after;
  AMPD_ASSERT_GRPC_OK(get_job(stub(), job.id(), &after));
  EXPECT_EQ(after.state(), ampd::v1::RUNNING);
  EXPECT_FALSE(after.checkpoint().empty());
  AMPD_ASSERT_GRPC_OK(cancel_job(stub(), job.id(), &after));
}

TEST_F(ServiceTest, ASecondServerOnTheSameStateDirIsRefused) {
  ASSERT_NE(start_server(), nullptr);
  std::string error;
  auto second = ServerProcess::start(state_dir_, {}, &error);
  EXPECT_EQ(second, nullptr);
  EXPECT_NE(error.find("exited with 2"), std::string::npos) << error;
  EXPECT_NE(error.find("in use by another ampd serve"), std::string::npos) << error;
  // The first one is unaffected.
  Job job;
  EXPECT_EQ(get_job(stub(), "j-0000000000000000", &job).error_code(), grpc::StatusCode::NOT_FOUND);
}

// ---- errors ----------------------------------------------------------------------------------

TEST_F(ServiceTest, ErrorsMapToTheDocumentedStatusCodes) {
  ASSERT_NE(start_server({"--max-queued-jobs", "1", "--max-upload-bytes", "1KiB"}), nullptr);
  Job job;

  // A bad spec names the field.
  JobSpec bad = tiny_spec(3);
  bad.mutable_optimizer()->mutable_adamw()->set_lr(-1);
  grpc::Status s = submit(stub(), bad, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("optimizer.adamw.lr"), std::string::npos) << s.error_message();
  bad = tiny_spec(3);
  bad.set_precision("fp8");
  s = submit(stub(), bad, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("precision"), std::string::npos) << s.error_message();

  // Data paths stay inside the data dir.
  std::ofstream(root_ / "outside.csv") << "1,2,0\n3,4,1\n";
  for (const char* path : {"../outside.csv", "/etc/passwd", "a/../../outside.csv"}) {
    JobSpec csv = tiny_spec(3);
    csv.mutable_data()->mutable_csv()->set_path(path);
    s = submit(stub(), csv, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << path;
    EXPECT_NE(s.error_message().find("data.csv.path"), std::string::npos) << s.error_message();
  }
  JobSpec missing = tiny_spec(3);
  missing.mutable_data()->mutable_csv()->set_path("missing.csv");
  EXPECT_EQ(submit(stub(), missing, &job).error_code(), grpc::StatusCode::NOT_FOUND);

  // Unknown jobs.
  const std::string unknown = "j-0000000000000000";
  EXPECT_EQ(get_job(stub(), unknown, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(cancel_job(stub(), unknown, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(watch(stub(), unknown, 0).status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(get_job(stub(), "", &job).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(watch(stub(), unknown, -1).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Cancelling a finished job.
  const Job finished = must_submit(stub(), tiny_spec(2));
  AMPD_ASSERT_GRPC_OK(watch(stub(), finished.id(), 0).status);
  EXPECT_EQ(cancel_job(stub(), finished.id(), &job).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  // The queue: one running, one waiting (--max-queued-jobs 1), the next is refused.
  const Job running = must_submit(stub(), endless_spec());
  ASSERT_TRUE(wait_for_step(stub(), running.id(), 5));
  const Job waiting = must_submit(stub(), tiny_spec(2));
  s = submit(stub(), tiny_spec(2), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  AMPD_ASSERT_GRPC_OK(cancel_job(stub(), waiting.id(), &job));
  AMPD_ASSERT_GRPC_OK(cancel_job(stub(), running.id(), &job));

  // Uploads: the checksum and the size are verified, the limit enforced, nothing kept.
  const std::string content = "1,2,0\n3,4,1\n";
  ampd::v1::Dataset ds;
  s = Upload(stub(), "a.csv", content, std::string(64, '0'), content.size(), 4, &ds);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("sha256"), std::string::npos) << s.error_message();
  const std::string big(2000, 'x');
  s = Upload(stub(), "big.csv", big, sha256_hex(big), big.size(), 500, &ds);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  // Declared small, sent big: refused once past the limit.
  s = Upload(stub(), "liar.csv", big, sha256_hex(big), 100, 500, &ds);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  s = Upload(stub(), "short.csv", content, sha256_hex(content), content.size() + 1, 4, &ds);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  s = Upload(stub(), "../evil.csv", content, sha256_hex(content), content.size(), 4, &ds);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  {
    grpc::ClientContext ctx;
    set_deadline(&ctx);
    auto writer = stub().UploadDataset(&ctx, &ds);
    ampd::v1::UploadDatasetRequest chunk_first;
    chunk_first.set_chunk("1,2,0\n");
    writer->Write(chunk_first);
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  grpc::ClientContext ctx;
  set_deadline(&ctx);
  ampd::v1::ListDatasetsResponse list;
  AMPD_ASSERT_GRPC_OK(stub().ListDatasets(&ctx, {}, &list));
  EXPECT_EQ(list.datasets_size(), 0) << list.DebugString();
  std::error_code ec;
  EXPECT_TRUE(fs::is_empty(fs::path(state_dir_) / "data", ec));
}

TEST_F(ServiceTest, UploadedDatasetTrainsAJob) {
  ASSERT_NE(start_server(), nullptr);
  // Two separable classes in 4 features.
  std::string csv;
  uint64_t x = 12345;
  for (int i = 0; i < 300; ++i) {
    const int label = i % 2;
    for (int f = 0; f < 4; ++f) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      const double noise = static_cast<double>(x >> 40) / static_cast<double>(1 << 24) - 0.5;
      csv += std::to_string((label ? 1.0 : -1.0) + 0.5 * noise) + ",";
    }
    csv += std::to_string(label) + "\n";
  }
  ampd::v1::Dataset ds;
  AMPD_ASSERT_GRPC_OK(Upload(stub(), "two-class.csv", csv, sha256_hex(csv), csv.size(), 1000, &ds));
  EXPECT_EQ(ds.name(), "two-class.csv");
  EXPECT_EQ(ds.size_bytes(), static_cast<int64_t>(csv.size()));
  EXPECT_EQ(ds.sha256(), sha256_hex(csv));
  EXPECT_EQ(
      Upload(stub(), "two-class.csv", csv, sha256_hex(csv), csv.size(), 1000, &ds).error_code(),
      grpc::StatusCode::ALREADY_EXISTS);
  {
    grpc::ClientContext ctx;
    set_deadline(&ctx);
    ampd::v1::ListDatasetsResponse list;
    AMPD_ASSERT_GRPC_OK(stub().ListDatasets(&ctx, {}, &list));
    ASSERT_EQ(list.datasets_size(), 1);
    EXPECT_EQ(list.datasets(0).name(), "two-class.csv");
    EXPECT_EQ(list.datasets(0).sha256(), sha256_hex(csv));
  }
  JobSpec spec = spec_from_yaml(
      "precision: fp32\n"
      "model: {layers: [{linear: {out_features: 8}}, {relu: {}}, {linear: {out_features: 2}}]}\n"
      "data: {csv: {path: two-class.csv, label_column: -1}, batch_size: 32}\n"
      "optimizer: {sgd: {lr: 0.1}}\n"
      "training: {epochs: 5, seed: 1}\n");
  const Job job = must_submit(stub(), spec);
  AMPD_ASSERT_GRPC_OK(watch(stub(), job.id(), 0).status);
  Job done;
  AMPD_ASSERT_GRPC_OK(get_job(stub(), job.id(), &done));
  EXPECT_EQ(done.state(), ampd::v1::SUCCEEDED) << done.failure_reason();
  EXPECT_GT(done.metrics().val_accuracy(), 0.9);
}

}  // namespace
}  // namespace ampd::testing
