// Dynamic loss scaling for FP16 training.
//
// Semantics (docs/ARCHITECTURE.md, Numerics), PyTorch GradScaler by default:
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
// The scale is an FP32 value, held and updated as PyTorch holds its scale tensor (float32):
// growth is (float)(scale * growth_factor) and backoff (float)(scale * backoff_factor),
// each product formed in double and rounded to float once, so with any factors (3, 0.3)
// the trace matches PyTorch's bit for bit. The cap and the floor are the FP32 values
// nearest inside [min_scale, max_scale]; a max_scale beyond FP32's range caps nothing.
// LossScalerState.scale (a double) stores the float exactly; restore() rounds a scale
// from an older checkpoint (held in double) to the nearest float.
// Static scaling keeps its scale (rounded to FP32); "off" is scale 1. Both still skip non-finite
// steps; after kMaxConsecutiveSkipsWithoutDynamicScale of them in a row the run is declared
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
    bool skip_step = false;     // gradients were non-finite: do not apply them
    double scale_before = 0.0;  // FP32 values, widened
    double scale_after = 0.0;
    bool grew = false;
    bool backed_off = false;
    // Set when the job cannot go on: the floor was hit, or a non-dynamic run diverged.
    std::optional<std::string> failure;
  };

  // Call once per step with whether any gradient was non-finite.
  Decision update(bool found_nonfinite);

  float scale() const { return static_cast<float>(state_.scale()); }
  const Options& options() const { return options_; }
  // For checkpoints: state().scale() is the FP32 scale, exactly.
  const ampd::v1::LossScalerState& state() const { return state_; }
  // Takes a checkpointed state; its scale is rounded to the nearest float (a no-op for
  // states saved since the scale is FP32; older checkpoints held it in double).
  void restore(const ampd::v1::LossScalerState& state);

 private:
  void set_scale(float s) { state_.set_scale(static_cast<double>(s)); }

  Options options_;
  float cap_;    // the largest float <= max_scale; +inf when max_scale exceeds FP32's range
  float floor_;  // the smallest float >= min_scale
  ampd::v1::LossScalerState state_;
};

}  // namespace ampd::engine
