// Helpers shared by the tests that run a JobManager in-process on the reference backend
// (test_server_core.cc, test_store_faults.cc).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "engine/job_spec.h"
#include "server/job_manager.h"

namespace ampd::server::test {

// A tiny blobs MLP (4 -> 8 -> 3, SGD) that reports every step and checkpoints every
// `checkpoint_every` steps.
inline ampd::v1::JobSpec tiny_spec(int64_t max_steps, int64_t checkpoint_every = 5) {
  auto spec = engine::parse_job_spec(
      "precision: fp32\n"
      "model: {layers: [{linear: {out_features: 8}}, {relu: {}}, {linear: {out_features: 3}}]}\n"
      "data: {synthetic: {kind: blobs, samples: 64, features: 4, classes: 3}, batch_size: 16}\n"
      "optimizer: {sgd: {lr: 0.1}}\n"
      "training: {max_steps: " +
          std::to_string(max_steps) +
          ", report_every: 1, checkpoint_every: " + std::to_string(checkpoint_every) + "}\n",
      "yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().to_string();
  return spec.ok() ? spec.value() : ampd::v1::JobSpec();
}

// Every event of job `id` from seq 1 until its final one; *status is Watch's result.
inline std::vector<ampd::v1::JobEvent> watch_to_end(JobManager& m, const std::string& id,
                                                    Status* status) {
  std::vector<ampd::v1::JobEvent> events;
  *status = m.watch(
      id, 0,
      [&](const ampd::v1::JobEvent& e) {
        events.push_back(e);
        return true;
      },
      nullptr);
  return events;
}

}  // namespace ampd::server::test
