#include "engine/loss_scaler.h"

#include <cmath>
#include <cstdio>

namespace ampd::engine {

namespace {
std::string format_scale(double s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}
}  // namespace

LossScaler::Options LossScaler::options_from_spec(const ampd::v1::LossScalingSpec& spec) {
  Options o;
  switch (spec.mode_case()) {
    case ampd::v1::LossScalingSpec::kDynamic: {
      const auto& d = spec.dynamic();
      o.mode = Mode::kDynamic;
      if (d.has_init_scale()) o.init_scale = d.init_scale();
      if (d.has_growth_factor()) o.growth_factor = d.growth_factor();
      if (d.has_backoff_factor()) o.backoff_factor = d.backoff_factor();
      if (d.has_growth_interval()) o.growth_interval = d.growth_interval();
      if (d.has_hysteresis()) o.hysteresis = d.hysteresis();
      if (d.has_min_scale()) o.min_scale = d.min_scale();
      if (d.has_max_scale()) o.max_scale = d.max_scale();
      break;
    }
    case ampd::v1::LossScalingSpec::kStatic:
      o.mode = Mode::kStatic;
      o.init_scale = spec.static_().scale();
      break;
    case ampd::v1::LossScalingSpec::kOff:
    case ampd::v1::LossScalingSpec::MODE_NOT_SET:
      o.mode = Mode::kOff;
      o.init_scale = 1.0;
      break;
  }
  return o;
}

LossScaler::LossScaler(const Options& options) : options_(options) {
  state_.set_scale(options.mode == Mode::kOff ? 1.0 : options.init_scale);
  state_.set_growth_tracker(0);
  state_.set_hysteresis_tracker(options.hysteresis);
  state_.set_consecutive_overflows(0);
}

LossScaler::Decision LossScaler::update(bool found_nonfinite) {
  Decision d;
  d.scale_before = state_.scale();
  d.skip_step = found_nonfinite;

  if (found_nonfinite) {
    state_.set_consecutive_overflows(state_.consecutive_overflows() + 1);
  } else {
    state_.set_consecutive_overflows(0);
  }

  if (options_.mode != Mode::kDynamic) {
    if (found_nonfinite &&
        state_.consecutive_overflows() >= kMaxConsecutiveSkipsWithoutDynamicScale) {
      d.failure = "training diverged: " + std::to_string(state_.consecutive_overflows()) +
                  " consecutive steps with a non-finite loss or gradients at a fixed loss scale " +
                  format_scale(state_.scale()) +
                  "; lower the learning rate or enable gradient clipping";
    }
    d.scale_after = state_.scale();
    return d;
  }

  if (found_nonfinite) {
    state_.set_growth_tracker(0);
    if (state_.hysteresis_tracker() > 1) {
      // Tolerated: DeepSpeed's delayed shift. The step is still skipped.
      state_.set_hysteresis_tracker(state_.hysteresis_tracker() - 1);
    } else if (state_.scale() <= options_.min_scale) {
      d.failure = "loss scale reached its minimum " + format_scale(options_.min_scale) + " after " +
                  std::to_string(state_.consecutive_overflows()) +
                  " consecutive overflows; consider bf16 or a lower learning rate";
    } else {
      state_.set_scale(std::max(state_.scale() * options_.backoff_factor, options_.min_scale));
      d.backed_off = true;
    }
  } else {
    const int64_t successful = state_.growth_tracker() + 1;
    if (successful >= options_.growth_interval) {
      const double grown = std::min(state_.scale() * options_.growth_factor, options_.max_scale);
      // PyTorch refuses growth to a non-finite scale; our scale feeds an FP32 multiply,
      // so "finite" means finite as a float.
      if (std::isfinite(static_cast<float>(grown)) && grown > state_.scale()) {
        state_.set_scale(grown);
        d.grew = true;
      }
      state_.set_growth_tracker(0);
      state_.set_hysteresis_tracker(options_.hysteresis);
    } else {
      state_.set_growth_tracker(successful);
    }
  }
  d.scale_after = state_.scale();
  return d;
}

}  // namespace ampd::engine
