// Activations: ReLU by hand, GELU (erf form) and tanh on oneDNN's eltwise primitive.
//
// Memory layout: element-wise, so a tensor is a vector of numel() elements ({n}, tag a).
//
// ReLU is exact in any dtype (it selects, never rounds), so it works on the storage bits:
//   y  = x > 0 ? x : +0   (NaN propagates, as in PyTorch)
//   dx = x > 0 ? dy : +0  (dy's bits pass through unchanged)
//
// GELU and tanh need erf / tanh, which libm evaluates one scalar at a time (~12 ns per
// GELU element here, as long as the matmul that feeds it); oneDNN's JIT kernels evaluate
// them in FP32 with AVX-512 at ~40x that rate. Accuracy: tanh within 1e-7 relative;
// oneDNN's erf is an Abramowitz-Stegun style approximation (the same class as PyTorch's
// vectorized CPU GELU) with absolute error below ~4e-7 in GELU and its derivative, i.e.
// relative error grows where GELU itself is tiny (x < -3). Backward recomputes from x:
//   GELU'(x) = Phi(x) + x phi(x),  tanh'(x) = 1 - tanh(x)^2.
// F32 and BF16 run natively (oneDNN computes in FP32 and rounds a BF16 result once). F16,
// and a backward whose x and dy differ in dtype, are widened to FP32 in pieces of
// kEltPiece elements, run in FP32, and rounded once into the output.
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"

namespace ampd {

using cpu_detail::CpuState;
using cpu_detail::EltwiseDir;
using cpu_detail::EltwiseKey;
using cpu_detail::EltwisePlan;
using cpu_detail::kBlock;

namespace {

using dnnl::memory;

constexpr int64_t kEltPiece = 256 * 1024;

memory::data_type dnnl_type(DType t) {
  return t == DType::kBF16 ? memory::data_type::bf16 : memory::data_type::f32;
}

dnnl::algorithm eltwise_alg(Activation act) {
  return act == Activation::kGELU ? dnnl::algorithm::eltwise_gelu_erf
                                  : dnnl::algorithm::eltwise_tanh;
}

EltwisePlan& eltwise_plan(CpuState& s, dnnl::algorithm alg, EltwiseDir dir, DType t, int64_t n) {
  const EltwiseKey key{static_cast<int>(alg), dir, t, n};
  if (EltwisePlan* p = s.eltwise_plans.find(key)) return *p;
  EltwisePlan plan;
  plan.md = memory::desc({n}, dnnl_type(t), memory::format_tag::a);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const dnnl::eltwise_forward::primitive_desc fwd(
      {dnnl::prop_kind::forward_training, alg, plan.md, 0.0f, 0.0f}, attr, s.engine);
  if (dir == EltwiseDir::kForward) {
    plan.primitive = dnnl::eltwise_forward(fwd);
    plan.scratchpad = fwd.scratchpad_desc();
  } else {
    const dnnl::eltwise_backward::primitive_desc bwd({alg, plan.md, plan.md, 0.0f, 0.0f}, attr,
                                                     s.engine, fwd);
    plan.primitive = dnnl::eltwise_backward(bwd);
    plan.scratchpad = bwd.scratchpad_desc();
  }
  return s.eltwise_plans.insert(key, std::move(plan));
}

// One eltwise primitive over n elements of dtype t. Forward: out = f(x); backward:
// out = dy * f'(x). dy is null for forward.
void run_eltwise(CpuState& s, dnnl::algorithm alg, EltwiseDir dir, DType t, int64_t n,
                 const void* x, const void* dy, void* out) {
  EltwisePlan& plan = eltwise_plan(s, alg, dir, t, n);
  std::unordered_map<int, memory> args;
  args.emplace(DNNL_ARG_SRC, memory(plan.md, s.engine, const_cast<void*>(x)));
  if (dir == EltwiseDir::kForward) {
    args.emplace(DNNL_ARG_DST, memory(plan.md, s.engine, out));
  } else {
    args.emplace(DNNL_ARG_DIFF_DST, memory(plan.md, s.engine, const_cast<void*>(dy)));
    args.emplace(DNNL_ARG_DIFF_SRC, memory(plan.md, s.engine, out));
  }
  if (const size_t bytes = plan.scratchpad.get_size(); bytes > 0) {
    args.emplace(DNNL_ARG_SCRATCHPAD, memory(plan.scratchpad, s.engine, s.scratchpad.get(bytes)));
  }
  plan.primitive.execute(s.stream, args);
  s.stream.wait();
}

// FP32 pointer to elements [off, off + n) of t: t itself if F32, else widened into buf.
const float* widened(const Tensor& t, int64_t off, int64_t n, float* buf) {
  if (t.dtype == DType::kF32) return t.as<const float>() + off;
  cpu_detail::parallel_blocks(n, [&](int64_t b, int64_t e) {
    convert(cpu_detail::byte_at(t.data, t.dtype, off + b), t.dtype, buf + b, DType::kF32,
            static_cast<size_t>(e - b));
  });
  return buf;
}

Status eltwise(CpuState& s, Activation act, EltwiseDir dir, const Tensor& x, const Tensor* dy,
               const Tensor& out) {
  const dnnl::algorithm alg = eltwise_alg(act);
  const int64_t n = x.numel();
  const bool native = (x.dtype == DType::kF32 || x.dtype == DType::kBF16) &&
                      (dy == nullptr || dy->dtype == x.dtype);
  if (native) {
    run_eltwise(s, alg, dir, x.dtype, n, x.data, dy ? dy->data : nullptr, out.data);
    return Status::ok_status();
  }
  // Widen to FP32 a piece at a time (bounded scratch), round the result once.
  for (int64_t off = 0; off < n; off += kEltPiece) {
    const int64_t len = std::min(kEltPiece, n - off);
    const float* xv = widened(x, off, len, s.x32.get(static_cast<size_t>(len)));
    const float* dyv = dy ? widened(*dy, off, len, s.dy32.get(static_cast<size_t>(len))) : nullptr;
    float* o =
        out.dtype == DType::kF32 ? out.as<float>() + off : s.out32.get(static_cast<size_t>(len));
    run_eltwise(s, alg, dir, DType::kF32, len, xv, dyv, o);
    if (out.dtype != DType::kF32) {
      cpu_detail::parallel_blocks(len, [&](int64_t b, int64_t e) {
        convert(o + b, DType::kF32, cpu_detail::byte_at(out.data, out.dtype, off + b), out.dtype,
                static_cast<size_t>(e - b));
      });
    }
  }
  return Status::ok_status();
}

// ReLU on storage bits: negative, -0 -> +0; NaN and positive values pass through.
template <typename T>
bool relu_zeroes(T v);
template <>
bool relu_zeroes(float v) {
  return !(v > 0.0f) && v == v;
}
template <uint16_t kExpMask>
bool relu_zeroes_bits(uint16_t v) {
  const bool nan = (v & 0x7fffu) > kExpMask;
  return !nan && ((v & 0x8000u) != 0 || v == 0);
}

template <typename T, typename Zeroes>
void relu_forward_loop(const T* x, T* y, int64_t n, Zeroes zeroes) {
  cpu_detail::parallel_blocks(n, [&](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) y[i] = zeroes(x[i]) ? T{0} : x[i];
  });
}

template <typename T>
void relu_backward_loop(const Tensor& x, const T* dy, T* dx, int64_t n) {
  cpu_detail::parallel_blocks(n, [&](int64_t b, int64_t e) {
    float buf[kBlock];
    const float* xv = cpu_detail::load_f32(x, b, e - b, buf);
#pragma omp simd
    for (int64_t i = 0; i < e - b; ++i) {
      const T d = dy[b + i];  // loaded unconditionally, so the select vectorizes
      dx[b + i] = xv[i] > 0.0f ? d : T{0};
    }
  });
}

}  // namespace

Status CpuBackend::activation_forward_impl(Activation act, const Tensor& x, const Tensor& y) {
  cpu_detail::OpScope scope(*state_);
  if (act == Activation::kReLU) {
    const int64_t n = x.numel();
    switch (x.dtype) {
      case DType::kF32:
        relu_forward_loop(x.as<const float>(), y.as<float>(), n,
                          [](float v) { return relu_zeroes(v); });
        break;
      case DType::kF16:
        relu_forward_loop(x.as<const uint16_t>(), y.as<uint16_t>(), n,
                          [](uint16_t v) { return relu_zeroes_bits<0x7c00>(v); });
        break;
      default:
        relu_forward_loop(x.as<const uint16_t>(), y.as<uint16_t>(), n,
                          [](uint16_t v) { return relu_zeroes_bits<0x7f80>(v); });
        break;
    }
    return Status::ok_status();
  }
  return cpu_detail::guarded("activation_forward", [&] {
    return eltwise(*state_, act, EltwiseDir::kForward, x, nullptr, y);
  });
}

Status CpuBackend::activation_backward_impl(Activation act, const Tensor& x, const Tensor& dy,
                                            const Tensor& dx) {
  cpu_detail::OpScope scope(*state_);
  if (act == Activation::kReLU) {
    if (dy.dtype == DType::kF32) {
      relu_backward_loop(x, dy.as<const float>(), dx.as<float>(), x.numel());
    } else {
      relu_backward_loop(x, dy.as<const uint16_t>(), dx.as<uint16_t>(), x.numel());
    }
    return Status::ok_status();
  }
  return cpu_detail::guarded("activation_backward", [&] {
    return eltwise(*state_, act, EltwiseDir::kBackward, x, &dy, dx);
  });
}

}  // namespace ampd
