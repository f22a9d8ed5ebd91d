// Device-side helpers shared by the CUDA backend's .cu files (included by .cu files only).
//
// Element types: float, ampd::fp16 and ampd::bf16 (kernels/half.h). Loads widen exactly to
// FP32; stores round once, to nearest even, with the SAME integer code the host uses
// (half.h), so a CUDA result rounds to exactly the bits the CPU backend and the reference
// produce for the same FP32 value, NaN payloads included. The hardware cvt instructions
// would also round to nearest even but turn every NaN into one canonical pattern.
//
// Vector access: Vec8<T> moves 8 consecutive elements with 16-byte loads/stores (one for
// 16-bit types, two for float). Callers check 16-byte alignment of every pointer on the
// host and fall back to a scalar loop otherwise (views made by row_slice can start
// anywhere).
//
// Reductions: warp_sum / block_sum add in a fixed tree (xor butterflies, then warp partials
// in warp order), so for a fixed block size a result is the same on every run. No float
// atomics anywhere in this backend.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "base/status.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/dtype.h"
#include "kernels/half.h"

namespace ampd::cuda {

// ---- element conversions --------------------------------------------------------------------

__device__ __forceinline__ float to_f32(float v) {
  return v;
}
__device__ __forceinline__ float to_f32(fp16 v) {
  return f16_bits_to_f32(v.bits);
}
__device__ __forceinline__ float to_f32(bf16 v) {
  return bf16_bits_to_f32(v.bits);
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ fp16 from_f32<fp16>(float v) {
  return fp16::from_bits(f32_to_f16_bits(v));
}
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float v) {
  return bf16::from_bits(f32_to_bf16_bits(v));
}

// The storage type of a floating DType, for host-side dispatch.
template <typename F>
Status dispatch_float(DType t, F&& f) {
  switch (t) {
    case DType::kF32: return f(float{});
    case DType::kF16: return f(fp16{});
    case DType::kBF16: return f(bf16{});
    default: break;
  }
  return invalid_argument(std::string("cuda: not a floating dtype: ") + std::string(dtype_name(t)));
}

// ---- vector access ----------------------------------------------------------------------------

template <typename T>
struct Vec8 {
  T v[8];
};

template <typename T>
__device__ __forceinline__ Vec8<T> load8(const T* p) {
  static_assert((sizeof(T) * 8) % 16 == 0);
  constexpr int kWords = sizeof(T) * 8 / 16;
  uint4 w[kWords];
  const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int k = 0; k < kWords; ++k) w[k] = q[k];
  Vec8<T> out;
  memcpy(&out, w, sizeof out);
  return out;
}

template <typename T>
__device__ __forceinline__ void store8(T* p, const Vec8<T>& v) {
  constexpr int kWords = sizeof(T) * 8 / 16;
  uint4 w[kWords];
  memcpy(w, &v, sizeof v);
  uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
  for (int k = 0; k < kWords; ++k) q[k] = w[k];
}

__host__ __device__ inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// ---- launch geometry ----------------------------------------------------------------------------

inline constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `work` items of `per_block` each: enough to fill the
// device (32 blocks of 256 threads per SM), never more than the work needs.
inline unsigned grid_for(int64_t work, int64_t per_block, int sm_count) {
  int64_t blocks = (work + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(sm_count) * 32;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

// ---- deterministic reductions
// --------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `shared` holds 32 T. Safe to call repeatedly (it synchronizes before reuse).
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // a previous call may still be reading shared
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T total = lane < warps ? shared[lane] : T(0);
  return warp_sum(total);
}

// Threads per block for one-block-per-row kernels over rows of `cols` elements: a warp for
// short rows, up to 512 threads for long ones (a function of cols only: deterministic).
inline int row_threads(int64_t cols) {
  int t = 32;
  while (t < 512 && t * 4 < cols) t *= 2;
  return t;
}

// ---- generic element-wise and row/column launches -----------------------------------------------

// Grid-stride loop over n elements. With `vec`, elements [0, n/8*8) go 8 at a time through
// op.pack8(i) (i a multiple of 8; the caller checked 16-byte alignment of every pointer the op
// touches) and the tail through op.one(i); without, everything goes through op.one(i).
template <typename Op>
__global__ void __launch_bounds__(kThreads) map_kernel(Op op, int64_t n, bool vec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    const int64_t packs = n / 8;
    for (int64_t p = tid; p < packs; p += stride) op.pack8(p * 8);
    done = packs * 8;
  }
  for (int64_t i = done + tid; i < n; i += stride) op.one(i);
}

template <typename Op>
Status launch_map(const char* what, cudaStream_t stream, int sm_count, const Op& op, int64_t n,
                  bool vec) {
  if (n <= 0) return Status::ok_status();
  const int64_t work = vec ? n / 8 + 1 : n;
  map_kernel<<<grid_for(work, kThreads, sm_count), kThreads, 0, stream>>>(op, n, vec);
  AMPD_CUDA_CHECK_LAUNCH(what);
  return Status::ok_status();
}

// op(row, col, row * cols + col) for every element of a rows x cols matrix. Threads run
// along a row (coalesced), several rows per block when rows are short; a grid-stride loop
// over rows lifts the 65535 limit of gridDim.y. No division per element.
template <typename Op>
__global__ void __launch_bounds__(kThreads) rowcol_kernel(Op op, int64_t rows, int64_t cols) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  const int64_t row_stride = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < rows;
       r += row_stride) {
    op(r, j, r * cols + j);
  }
}

template <typename Op>
Status launch_rowcol(const char* what, cudaStream_t stream, const Op& op, int64_t rows,
                     int64_t cols) {
  if (rows <= 0 || cols <= 0) return Status::ok_status();
  int tx = 32;
  while (tx < kThreads && tx < cols) tx *= 2;
  const int ty = kThreads / tx;
  const int64_t gx = (cols + tx - 1) / tx;
  int64_t gy = (rows + ty - 1) / ty;
  if (gy > 65535) gy = 65535;
  if (gx > 0x7fffffff) return invalid_argument(std::string(what) + ": too many columns");
  rowcol_kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), dim3(tx, ty), 0,
                  stream>>>(op, rows, cols);
  AMPD_CUDA_CHECK_LAUNCH(what);
  return Status::ok_status();
}

}  // namespace ampd::cuda
