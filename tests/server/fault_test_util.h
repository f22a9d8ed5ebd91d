// Helpers shared by the fault tests that drive a real `ampd serve` (test_crash_recovery.cc,
// test_disk_full.cc): the calls they make through the generated stubs (the fixture is
// server_process.h's ServerTest).
#pragma once

#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ampd/v1/trainer.grpc.pb.h"
#include "engine/job_spec.h"
#include "engine/safetensors.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server_process.h"

namespace ampd::testing::faults {

namespace fs = std::filesystem;
using ampd::v1::Job;
using ampd::v1::JobEvent;
using ampd::v1::JobSpec;
using ampd::v1::JobState;
using Stub = ampd::v1::Trainer::Stub;

inline void set_deadline(grpc::ClientContext* ctx,
                         std::chrono::milliseconds d = std::chrono::seconds(30)) {
  ctx->set_deadline(std::chrono::system_clock::now() + d);
}

// The digits MLP of examples/digits-fp16.yaml cut to `steps` steps, reporting every step
// (so that a test can stop the server at any step) and checkpointing every `every`.
inline JobSpec digits_job(int64_t steps, int64_t every, int64_t seed = 7,
                          const std::string& precision = "fp16") {
  auto spec = engine::load_job_spec_file(AMPD_SOURCE_DIR "/examples/digits-fp16.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().to_string();
  JobSpec s = spec.ok() ? spec.value() : JobSpec();
  s.set_name("faults-" + std::to_string(seed));
  s.set_precision(precision);
  auto* t = s.mutable_training();
  t->set_epochs(0);
  t->set_max_steps(steps);
  t->set_eval_every(0);
  t->set_report_every(1);
  t->set_checkpoint_every(every);
  t->set_seed(seed);
  return s;
}

inline grpc::Status submit(Stub& stub, const JobSpec& spec, Job* job,
                           const std::string& client_request_id = "") {
  grpc::ClientContext ctx;
  set_deadline(&ctx);
  ampd::v1::SubmitJobRequest req;
  *req.mutable_spec() = spec;
  req.set_client_request_id(client_request_id);
  return stub.SubmitJob(&ctx, req, job);
}

inline grpc::Status get_job(Stub& stub, const std::string& id, Job* job) {
  grpc::ClientContext ctx;
  set_deadline(&ctx);
  ampd::v1::GetJobRequest req;
  req.set_job_id(id);
  return stub.GetJob(&ctx, req, job);
}

// Every event from seq 1 to the final one.
struct WatchResult {
  std::vector<JobEvent> events;
  grpc::Status status;
};
inline WatchResult watch_to_end(Stub& stub, const std::string& id) {
  WatchResult r;
  grpc::ClientContext ctx;
  set_deadline(&ctx, std::chrono::seconds(90));
  ampd::v1::WatchJobRequest req;
  req.set_job_id(id);
  auto reader = stub.WatchJob(&ctx, req);
  JobEvent e;
  while (reader->Read(&e)) r.events.push_back(e);
  r.status = reader->Finish();
  return r;
}

// The reasons of the job's RUNNING events, in order.
inline std::vector<std::string> running_reasons(const std::vector<JobEvent>& events) {
  std::vector<std::string> out;
  for (const auto& e : events) {
    if (e.has_state_change() && e.state_change().state() == ampd::v1::RUNNING) {
      out.push_back(e.state_change().reason());
    }
  }
  return out;
}

// DownloadCheckpoint: the job's newest checkpoint, whole; *step is the chunks' step.
inline grpc::Status download(Stub& stub, const std::string& id, std::string* bytes,
                             int64_t* step = nullptr) {
  grpc::ClientContext ctx;
  set_deadline(&ctx);
  ampd::v1::DownloadCheckpointRequest req;
  req.set_job_id(id);
  auto reader = stub.DownloadCheckpoint(&ctx, req);
  ampd::v1::CheckpointChunk chunk;
  bytes->clear();
  while (reader->Read(&chunk)) {
    EXPECT_EQ(chunk.offset(), static_cast<int64_t>(bytes->size()));
    if (step != nullptr) *step = chunk.step();
    *bytes += chunk.data();
  }
  return reader->Finish();
}

// The tensors of a safetensors file held in memory, by name.
inline std::map<std::string, std::vector<uint8_t>> tensors_of(const std::string& bytes,
                                                              const fs::path& scratch) {
  {
    std::ofstream out(scratch, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  auto f = engine::read_safetensors(scratch.string());
  EXPECT_TRUE(f.ok()) << f.status().to_string();
  std::map<std::string, std::vector<uint8_t>> out;
  if (f.ok()) {
    for (auto& t : f->tensors) out[t.name] = t.data;
  }
  fs::remove(scratch);
  return out;
}

inline bool serving(ServerProcess& server) {
  auto health = grpc::health::v1::Health::NewStub(server.new_channel());
  grpc::ClientContext ctx;
  set_deadline(&ctx, std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  return health->Check(&ctx, req, &resp).ok() &&
         resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

using FaultTest = ServerTest;

}  // namespace ampd::testing::faults
