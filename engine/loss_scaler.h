// Dynamic loss scaling for FP16 training.
//
// Semantics (DESIGN.md §2), PyTorch GradScaler by default:
//   * A step whose gradients hold inf/NaN is skipped; the scale is multiplied by
//     backoff_factor (0.5) and the clean-step counter resets.
//   * After growth_interval (2000) consecutive clean steps the scale is multiplied by
//     growth_factor (2) and the counter resets; growth is refused when the new scale is
//     not finite (the counter still resets, as in PyTorch's _amp_update_scale_).
// Beyond PyTorch:
//   * hysteresis N (DeepSpeed / Megatron): a backoff happens only on the N-th overflow
//     since the last growth (or since the start); after that every overflow backs off
//     until the next growth restores the allowance. N = 1 is PyTorch's rule.
//   * a cap: growth never exceeds max_scale.
//   * a floor: backoff never goes below min_scale, and an overflow that would back off a
//     scale already at the floor fails the job with a reason instead of looping forever.
// Static scaling keeps its scale; "off" is scale 1. Both still skip non-finite steps;
// after kMaxConsecutiveSkipsWithoutDynamicScale of them in a row the run is declared
// diverged (no scale change can help).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "ampd/v1/job.pb.h"

namespace ampd::engine {

class LossScaler {
 public:
  enum class Mode { kDynamic, kStatic, kOff };
  static constexpr int64_t kMaxConsecutiveSkipsWithoutDynamicScale = 100;

  struct Options {
    Mode mode = Mode::kOff;
    double init_scale = 65536.0;
    double growth_factor = 2.0;
    double backoff_factor = 0.5;
    int64_t growth_interval = 2000;
    int32_t hysteresis = 1;
    double min_scale = 1.0;
    double max_scale = 16777216.0;  // 2^24
  };

  // From a resolved spec (engine/job_spec.h fills the defaults). In fp32/bf16 the scaler
  // runs in kOff or kStatic mode as the spec says.
  static Options options_from_spec(const ampd::v1::LossScalingSpec& spec);

  explicit LossScaler(const Options& options);

  // What update() decided for one step.
  struct Decision {
    bool skip_step = false;  // gradients were non-finite: do not apply them
    double scale_before = 0.0;
    double scale_after = 0.0;
    bool grew = false;
    bool backed_off = false;
    // Set when the job cannot go on: the floor was hit, or a non-dynamic run diverged.
    std::optional<std::string> failure;
  };

  // Call once per step with whether any gradient was non-finite.
  Decision update(bool found_nonfinite);

  double scale() const { return state_.scale(); }
  const Options& options() const { return options_; }
  const ampd::v1::LossScalerState& state() const { return state_; }
  void restore(const ampd::v1::LossScalerState& state) { state_ = state; }

 private:
  Options options_;
  ampd::v1::LossScalerState state_;
};

}  // namespace ampd::engine
