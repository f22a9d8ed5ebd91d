// Element-wise ops of the CUDA backend: fill, cast, bias add (and its matmul uses), scale,
// accumulate, activations forward/backward, dropout forward/backward.
//
// Memory layout: dense row-major tensors; an element-wise op sees a flat array of numel
// elements. Bias-like ops see a rows x cols matrix and index the bias by column
// (rowcol_kernel: no division per element).
//
// Numerics: every input is widened exactly to FP32, the op is computed in FP32 and the
// result is rounded once to the output dtype with half.h's integer rounding (bit-identical
// to the CPU for the same FP32 value). Specifics:
//   cast        exact widening, then one rounding: bit-exact against the reference.
//   scale       x * alpha: one FP32 product, then the output rounding.
//   accumulate  y + x: one FP32 sum, then the output rounding.
//   ReLU        selects: NaN passes forward; backward dx = x > 0 ? dy : 0 (NaN x gives 0).
//   GELU        exact erf form, x Phi(x) with Phi(x) = erfc(-x/sqrt2) / 2 for every x (no
//               cancellation in the left tail; on the right erfc(-t) = 2 - erfc(t) is
//               within an ulp of a value in [1, 2]). One function for both signs: with
//               erf for x >= 0 and erfc for x < 0 a warp of mixed signs ran both, and
//               GELU took ~60 us per 4096 x 4096 call on an H200 against 16 us for its
//               bytes. CUDA's erfcf / expf are within 2-4 FP32 ulp.
//   tanh        tanhf (2 ulp); backward dy (1 - t^2).
//   dropout     keep = dropout_keep(seed, offset + i, p) from dropout_hash.h, the same
//               pure function as on the CPU, so masks are bit-identical; y = x * keep *
//               (1 / (1 - p) rounded to FP32), multiplied literally (a dropped inf gives
//               NaN, as in PyTorch).
//
// Performance: these are memory-bound. The flat ops move 8 elements per thread with 16-byte
// loads/stores when every pointer is 16-byte aligned (always for whole allocations), and
// fall back to a scalar loop otherwise.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/dropout_hash.h"

namespace ampd::cuda {

namespace {

// ---- fill -------------------------------------------------------------------------------------

// Writes a `Word`-sized bit pattern: 16 bytes at a time from an aligned base, then the tail.
template <typename Word>
struct FillOp {
  Word* p;
  Word value;
  uint4 wide;
  __device__ void one(int64_t i) const { p[i] = value; }
  __device__ void pack8(int64_t i) const {
    uint4* q = reinterpret_cast<uint4*>(p + i);
#pragma unroll
    for (int k = 0; k < static_cast<int>(sizeof(Word) * 8 / 16); ++k) q[k] = wide;
  }
};

template <typename Word>
Status launch_fill(CudaContext& ctx, void* data, int64_t n, Word value) {
  const uint32_t w32 = sizeof(Word) == 1   ? 0x01010101u * value
                       : sizeof(Word) == 2 ? 0x00010001u * value
                                           : static_cast<uint32_t>(value);
  if (sizeof(Word) == 1) {
    AMPD_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(data, static_cast<int>(value), static_cast<size_t>(n), ctx.stream), "fill");
    return Status::ok_status();
  }
  FillOp<Word> op{static_cast<Word*>(data), value, make_uint4(w32, w32, w32, w32)};
  return launch_map("fill", ctx.stream, ctx.sm_count, op, n, aligned16(data));
}

// Reference semantics for integer fills: NaN -> 0, round half to even, saturate.
template <typename Int>
Int to_integer(float value) {
  if (std::isnan(value)) return 0;
  const double lo = static_cast<double>(std::numeric_limits<Int>::lowest());
  const double hi = static_cast<double>(std::numeric_limits<Int>::max());
  double v = value;
  if (v < lo) v = lo;
  if (v > hi) v = hi;
  const double r = std::nearbyint(v);  // the default rounding mode: to nearest, ties to even
  return static_cast<Int>(r < lo ? lo : r > hi ? hi : r);
}

// ---- cast, scale, accumulate ----------------------------------------------------------------

template <typename S, typename D>
struct CastOp {
  const S* src;
  D* dst;
  __device__ void one(int64_t i) const { dst[i] = from_f32<D>(to_f32(src[i])); }
  __device__ void pack8(int64_t i) const {
    const Vec8<S> a = load8(src + i);
    Vec8<D> b;
#pragma unroll
    for (int k = 0; k < 8; ++k) b.v[k] = from_f32<D>(to_f32(a.v[k]));
    store8(dst + i, b);
  }
};

template <typename T>
struct ScaleOp {
  T* x;
  float alpha;
  __device__ void one(int64_t i) const { x[i] = from_f32<T>(to_f32(x[i]) * alpha); }
  __device__ void pack8(int64_t i) const {
    Vec8<T> a = load8(x + i);
#pragma unroll
    for (int k = 0; k < 8; ++k) a.v[k] = from_f32<T>(to_f32(a.v[k]) * alpha);
    store8(x + i, a);
  }
};

template <typename TX, typename TY>
struct AccumulateOp {
  const TX* x;
  TY* y;
  __device__ void one(int64_t i) const { y[i] = from_f32<TY>(to_f32(y[i]) + to_f32(x[i])); }
  __device__ void pack8(int64_t i) const {
    const Vec8<TX> a = load8(x + i);
    Vec8<TY> b = load8(y + i);
#pragma unroll
    for (int k = 0; k < 8; ++k) b.v[k] = from_f32<TY>(to_f32(b.v[k]) + to_f32(a.v[k]));
    store8(y + i, b);
  }
};

// ---- bias
// ----------------------------------------------------------------------------------------

template <typename TIn, typename TOut, typename TB>
struct AffineBiasOp {
  const TIn* in;   // null when beta == 0 (not read)
  const TB* bias;  // may be null
  TOut* out;
  float beta;
  __device__ void operator()(int64_t, int64_t j, int64_t k) const {
    float v = in != nullptr ? beta * to_f32(in[k]) : 0.0f;
    if (bias != nullptr) v += to_f32(bias[j]);
    out[k] = from_f32<TOut>(v);
  }
};

// The matmul fallback's second pass (FP32 product + FP32 bias, one rounding into a 16-bit C):
// 8 columns per thread, 16-byte loads and stores. The scalar rowcol form moved 2-byte
// stores and ran at about half the bandwidth (H200, 4096 x 4096). Same arithmetic as
// AffineBiasOp with beta = 1: v = in + bias, rounded once.
template <typename TOut>
__global__ void __launch_bounds__(kThreads)
    bias_round8_kernel(const float* in, const float* bias, TOut* out, int64_t rows, int64_t cols) {
  const int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (j >= cols) return;
  const Vec8<float> b = load8(bias + j);
  const int64_t row_stride = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < rows;
       r += row_stride) {
    const Vec8<float> x = load8(in + r * cols + j);
    Vec8<TOut> o;
#pragma unroll
    for (int k = 0; k < 8; ++k) o.v[k] = from_f32<TOut>(x.v[k] + b.v[k]);
    store8(out + r * cols + j, o);
  }
}

// ---- activations
// ---------------------------------------------------------------------------------

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;  // 1 / sqrt(2 pi)

__device__ __forceinline__ float gelu_cdf(float x) {
  return 0.5f * erfcf(-x * kInvSqrt2);
}

__device__ __forceinline__ float act_forward(Activation act, float x) {
  switch (act) {
    case Activation::kReLU: return isnan(x) ? x : (x > 0.0f ? x : 0.0f);
    case Activation::kGELU: return x * gelu_cdf(x);
    case Activation::kTanh: return tanhf(x);
  }
  return x;
}

__device__ __forceinline__ float act_backward(Activation act, float x, float dy) {
  switch (act) {
    case Activation::kReLU: return x > 0.0f ? dy : 0.0f;
    case Activation::kGELU: {
      const float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
      return dy * (gelu_cdf(x) + x * pdf);
    }
    case Activation::kTanh: {
      const float t = tanhf(x);
      return dy * (1.0f - t * t);
    }
  }
  return dy;
}

template <typename T>
struct ActForwardOp {
  const T* x;
  T* y;
  Activation act;
  __device__ void one(int64_t i) const { y[i] = from_f32<T>(act_forward(act, to_f32(x[i]))); }
  __device__ void pack8(int64_t i) const {
    const Vec8<T> a = load8(x + i);
    Vec8<T> b;
#pragma unroll
    for (int k = 0; k < 8; ++k) b.v[k] = from_f32<T>(act_forward(act, to_f32(a.v[k])));
    store8(y + i, b);
  }
};

// dx may alias dy: each element is read before it is written, by the same thread.
template <typename TX, typename TD>
struct ActBackwardOp {
  const TX* x;
  const TD* dy;
  TD* dx;
  Activation act;
  __device__ void one(int64_t i) const {
    dx[i] = from_f32<TD>(act_backward(act, to_f32(x[i]), to_f32(dy[i])));
  }
  __device__ void pack8(int64_t i) const {
    const Vec8<TX> a = load8(x + i);
    const Vec8<TD> g = load8(dy + i);
    Vec8<TD> b;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      b.v[k] = from_f32<TD>(act_backward(act, to_f32(a.v[k]), to_f32(g.v[k])));
    }
    store8(dx + i, b);
  }
};

// ---- dropout
// -------------------------------------------------------------------------------------

template <typename T>
struct DropoutForwardOp {
  const T* x;
  T* y;
  uint8_t* mask;
  float p;
  float inv_keep;  // 1 / (1 - p), rounded to FP32
  uint64_t seed;
  uint64_t offset;
  __device__ void one(int64_t i) const {
    const bool keep = dropout_keep(seed, offset + static_cast<uint64_t>(i), p);
    mask[i] = keep ? 1 : 0;
    y[i] = from_f32<T>(to_f32(x[i]) * (keep ? 1.0f : 0.0f) * inv_keep);
  }
  __device__ void pack8(int64_t i) const {
    const Vec8<T> a = load8(x + i);
    Vec8<T> b;
    uint8_t m[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const bool keep = dropout_keep(seed, offset + static_cast<uint64_t>(i + k), p);
      m[k] = keep ? 1 : 0;
      b.v[k] = from_f32<T>(to_f32(a.v[k]) * (keep ? 1.0f : 0.0f) * inv_keep);
    }
    store8(y + i, b);
    uint2 w;
    memcpy(&w, m, 8);
    *reinterpret_cast<uint2*>(mask + i) = w;
  }
};

template <typename T>
struct DropoutBackwardOp {
  const T* dy;
  const uint8_t* mask;
  T* dx;
  float inv_keep;
  __device__ void one(int64_t i) const {
    dx[i] = from_f32<T>(to_f32(dy[i]) * (mask[i] != 0 ? 1.0f : 0.0f) * inv_keep);
  }
  __device__ void pack8(int64_t i) const {
    const Vec8<T> g = load8(dy + i);
    const uint2 w = *reinterpret_cast<const uint2*>(mask + i);
    uint8_t m[8];
    memcpy(m, &w, 8);
    Vec8<T> b;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      b.v[k] = from_f32<T>(to_f32(g.v[k]) * (m[k] != 0 ? 1.0f : 0.0f) * inv_keep);
    }
    store8(dx + i, b);
  }
};

float inverse_keep(float p) {
  return static_cast<float>(1.0 / (1.0 - static_cast<double>(p)));
}

}  // namespace

// ---- launchers
// ---------------------------------------------------------------------------------------

Status fill(CudaContext& ctx, const Tensor& dst, float value) {
  const int64_t n = dst.numel();
  switch (dst.dtype) {
    case DType::kF32:
      return launch_fill<uint32_t>(ctx, dst.data, n, std::bit_cast<uint32_t>(value));
    case DType::kF16: return launch_fill<uint16_t>(ctx, dst.data, n, f32_to_f16_bits(value));
    case DType::kBF16: return launch_fill<uint16_t>(ctx, dst.data, n, f32_to_bf16_bits(value));
    case DType::kI32:
      return launch_fill<uint32_t>(ctx, dst.data, n,
                                   static_cast<uint32_t>(to_integer<int32_t>(value)));
    case DType::kU8: return launch_fill<uint8_t>(ctx, dst.data, n, to_integer<uint8_t>(value));
  }
  return invalid_argument("fill: unknown dtype");
}

Status cast(CudaContext& ctx, const Tensor& src, const Tensor& dst) {
  if (src.dtype == dst.dtype) {
    if (src.data == dst.data) return Status::ok_status();
    AMPD_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst.data, src.data, src.bytes(), cudaMemcpyDeviceToDevice, ctx.stream),
        "cast");
    return Status::ok_status();
  }
  const bool vec = aligned16(src.data) && aligned16(dst.data);
  return dispatch_float(src.dtype, [&](auto s) {
    return dispatch_float(dst.dtype, [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      return launch_map("cast", ctx.stream, ctx.sm_count,
                        CastOp<S, D>{src.as<const S>(), dst.as<D>()}, src.numel(), vec);
    });
  });
}

Status affine_bias(CudaContext& ctx, const Tensor& in, float beta, const Tensor& bias,
                   const Tensor& out) {
  const bool read_in = beta != 0.0f && !in.empty();
  const DType in_dtype = read_in ? in.dtype : out.dtype;
  const DType bias_dtype = bias.empty() ? out.dtype : bias.dtype;
  if (in_dtype != out.dtype && in_dtype != DType::kF32) {
    return invalid_argument("affine_bias: input must be f32 or the output's dtype");
  }
  if (bias_dtype != out.dtype && bias_dtype != DType::kF32) {
    return invalid_argument("affine_bias: bias must be f32 or the output's dtype");
  }
  if (read_in && beta == 1.0f && in.dtype == DType::kF32 && !bias.empty() &&
      bias.dtype == DType::kF32 && out.dtype != DType::kF32 && out.cols() % 8 == 0 &&
      aligned16(in.data) && aligned16(bias.data) && aligned16(out.data)) {
    return dispatch_float(out.dtype, [&](auto o) {
      using TOut = decltype(o);
      const int64_t packs = out.cols() / 8;
      int tx = 32;
      while (tx < kThreads && tx < packs) tx *= 2;
      const int ty = kThreads / tx;
      const int64_t gx = (packs + tx - 1) / tx;
      const int64_t gy = std::min<int64_t>((out.rows() + ty - 1) / ty, 65535);
      if (gx > 0x7fffffff) return invalid_argument("affine_bias: too many columns");
      bias_round8_kernel<TOut><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)),
                                 dim3(tx, ty), 0, ctx.stream>>>(
          in.as<const float>(), bias.as<const float>(), out.as<TOut>(), out.rows(), out.cols());
      AMPD_CUDA_CHECK_LAUNCH("affine_bias");
      return Status::ok_status();
    });
  }
  return dispatch_float(out.dtype, [&](auto o) {
    using TOut = decltype(o);
    auto with_in = [&](auto i) {
      using TIn = decltype(i);
      auto with_bias = [&](auto b) {
        using TB = decltype(b);
        AffineBiasOp<TIn, TOut, TB> op{read_in ? in.as<const TIn>() : nullptr,
                                       bias.empty() ? nullptr : bias.as<const TB>(), out.as<TOut>(),
                                       beta};
        return launch_rowcol("affine_bias", ctx.stream, op, out.rows(), out.cols());
      };
      return bias_dtype == DType::kF32 ? with_bias(float{}) : with_bias(TOut{});
    };
    return in_dtype == DType::kF32 ? with_in(float{}) : with_in(TOut{});
  });
}

Status scale(CudaContext& ctx, const Tensor& x, float alpha) {
  return dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    return launch_map("scale", ctx.stream, ctx.sm_count, ScaleOp<T>{x.as<T>(), alpha}, x.numel(),
                      aligned16(x.data));
  });
}

Status accumulate(CudaContext& ctx, const Tensor& x, const Tensor& y) {
  const bool vec = aligned16(x.data) && aligned16(y.data);
  return dispatch_float(x.dtype, [&](auto a) {
    return dispatch_float(y.dtype, [&](auto b) {
      using TX = decltype(a);
      using TY = decltype(b);
      return launch_map("accumulate", ctx.stream, ctx.sm_count,
                        AccumulateOp<TX, TY>{x.as<const TX>(), y.as<TY>()}, y.numel(), vec);
    });
  });
}

Status activation_forward(CudaContext& ctx, Activation act, const Tensor& x, const Tensor& y) {
  const bool vec = aligned16(x.data) && aligned16(y.data);
  return dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    return launch_map("activation_forward", ctx.stream, ctx.sm_count,
                      ActForwardOp<T>{x.as<const T>(), y.as<T>(), act}, x.numel(), vec);
  });
}

Status activation_backward(CudaContext& ctx, Activation act, const Tensor& x, const Tensor& dy,
                           const Tensor& dx) {
  const bool vec = aligned16(x.data) && aligned16(dy.data) && aligned16(dx.data);
  return dispatch_float(x.dtype, [&](auto a) {
    return dispatch_float(dy.dtype, [&](auto d) {
      using TX = decltype(a);
      using TD = decltype(d);
      return launch_map(
          "activation_backward", ctx.stream, ctx.sm_count,
          ActBackwardOp<TX, TD>{x.as<const TX>(), dy.as<const TD>(), dx.as<TD>(), act}, x.numel(),
          vec);
    });
  });
}

Status dropout_forward(CudaContext& ctx, const Tensor& x, const Tensor& y, const Tensor& mask,
                       float p, uint64_t seed, uint64_t offset) {
  const bool vec = aligned16(x.data) && aligned16(y.data) && aligned16(mask.data);
  return dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    DropoutForwardOp<T> op{x.as<const T>(), y.as<T>(), mask.as<uint8_t>(), p, inverse_keep(p), seed,
                           offset};
    return launch_map("dropout_forward", ctx.stream, ctx.sm_count, op, x.numel(), vec);
  });
}

Status dropout_backward(CudaContext& ctx, const Tensor& dy, const Tensor& mask, const Tensor& dx,
                        float p) {
  const bool vec = aligned16(dy.data) && aligned16(dx.data) && aligned16(mask.data);
  return dispatch_float(dy.dtype, [&](auto t) {
    using T = decltype(t);
    DropoutBackwardOp<T> op{dy.as<const T>(), mask.as<const uint8_t>(), dx.as<T>(),
                            inverse_keep(p)};
    return launch_map("dropout_backward", ctx.stream, ctx.sm_count, op, dy.numel(), vec);
  });
}

}  // namespace ampd::cuda
