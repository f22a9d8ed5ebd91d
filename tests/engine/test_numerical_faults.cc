// Numerical faults, injected through the trainer's test seams (TrainerOptions::on_batch,
// after_forward, after_backward) in every precision: a NaN or an inf in the input data, in
// the FP32 loss, or in one gradient skips the step and counts it, and never reaches the
// FP32 master weights, the optimizer state or the BatchNorm running statistics; a loss
// scale that hits its floor fails the job with that reason; a run whose loss or gradients
// stay non-finite where there is no scale to back off (FP32, BF16) fails as diverged,
// naming the step.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "engine/job_spec.h"
#include "engine/trainer.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/engine/engine_test_util.h"

namespace ampd::engine {
namespace {

std::unique_ptr<Backend> cpu() {
  return test::cpu_backend(2);
}

// A small digits MLP with BatchNorm (running statistics) and AdamW (two state tensors
// per parameter), so every kind of FP32 state is there to be poisoned.
ampd::v1::JobSpec spec(const std::string& precision, int64_t steps) {
  auto s = parse_job_spec("name: faults\nprecision: " + precision +
                              "\n"
                              "model:\n"
                              "  layers:\n"
                              "    - linear: {out_features: 32}\n"
                              "    - batch_norm: {}\n"
                              "    - relu: {}\n"
                              "    - linear: {out_features: 10}\n"
                              "data: {digits: {}, batch_size: 32, standardize: true}\n"
                              "optimizer: {adamw: {lr: 0.002}}\n"
                              "training: {max_steps: " +
                              std::to_string(steps) + ", report_every: 4, seed: 7}\n",
                          "yaml");
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  return s.value();
}

std::vector<float> host(Backend& be, const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  EXPECT_TRUE(be.download(out.data(), t).ok());
  return out;
}

// Every FP32 tensor a step must never make non-finite, by name.
std::vector<std::pair<std::string, std::vector<float>>> fp32_state(Backend& be, Trainer& t) {
  std::vector<std::pair<std::string, std::vector<float>>> out;
  for (Param* p : t.model().params()) {
    out.emplace_back(p->name + " (master)", host(be, p->master_t()));
  }
  for (const auto& [key, tensor] : t.optimizer().state_tensors()) {
    out.emplace_back(key, host(be, tensor));
  }
  for (StateTensor* s : t.model().states()) out.emplace_back(s->name, host(be, s->t()));
  return out;
}

void expect_all_finite(Backend& be, Trainer& t, const std::string& when) {
  for (const auto& [name, values] : fp32_state(be, t)) {
    size_t bad = 0;
    for (float v : values) bad += std::isfinite(v) ? 0 : 1;
    EXPECT_EQ(bad, 0u) << name << " holds non-finite values " << when;
  }
}

enum class Site { kData, kLoss, kGradient };
const char* site_name(Site s) {
  switch (s) {
    case Site::kData: return "data";
    case Site::kLoss: return "loss";
    case Site::kGradient: return "gradient";
  }
  return "?";
}

struct FaultRun {
  ampd::v1::Job job;
  std::vector<ampd::v1::JobEvent> events;
  int64_t skipped_steps_seen = 0;  // StepStats::skipped
};

Param* param_named(Model& m, const std::string& name) {
  for (Param* p : m.params()) {
    if (p->name == name) return p;
  }
  ADD_FAILURE() << "no parameter " << name;
  return m.params()[0];
}

// Injects `value` at `site` on every step in [first, last] (0-based steps). before_step
// sees the model at the start of each step (after the previous optimizer step, before
// this step's forward pass).
FaultRun run_with_fault(Backend& be, const ampd::v1::JobSpec& s, Site site, float value,
                        int64_t first, int64_t last,
                        std::function<void(Trainer&, int64_t)> before_step = nullptr) {
  FaultRun r;
  Trainer* trainer = nullptr;
  TrainerOptions o;
  o.on_event = [&](const ampd::v1::JobEvent& e) { r.events.push_back(e); };
  o.on_step = [&](const StepStats& st) { r.skipped_steps_seen += st.skipped ? 1 : 0; };
  auto hit = [=](int64_t step) { return step >= first && step <= last; };
  o.on_batch = [=, &trainer](int64_t step, int64_t rows, int64_t cols, float* x, float*) {
    if (before_step) before_step(*trainer, step);
    if (site == Site::kData && hit(step)) x[(rows / 2) * cols + cols / 3] = value;
  };
  o.after_forward = [&, hit, site, value](Model& m, int64_t step) -> Status {
    (void)m;
    if (site != Site::kLoss || !hit(step)) return Status::ok_status();
    const Tensor loss = m.loss_rows(1);  // the first row's FP32 loss
    return be.upload(loss, &value);
  };
  o.after_backward = [&, hit, site, value](Model& m, int64_t step) -> Status {
    if (site != Site::kGradient || !hit(step)) return Status::ok_status();
    Param* p = param_named(m, "3.weight");  // the last linear layer
    std::vector<float> g = host(be, p->grad_t());
    g[5] = value;
    return be.upload(p->grad_t(), g.data());
  };
  auto t = Trainer::create(be, s, std::move(o));
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  if (!t.ok()) return r;
  trainer = t->get();
  r.job = (*t)->run();
  expect_all_finite(be, **t, std::string("after the run (") + site_name(site) + ")");
  return r;
}

// ---- one bad step: skipped, counted, no trace in the FP32 state ---------------------------

TEST(NumericalFaults, OneBadStepIsSkippedCountedAndLeavesTheFp32StateUntouched) {
  auto be = cpu();
  const float kNan = std::numeric_limits<float>::quiet_NaN();
  const float kInf = std::numeric_limits<float>::infinity();
  for (const char* precision : {"fp32", "fp16", "bf16"}) {
    for (Site site : {Site::kData, Site::kLoss, Site::kGradient}) {
      for (float value : {kNan, kInf, -kInf}) {
        SCOPED_TRACE(std::string(precision) + ", " + site_name(site) + ", " +
                     std::to_string(value));
        constexpr int64_t kBad = 5;  // 0-based: progress step 6
        // The FP32 state before the bad step and after it: identical, bit for bit (the
        // running statistics too, since a non-finite batch would have poisoned them).
        std::vector<std::pair<std::string, std::vector<float>>> before, after;
        auto snap = [&](Trainer& t, int64_t step) {
          if (step == kBad) before = fp32_state(*be, t);
          if (step == kBad + 1) after = fp32_state(*be, t);
        };
        const FaultRun r = run_with_fault(*be, spec(precision, 12), site, value, kBad, kBad, snap);
        ASSERT_EQ(r.job.state(), ampd::v1::SUCCEEDED) << r.job.failure_reason();
        EXPECT_EQ(r.job.overflow_skipped_steps(), 1);
        EXPECT_EQ(r.skipped_steps_seen, 1);
        ASSERT_EQ(before.size(), after.size());
        ASSERT_FALSE(before.empty());
        for (size_t i = 0; i < before.size(); ++i) {
          // BatchNorm statistics of a finite bad step (an injected loss or gradient) move
          // as in PyTorch; only a poisoned (non-finite) update is put back.
          if (site != Site::kData && before[i].first.find("running") != std::string::npos) continue;
          EXPECT_EQ(0, std::memcmp(before[i].second.data(), after[i].second.data(),
                                   before[i].second.size() * sizeof(float)))
              << before[i].first << " changed in a skipped step";
        }
        int overflow_events = 0;
        for (const auto& e : r.events) {
          if (e.has_progress()) {
            EXPECT_TRUE(std::isfinite(e.progress().loss()))
                << "reported loss at step " << e.progress().step();
          }
          if (!e.has_overflow()) continue;
          ++overflow_events;
          EXPECT_EQ(e.overflow().step(), kBad + 1);
          std::string tensors;
          for (const auto& t : e.overflow().tensors()) tensors += t + ";";
          if (site == Site::kGradient) {
            EXPECT_EQ(tensors, "layer 3 (linear).weight;");
          } else {
            EXPECT_EQ(tensors.rfind("loss;", 0), 0u) << tensors;
          }
          if (std::string(precision) == "fp16") {
            EXPECT_EQ(e.overflow().scale_after(), e.overflow().scale_before() / 2);
          } else {
            EXPECT_EQ(e.overflow().scale_after(), 1);
          }
        }
        EXPECT_EQ(overflow_events, 1);
        EXPECT_TRUE(std::isfinite(r.job.metrics().train_loss()));
        EXPECT_TRUE(std::isfinite(r.job.metrics().val_loss()));
      }
    }
  }
}

// ---- persistent faults: the job fails, with the reason and the step ----------------------

TEST(NumericalFaults, Fp16LossScaleAtItsFloorFailsTheJob) {
  auto be = cpu();
  auto s = spec("fp16", 200);
  s.mutable_loss_scaling()->mutable_dynamic()->set_init_scale(1024);
  s.mutable_loss_scaling()->mutable_dynamic()->set_min_scale(16);
  // inf in one gradient from step 10 on: 1024 -> 16 takes 6 backoffs, the 7th overflow
  // is at the floor (steps 11..17, 1-based).
  const float kInf = std::numeric_limits<float>::infinity();
  const FaultRun r = run_with_fault(*be, s, Site::kGradient, kInf, 10, 1000);
  ASSERT_EQ(r.job.state(), ampd::v1::FAILED);
  const std::string& why = r.job.failure_reason();
  EXPECT_EQ(why.rfind("step 17: loss scale reached its minimum 16 after 7 consecutive", 0), 0u)
      << why;
  EXPECT_NE(why.find("layer 3 (linear).weight"), std::string::npos) << why;
  EXPECT_EQ(r.job.overflow_skipped_steps(), 7);
  EXPECT_EQ(r.job.step(), 16);
}

TEST(NumericalFaults, PersistentNonFiniteLossInFp32AndBf16FailsAsDiverged) {
  auto be = cpu();
  const int64_t n = LossScaler::kMaxConsecutiveSkipsWithoutDynamicScale;
  for (const char* precision : {"fp32", "bf16"}) {
    SCOPED_TRACE(precision);
    const FaultRun r = run_with_fault(*be, spec(precision, n + 100), Site::kLoss,
                                      std::numeric_limits<float>::quiet_NaN(), 20, n + 1000);
    ASSERT_EQ(r.job.state(), ampd::v1::FAILED);
    const std::string& why = r.job.failure_reason();
    const std::string step = "step " + std::to_string(20 + n) +
                             ": training diverged: " + std::to_string(n) +
                             " consecutive steps with a non-finite loss";
    EXPECT_EQ(why.rfind(step, 0), 0u) << why;
    EXPECT_NE(why.find(std::string("(") + precision + "; non-finite at this step: loss"),
              std::string::npos)
        << why;
    EXPECT_EQ(r.job.overflow_skipped_steps(), n);
  }
}

TEST(NumericalFaults, NonFiniteStepsThatRecoverInTimeDoNotFailTheJob) {
  auto be = cpu();
  const int64_t n = LossScaler::kMaxConsecutiveSkipsWithoutDynamicScale;
  // n - 1 bad steps in a row, then clean ones: skipped and counted, not a divergence.
  const FaultRun r = run_with_fault(*be, spec("fp32", n + 60), Site::kData,
                                    std::numeric_limits<float>::infinity(), 3, n + 1);
  ASSERT_EQ(r.job.state(), ampd::v1::SUCCEEDED) << r.job.failure_reason();
  EXPECT_EQ(r.job.overflow_skipped_steps(), n - 1);
  EXPECT_GT(r.job.metrics().val_accuracy(), 0.5);
}

}  // namespace
}  // namespace ampd::engine
