#include "engine/telemetry.h"

#include <algorithm>
#include <cmath>

namespace ampd::engine {

namespace {

// FP16: smallest normal 2^-14; values at or below half the smallest subnormal (2^-24)
// round to zero under round-to-nearest-even (the tie at exactly 2^-25 goes to 0, even).
constexpr double kFp16MinNormal = 0x1p-14;
constexpr double kFp16ZeroBound = 0x1p-25;

}  // namespace

ampd::v1::TensorTelemetry gradient_telemetry(const float* grad, int64_t n, double scale) {
  double max_abs = 0;
  int64_t zero = 0, subnormal = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = std::fabs(static_cast<double>(grad[i]));
    if (!std::isfinite(a) || a == 0) continue;
    max_abs = std::max(max_abs, a);
    const double scaled = a * scale;
    if (scaled <= kFp16ZeroBound) {
      ++zero;
    } else if (scaled < kFp16MinNormal) {
      ++subnormal;
    }
  }
  ampd::v1::TensorTelemetry t;
  t.set_elements(n);
  t.set_max_abs_grad(max_abs);
  const double denom = static_cast<double>(std::max<int64_t>(1, n));
  t.set_fp16_subnormal_fraction(static_cast<double>(subnormal) / denom);
  t.set_fp16_zero_fraction(static_cast<double>(zero) / denom);
  return t;
}

double relative_drift(double loss, double reference) {
  return std::fabs(loss - reference) / std::max(std::fabs(reference), 1e-30);
}

StatusOr<double> NumericsTelemetry::mean_loss(Model& model, int64_t n) {
  const int64_t rows = n * model.options().time;  // loss rows: one per position
  losses_.resize(static_cast<size_t>(rows));
  AMPD_RETURN_IF_ERROR(model.read_losses(n, losses_.data()));
  double sum = 0;
  for (float l : losses_) sum += l;
  return sum / static_cast<double>(std::max<int64_t>(1, rows));
}

StatusOr<ampd::v1::TelemetryEvent> NumericsTelemetry::collect(
    Model& model, const PassContext& ctx, int64_t n, const float* features, const int32_t* labels,
    const float* targets, double scale, bool overflow, int64_t step, const int32_t* tokens) {
  ampd::v1::TelemetryEvent ev;
  ev.set_step(step);
  ev.set_loss_scale(scale);
  ev.set_overflow(overflow);
  if (!overflow) {
    for (Param* p : model.params()) {
      const int64_t count = p->rows * p->cols;
      host_grad_.resize(static_cast<size_t>(count));
      AMPD_RETURN_IF_ERROR(backend_->download(host_grad_.data(), p->grad_t()));
      ampd::v1::TensorTelemetry t = gradient_telemetry(host_grad_.data(), count, scale);
      t.set_name(p->name);
      t.set_display(p->display);
      *ev.add_tensors() = std::move(t);
    }
  }

  // The loss as trained: the model's per-row losses are still those of this step's
  // forward (backward does not touch them).
  AMPD_ASSIGN_OR_RETURN(const double loss, mean_loss(model, n));

  // The same batch, the same dropout masks (same step and seed), FP32 end to end, with
  // the weights the working copies were rounded from.
  if (shadow_ == nullptr) {
    Model::Options o = options_;
    o.act_dtype = DType::kF32;
    AMPD_ASSIGN_OR_RETURN(shadow_, Model::create(*backend_, spec_, o));
  }
  const std::vector<Param*> src = model.params(), dst = shadow_->params();
  if (src.size() != dst.size()) return internal("telemetry: shadow model has other parameters");
  for (size_t i = 0; i < src.size(); ++i) {
    AMPD_RETURN_IF_ERROR(backend_->copy(dst[i]->master_t(), src[i]->master_t()));
  }
  const std::vector<StateTensor*> ssrc = model.states(), sdst = shadow_->states();
  for (size_t i = 0; i < ssrc.size() && i < sdst.size(); ++i) {
    AMPD_RETURN_IF_ERROR(backend_->copy(sdst[i]->t(), ssrc[i]->t()));
  }
  if (tokens != nullptr) {
    AMPD_RETURN_IF_ERROR(shadow_->load_tokens(n, tokens, labels));
  } else {
    AMPD_RETURN_IF_ERROR(shadow_->load_batch(n, features, labels, targets));
  }
  AMPD_RETURN_IF_ERROR(shadow_->forward(ctx, n));
  AMPD_ASSIGN_OR_RETURN(const double fp32_loss, mean_loss(*shadow_, n));
  ev.set_loss(loss);
  ev.set_fp32_loss(fp32_loss);
  ev.set_loss_drift(relative_drift(loss, fp32_loss));
  return ev;
}

}  // namespace ampd::engine
