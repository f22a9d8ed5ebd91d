#include "engine/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace ampd::engine {

LrSchedule::LrSchedule(const ampd::v1::LrScheduleSpec& spec, double peak_lr, int64_t total_steps)
    : peak_(peak_lr),
      warmup_(std::max<int64_t>(0, spec.warmup_steps())),
      total_(std::max<int64_t>(1, total_steps)),
      cosine_(spec.decay_case() == ampd::v1::LrScheduleSpec::kCosine),
      min_ratio_(spec.decay_case() == ampd::v1::LrScheduleSpec::kCosine
                     ? spec.cosine().min_lr_ratio()
                     : 0.0) {}

double LrSchedule::lr(int64_t applied) const {
  if (applied < warmup_) {
    return peak_ * static_cast<double>(applied + 1) / static_cast<double>(warmup_);
  }
  if (!cosine_) return peak_;
  const int64_t span = std::max<int64_t>(1, total_ - warmup_);
  const double progress =
      std::clamp(static_cast<double>(applied - warmup_) / static_cast<double>(span), 0.0, 1.0);
  const double cos_factor = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return peak_ * (min_ratio_ + (1.0 - min_ratio_) * cos_factor);
}

}  // namespace ampd::engine
