// Sequence-model ops of the CUDA backend (backend.h, "sequence models"): embedding gather,
// its deterministic scatter-add, and the causal softmax of attention, forward and backward.
// The CPU twins are in kernels/cpu/cpu_sequence.cc, the FP64 oracle in
// kernels/reference/reference_backend.cc.
//
// Memory layout: ids I32 1 x N; table / dtable (V, C) row-major; out / dy (N, C); scores,
// probs, dprobs, dscores (rows, T) with rows a multiple of T, row r being query q = r % T.
//
// Embedding forward: element-wise over out (rowcol_kernel); out[i, j] = table[ids[i], j]
// widened exactly and rounded once to out's dtype, or NaN when ids[i] is outside [0, V).
// The table is only indexed with a checked id: no out-of-bounds read.
//
// Embedding backward (scatter-add), deterministic without float atomics:
//   1. keys_kernel: key[i] = ids[i] if in [0, V), else the sentinel S = min(V, 2^31)
//      (sorts after every valid id); val[i] = i.
//   2. cub::DeviceRadixSort::SortPairs on the low bits that can be set (bit width of S):
//      a stable LSD radix sort, so the token indices of one id stay in ascending order.
//   3. rows_kernel: one thread row (threadIdx.y) per table row v finds its segment
//      [lower_bound(v), lower_bound(v + 1)) of the sorted keys by binary search and, for
//      each column, adds dy[i, j] over the segment in ascending i, in FP32, onto
//      beta * dtable[v, j] (beta == 0: 0, dtable not read; beta == 1: dtable as it is).
//      Every row is written, so rows no id selects become beta * dtable (0 for beta == 0).
//   The order of every sum is the order of the tokens, as in the CPU backend (the same
//   FP32 operations, unfused: __fmul_rn / __fadd_rn), so the result is the same bits on
//   every run, on every GPU, and equal to the CPU backend's. Nothing waits for the host:
//   temporary storage (keys, values, cub's) comes from the backend's scratch buffer.
//   Cost: one radix sort of N pairs over ~log2(V) bits, then a pass that writes V x C
//   (the whole dtable, which the op's contract touches anyway) and reads dy once per
//   column block. A frequent id is one long serial sum per column (4 columns per thread in
//   flight); no split of long segments, which would change the summation order.
//
// Causal softmax: one warp per row (8 rows per 256-thread block, grid-stride over rows).
// Only the n = q + 1 unmasked entries are read; positions j > q are written as 0.
//   forward   m = max (NaN wins), s = sum expf(x - m) (warp_sum: a fixed butterfly),
//             p = expf(x - m) * (1 / s). A NaN, a +inf, or a row of -inf give a NaN row (as
//             exp(inf - inf) and exp(-inf + inf) do in the reference).
//   backward  dot = sum p dp (warp_sum), ds = p (dp - dot).
// In place: every element is read and written by the same lane, reads first, so probs may
// alias scores and dscores may alias dprobs (backend.cc allows it for equal dtypes).
// Math is FP32 (expf: ~2 ulp); low-precision inputs are widened exactly, outputs rounded
// once. Long rows just take more iterations per lane (any T).
#include <climits>
#include <cmath>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace ampd::cuda {

namespace {

// ---- embedding forward -------------------------------------------------------------------------

template <typename TT, typename TO>
struct EmbeddingGatherOp {
  const int32_t* ids;
  const TT* table;
  TO* out;
  int64_t vocab;
  int64_t cols;
  __device__ void operator()(int64_t r, int64_t j, int64_t k) const {
    const int64_t id = ids[r];
    out[k] = id >= 0 && id < vocab ? from_f32<TO>(to_f32(table[id * cols + j])) : from_f32<TO>(NAN);
  }
};

// ---- embedding backward ------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads)
    embedding_keys_kernel(const int32_t* ids, int64_t n, int64_t vocab, uint32_t sentinel,
                          uint32_t* keys, int32_t* vals) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int32_t id = ids[i];
    keys[i] = id >= 0 && id < vocab ? static_cast<uint32_t>(id) : sentinel;
    vals[i] = static_cast<int32_t>(i);
  }
}

// First k in [0, n) with keys[k] >= v (n if none).
__device__ __forceinline__ int64_t lower_bound_u32(const uint32_t* keys, int64_t n, uint64_t v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (static_cast<uint64_t>(keys[mid]) < v) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

constexpr int kColsPerThread = 4;

template <typename TD>
__global__ void __launch_bounds__(kThreads)
    embedding_rows_kernel(const uint32_t* keys, const int32_t* order, int64_t n, uint32_t sentinel,
                          const TD* dy, float* dtable, int64_t vocab, int64_t cols, float beta) {
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  const int64_t col_step = static_cast<int64_t>(blockDim.x) * kColsPerThread;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; v < vocab;
       v += row_stride) {
    // Rows at or past the sentinel (only when V > 2^31) hold no valid id.
    int64_t begin = 0, end = 0;
    if (v < static_cast<int64_t>(sentinel)) {
      begin = lower_bound_u32(keys, n, static_cast<uint64_t>(v));
      end = lower_bound_u32(keys, n, static_cast<uint64_t>(v) + 1);
    }
    float* g = dtable + v * cols;
    for (int64_t j0 = threadIdx.x; j0 < cols; j0 += col_step) {
      float acc[kColsPerThread];
#pragma unroll
      for (int c = 0; c < kColsPerThread; ++c) {
        const int64_t j = j0 + c * static_cast<int64_t>(blockDim.x);
        acc[c] = 0.0f;
        if (j < cols && beta != 0.0f) acc[c] = beta == 1.0f ? g[j] : __fmul_rn(beta, g[j]);
      }
      for (int64_t k = begin; k < end; ++k) {
        const TD* row = dy + static_cast<int64_t>(order[k]) * cols;
#pragma unroll
        for (int c = 0; c < kColsPerThread; ++c) {
          const int64_t j = j0 + c * static_cast<int64_t>(blockDim.x);
          if (j < cols) acc[c] = __fadd_rn(acc[c], to_f32(row[j]));
        }
      }
#pragma unroll
      for (int c = 0; c < kColsPerThread; ++c) {
        const int64_t j = j0 + c * static_cast<int64_t>(blockDim.x);
        if (j < cols) g[j] = acc[c];
      }
    }
  }
}

// Bits needed to hold every value in [0, x].
int bit_width(uint64_t x) {
  int bits = 1;
  while (bits < 64 && (uint64_t{1} << bits) <= x) ++bits;
  return bits;
}

size_t align_up(size_t bytes) {
  return (bytes + 255) & ~size_t{255};
}

// ---- causal softmax
// ------------------------------------------------------------------------------

constexpr int kWarpsPerBlock = kThreads / 32;

// max with NaN winning (once a NaN is in, it stays).
__device__ __forceinline__ float max_nan(float a, float b) {
  return isnan(b) || b > a ? b : a;
}

template <typename TS, typename TP>
__global__ void __launch_bounds__(kThreads)
    causal_softmax_forward_kernel(const TS* scores, TP* probs, int64_t rows, int64_t t) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); r < rows;
       r += warps) {
    const int64_t n = r % t + 1;  // keys 0..q
    const TS* s = scores + r * t;
    TP* p = probs + r * t;
    float m = -INFINITY;
    for (int64_t j = lane; j < n; j += 32) m = max_nan(m, to_f32(s[j]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = max_nan(m, __shfl_xor_sync(0xffffffffu, m, o));
    float sum = 0.0f;
    for (int64_t j = lane; j < n; j += 32) sum += expf(to_f32(s[j]) - m);
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;
    for (int64_t j = lane; j < t; j += 32) {
      p[j] = from_f32<TP>(j < n ? expf(to_f32(s[j]) - m) * inv : 0.0f);
    }
  }
}

template <typename TP, typename TD, typename TS>
__global__ void __launch_bounds__(kThreads)
    causal_softmax_backward_kernel(const TP* probs, const TD* dprobs, TS* dscores, int64_t rows,
                                   int64_t t) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); r < rows;
       r += warps) {
    const int64_t n = r % t + 1;
    const TP* p = probs + r * t;
    const TD* dp = dprobs + r * t;
    TS* ds = dscores + r * t;
    float dot = 0.0f;
    for (int64_t j = lane; j < n; j += 32) dot += to_f32(p[j]) * to_f32(dp[j]);
    dot = warp_sum(dot);
    for (int64_t j = lane; j < t; j += 32) {
      ds[j] = from_f32<TS>(j < n ? to_f32(p[j]) * (to_f32(dp[j]) - dot) : 0.0f);
    }
  }
}

unsigned warp_row_blocks(int64_t rows, int sm_count) {
  return grid_for(rows, kWarpsPerBlock, sm_count);
}

}  // namespace

// ---- launchers
// ------------------------------------------------------------------------------------

Status embedding_forward(CudaContext& ctx, const Tensor& ids, const Tensor& table,
                         const Tensor& out) {
  return dispatch_float(table.dtype, [&](auto a) {
    return dispatch_float(out.dtype, [&](auto b) {
      using TT = decltype(a);
      using TO = decltype(b);
      EmbeddingGatherOp<TT, TO> op{ids.as<const int32_t>(), table.as<const TT>(), out.as<TO>(),
                                   table.rows(), table.cols()};
      return launch_rowcol("embedding_forward", ctx.stream, op, out.rows(), out.cols());
    });
  });
}

Status embedding_backward(CudaContext& ctx, const Tensor& ids, const Tensor& dy,
                          const Tensor& dtable, float beta) {
  const int64_t n = dy.rows(), vocab = dtable.rows(), cols = dtable.cols();
  if (n > INT32_MAX) {
    return invalid_argument("embedding_backward: more than 2^31 - 1 ids (" + std::to_string(n) +
                            ") are not supported on cuda");
  }
  const uint32_t sentinel =
      static_cast<uint32_t>(vocab < (int64_t{1} << 31) ? vocab : (int64_t{1} << 31));
  uint32_t* keys_sorted = nullptr;
  int32_t* order = nullptr;
  if (n > 0) {
    const int end_bit = bit_width(sentinel);
    const int items = static_cast<int>(n);
    size_t temp_bytes = 0;
    AMPD_CUDA_RETURN_IF_ERROR(
        cub::DeviceRadixSort::SortPairs(
            nullptr, temp_bytes, static_cast<const uint32_t*>(nullptr),
            static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
            static_cast<int32_t*>(nullptr), items, 0, end_bit, ctx.stream),
        "embedding_backward: radix sort size");
    const size_t array = align_up(static_cast<size_t>(n) * sizeof(uint32_t));
    AMPD_ASSIGN_OR_RETURN(void* scratch, ctx.scratch(4 * array + align_up(temp_bytes)));
    char* base = static_cast<char*>(scratch);
    uint32_t* keys = reinterpret_cast<uint32_t*>(base);
    keys_sorted = reinterpret_cast<uint32_t*>(base + array);
    int32_t* vals = reinterpret_cast<int32_t*>(base + 2 * array);
    order = reinterpret_cast<int32_t*>(base + 3 * array);
    void* temp = base + 4 * array;

    embedding_keys_kernel<<<grid_for(n, kThreads, ctx.sm_count), kThreads, 0, ctx.stream>>>(
        ids.as<const int32_t>(), n, vocab, sentinel, keys, vals);
    AMPD_CUDA_CHECK_LAUNCH("embedding_backward: keys");
    AMPD_CUDA_RETURN_IF_ERROR(
        cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, keys_sorted, vals, order, items, 0,
                                        end_bit, ctx.stream),
        "embedding_backward: radix sort");
  }
  // Threads along a row (coalesced over columns, kColsPerThread columns each), several
  // table rows per block when the rows are short.
  int tx = 32;
  while (tx < kThreads && tx * kColsPerThread < cols) tx *= 2;
  const int ty = kThreads / tx;
  return dispatch_float(dy.dtype, [&](auto d) {
    using TD = decltype(d);
    embedding_rows_kernel<TD><<<grid_for(vocab, ty, ctx.sm_count), dim3(tx, ty), 0, ctx.stream>>>(
        keys_sorted, order, n, sentinel, dy.as<const TD>(), dtable.as<float>(), vocab, cols, beta);
    AMPD_CUDA_CHECK_LAUNCH("embedding_backward");
    return Status::ok_status();
  });
}

Status causal_softmax_forward(CudaContext& ctx, const Tensor& scores, const Tensor& probs) {
  const int64_t rows = scores.rows(), t = scores.cols();
  return dispatch_float(scores.dtype, [&](auto a) {
    return dispatch_float(probs.dtype, [&](auto b) {
      using TS = decltype(a);
      using TP = decltype(b);
      causal_softmax_forward_kernel<TS, TP>
          <<<warp_row_blocks(rows, ctx.sm_count), kThreads, 0, ctx.stream>>>(
              scores.as<const TS>(), probs.as<TP>(), rows, t);
      AMPD_CUDA_CHECK_LAUNCH("causal_softmax_forward");
      return Status::ok_status();
    });
  });
}

Status causal_softmax_backward(CudaContext& ctx, const Tensor& probs, const Tensor& dprobs,
                               const Tensor& dscores) {
  const int64_t rows = probs.rows(), t = probs.cols();
  return dispatch_float(probs.dtype, [&](auto a) {
    return dispatch_float(dprobs.dtype, [&](auto b) {
      return dispatch_float(dscores.dtype, [&](auto c) {
        using TP = decltype(a);
        using TD = decltype(b);
        using TS = decltype(c);
        causal_softmax_backward_kernel<TP, TD, TS>
            <<<warp_row_blocks(rows, ctx.sm_count), kThreads, 0, ctx.stream>>>(
                probs.as<const TP>(), dprobs.as<const TD>(), dscores.as<TS>(), rows, t);
        AMPD_CUDA_CHECK_LAUNCH("causal_softmax_backward");
        return Status::ok_status();
      });
    });
  });
}

}  // namespace ampd::cuda
