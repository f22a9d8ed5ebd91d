#include "engine/loss_scaler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace ampd::engine {

namespace {
std::string format_scale(double s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

constexpr float kInf = std::numeric_limits<float>::infinity();

// The largest float <= v (v >= 0); +inf when v is beyond FP32's range.
float float_at_most(double v) {
  if (v > static_cast<double>(std::numeric_limits<float>::max())) return kInf;
  float f = static_cast<float>(v);
  if (static_cast<double>(f) > v) f = std::nextafter(f, -kInf);
  return f;
}

// The smallest float >= v (v >= 0).
float float_at_least(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) < v) f = std::nextafter(f, kInf);
  return f;
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

LossScaler::LossScaler(const Options& options)
    : options_(options),
      cap_(float_at_most(options.max_scale)),
      floor_(float_at_least(options.min_scale)) {
  set_scale(options.mode == Mode::kOff ? 1.0f : static_cast<float>(options.init_scale));
  state_.set_growth_tracker(0);
  state_.set_hysteresis_tracker(options.hysteresis);
  state_.set_consecutive_overflows(0);
}

void LossScaler::restore(const ampd::v1::LossScalerState& state) {
  state_ = state;
  set_scale(static_cast<float>(state.scale()));
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

  // PyTorch's _amp_update_scale_ on its float32 scale: the product of the float scale and
  // the (double) factor is formed in double and rounded to float once.
  const float scale = this->scale();
  if (found_nonfinite) {
    state_.set_growth_tracker(0);
    if (state_.hysteresis_tracker() > 1) {
      // Tolerated: DeepSpeed's delayed shift. The step is still skipped.
      state_.set_hysteresis_tracker(state_.hysteresis_tracker() - 1);
    } else if (scale <= floor_) {
      d.failure = "loss scale reached its minimum " + format_scale(options_.min_scale) + " after " +
                  std::to_string(state_.consecutive_overflows()) +
                  " consecutive overflows; consider bf16 or a lower learning rate";
    } else {
      const auto backed_off =
          static_cast<float>(static_cast<double>(scale) * options_.backoff_factor);
      set_scale(std::max(backed_off, floor_));
      d.backed_off = true;
    }
  } else {
    const int64_t successful = state_.growth_tracker() + 1;
    if (successful >= options_.growth_interval) {
      float grown = static_cast<float>(static_cast<double>(scale) * options_.growth_factor);
      if (grown > cap_) grown = cap_;  // (an infinite cap_ leaves an infinite product)
      // PyTorch refuses growth to a non-finite scale.
      if (std::isfinite(grown) && grown > scale) {
        set_scale(grown);
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
