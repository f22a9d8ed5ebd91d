#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "engine/lr_schedule.h"

namespace ampd::engine {
namespace {

TEST(LrSchedule, ConstantWithWarmup) {
  ampd::v1::LrScheduleSpec spec;
  spec.set_warmup_steps(4);
  LrSchedule s(spec, 0.1, 100);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.025);
  EXPECT_DOUBLE_EQ(s.lr(3), 0.1);
  EXPECT_DOUBLE_EQ(s.lr(50), 0.1);
}

TEST(LrSchedule, CosineDecaysToFloor) {
  ampd::v1::LrScheduleSpec spec;
  spec.mutable_cosine()->set_min_lr_ratio(0.1f);
  LrSchedule s(spec, 1.0, 101);
  EXPECT_DOUBLE_EQ(s.lr(0), 1.0);
  EXPECT_NEAR(s.lr(50), 0.1f + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi * 50 / 101)), 1e-7);
  EXPECT_NEAR(s.lr(101), 0.1, 1e-7);
  EXPECT_NEAR(s.lr(5000), 0.1, 1e-7);  // past the horizon: stays at the floor
}

}  // namespace
}  // namespace ampd::engine
