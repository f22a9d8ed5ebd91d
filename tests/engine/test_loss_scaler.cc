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

// aten/src/ATen/native/cpu/AmpGradScalerKernels.cpp, _amp_update_scale_cpu_ (and the CUDA
// kernel, which is the same), transcribed: the scale is a float32 tensor, the factors are
// doubles, so `scale * factor` is a double product stored (rounded) to float.
struct TorchGradScaler {
  float scale = 0;
  int interval = 0;
  int growth_tracker = 0;
  double growth = 2.0, backoff = 0.5;
  void update(bool found_inf) {
    if (found_inf) {
      scale = scale * backoff;
      growth_tracker = 0;
    } else {
      const int successful = growth_tracker + 1;
      if (successful == interval) {
        const auto new_scale = static_cast<float>(scale * growth);
        if (std::isfinite(new_scale)) scale = new_scale;
        growth_tracker = 0;
      } else {
        growth_tracker = successful;
      }
    }
  }
};

LossScaler::Options with_factors(LossScaler::Options o, double growth, double backoff) {
  o.growth_factor = growth;
  o.backoff_factor = backoff;
  return o;
}

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

// Issue item 6: growth_factor 3 reported 5380840.125 where PyTorch holds 5380840. From 1,
// sixteen growths by 3 reach 3^16 = 43046721, which FP32 rounds to 43046720 (spacing 4);
// three halvings then give 5380840, not 3^16 / 8 = 5380840.125.
TEST(LossScaler, ScaleIsFp32LikePyTorchWithGrowthFactor3) {
  LossScaler s(with_factors(dynamic(1, 1, 1, 1e-30, 1e300), 3.0, 0.5));
  for (int i = 0; i < 16; ++i) EXPECT_TRUE(s.update(false).grew) << "step " << i;
  EXPECT_EQ(s.scale(), 43046720.0f);
  EXPECT_EQ(s.state().scale(), 43046720.0);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(s.update(true).backed_off);
  EXPECT_EQ(s.scale(), 5380840.0f);
  EXPECT_EQ(s.state().scale(), 5380840.0);  // what a checkpoint stores: the float, exactly
}

// Non-power-of-two factors (growth 3 and 1.5, backoff 0.3 and 0.5) against the replay
// above, bit for bit at every step. Overflows come when the scale is above a threshold
// (as in training: too large a scale overflows FP16) and at random, so the scale keeps
// moving around the threshold, growing and backing off thousands of times.
TEST(LossScaler, MatchesTorchWithNonPowerOfTwoFactors) {
  struct Case {
    double growth, backoff;
    int interval;
  };
  for (const Case c :
       {Case{3.0, 0.3, 3}, Case{3.0, 0.5, 2}, Case{1.5, 0.3, 4}, Case{2.0, 0.3, 1}}) {
    SCOPED_TRACE("growth " + std::to_string(c.growth) + " backoff " + std::to_string(c.backoff));
    LossScaler s(with_factors(dynamic(65536, c.interval, 1, 1e-30, 1e300), c.growth, c.backoff));
    TorchGradScaler t{
        .scale = 65536.0f, .interval = c.interval, .growth = c.growth, .backoff = c.backoff};
    double held_in_double = 65536.0;  // the old rule, to show the test tells them apart
    int double_differs = 0, grew = 0, backed_off = 0;
    std::mt19937 rng(11);
    std::bernoulli_distribution noise(0.05);
    for (int i = 0; i < 5000; ++i) {
      const bool o = t.scale > 1e6f || noise(rng);
      const auto d = s.update(o);
      t.update(o);
      grew += d.grew;
      backed_off += d.backed_off;
      if (o) {
        held_in_double *= c.backoff;
      } else if (d.grew) {
        held_in_double *= c.growth;
      }
      ASSERT_EQ(s.scale(), t.scale) << "step " << i;
      ASSERT_EQ(d.scale_after, static_cast<double>(t.scale)) << "step " << i;
      ASSERT_EQ(s.state().scale(), static_cast<double>(t.scale)) << "step " << i;
      ASSERT_EQ(s.state().growth_tracker(), t.growth_tracker) << "step " << i;
      double_differs += held_in_double != static_cast<double>(t.scale);
    }
    EXPECT_GT(grew, 100);
    EXPECT_GT(backed_off, 100);
    EXPECT_GT(double_differs, 100);
  }
}

// A scale from a checkpoint written while the scale was a double is rounded to the nearest
// float on restore, and training goes on exactly as from that float.
TEST(LossScaler, RestoreRoundsAnOldDoubleScaleToFloat) {
  const auto options = with_factors(dynamic(1, 2, 1, 1e-30, 1e300), 3.0, 0.3);
  ampd::v1::LossScalerState old;
  old.set_scale(5380840.125);  // 3^16 / 8, as the double rule held it
  old.set_growth_tracker(1);
  old.set_hysteresis_tracker(1);
  LossScaler s(options);
  s.restore(old);
  EXPECT_EQ(s.scale(), 5380840.0f);
  EXPECT_EQ(s.state().scale(), 5380840.0);
  EXPECT_EQ(s.state().growth_tracker(), 1);
  TorchGradScaler t{
      .scale = 5380840.0f, .interval = 2, .growth_tracker = 1, .growth = 3.0, .backoff = 0.3};
  for (bool o : {false, true, false, false, true, true, false, false, false, false}) {
    s.update(o);
    t.update(o);
    EXPECT_EQ(s.scale(), t.scale);
  }
}

// Bounds that are not floats, chosen so that rounding to nearest would cross them: the cap
// is the largest float <= max_scale, the floor the smallest float >= min_scale, and an
// overflow at that floor still fails the job.
TEST(LossScaler, CapAndFloorBetweenFloats) {
  LossScaler up(with_factors(dynamic(500, 1, 1, 1, 1000.2), 3.0, 0.5));
  EXPECT_TRUE(up.update(false).grew);
  EXPECT_EQ(up.scale(), 1000.199951171875f);  // 1000.2 rounds to 1000.2000122 > 1000.2
  EXPECT_FALSE(up.update(false).grew);
  EXPECT_EQ(up.scale(), 1000.199951171875f);

  LossScaler down(with_factors(dynamic(2, 2000, 1, 0.7, 16), 2.0, 0.5));
  EXPECT_EQ(down.update(true).scale_after, 1.0);
  EXPECT_EQ(down.update(true).scale_after, 0.7000000476837158);  // 0.7 rounds to 0.69999999
  const auto d = down.update(true);
  ASSERT_TRUE(d.failure.has_value());
  EXPECT_NE(d.failure->find("loss scale reached its minimum 0.7 after 3 consecutive overflows"),
            std::string::npos)
      << *d.failure;
  EXPECT_EQ(down.scale(), 0.7000000476837158f);
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
