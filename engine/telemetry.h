// Numerics telemetry (TrainingSpec.telemetry_every): what mixed precision is doing to a
// job, measured every N steps and reported as a TelemetryEvent.
//
//   * per parameter: max |g| of the unscaled FP32 gradient, and the share of elements
//     that would be FP16 subnormal (2^-25 < |g * S| < 2^-14) or round to zero
//     (0 < |g * S| <= 2^-25) at the loss scale S the step ran at (job.proto has the
//     exact definitions). A rising zero fraction says the scale is too small for the
//     gradients' range; a max near 65504 / S says it is near overflow.
//   * drift: the step's batch through an FP32 copy of the model whose weights are the
//     FP32 masters, against the loss the working precision produced. The FP32 "shadow"
//     model is built on the first telemetry step (its memory then shows in the job's
//     peak) and its weights are copied from the masters at each telemetry step.
//
// Cost: the gradients are downloaded and reduced on the host (simple and exact; a
// backend op could do it on the device, but this runs only on telemetry steps), plus one
// FP32 forward pass. With telemetry_every = 0 nothing here runs: the trainer's only cost
// is one integer compare per step.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "engine/model.h"
#include "kernels/backend.h"

namespace ampd::engine {

// Statistics of one FP32 gradient of n elements at loss scale `scale` (name and display
// are left to the caller). Non-finite elements are ignored.
ampd::v1::TensorTelemetry gradient_telemetry(const float* grad, int64_t n, double scale);

// |loss - reference| / max(|reference|, 1e-30).
double relative_drift(double loss, double reference);

class NumericsTelemetry {
 public:
  // `options` are the trained model's; the shadow uses them with FP32 activations.
  NumericsTelemetry(Backend& backend, ampd::v1::ModelSpec spec, Model::Options options)
      : backend_(&backend), spec_(std::move(spec)), options_(options) {}

  // Call after backward and the unscale pass, before the optimizer step, with the staged
  // batch (the host arrays given to Model::load_batch) and the scale the step ran at.
  // `tokens`: a language model's input ids (then features is unused).
  // `overflow`: the gradients were non-finite (the event then has no tensor statistics).
  StatusOr<ampd::v1::TelemetryEvent> collect(Model& model, const PassContext& ctx, int64_t n,
                                             const float* features, const int32_t* labels,
                                             const float* targets, double scale, bool overflow,
                                             int64_t step, const int32_t* tokens = nullptr);

 private:
  StatusOr<double> mean_loss(Model& model, int64_t n);

  Backend* backend_;
  ampd::v1::ModelSpec spec_;
  Model::Options options_;
  std::unique_ptr<Model> shadow_;  // FP32, built on first use
  std::vector<float> host_grad_;
  std::vector<float> losses_;
};

}  // namespace ampd::engine
