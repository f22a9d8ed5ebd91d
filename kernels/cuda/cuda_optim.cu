// Mixed-precision bookkeeping and optimizers of the CUDA backend, as multi-tensor kernels:
// unscale + non-finite check, global gradient norm, SGD and AdamW on FP32 master weights.
//
// Memory layout: a list of F32 tensors (gradients, master weights, optimizer state) of any
// sizes. Each tensor is cut into chunks of kChunk elements; one block processes one chunk;
// the tensor descriptors ({pointers, n, first chunk}) travel as a kernel parameter (up to
// ~9 KB: CUDA 12.1+ allows 32 KB of parameters on sm_70+), and a block finds its tensor by
// binary search over the first-chunk table. So a step over the whole model is ONE launch for
// up to kMaxTensors tensors (more tensors: one launch per kMaxTensors), with no descriptor
// upload and no host/device synchronization.
//
// Numerics (docs/ARCHITECTURE.md, Numerics):
//   unscale_and_check  g *= inv_scale (one FP32 product, correctly rounded, as in the
//                      reference); a tensor's flag is 1 if any product is inf/NaN (a
//                      non-finite input stays non-finite after the product, and a finite one
//                      that overflows is caught too). With inv_scale == 1 (BF16, FP32) the
//                      gradients are only read. The flags are cleared with a memset and set
//                      by plain stores of 1 (the same value from any block: deterministic).
//   global_norm        squares summed in FP32 per thread (~128 terms), thread sums combined
//                      in FP64 per block and the block partials in FP64 in chunk order by a
//                      single-block kernel; sqrt in FP64, rounded once. Deterministic.
//   sgd_step/adamw_step exactly the CPU backend's FP32 formulas (cpu_optim.cc), element by
//                      element, constants (1 - lr wd, bias corrections) computed on the host
//                      as the CPU does; nvcc may fuse a * b + c into an FMA, which is within
//                      an ulp of the CPU's separate product and sum. The low-precision copy
//                      is the updated FP32 master rounded once with half.h (bit-identical to
//                      cast(master)).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace ampd::cuda {

namespace {

constexpr int64_t kChunk = 32768;  // elements per block: 256 threads x 16 packs of 8
constexpr int kMaxTensors = 128;

// The chunk table shared by every multi-tensor list: first_chunk[t] is tensor t's first
// chunk; first_chunk[count] is the total.
struct ChunkTable {
  int64_t first_chunk[kMaxTensors + 1];
  int count;
  __device__ int find(int64_t chunk) const {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (first_chunk[mid] <= chunk) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    return lo;
  }
};

struct GradList {
  float* ptr[kMaxTensors];
  int64_t n[kMaxTensors];
  ChunkTable table;
};

struct SgdList {
  float* w[kMaxTensors];
  const float* g[kMaxTensors];
  float* buf[kMaxTensors];  // null without momentum
  void* low[kMaxTensors];   // null without a low-precision copy
  int64_t n[kMaxTensors];
  float wd[kMaxTensors];  // weight_decay * multiplier
  DType low_dtype[kMaxTensors];
  bool vec[kMaxTensors];
  ChunkTable table;
};

struct AdamList {
  float* w[kMaxTensors];
  const float* g[kMaxTensors];
  float* m[kMaxTensors];
  float* v[kMaxTensors];
  void* low[kMaxTensors];
  int64_t n[kMaxTensors];
  float decay[kMaxTensors];  // 1 - lr * weight_decay * multiplier
  DType low_dtype[kMaxTensors];
  bool vec[kMaxTensors];
  ChunkTable table;
};

// Chunk range [begin, end) of tensor t for `chunk`.
__device__ __forceinline__ void chunk_range(const ChunkTable& table, int t, int64_t chunk,
                                            int64_t n, int64_t& begin, int64_t& end) {
  begin = (chunk - table.first_chunk[t]) * kChunk;
  end = begin + kChunk < n ? begin + kChunk : n;
}

__device__ __forceinline__ bool finite_f(float v) {
  return isfinite(v);
}

// ---- unscale_and_check -----------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads)
    unscale_kernel(const __grid_constant__ GradList list, float inv_scale, int32_t* flags) {
  const int64_t chunk = blockIdx.x;
  const int t = list.table.find(chunk);
  int64_t begin, end;
  chunk_range(list.table, t, chunk, list.n[t], begin, end);
  float* g = list.ptr[t];
  bool bad = false;
  const bool write = inv_scale != 1.0f;
  int64_t i = begin;
  if (aligned16(g) && ((end - begin) & 7) == 0) {
    for (i = begin + 8 * threadIdx.x; i < end; i += 8 * blockDim.x) {
      Vec8<float> a = load8(g + i);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        a.v[k] *= inv_scale;
        bad |= !finite_f(a.v[k]);
      }
      if (write) store8(g + i, a);
    }
  } else {
    for (i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const float v = g[i] * inv_scale;
      bad |= !finite_f(v);
      if (write) g[i] = v;
    }
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) flags[t] = 1;
}

// ---- global_norm ----------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads)
    norm_partials_kernel(const __grid_constant__ GradList list, double* partials) {
  __shared__ double red[32];
  const int64_t chunk = blockIdx.x;
  const int t = list.table.find(chunk);
  int64_t begin, end;
  chunk_range(list.table, t, chunk, list.n[t], begin, end);
  const float* g = list.ptr[t];
  float acc = 0.0f;
  if (aligned16(g) && ((end - begin) & 7) == 0) {
    for (int64_t i = begin + 8 * threadIdx.x; i < end; i += 8 * blockDim.x) {
      const Vec8<float> a = load8(g + i);
#pragma unroll
      for (int k = 0; k < 8; ++k) acc += a.v[k] * a.v[k];
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) acc += g[i] * g[i];
  }
  const double s = block_sum(static_cast<double>(acc), red);
  if (threadIdx.x == 0) partials[chunk] = s;
}

__global__ void __launch_bounds__(1024)
    norm_finish_kernel(const double* partials, int64_t count, float* out) {
  __shared__ double red[32];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) s += partials[i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) out[0] = static_cast<float>(sqrt(s));
}

// ---- optimizers ------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void store_low8(void* low, int64_t i, const float* w) {
  Vec8<T> b;
#pragma unroll
  for (int k = 0; k < 8; ++k) b.v[k] = from_f32<T>(w[k]);
  store8(static_cast<T*>(low) + i, b);
}

__device__ __forceinline__ void store_low(void* low, DType dt, int64_t i, float w) {
  if (dt == DType::kF16) {
    static_cast<fp16*>(low)[i] = from_f32<fp16>(w);
  } else {
    static_cast<bf16*>(low)[i] = from_f32<bf16>(w);
  }
}

struct SgdScalars {
  float lr, mom, gs, one_minus_damp;
  bool first, nesterov;
};

// One element of torch.optim.SGD, as cpu_optim.cc computes it.
__device__ __forceinline__ float sgd_one(const SgdScalars& s, float wd, float w, float grad,
                                         float* buf) {
  const float g = grad * s.gs + wd * w;
  if (buf == nullptr) return w - s.lr * g;
  if (s.first) {
    *buf = g;
    return w - s.lr * (s.nesterov ? g + s.mom * g : g);
  }
  const float m = s.mom * *buf + s.one_minus_damp * g;
  *buf = m;
  return w - s.lr * (s.nesterov ? g + s.mom * m : m);
}

__global__ void __launch_bounds__(kThreads)
    sgd_kernel(const __grid_constant__ SgdList list, SgdScalars s) {
  const int64_t chunk = blockIdx.x;
  const int t = list.table.find(chunk);
  int64_t begin, end;
  chunk_range(list.table, t, chunk, list.n[t], begin, end);
  float* w = list.w[t];
  const float* g = list.g[t];
  float* buf = list.buf[t];
  void* low = list.low[t];
  const DType dt = list.low_dtype[t];
  const float wd = list.wd[t];
  if (list.vec[t] && ((end - begin) & 7) == 0) {
    for (int64_t i = begin + 8 * threadIdx.x; i < end; i += 8 * blockDim.x) {
      Vec8<float> wv = load8(w + i);
      const Vec8<float> gv = load8(g + i);
      Vec8<float> bv;
      if (buf != nullptr) bv = load8(buf + i);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        wv.v[k] = sgd_one(s, wd, wv.v[k], gv.v[k], buf != nullptr ? &bv.v[k] : nullptr);
      }
      store8(w + i, wv);
      if (buf != nullptr) store8(buf + i, bv);
      if (low != nullptr) {
        if (dt == DType::kF16) {
          store_low8<fp16>(low, i, wv.v);
        } else {
          store_low8<bf16>(low, i, wv.v);
        }
      }
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const float nw = sgd_one(s, wd, w[i], g[i], buf != nullptr ? buf + i : nullptr);
      w[i] = nw;
      if (low != nullptr) store_low(low, dt, i, nw);
    }
  }
}

struct AdamScalars {
  float b1, b2, one_minus_b1, one_minus_b2, lr, eps, gs, inv_bc1, inv_bc2;
};

__device__ __forceinline__ float adam_one(const AdamScalars& s, float decay, float w, float grad,
                                          float& m, float& v) {
  const float g = grad * s.gs;
  const float mi = s.b1 * m + s.one_minus_b1 * g;
  const float vi = s.b2 * v + s.one_minus_b2 * (g * g);
  m = mi;
  v = vi;
  return w * decay - s.lr * (mi * s.inv_bc1) / (sqrtf(vi * s.inv_bc2) + s.eps);
}

__global__ void __launch_bounds__(kThreads)
    adamw_kernel(const __grid_constant__ AdamList list, AdamScalars s) {
  const int64_t chunk = blockIdx.x;
  const int t = list.table.find(chunk);
  int64_t begin, end;
  chunk_range(list.table, t, chunk, list.n[t], begin, end);
  float* w = list.w[t];
  const float* g = list.g[t];
  float* m = list.m[t];
  float* v = list.v[t];
  void* low = list.low[t];
  const DType dt = list.low_dtype[t];
  const float decay = list.decay[t];
  if (list.vec[t] && ((end - begin) & 7) == 0) {
    for (int64_t i = begin + 8 * threadIdx.x; i < end; i += 8 * blockDim.x) {
      Vec8<float> wv = load8(w + i);
      const Vec8<float> gv = load8(g + i);
      Vec8<float> mv = load8(m + i);
      Vec8<float> vv = load8(v + i);
#pragma unroll
      for (int k = 0; k < 8; ++k) wv.v[k] = adam_one(s, decay, wv.v[k], gv.v[k], mv.v[k], vv.v[k]);
      store8(w + i, wv);
      store8(m + i, mv);
      store8(v + i, vv);
      if (low != nullptr) {
        if (dt == DType::kF16) {
          store_low8<fp16>(low, i, wv.v);
        } else {
          store_low8<bf16>(low, i, wv.v);
        }
      }
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      float mi = m[i], vi = v[i];
      const float nw = adam_one(s, decay, w[i], g[i], mi, vi);
      m[i] = mi;
      v[i] = vi;
      w[i] = nw;
      if (low != nullptr) store_low(low, dt, i, nw);
    }
  }
}

// Fills `table` for tensors [first, first + count) of sizes size(t); returns total chunks.
template <typename SizeOf>
int64_t build_table(ChunkTable& table, size_t first, int count, SizeOf size) {
  table.count = count;
  int64_t c = 0;
  for (int k = 0; k < count; ++k) {
    table.first_chunk[k] = c;
    const int64_t n = size(first + static_cast<size_t>(k));
    c += n > 0 ? (n + kChunk - 1) / kChunk : 0;
  }
  table.first_chunk[count] = c;
  return c;
}

// Launches in groups of kMaxTensors; `launch(first, count)` issues one group's kernel.
template <typename Launch>
Status for_each_group(size_t total, Launch launch) {
  for (size_t first = 0; first < total; first += kMaxTensors) {
    const int count = static_cast<int>(std::min<size_t>(kMaxTensors, total - first));
    AMPD_RETURN_IF_ERROR(launch(first, count));
  }
  return Status::ok_status();
}

Status check_grid(int64_t chunks, const char* what) {
  if (chunks > 0x7fffffff) return invalid_argument(std::string(what) + ": tensors too large");
  return Status::ok_status();
}

}  // namespace

// ---- launchers
// ------------------------------------------------------------------------------------

Status unscale_and_check(CudaContext& ctx, std::span<const Tensor> grads, float inv_scale,
                         const Tensor& found_nonfinite) {
  int32_t* flags = found_nonfinite.as<int32_t>();
  AMPD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(flags, 0, grads.size() * sizeof(int32_t), ctx.stream),
                            "unscale_and_check: clear flags");
  return for_each_group(grads.size(), [&](size_t first, int count) -> Status {
    GradList list{};
    for (int k = 0; k < count; ++k) {
      list.ptr[k] = grads[first + k].as<float>();
      list.n[k] = grads[first + k].numel();
    }
    const int64_t chunks =
        build_table(list.table, first, count, [&](size_t t) { return grads[t].numel(); });
    if (chunks == 0) return Status::ok_status();
    AMPD_RETURN_IF_ERROR(check_grid(chunks, "unscale_and_check"));
    unscale_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, ctx.stream>>>(list, inv_scale,
                                                                               flags + first);
    AMPD_CUDA_CHECK_LAUNCH("unscale_and_check");
    return Status::ok_status();
  });
}

Status global_norm(CudaContext& ctx, std::span<const Tensor> grads, const Tensor& out) {
  int64_t total_chunks = 0;
  for (const Tensor& g : grads) total_chunks += (g.numel() + kChunk - 1) / kChunk;
  AMPD_ASSIGN_OR_RETURN(
      void* scratch,
      ctx.scratch(static_cast<size_t>(std::max<int64_t>(total_chunks, 1)) * sizeof(double)));
  double* partials = static_cast<double*>(scratch);
  int64_t base = 0;
  AMPD_RETURN_IF_ERROR(for_each_group(grads.size(), [&](size_t first, int count) -> Status {
    GradList list{};
    for (int k = 0; k < count; ++k) {
      list.ptr[k] = grads[first + k].as<float>();
      list.n[k] = grads[first + k].numel();
    }
    const int64_t chunks =
        build_table(list.table, first, count, [&](size_t t) { return grads[t].numel(); });
    if (chunks == 0) return Status::ok_status();
    AMPD_RETURN_IF_ERROR(check_grid(chunks, "global_norm"));
    norm_partials_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, ctx.stream>>>(
        list, partials + base);
    AMPD_CUDA_CHECK_LAUNCH("global_norm");
    base += chunks;
    return Status::ok_status();
  }));
  norm_finish_kernel<<<1, 1024, 0, ctx.stream>>>(partials, base, out.as<float>());
  AMPD_CUDA_CHECK_LAUNCH("global_norm");
  return Status::ok_status();
}

Status sgd_step(CudaContext& ctx, std::span<const ParamSlot> params, const SgdParams& hp) {
  const SgdScalars s{hp.lr,         hp.momentum, hp.grad_scale, 1.0f - hp.dampening,
                     hp.first_step, hp.nesterov};
  return for_each_group(params.size(), [&](size_t first, int count) -> Status {
    SgdList list{};
    for (int k = 0; k < count; ++k) {
      const ParamSlot& p = params[first + k];
      list.w[k] = p.master.as<float>();
      list.g[k] = p.grad.as<const float>();
      list.buf[k] = hp.momentum != 0.0f ? p.state1.as<float>() : nullptr;
      list.low[k] = p.low_precision.empty() ? nullptr : p.low_precision.data;
      list.low_dtype[k] = p.low_precision.dtype;
      list.n[k] = p.master.numel();
      list.wd[k] = hp.weight_decay * p.weight_decay_multiplier;
      list.vec[k] = aligned16(list.w[k]) && aligned16(list.g[k]) &&
                    (list.buf[k] == nullptr || aligned16(list.buf[k])) &&
                    (list.low[k] == nullptr || aligned16(list.low[k]));
    }
    const int64_t chunks =
        build_table(list.table, first, count, [&](size_t t) { return params[t].master.numel(); });
    if (chunks == 0) return Status::ok_status();
    AMPD_RETURN_IF_ERROR(check_grid(chunks, "sgd_step"));
    sgd_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, ctx.stream>>>(list, s);
    AMPD_CUDA_CHECK_LAUNCH("sgd_step");
    return Status::ok_status();
  });
}

Status adamw_step(CudaContext& ctx, std::span<const ParamSlot> params, const AdamWParams& hp) {
  const double t = static_cast<double>(hp.step);
  AdamScalars s{};
  s.b1 = hp.beta1;
  s.b2 = hp.beta2;
  s.one_minus_b1 = 1.0f - hp.beta1;
  s.one_minus_b2 = 1.0f - hp.beta2;
  s.lr = hp.lr;
  s.eps = hp.eps;
  s.gs = hp.grad_scale;
  s.inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(hp.beta1), t)));
  s.inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(hp.beta2), t)));
  return for_each_group(params.size(), [&](size_t first, int count) -> Status {
    AdamList list{};
    for (int k = 0; k < count; ++k) {
      const ParamSlot& p = params[first + k];
      list.w[k] = p.master.as<float>();
      list.g[k] = p.grad.as<const float>();
      list.m[k] = p.state1.as<float>();
      list.v[k] = p.state2.as<float>();
      list.low[k] = p.low_precision.empty() ? nullptr : p.low_precision.data;
      list.low_dtype[k] = p.low_precision.dtype;
      list.n[k] = p.master.numel();
      list.decay[k] = 1.0f - hp.lr * (hp.weight_decay * p.weight_decay_multiplier);
      list.vec[k] = aligned16(list.w[k]) && aligned16(list.g[k]) && aligned16(list.m[k]) &&
                    aligned16(list.v[k]) && (list.low[k] == nullptr || aligned16(list.low[k]));
    }
    const int64_t chunks =
        build_table(list.table, first, count, [&](size_t t) { return params[t].master.numel(); });
    if (chunks == 0) return Status::ok_status();
    AMPD_RETURN_IF_ERROR(check_grid(chunks, "adamw_step"));
    adamw_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, ctx.stream>>>(list, s);
    AMPD_CUDA_CHECK_LAUNCH("adamw_step");
    return Status::ok_status();
  });
}

}  // namespace ampd::cuda
