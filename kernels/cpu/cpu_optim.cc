// Mixed-precision bookkeeping and optimizers: fused, hand-written multi-tensor loops.
//
// Memory layout: each op receives a list of F32 tensors (gradients, master weights,
// optimizer state) of arbitrary sizes. The list is cut into spans of at most kGrain
// elements (a span never crosses a tensor), and the spans are the parallel tasks, so a
// list of many small tensors and one huge tensor both spread over the threads.
//
// Numerics (FP32 everywhere, docs/ARCHITECTURE.md, Numerics):
//   unscale_and_check  g *= inv_scale and a flag per tensor if any element is inf or NaN.
//                      Checking after the multiply is enough: a non-finite input stays
//                      non-finite (inf * 0 = NaN), and a finite one that overflows is
//                      caught too. The test is on the exponent bits, so it vectorizes and
//                      ignores the MXCSR flush modes.
//   global_norm        sqrt(sum g^2) with each square and sum in FP64 (a float product
//                      is exact in FP64, so nothing overflows or underflows), span sums
//                      added in span order; rounded once to FP32.
//   sgd_step/adamw_step the update of each element in FP32 (constants such as the bias
//                      corrections 1 - beta^t in FP64, rounded once), in one pass that
//                      also rounds the updated master weight into the low-precision
//                      working copy (F16/BF16) with the exact bulk conversions. The
//                      weight-decay term is added even when it is 0, as the reference
//                      does (0 * inf = NaN keeps a non-finite weight visible).
//                      Both run with subnormals flushed to zero (MXCSR FTZ+DAZ, scoped
//                      to each task: cpu_internal.h, ScopedFlushDenormals): m and v of
//                      a converged job decay through the subnormal range, where every
//                      operation costs a microcode assist (AdamW 2.6x slower). Only
//                      values below 2^-126 change. The library is built with
//                      -fno-math-errno so that AdamW's sqrt vectorizes.
// Every element is updated independently and every sum has a fixed order: results do not
// depend on the thread count.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"

namespace ampd {

using cpu_detail::is_finite_bits;
using cpu_detail::kBlock;
using cpu_detail::kGrain;

namespace {

struct Span {
  size_t tensor;
  int64_t begin;
  int64_t end;
};

template <typename SizeOf>
std::vector<Span> make_spans(size_t count, SizeOf size_of) {
  std::vector<Span> spans;
  for (size_t t = 0; t < count; ++t) {
    const int64_t n = size_of(t);
    for (int64_t b = 0; b < n; b += kGrain) spans.push_back({t, b, std::min(n, b + kGrain)});
  }
  return spans;
}

// Rounds master[b, e) into the slot's low-precision copy, if it has one.
void write_low_precision(const ParamSlot& p, int64_t b, int64_t e) {
  if (p.low_precision.empty()) return;
  convert(p.master.as<const float>() + b, DType::kF32,
          cpu_detail::byte_at(p.low_precision.data, p.low_precision.dtype, b),
          p.low_precision.dtype, static_cast<size_t>(e - b));
}

}  // namespace

Status CpuBackend::unscale_and_check_impl(std::span<const Tensor> grads, float inv_scale,
                                          const Tensor& found_nonfinite) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("unscale_and_check", [&]() -> Status {
    const std::vector<Span> spans =
        make_spans(grads.size(), [&](size_t t) { return grads[t].numel(); });
    int32_t* span_bad = state_->flags.get(spans.size() + 1);
    cpu_detail::parallel_for(static_cast<int64_t>(spans.size()), [&](int64_t s) {
      const Span& sp = spans[static_cast<size_t>(s)];
      float* g = grads[sp.tensor].as<float>();
      int32_t bad = 0;
      if (inv_scale == 1.0f) {
#pragma omp simd reduction(| : bad)
        for (int64_t i = sp.begin; i < sp.end; ++i) bad |= is_finite_bits(g[i]) ? 0 : 1;
      } else {
#pragma omp simd reduction(| : bad)
        for (int64_t i = sp.begin; i < sp.end; ++i) {
          const float v = g[i] * inv_scale;
          g[i] = v;
          bad |= is_finite_bits(v) ? 0 : 1;
        }
      }
      span_bad[s] = bad;
    });
    int32_t* flags = found_nonfinite.as<int32_t>();
    for (size_t t = 0; t < grads.size(); ++t) flags[t] = 0;
    for (size_t s = 0; s < spans.size(); ++s) flags[spans[s].tensor] |= span_bad[s];
    return Status::ok_status();
  });
}

Status CpuBackend::global_norm_impl(std::span<const Tensor> grads, const Tensor& out) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("global_norm", [&]() -> Status {
    const std::vector<Span> spans =
        make_spans(grads.size(), [&](size_t t) { return grads[t].numel(); });
    double* partial = state_->partials64.get(spans.size() + 1);
    cpu_detail::parallel_for(static_cast<int64_t>(spans.size()), [&](int64_t s) {
      const Span& sp = spans[static_cast<size_t>(s)];
      const float* g = grads[sp.tensor].as<const float>();
      double acc = 0.0;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = sp.begin; i < sp.end; ++i) {
        const double v = g[i];
        acc += v * v;
      }
      partial[s] = acc;
    });
    double total = 0.0;
    for (size_t s = 0; s < spans.size(); ++s) total += partial[s];
    out.as<float>()[0] = static_cast<float>(std::sqrt(total));
    return Status::ok_status();
  });
}

Status CpuBackend::sgd_step_impl(std::span<const ParamSlot> params, const SgdParams& hp) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("sgd_step", [&]() -> Status {
    const std::vector<Span> spans =
        make_spans(params.size(), [&](size_t t) { return params[t].master.numel(); });
    // Locals, not hp.*: the compiler cannot otherwise prove that the stores to w and buf
    // leave them unchanged, and would reload them (and not vectorize).
    const float lr = hp.lr, mom = hp.momentum, gs = hp.grad_scale;
    const float one_minus_damp = 1.0f - hp.dampening;
    const bool first = hp.first_step, nesterov = hp.nesterov;
    cpu_detail::parallel_for(static_cast<int64_t>(spans.size()), [&](int64_t s) {
      const cpu_detail::ScopedFlushDenormals flush;
      const Span& sp = spans[static_cast<size_t>(s)];
      const ParamSlot& p = params[sp.tensor];
      float* w = p.master.as<float>();
      const float* grad = p.grad.as<const float>();
      float* buf = p.state1.empty() ? nullptr : p.state1.as<float>();
      const float wd = hp.weight_decay * p.weight_decay_multiplier;
      for (int64_t b = sp.begin; b < sp.end; b += kBlock) {
        const int64_t e = std::min(sp.end, b + kBlock);
        if (mom == 0.0f) {
#pragma omp simd
          for (int64_t i = b; i < e; ++i) w[i] -= lr * (grad[i] * gs + wd * w[i]);
        } else if (first) {  // the buffer starts as g itself (no dampening)
#pragma omp simd
          for (int64_t i = b; i < e; ++i) {
            const float g = grad[i] * gs + wd * w[i];
            buf[i] = g;
            w[i] -= lr * (nesterov ? g + mom * g : g);
          }
        } else {
#pragma omp simd
          for (int64_t i = b; i < e; ++i) {
            const float g = grad[i] * gs + wd * w[i];
            const float m = mom * buf[i] + one_minus_damp * g;
            buf[i] = m;
            w[i] -= lr * (nesterov ? g + mom * m : m);
          }
        }
        write_low_precision(p, b, e);
      }
    });
    return Status::ok_status();
  });
}

Status CpuBackend::adamw_step_impl(std::span<const ParamSlot> params, const AdamWParams& hp) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("adamw_step", [&]() -> Status {
    const std::vector<Span> spans =
        make_spans(params.size(), [&](size_t t) { return params[t].master.numel(); });
    const double t = static_cast<double>(hp.step);
    const float inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(double{hp.beta1}, t)));
    const float inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(double{hp.beta2}, t)));
    // Locals, not hp.* (see sgd_step_impl).
    const float b1 = hp.beta1, b2 = hp.beta2, lr = hp.lr, eps = hp.eps, gs = hp.grad_scale;
    const float one_minus_b1 = 1.0f - b1, one_minus_b2 = 1.0f - b2;
    cpu_detail::parallel_for(static_cast<int64_t>(spans.size()), [&](int64_t s) {
      const cpu_detail::ScopedFlushDenormals flush;
      const Span& sp = spans[static_cast<size_t>(s)];
      const ParamSlot& p = params[sp.tensor];
      float* w = p.master.as<float>();
      const float* grad = p.grad.as<const float>();
      float* m = p.state1.as<float>();
      float* v = p.state2.as<float>();
      const float decay = 1.0f - lr * (hp.weight_decay * p.weight_decay_multiplier);
      for (int64_t b = sp.begin; b < sp.end; b += kBlock) {
        const int64_t e = std::min(sp.end, b + kBlock);
#pragma omp simd
        for (int64_t i = b; i < e; ++i) {
          const float g = grad[i] * gs;
          const float mi = b1 * m[i] + one_minus_b1 * g;
          const float vi = b2 * v[i] + one_minus_b2 * (g * g);
          m[i] = mi;
          v[i] = vi;
          w[i] = w[i] * decay - lr * (mi * inv_bc1) / (std::sqrt(vi * inv_bc2) + eps);
        }
        write_low_precision(p, b, e);
      }
    });
    return Status::ok_status();
  });
}

}  // namespace ampd
