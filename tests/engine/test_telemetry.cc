// Numerics telemetry (engine/telemetry.*, TrainingSpec.telemetry_every): the FP16
// underflow classes at their exact boundaries and against the FP16 conversion itself, the
// drift check (exactly 0 in FP32, small in FP16), the event cadence, and that telemetry
// never changes what is trained.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/job_spec.h"
#include "engine/telemetry.h"
#include "engine/trainer.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/half.h"
#include "tests/engine/engine_test_util.h"

namespace ampd::engine {
namespace {

std::unique_ptr<Backend> cpu() {
  return test::cpu_backend(1);
}

TEST(GradientTelemetry, ClassesAtTheirBoundaries) {
  const float below_zero_bound = std::nextafter(0x1p-25f, 0.0f);
  const float above_zero_bound = std::nextafter(0x1p-25f, 1.0f);
  const float below_normal = std::nextafter(0x1p-14f, 0.0f);
  const std::vector<float> g = {0.0f,         below_zero_bound, 0x1p-25f, above_zero_bound,
                                below_normal, 0x1p-14f,         -3.0f,    INFINITY};
  const auto t = gradient_telemetry(g.data(), static_cast<int64_t>(g.size()), 1.0);
  EXPECT_EQ(t.elements(), 8);
  EXPECT_EQ(t.max_abs_grad(), 3.0);                   // inf ignored
  EXPECT_DOUBLE_EQ(t.fp16_zero_fraction(), 2.0 / 8);  // below and at 2^-25
  EXPECT_DOUBLE_EQ(t.fp16_subnormal_fraction(), 2.0 / 8);

  // The scale moves them: at S = 2^10 the three around 2^-25 become subnormal (~2^-15),
  // the two around 2^-14 normal.
  const auto s = gradient_telemetry(g.data(), static_cast<int64_t>(g.size()), 1024.0);
  EXPECT_EQ(s.fp16_zero_fraction(), 0.0);
  EXPECT_DOUBLE_EQ(s.fp16_subnormal_fraction(), 3.0 / 8);
}

TEST(GradientTelemetry, ZeroClassIsExactlyWhatFp16RoundsToZero) {
  // Walk the float values around 2^-25 and 2^-24 and compare with the conversion.
  for (float x = 0x1p-27f; x < 0x1p-23f; x = std::nextafter(x, 1.0f) * 1.0001f) {
    const auto t = gradient_telemetry(&x, 1, 1.0);
    const bool rounds_to_zero = (f32_to_f16_bits(x) & 0x7fffu) == 0;
    ASSERT_EQ(t.fp16_zero_fraction() == 1.0, rounds_to_zero) << x;
  }
}

TEST(RelativeDrift, Definition) {
  EXPECT_NEAR(relative_drift(1.01, 1.0), 0.01, 1e-12);
  EXPECT_NEAR(relative_drift(-0.99, -1.0), 0.01, 1e-12);
  EXPECT_EQ(relative_drift(2.0, 2.0), 0.0);
  EXPECT_GT(relative_drift(1e-3, 0.0), 1e20);  // guarded, not a division by zero
}

ampd::v1::JobSpec digits_spec(const std::string& precision, int64_t telemetry_every) {
  auto s = parse_job_spec(
      "data: {digits: {}, batch_size: 32, standardize: true}\n"
      "model: {layers: [{linear: {out_features: 32}}, {relu: {}}, {dropout: {p: 0.1}},\n"
      "                 {linear: {out_features: 10}}]}\n"
      "optimizer: {adamw: {lr: 0.003}}\n"
      "training: {max_steps: 20, report_every: 5}\n",
      "yaml");
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  s->set_precision(precision);
  s->mutable_training()->set_telemetry_every(telemetry_every);
  return *s;
}

struct TelemetryRun {
  ampd::v1::Job job;
  std::vector<ampd::v1::TelemetryEvent> telemetry;
  std::vector<double> losses;
};

TelemetryRun run(const ampd::v1::JobSpec& spec) {
  auto be = cpu();
  TelemetryRun r;
  TrainerOptions o;
  o.on_event = [&](const ampd::v1::JobEvent& e) {
    if (e.has_telemetry()) r.telemetry.push_back(e.telemetry());
    if (e.has_progress()) r.losses.push_back(e.progress().loss());
  };
  auto t = Trainer::create(*be, spec, std::move(o));
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  if (t.ok()) r.job = (*t)->run();
  return r;
}

TEST(TrainerTelemetry, Fp32DriftIsExactlyZeroAndEventsComeEveryN) {
  const TelemetryRun r = run(digits_spec("fp32", 5));
  ASSERT_EQ(r.job.state(), ampd::v1::SUCCEEDED);
  ASSERT_EQ(r.telemetry.size(), 4u);
  for (size_t i = 0; i < r.telemetry.size(); ++i) {
    const auto& t = r.telemetry[i];
    EXPECT_EQ(t.step(), 5 * static_cast<int64_t>(i + 1));
    EXPECT_EQ(t.loss_drift(), 0.0) << "step " << t.step();  // the same computation
    EXPECT_EQ(t.loss(), t.fp32_loss());
    ASSERT_EQ(t.tensors_size(), 4);  // 0.weight, 0.bias, 3.weight, 3.bias
    EXPECT_EQ(t.tensors(0).name(), "0.weight");
    EXPECT_EQ(t.tensors(0).elements(), 64 * 32);
    EXPECT_GT(t.tensors(0).max_abs_grad(), 0.0);
  }
}

TEST(TrainerTelemetry, Fp16DriftIsSmallAndTrainingIsUnchanged) {
  const TelemetryRun on = run(digits_spec("fp16", 1));
  const TelemetryRun off = run(digits_spec("fp16", 0));
  ASSERT_EQ(on.job.state(), ampd::v1::SUCCEEDED);
  ASSERT_EQ(on.telemetry.size(), 20u);
  EXPECT_TRUE(off.telemetry.empty());
  for (const auto& t : on.telemetry) {
    EXPECT_EQ(t.loss_scale(), 65536.0);
    EXPECT_LT(t.loss_drift(), 1e-2) << "step " << t.step();
  }
  EXPECT_GT(on.telemetry.back().loss_drift(), 0.0);  // FP16 activations do round
  // Telemetry reads, it never writes: the trained model is bit-identical.
  EXPECT_EQ(on.losses, off.losses);
  EXPECT_EQ(on.job.metrics().val_loss(), off.job.metrics().val_loss());
}

TEST(JobSpecTelemetry, NegativeIsRejectedNamingTheField) {
  auto spec = digits_spec("fp16", -1);
  auto r = validate_and_resolve(spec);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("training.telemetry_every"), std::string::npos)
      << r.status().message();
}

}  // namespace
}  // namespace ampd::engine
