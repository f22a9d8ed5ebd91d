// The loss scaler against PyTorch's GradScaler rule, plus hysteresis, floor and cap.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/loss_scaler.h"

namespace ampd::engine {
namespace {

LossScaler::Options dynamic(double init = 65536, int64_t interval = 2000, int32_t hysteresis = 1,
                            double min_scale = 1, double max_scale = 16777216) {
  LossScaler::Options o;
  o.mode = LossScaler::Mode::kDynamic;
  o.init_scale = init;
  o.growth_interval = interval;
  o.hysteresis = hysteresis;
  o.min_scale = min_scale;
  o.max_scale = max_scale;
  return o;
}

// torch/csrc/.../AmpKernels: _amp_update_scale_cpu_ transcribed (float scale, int tracker).
struct TorchGradScaler {
  float scale = 0;
  int interval = 0;
  int growth_tracker = 0;
  float growth = 2.0f, backoff = 0.5f;
  void update(bool found_inf) {
    if (found_inf) {
      scale *= backoff;
      growth_tracker = 0;
    } else {
      const int successful = growth_tracker + 1;
      if (successful == interval) {
        const float new_scale = scale * growth;
        if (std::isfinite(new_scale)) scale = new_scale;
        growth_tracker = 0;
      } else {
        growth_tracker = successful;
      }
    }
  }
};

TEST(LossScaler, HandWrittenTraceOfPyTorchRule) {
  // interval 3: three clean steps grow, an overflow halves and resets the counter.
  LossScaler s(dynamic(1024, 3));
  struct Row {
    bool overflow;
    double scale_after;
    int64_t tracker_after;
    bool skip;
  };
  const Row trace[] = {
      {false, 1024, 1, false}, {false, 1024, 2, false}, {false, 2048, 0, false},  // grow
      {true, 1024, 0, true},                                                      // backoff
      {false, 1024, 1, false}, {true, 512, 0, true},    {true, 256, 0, true},     // 2 overflows
      {false, 256, 1, false},  {false, 256, 2, false},  {false, 512, 0, false},
  };
  for (size_t i = 0; i < std::size(trace); ++i) {
    const auto d = s.update(trace[i].overflow);
    EXPECT_EQ(d.skip_step, trace[i].skip) << "step " << i;
    EXPECT_EQ(s.scale(), trace[i].scale_after) << "step " << i;
    EXPECT_EQ(s.state().growth_tracker(), trace[i].tracker_after) << "step " << i;
    EXPECT_FALSE(d.failure.has_value());
  }
}

TEST(LossScaler, MatchesTorchOnRandomOverflowSequence) {
  // No cap and a floor far below anything reached: exactly PyTorch's rule.
  LossScaler s(dynamic(65536, 7, 1, 1e-30, 1e300));
  TorchGradScaler t{.scale = 65536.0f, .interval = 7};
  std::mt19937 rng(3);
  std::bernoulli_distribution overflow(0.1);
  for (int i = 0; i < 5000; ++i) {
    const bool o = overflow(rng);
    s.update(o);
    t.update(o);
    ASSERT_EQ(s.scale(), static_cast<double>(t.scale)) << "step " << i;
    ASSERT_EQ(s.state().growth_tracker(), t.growth_tracker) << "step " << i;
  }
}

TEST(LossScaler, GrowthRefusedWhenNotFiniteAsFloat) {
  LossScaler s(dynamic(0x1p127, 1, 1, 1, 1e300));
  const auto d = s.update(false);
  EXPECT_FALSE(d.grew);
  EXPECT_EQ(s.scale(), 0x1p127);  // 2^128 is inf in FP32: refused, as PyTorch does
  EXPECT_EQ(s.state().growth_tracker(), 0);
}

TEST(LossScaler, HysteresisDelaysBackoff) {
  // hysteresis 3: the first two overflows since the last growth are tolerated.
  LossScaler s(dynamic(1024, 2, 3));
  EXPECT_TRUE(s.update(true).skip_step);
  EXPECT_EQ(s.scale(), 1024);
  EXPECT_TRUE(s.update(true).skip_step);
  EXPECT_EQ(s.scale(), 1024);
  auto d = s.update(true);  // third: backs off
  EXPECT_TRUE(d.backed_off);
  EXPECT_EQ(s.scale(), 512);
  s.update(true);  // allowance spent: every further overflow backs off
  EXPECT_EQ(s.scale(), 256);
  s.update(false);
  s.update(false);  // growth restores the allowance
  EXPECT_EQ(s.scale(), 512);
  EXPECT_EQ(s.state().hysteresis_tracker(), 3);
  s.update(true);
  EXPECT_EQ(s.scale(), 512);
}

TEST(LossScaler, CapLimitsGrowth) {
  LossScaler s(dynamic(1024, 1, 1, 1, 4096));
  s.update(false);
  s.update(false);
  EXPECT_EQ(s.scale(), 4096);
  const auto d = s.update(false);
  EXPECT_FALSE(d.grew);
  EXPECT_EQ(s.scale(), 4096);
}

TEST(LossScaler, FloorFailsWithReason) {
  LossScaler s(dynamic(4, 2000, 1, 1));
  EXPECT_EQ(s.update(true).scale_after, 2);
  EXPECT_EQ(s.update(true).scale_after, 1);
  const auto d = s.update(true);
  ASSERT_TRUE(d.failure.has_value());
  EXPECT_NE(d.failure->find("loss scale reached its minimum 1 after 3 consecutive overflows"),
            std::string::npos)
      << *d.failure;
  EXPECT_NE(d.failure->find("consider bf16"), std::string::npos);
}

TEST(LossScaler, BackoffClampsToFloor) {
  LossScaler s(dynamic(3, 2000, 1, 2));
  s.update(true);
  EXPECT_EQ(s.scale(), 2);  // 1.5 clamped to the floor
}

TEST(LossScaler, OffModeSkipsButKeepsScaleAndDeclaresDivergence) {
  LossScaler::Options o;
  o.mode = LossScaler::Mode::kOff;
  LossScaler s(o);
  EXPECT_EQ(s.scale(), 1);
  for (int i = 0; i < LossScaler::kMaxConsecutiveSkipsWithoutDynamicScale - 1; ++i) {
    const auto d = s.update(true);
    EXPECT_TRUE(d.skip_step);
    EXPECT_FALSE(d.failure.has_value());
  }
  EXPECT_TRUE(s.update(true).failure.has_value());
  EXPECT_EQ(s.scale(), 1);
}

TEST(LossScaler, StateRoundTrips) {
  LossScaler a(dynamic(1024, 5, 2));
  a.update(false);
  a.update(true);
  a.update(false);
  LossScaler b(dynamic(1024, 5, 2));
  b.restore(a.state());
  for (bool o : {false, false, true, true, false, false, false, false, false}) {
    a.update(o);
    b.update(o);
    EXPECT_EQ(a.scale(), b.scale());
    EXPECT_EQ(a.state().SerializeAsString(), b.state().SerializeAsString());
  }
}

TEST(LossScaler, OptionsFromSpecDefaults) {
  ampd::v1::LossScalingSpec spec;
  spec.mutable_dynamic();
  const auto o = LossScaler::options_from_spec(spec);
  EXPECT_EQ(o.mode, LossScaler::Mode::kDynamic);
  EXPECT_EQ(o.init_scale, 65536);
  EXPECT_EQ(o.growth_factor, 2);
  EXPECT_EQ(o.backoff_factor, 0.5);
  EXPECT_EQ(o.growth_interval, 2000);
  EXPECT_EQ(o.hysteresis, 1);
}

}  // namespace
}  // namespace ampd::engine
