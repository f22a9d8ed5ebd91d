// ServerMetrics (server/metrics.*) without HTTP: the names, per-job series that appear
// with a job and leave with it, aggregates that stay, scrape-time jobs by state, the
// text generation counter and gauge.
#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include "server/metrics.h"

namespace ampd::server {
namespace {

std::string scrape(const ServerMetrics& m) {
  return prometheus::TextSerializer().Serialize(m.collect_all());
}

bool has(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

TEST(ServerMetrics, PerJobSeriesLiveWithTheJobAggregatesStay) {
  ServerMetrics m;
  m.set_build_info("1.2.3", "cpu", "test device");
  m.set_snapshot_source([] {
    ServerMetrics::Snapshot s;
    s.jobs_by_state = {{ampd::v1::RUNNING, 1}, {ampd::v1::SUCCEEDED, 4}};
    s.queue_depth = 2;
    return s;
  });
  ampd::v1::Job job;
  job.set_id("j-1");
  job.set_precision("fp16");
  job.set_total_steps(100);
  job.set_loss_scale(65536);
  m.on_job_submitted();
  m.on_job_started(job);
  m.on_job_step("j-1", engine::StepStats{1, 64, 0.002, false});
  m.on_job_step("j-1", engine::StepStats{2, 64, 0.003, true});
  ampd::v1::JobEvent e;
  e.set_job_id("j-1");
  auto* t = e.mutable_telemetry();
  t->set_loss_drift(0.001);
  auto* tensor = t->add_tensors();
  tensor->set_name("0.weight");
  tensor->set_fp16_zero_fraction(0.25);
  m.on_job_event(e);
  ampd::v1::JobEvent failed_checkpoint;
  failed_checkpoint.set_job_id("j-1");
  failed_checkpoint.mutable_checkpoint()->set_error("write checkpoint x: No space left on device");
  m.on_job_event(failed_checkpoint);
  m.observe_rpc("GetJob", "NOT_FOUND", 0.001);

  std::string s = scrape(m);
  EXPECT_TRUE(has(s, R"(ampd_build_info{backend="cpu",device="test device",version="1.2.3"} 1)"))
      << s;
  EXPECT_TRUE(has(s, R"(ampd_jobs{state="succeeded"} 4)")) << s;
  EXPECT_TRUE(has(s, R"(ampd_jobs{state="queued"} 0)")) << s;
  EXPECT_TRUE(has(s, "ampd_queue_depth 2")) << s;
  EXPECT_TRUE(has(s, "ampd_jobs_submitted_total 1")) << s;
  EXPECT_TRUE(has(s, "ampd_checkpoint_write_failures_total 1")) << s;
  EXPECT_TRUE(has(s, R"(ampd_training_steps_total{precision="fp16"} 2)")) << s;
  EXPECT_TRUE(has(s, R"(ampd_training_samples_total{precision="fp16"} 128)")) << s;
  EXPECT_TRUE(has(s, R"(ampd_training_overflow_skipped_steps_total{precision="fp16"} 1)")) << s;
  EXPECT_TRUE(has(s, R"(ampd_training_step_duration_seconds_count{precision="fp16"} 2)")) << s;
  EXPECT_TRUE(has(s, R"(ampd_job_step{job_id="j-1"} 2)")) << s;
  EXPECT_TRUE(has(s, R"(ampd_job_loss_scale{job_id="j-1"} 65536)")) << s;
  EXPECT_TRUE(has(s, R"(ampd_job_grad_fp16_zero_ratio{job_id="j-1",tensor="0.weight"} 0.25)")) << s;
  EXPECT_TRUE(has(s, R"(ampd_grpc_requests_total{code="NOT_FOUND",method="GetJob"} 1)")) << s;

  m.on_job_finished(ampd::v1::SUCCEEDED);
  m.on_job_stopped("j-1");
  s = scrape(m);
  EXPECT_FALSE(has(s, "j-1")) << s;
  EXPECT_TRUE(has(s, R"(ampd_training_steps_total{precision="fp16"} 2)")) << s;
  EXPECT_TRUE(has(s, R"(ampd_jobs_finished_total{state="succeeded"} 1)")) << s;

  // A second job reuses the aggregates.
  job.set_id("j-2");
  m.on_job_started(job);
  m.on_job_step("j-2", engine::StepStats{1, 64, 0.002, false});
  s = scrape(m);
  EXPECT_TRUE(has(s, R"(ampd_training_steps_total{precision="fp16"} 3)")) << s;
  EXPECT_TRUE(has(s, R"(ampd_job_step{job_id="j-2"} 1)")) << s;
}

TEST(ServerMetrics, GenerationTokensCountAndActiveGenerationsGauge) {
  ServerMetrics m;
  std::string s = scrape(m);
  EXPECT_TRUE(has(s, "ampd_generated_tokens_total 0")) << s;
  EXPECT_TRUE(has(s, "ampd_generations_active 0")) << s;
  GenerationObserver& o = m;
  o.on_generation_started();
  o.on_generation_started();
  o.on_tokens_generated(1);
  o.on_tokens_generated(41);
  s = scrape(m);
  EXPECT_TRUE(has(s, "ampd_generated_tokens_total 42")) << s;
  EXPECT_TRUE(has(s, "ampd_generations_active 2")) << s;
  o.on_generation_ended();
  o.on_generation_ended();
  s = scrape(m);
  EXPECT_TRUE(has(s, "ampd_generations_active 0")) << s;
  EXPECT_TRUE(has(s, "ampd_generated_tokens_total 42")) << s;
}

TEST(ServerMetrics, ServeOnAnyPortAndRefuseATakenOne) {
  ServerMetrics a;
  ASSERT_TRUE(a.serve("127.0.0.1:0").ok());
  ASSERT_GT(a.port(), 0);
  ServerMetrics b;
  const Status s = b.serve("127.0.0.1:" + std::to_string(a.port()));
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.message();
}

}  // namespace
}  // namespace ampd::server
