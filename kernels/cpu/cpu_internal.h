// Shared internals of the CPU backend's op files (not installed, not part of the API).
//
// Memory layout: every tensor is dense row-major (rows x cols), so an element-wise op is a
// loop over numel() elements and a row-wise op a loop over rows of `cols` contiguous
// elements.
//
// Numerics: every kernel works on FP32 values. A low-precision operand is widened, a
// block of kBlock elements at a time, into a stack buffer with the exact bulk conversions
// of convert.h; an FP32 operand is used in place. Results are rounded once, on store,
// with the same conversions (round to nearest even). load_f32 / out_f32 / store_f32 below
// hide the difference.
//
// Parallelism: OpenMP with static schedules. The hand-written ops cut their work into
// tasks that depend only on the shapes (never on the thread count), and every reduction
// sums per-task partials in task order, so their results are bit-identical for any
// thread count. (oneDNN's matmul and eltwise are deterministic for a fixed thread count.)
#pragma once

#include <omp.h>
#if defined(__x86_64__) || defined(__SSE__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <new>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <utility>

#include "base/status.h"
#include "kernels/convert.h"
#include "kernels/tensor.h"

namespace ampd::cpu_detail {

// AMPD_CPU_CLONES compiles a compute-bound kernel twice, for AVX-512 (x86-64-v4) and for the
// baseline, and picks one when the program loads (GNU ifunc). The build targets baseline
// x86-64 (SSE2) so that one binary runs anywhere; kernels whose throughput is bound by
// arithmetic (the dropout hash's 64-bit multiplies, exp, LayerNorm rows) gain 2-10x.
// Memory-bound loops are left at the baseline. FMA contraction is off in the clones: they
// round every product and sum exactly as the baseline does (only the lane count, hence
// the order of a reduction, differs), and exact cancellations stay exact (LayerNorm's
// dy gamma - mean(dy gamma) over a constant row is 0, not the product's rounding error
// amplified by rstd).
// Not under ThreadSanitizer: GCC instruments the ifunc resolver it generates, and the
// dynamic loader runs resolvers before the TSan runtime is initialized (every binary that
// links this library crashed in ld.so at startup). TSan builds use the baseline kernels.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define AMPD_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "default"), optimize("fp-contract=off")))
#else
#define AMPD_CPU_CLONES
#endif

// Elements converted at a time into a stack buffer (4 KiB of FP32).
inline constexpr int64_t kBlock = 1024;
// Elements per parallel task of an element-wise op: below this an op runs on one thread.
inline constexpr int64_t kGrain = 32 * 1024;
// Rows per task of a column reduction (bias_grad, norm statistics and parameter grads).
inline constexpr int64_t kRowChunk = 16;
// Columns per task of a column reduction.
inline constexpr int64_t kColBlock = 512;

// Flush-to-zero and denormals-are-zero on this thread for the object's lifetime (MXCSR on
// x86; a no-op elsewhere), then the caller's mode back. The optimizers run under it:
// once a job's loss approaches 0, Adam's v = b2 v + (1 - b2) g^2 and m decay through the
// FP32 subnormal range (below 2^-126), and every operation on a subnormal costs a
// microcode assist. Measured on this repo's bench machine (AMD EPYC, AVX-512): AdamW took
// 2.6x longer per step in a converged job than on fresh gradients (bench/RESULTS.md).
// Numerically the flush changes only values below 2^-126 in magnitude: a flushed m or v
// changes the update by at most lr * 2^-126 / eps, far below one ulp of any normal
// weight. TensorFlow and XLA flush denormals on the CPU for the same reason; PyTorch
// offers torch.set_flush_denormal(True). Scoped, never left set: the FP64 reference
// backend and everything else on the thread keep IEEE subnormals.
class ScopedFlushDenormals {
 public:
#if defined(__x86_64__) || defined(__SSE__)
  static constexpr unsigned kFtzDaz = 0x8040;  // MXCSR.FTZ (bit 15) | MXCSR.DAZ (bit 6)
  ScopedFlushDenormals() : saved_(_mm_getcsr()) {
    _mm_setcsr(saved_ | kFtzDaz);
  }
  ~ScopedFlushDenormals() {
    _mm_setcsr(saved_);
  }

 private:
  unsigned saved_;
#else
  ScopedFlushDenormals() = default;
#endif

 public:
  ScopedFlushDenormals(const ScopedFlushDenormals&) = delete;
  ScopedFlushDenormals& operator=(const ScopedFlushDenormals&) = delete;
};

constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// ---- grow-only, 64-byte aligned scratch ---------------------------------------------

template <typename T>
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(ptr_); }

  // At least n elements; contents are unspecified. Throws std::bad_alloc.
  T* get(size_t n) {
    if (n > capacity_) {
      const size_t want = std::max(n, capacity_ + capacity_ / 2);
      const size_t bytes = (want * sizeof(T) + 63) / 64 * 64;
      void* p = std::aligned_alloc(64, bytes);
      if (p == nullptr) throw std::bad_alloc();
      std::free(ptr_);
      ptr_ = static_cast<T*>(p);
      capacity_ = bytes / sizeof(T);
    }
    return ptr_;
  }

 private:
  T* ptr_ = nullptr;
  size_t capacity_ = 0;
};

// ---- a small LRU map for cached oneDNN primitives ------------------------------------

template <typename K, typename V, typename Hash>
class LruCache {
 public:
  explicit LruCache(size_t capacity) : capacity_(capacity) {}

  V* find(const K& key) {
    auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    items_.splice(items_.begin(), items_, it->second);
    return &it->second->second;
  }
  V& insert(const K& key, V value) {
    items_.emplace_front(key, std::move(value));
    index_[key] = items_.begin();
    while (items_.size() > capacity_) {
      index_.erase(items_.back().first);
      items_.pop_back();
    }
    return items_.front().second;
  }
  size_t size() const { return items_.size(); }

 private:
  size_t capacity_;
  std::list<std::pair<K, V>> items_;
  std::unordered_map<K, typename std::list<std::pair<K, V>>::iterator, Hash> index_;
};

inline uint64_t hash_mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h;
}

// ---- oneDNN plans ---------------------------------------------------------------------

// Everything that changes a matmul primitive. FP16 operands arrive here already widened
// (ab == c == F32), so FP16 and FP32 share primitives.
struct MatmulKey {
  int64_t m = 0, n = 0, k = 0;
  DType ab = DType::kF32;
  DType c = DType::kF32;
  DType bias = DType::kF32;
  bool has_bias = false;
  bool trans_a = false;
  bool trans_b = false;
  uint32_t alpha_bits = 0;
  uint32_t beta_bits = 0;
  bool operator==(const MatmulKey&) const = default;
};
struct MatmulKeyHash {
  size_t operator()(const MatmulKey& k) const {
    uint64_t h = 0;
    for (uint64_t v : {uint64_t(k.m), uint64_t(k.n), uint64_t(k.k), uint64_t(k.ab), uint64_t(k.c),
                       uint64_t(k.bias), uint64_t(k.has_bias), uint64_t(k.trans_a),
                       uint64_t(k.trans_b), uint64_t(k.alpha_bits), uint64_t(k.beta_bits)}) {
      h = hash_mix(h, v);
    }
    return h;
  }
};
struct MatmulPlan {
  dnnl::matmul primitive;
  dnnl::memory::desc a, b, c, bias;
  bool bias_as_post_op = false;  // alpha != 1: oneDNN would scale its bias by alpha
  int bias_post_op_index = 0;
  dnnl::memory::desc scratchpad;  // user-managed (grow-only buffer in CpuState)
};

// Everything that changes a batched matmul primitive: the batch (outer x inner; outer == 1
// for a 3-D primitive), the problem, the dtypes (FP16 arrives widened), every stride of
// op(A), op(B) and C (row, col, outer, inner), alpha and beta.
struct BatchedMatmulKey {
  int64_t outer = 1, inner = 1, m = 0, n = 0, k = 0;
  DType ab = DType::kF32;
  DType c = DType::kF32;
  std::array<int64_t, 12> strides{};
  uint32_t alpha_bits = 0;
  uint32_t beta_bits = 0;
  bool operator==(const BatchedMatmulKey&) const = default;
};
struct BatchedMatmulKeyHash {
  size_t operator()(const BatchedMatmulKey& k) const {
    uint64_t h = 0;
    for (uint64_t v :
         {uint64_t(k.outer), uint64_t(k.inner), uint64_t(k.m), uint64_t(k.n), uint64_t(k.k),
          uint64_t(k.ab), uint64_t(k.c), uint64_t(k.alpha_bits), uint64_t(k.beta_bits)}) {
      h = hash_mix(h, v);
    }
    for (int64_t v : k.strides) h = hash_mix(h, uint64_t(v));
    return h;
  }
};
struct BatchedMatmulPlan {
  dnnl::matmul primitive;
  dnnl::memory::desc a, b, c;
  dnnl::memory::desc scratchpad;
};

enum class EltwiseDir : uint8_t { kForward, kBackward };
struct EltwiseKey {
  int alg = 0;
  EltwiseDir dir = EltwiseDir::kForward;
  DType dtype = DType::kF32;
  int64_t n = 0;
  bool operator==(const EltwiseKey&) const = default;
};
struct EltwiseKeyHash {
  size_t operator()(const EltwiseKey& k) const {
    return hash_mix(hash_mix(hash_mix(uint64_t(k.alg), uint64_t(k.dir)), uint64_t(k.dtype)),
                    uint64_t(k.n));
  }
};
struct EltwisePlan {
  dnnl::primitive primitive;
  dnnl::memory::desc md;
  dnnl::memory::desc scratchpad;
};

// ---- the backend's state ------------------------------------------------------------------

struct CpuState {
  int threads = 1;
  std::string cpu_model;
  dnnl::engine engine;
  dnnl::stream stream;
  std::mutex mu;  // one op at a time: the scratch buffers and caches below are shared
  // BF16 matmuls run as FP32 on widened operands (cpu_matmul.cc); chosen once, at
  // construction, from the CPU (CpuBackend::CpuBackend), so every run on a host computes
  // the same bits.
  bool widen_bf16 = false;

  LruCache<MatmulKey, MatmulPlan, MatmulKeyHash> matmul_plans{512};
  LruCache<EltwiseKey, EltwisePlan, EltwiseKeyHash> eltwise_plans{256};
  LruCache<BatchedMatmulKey, BatchedMatmulPlan, BatchedMatmulKeyHash> batched_plans{256};

  // Grow-only scratch. FP16 matmul: widened A, B, C and bias. Eltwise: widened x, dy and
  // an FP32 result. partials: per-task partial sums of reductions. rows: per-thread row
  // buffers of row-wise ops. scratchpad: oneDNN's (user-managed) scratchpad.
  Scratch<float> a32, b32, c32, bias32;
  Scratch<float> x32, dy32, out32;
  Scratch<float> partials;
  Scratch<double> partials64;
  Scratch<float> rows;
  Scratch<uint8_t> scratchpad;
  Scratch<int32_t> flags;
};

// Locks the backend and applies its thread count on the calling thread (see
// cpu_backend.h for why this happens at every op).
class OpScope {
 public:
  explicit OpScope(CpuState& s) : lock_(s.mu) {
    if (omp_get_max_threads() != s.threads) omp_set_num_threads(s.threads);
  }

 private:
  std::lock_guard<std::mutex> lock_;
};

// Runs f() and turns exceptions (oneDNN's dnnl::error, std::bad_alloc from a scratch
// buffer) into a Status: one failing op must fail its job, never the process.
template <typename F>
Status guarded(const char* op, F&& f) {
  try {
    return f();
  } catch (const dnnl::error& e) {
    return internal(std::string("cpu ") + op + ": oneDNN error " + std::to_string(e.status) + ": " +
                    e.what());
  } catch (const std::bad_alloc&) {
    return resource_exhausted(std::string("cpu ") + op + ": out of host memory for scratch");
  } catch (const std::exception& e) {
    return internal(std::string("cpu ") + op + ": " + e.what());
  }
}

// ---- parallel loops -------------------------------------------------------------------------

// fn(i) for i in [0, n), statically scheduled over the OpenMP threads.
template <typename F>
void parallel_for(int64_t n, F&& fn) {
  if (n <= 0) return;
  if (n == 1) {
    fn(int64_t{0});
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

// fn(i, tid) like parallel_for; tid in [0, threads) names the running thread, for
// per-thread buffers.
template <typename F>
void parallel_for_tid(int64_t n, F&& fn) {
  if (n <= 0) return;
  if (n == 1) {
    fn(int64_t{0}, 0);
    return;
  }
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) fn(i, tid);
  }
}

// fn(begin, end) over [0, n) in blocks of at most kBlock elements; kGrain per task.
template <typename F>
void parallel_blocks(int64_t n, F&& fn) {
  parallel_for(ceil_div(n, kGrain), [&](int64_t t) {
    const int64_t end = std::min(n, (t + 1) * kGrain);
    for (int64_t b = t * kGrain; b < end; b += kBlock) fn(b, std::min(end, b + kBlock));
  });
}

// fn(row) for every row, with about kGrain elements per task.
template <typename F>
void parallel_rows(int64_t rows, int64_t cols, F&& fn) {
  const int64_t per_task = std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1));
  parallel_for(ceil_div(rows, per_task), [&](int64_t t) {
    const int64_t end = std::min(rows, (t + 1) * per_task);
    for (int64_t r = t * per_task; r < end; ++r) fn(r);
  });
}

// fn(r, tid) for every row, about kGrain elements per task; tid names the thread.
template <typename F>
void parallel_rows_tid(int64_t rows, int64_t cols, F&& fn) {
  const int64_t per_task = std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1));
  parallel_for_tid(ceil_div(rows, per_task), [&](int64_t t, int tid) {
    const int64_t end = std::min(rows, (t + 1) * per_task);
    for (int64_t r = t * per_task; r < end; ++r) fn(r, tid);
  });
}

// sum of f(i) for i in [0, n): FP32 SIMD lanes within blocks of kBlock terms, the block
// sums added in FP64. The order is fixed by the code, hence deterministic. Always
// inlined, so that inside an AMPD_CPU_CLONES kernel it is compiled for that kernel's ISA.
template <typename F>
[[gnu::always_inline]] inline double sum_blocks(int64_t n, F&& f) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = b; i < e; ++i) s += f(i);
    total += s;
  }
  return total;
}

// Column reductions of a rows x cols matrix, for up to kMaxQuantities quantities q:
//   out[q * cols + j] = sum over rows r of what fn(r, c0, n, acc) adds to
//                       acc[q * kColBlock + (j - c0)], for the columns j in [c0, c0 + n).
// Tasks are kRowChunk rows x kColBlock columns; each sums its rows in FP32 and the task
// partials are added in FP64, in row order, so the result does not depend on the
// thread count.
inline constexpr int kMaxQuantities = 2;

// out[q * cols + j] = sum over rc in [0, nrc), in order, of partials[(rc * nq + q) * cols + j],
// in FP64; parallel over column blocks.
inline void combine_partials(const float* partials, int64_t nrc, int nq, int64_t cols,
                             double* out) {
  parallel_for(ceil_div(cols, kColBlock), [&](int64_t cb) {
    const int64_t c0 = cb * kColBlock;
    const int64_t n = std::min(kColBlock, cols - c0);
    for (int q = 0; q < nq; ++q) {
      double acc[kColBlock] = {};
      for (int64_t rc = 0; rc < nrc; ++rc) {
        const float* p = partials + (rc * nq + q) * cols + c0;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) acc[j] += p[j];
      }
      std::copy(acc, acc + n, out + q * cols + c0);
    }
  });
}

template <typename F>
void column_sums(CpuState& s, int64_t rows, int64_t cols, int nq, double* out, F&& fn) {
  const int64_t nrc = ceil_div(rows, kRowChunk);
  const int64_t ncb = ceil_div(cols, kColBlock);
  float* partials = s.partials.get(static_cast<size_t>(nrc * nq * cols));  // [rc][q][cols]
  parallel_for(nrc * ncb, [&](int64_t t) {
    const int64_t rc = t / ncb;
    const int64_t c0 = (t % ncb) * kColBlock;
    const int64_t n = std::min(kColBlock, cols - c0);
    float acc[kMaxQuantities * kColBlock];
    std::fill(acc, acc + nq * kColBlock, 0.0f);
    const int64_t r_end = std::min(rows, (rc + 1) * kRowChunk);
    for (int64_t r = rc * kRowChunk; r < r_end; ++r) fn(r, c0, n, acc);
    for (int q = 0; q < nq; ++q) {
      std::copy(acc + q * kColBlock, acc + q * kColBlock + n, partials + (rc * nq + q) * cols + c0);
    }
  });
  combine_partials(partials, nrc, nq, cols, out);
}

// ---- FP32 views of tensors of any floating dtype -----------------------------------------

inline const char* byte_at(const void* base, DType t, int64_t i) {
  return static_cast<const char*>(base) + static_cast<size_t>(i) * dtype_size(t);
}
inline char* byte_at(void* base, DType t, int64_t i) {
  return static_cast<char*>(base) + static_cast<size_t>(i) * dtype_size(t);
}

// n FP32 values of t from element i: t's own memory if it is F32, else widened into buf.
inline const float* load_f32(const Tensor& t, int64_t i, int64_t n, float* buf) {
  if (t.dtype == DType::kF32) return t.as<const float>() + i;
  convert(byte_at(t.data, t.dtype, i), t.dtype, buf, DType::kF32, static_cast<size_t>(n));
  return buf;
}
// Where to compute n FP32 results destined for t at element i: t's memory if F32, else buf.
inline float* out_f32(const Tensor& t, int64_t i, float* buf) {
  return t.dtype == DType::kF32 ? t.as<float>() + i : buf;
}
// Completes out_f32: rounds buf once into t (nothing to do when t is F32).
inline void store_f32(const float* v, const Tensor& t, int64_t i, int64_t n) {
  if (t.dtype == DType::kF32) return;
  convert(v, DType::kF32, byte_at(t.data, t.dtype, i), t.dtype, static_cast<size_t>(n));
}

// ---- scalar math ----------------------------------------------------------------------------

// e^x for x <= 88, vectorizable (no libm call): Cephes' expf. x = n ln2 + r with
// |r| <= ln2/2 (ln2 split in two so that r is exact), e^r by a degree-7 polynomial, 2^n
// through the exponent bits. Relative error <= 2 ulp; results below FLT_MIN (x < -87.33)
// flush to 0; NaN stays NaN. Used for softmax, where arguments are <= 0.
inline float exp_approx(float in) {
  const bool underflow = in < -87.3365f;
  const bool nan = in != in;
  const float x = in >= -88.0f ? std::min(in, 88.0f) : -88.0f;  // NaN -> -88: no UB below
  // Round x log2(e) to the nearest integer without SSE4.1: adding 1.5 * 2^23 leaves the
  // integer part in the low mantissa bits.
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * (r * r) + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  const float scaled = e * std::bit_cast<float>(bits);
  return underflow ? 0.0f : (nan ? in : scaled);
}

inline bool is_finite_bits(float v) {
  return (std::bit_cast<uint32_t>(v) & 0x7f800000u) != 0x7f800000u;
}

}  // namespace ampd::cpu_detail
