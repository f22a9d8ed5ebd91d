// CUDA backend matmul on cuBLASLt, with plans cached per problem.
//
//   C (M x N) = alpha op(A) (M x K) op(B) (K x N) + beta C + bias (1 x N, per column)
//
// Memory layout: ampd's matrices are row-major; cuBLASLt's are column-major. A row-major
// R x Cc matrix with leading dimension Cc is, read column-major, its transpose (Cc x R).
// So the row-major problem C = op(A) op(B) is computed as the column-major problem
//   C^T (N x M) = op(B)^T (N x K) op(A)^T (K x M)
// i.e. cuBLASLt's "A" is our B (transposed iff trans_b), its "B" is our A (transposed iff
// trans_a), and D = C is N x M with leading dimension N. No data moves. The bias (one value
// per column of row-major C = per row of column-major D) is exactly what
// CUBLASLT_EPILOGUE_BIAS broadcasts ("bias length must match D rows").
//
// Numerics (docs/ARCHITECTURE.md, Numerics): CUBLAS_COMPUTE_32F with FP32 alpha/beta for
// every dtype: FP16 / BF16 operands with FP32 accumulation; FP32 operands in full FP32 (no
// TF32) unless AMPD_CUDA_ALLOW_TF32=1 selected CUBLAS_COMPUTE_32F_FAST_TF32. The epilogue
// adds alpha AB + beta C + bias in FP32 and rounds once to C's dtype. Split-K reductions
// are restricted to "none" or "in the compute type" (CUBLASLT_REDUCTION_SCHEME_INPLACE and
// _OUTPUT_TYPE would add FP16/BF16 partial sums: extra roundings), which also keeps results
// deterministic. As in BLAS, beta == 0 means C is not read.
//
// Bias dtypes: the engine passes an FP32 bias with an FP16/BF16 C. The plan asks cuBLASLt
// for that (CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = CUDA_R_32F); if no algorithm accepts it,
// the call takes the fallback: matmul into an FP32 scratch C (a copy of C widened when
// beta != 0), then one kernel adds the bias and rounds once into C. Same single rounding,
// one more pass over C; counted in MatmulCacheStats::bias_fallbacks.
//
// Plans: a descriptor, three layouts and up to 8 heuristic results, built once per key
// (shape, dtypes, transposes, bias dtype, beta == 0, TF32, and the alignment of every
// pointer) and kept in an unordered_map: a heuristic query costs tens of microseconds. The
// first algorithm that runs is remembered. Alignment: cuBLASLt assumes 256-byte aligned
// pointers unless told otherwise; each plan tells it the real alignment of A, B, C and the
// bias (views made by row_slice can start anywhere), so the heuristic only offers kernels
// that are valid for them. If none is (or every one declines the call), the product runs
// on the plain tiled GEMM of cuda_gemm_fallback.cu: slow but right, never a misaligned
// access.
//
// K == 0 (an empty sum): C = beta C + bias by one kernel (cuBLASLt does not take k = 0).
//
// batched_matmul: the same plans with a strided batch. batched_geometry.h describes every
// operand as op(X) with a unit stride in one of its two matrix dimensions, which is exactly
// a column-major cuBLASLt layout (stored transposed or not) with that operand's leading
// dimension; CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT / _STRIDED_BATCH_OFFSET give the batch.
// When the two batch dimensions of a 4-D call merge into one uniform stride (contiguous
// tensors) that is one cublasLtMatmul; when they do not (Q / K / V head views of a fused
// (B, T, 3C) projection: strides T*3C and D), the inner dimension is the cuBLASLt batch and
// the outer one a loop of cublasLtMatmul calls on one plan (MatmulCacheStats::
// batched_outer_loops). Alignment: the plan's alignment of each operand is the smallest of
// its base pointer's and of its batch strides in bytes (every matrix of the batch starts
// that aligned). If cuBLASLt has no algorithm for that, or declines the call, the batch
// (or the outer indices not yet done) runs on the batched tiled GEMM of
// cuda_gemm_fallback.cu, which also serves K == 0 (C = beta C).
#include "kernels/cuda/cuda_matmul.h"

#include <cublasLt.h>

#include <climits>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_kernels.h"

namespace ampd::cuda {

namespace {

constexpr int kHeuristicResults = 8;

std::string cublas_error(const std::string& what, cublasStatus_t s) {
  return what + ": " + cublasLtGetStatusName(s) + " (" + cublasLtGetStatusString(s) + ")";
}

#define AMPD_CUBLAS_RETURN_IF_ERROR(expr, what)                                             \
  do {                                                                                      \
    const cublasStatus_t ampd_cublas_status_ = (expr);                                      \
    if (ampd_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                     \
      return internal(cublas_error(std::string("matmul: ") + (what), ampd_cublas_status_)); \
    }                                                                                       \
  } while (0)

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kF16: return CUDA_R_16F;
    case DType::kBF16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

// Largest power of two (<= 256) dividing the address.
uint16_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint16_t align = 256;
  while (align > 1 && (a & (align - 1u)) != 0) align = static_cast<uint16_t>(align >> 1);
  return align;
}

// ta / tb: op(A) / op(B) is column-major (stored transposed); lda / ldb / ldc: leading
// dimensions of op(A), op(B) and C as stored; batch / stride_*: a strided batch
// (batched_matmul; 1 and 0 for matmul).
struct PlanKey {
  int64_t m = 0, n = 0, k = 0;
  DType ab = DType::kF32, c = DType::kF32, bias = DType::kF32;
  bool has_bias = false, ta = false, tb = false, beta_zero = false, tf32 = false;
  uint16_t align_a = 0, align_b = 0, align_c = 0, align_bias = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int32_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  bool operator==(const PlanKey&) const = default;
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) { h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
    mix(static_cast<uint64_t>(k.m));
    mix(static_cast<uint64_t>(k.n));
    mix(static_cast<uint64_t>(k.k));
    mix(static_cast<uint64_t>(k.ab) | static_cast<uint64_t>(k.c) << 8 |
        static_cast<uint64_t>(k.bias) << 16 | uint64_t{k.has_bias} << 24 | uint64_t{k.ta} << 25 |
        uint64_t{k.tb} << 26 | uint64_t{k.beta_zero} << 27 | uint64_t{k.tf32} << 28);
    mix(static_cast<uint64_t>(k.align_a) | static_cast<uint64_t>(k.align_b) << 16 |
        static_cast<uint64_t>(k.align_c) << 32 | static_cast<uint64_t>(k.align_bias) << 48);
    mix(static_cast<uint64_t>(k.lda));
    mix(static_cast<uint64_t>(k.ldb));
    mix(static_cast<uint64_t>(k.ldc));
    mix(static_cast<uint64_t>(k.batch));
    mix(static_cast<uint64_t>(k.stride_a));
    mix(static_cast<uint64_t>(k.stride_b));
    mix(static_cast<uint64_t>(k.stride_c));
    return static_cast<size_t>(h);
  }
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr;  // cuBLASLt's A = our B
  cublasLtMatrixLayout_t b = nullptr;  // cuBLASLt's B = our A
  cublasLtMatrixLayout_t c = nullptr;
  std::vector<cublasLtMatmulHeuristicResult_t> algos;
  int chosen = -1;       // the algorithm that ran, once one has
  std::string unusable;  // why no algorithm fits (then algos is empty)

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
  }
};

}  // namespace

struct MatmulCache {
  cublasLtHandle_t handle = nullptr;
  MatmulOptions options;
  std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;
  MatmulCacheStats stats;

  ~MatmulCache() {
    plans.clear();
    if (handle != nullptr) cublasLtDestroy(handle);
  }

  StatusOr<Plan*> plan(const PlanKey& key, const void* bias_ptr);
};

void MatmulCacheDeleter::operator()(MatmulCache* cache) const noexcept {
  delete cache;
}

StatusOr<MatmulCachePtr> create_matmul_cache(const MatmulOptions& options) {
  MatmulCachePtr cache(new MatmulCache);
  cache->options = options;
  const cublasStatus_t s = cublasLtCreate(&cache->handle);
  if (s != CUBLAS_STATUS_SUCCESS) {
    cache->handle = nullptr;
    return internal(cublas_error("cuda: cublasLtCreate", s));
  }
  return cache;
}

StatusOr<Plan*> MatmulCache::plan(const PlanKey& key, const void* bias_ptr) {
  auto it = plans.find(key);
  if (it != plans.end()) return it->second.get();

  auto p = std::make_unique<Plan>();
  const cublasComputeType_t compute =
      key.tf32 && key.ab == DType::kF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  AMPD_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&p->desc, compute, CUDA_R_32F),
                              "cublasLtMatmulDescCreate");
  const int32_t op_a = key.tb ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
  const int32_t op_b = key.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  AMPD_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a),
      "set TRANSA");
  AMPD_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b),
      "set TRANSB");
  if (key.has_bias) {
    const uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const int32_t bias_type = cuda_type(key.bias);
    AMPD_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                       sizeof epilogue),
        "set EPILOGUE");
    AMPD_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                       sizeof bias_type),
        "set BIAS_DATA_TYPE");
    AMPD_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr,
                                       sizeof bias_ptr),
        "set BIAS_POINTER");
  }
  // Row-major storage seen column-major (see the top of this file): our B, stored
  // row-major (tb: N x K, else K x N), is cuBLASLt's column-major A (K x N, or N x K) with
  // the same leading dimension; likewise our A is cuBLASLt's B, and C is N x M.
  const uint64_t b_rows = static_cast<uint64_t>(key.tb ? key.n : key.k);  // our B, stored
  const uint64_t b_cols = static_cast<uint64_t>(key.tb ? key.k : key.n);
  const uint64_t a_rows = static_cast<uint64_t>(key.ta ? key.k : key.m);  // our A, stored
  const uint64_t a_cols = static_cast<uint64_t>(key.ta ? key.m : key.k);
  AMPD_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatrixLayoutCreate(&p->a, cuda_type(key.ab), b_cols, b_rows, key.ldb), "layout A");
  AMPD_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatrixLayoutCreate(&p->b, cuda_type(key.ab), a_cols, a_rows, key.lda), "layout B");
  AMPD_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatrixLayoutCreate(&p->c, cuda_type(key.c), static_cast<uint64_t>(key.n),
                                 static_cast<uint64_t>(key.m), key.ldc),
      "layout C");
  if (key.batch > 1) {  // strided batch: the same count on every layout, one stride each
    const std::pair<cublasLtMatrixLayout_t, int64_t> layouts[] = {
        {p->a, key.stride_b}, {p->b, key.stride_a}, {p->c, key.stride_c}};
    for (const auto& [layout, stride] : layouts) {
      AMPD_CUBLAS_RETURN_IF_ERROR(
          cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &key.batch,
                                           sizeof key.batch),
          "set BATCH_COUNT");
      AMPD_CUBLAS_RETURN_IF_ERROR(
          cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                           &stride, sizeof stride),
          "set STRIDED_BATCH_OFFSET");
    }
  }

  cublasLtMatmulPreference_t pref = nullptr;
  AMPD_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref), "preference");
  struct PrefGuard {
    cublasLtMatmulPreference_t p;
    ~PrefGuard() { cublasLtMatmulPreferenceDestroy(p); }
  } guard{pref};
  const uint64_t ws = options.workspace_bytes;
  const uint32_t reductions =
      CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  const uint32_t align_a = key.align_b, align_b = key.align_a, align_c = key.align_c;
  AMPD_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(
                                  pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
                              "set MAX_WORKSPACE_BYTES");
  AMPD_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                           &reductions, sizeof reductions),
      "set REDUCTION_SCHEME_MASK");
  AMPD_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                           &align_a, sizeof align_a),
      "set MIN_ALIGNMENT_A");
  AMPD_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                           &align_b, sizeof align_b),
      "set MIN_ALIGNMENT_B");
  AMPD_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                           &align_c, sizeof align_c),
      "set MIN_ALIGNMENT_C");
  AMPD_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                           &align_c, sizeof align_c),
      "set MIN_ALIGNMENT_D");

  cublasLtMatmulHeuristicResult_t results[kHeuristicResults] = {};
  int found = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(
      handle, p->desc, p->a, p->b, p->c, p->c, pref, kHeuristicResults, results, &found);
  if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
    p->unusable = hs != CUBLAS_STATUS_SUCCESS ? cublas_error("cublasLtMatmulAlgoGetHeuristic", hs)
                                              : std::string("cuBLASLt has no algorithm");
  } else {
    for (int i = 0; i < found; ++i) {
      if (results[i].state == CUBLAS_STATUS_SUCCESS) p->algos.push_back(results[i]);
    }
    if (p->algos.empty()) p->unusable = "cuBLASLt returned no usable algorithm";
  }
  ++stats.plans;
  Plan* raw = p.get();
  plans.emplace(key, std::move(p));
  return raw;
}

namespace {

// Runs a usable plan: the remembered algorithm, or the heuristic's list in order until one
// runs (an algorithm may still refuse the call, e.g. for its workspace).
Status execute(MatmulCache& cache, CudaContext& ctx, Plan& plan, float alpha, const void* a_ptr,
               const void* b_ptr, const void* c_in, void* c_out, float beta, const void* bias_ptr) {
  if (bias_ptr != nullptr) {
    AMPD_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr,
                                       sizeof bias_ptr),
        "set BIAS_POINTER");
  }
  const size_t first = plan.chosen >= 0 ? static_cast<size_t>(plan.chosen) : 0;
  const size_t last = plan.chosen >= 0 ? first + 1 : plan.algos.size();
  cublasStatus_t s = CUBLAS_STATUS_NOT_SUPPORTED;
  for (size_t i = first; i < last; ++i) {
    const cublasLtMatmulHeuristicResult_t& r = plan.algos[i];
    if (r.workspaceSize > cache.options.workspace_bytes) continue;
    s = cublasLtMatmul(cache.handle, plan.desc, &alpha, b_ptr, plan.a, a_ptr, plan.b, &beta, c_in,
                       plan.c, c_out, plan.c, &r.algo, cache.options.workspace,
                       cache.options.workspace_bytes, ctx.stream);
    if (s == CUBLAS_STATUS_SUCCESS) {
      plan.chosen = static_cast<int>(i);
      ++cache.stats.executions;
      AMPD_CUDA_CHECK_LAUNCH("matmul");
      return Status::ok_status();
    }
    if (s != CUBLAS_STATUS_NOT_SUPPORTED && s != CUBLAS_STATUS_INVALID_VALUE) {
      return internal(cublas_error("matmul: cublasLtMatmul", s));
    }
  }
  // Every algorithm declined the call: remember that, and let the caller fall back.
  plan.algos.clear();
  plan.chosen = -1;
  plan.unusable = cublas_error("every cublasLtMatmul algorithm declined", s);
  return Status::ok_status();
}

}  // namespace

Status matmul(MatmulCache& cache, CudaContext& ctx, const MatmulArgs& m) {
  PlanKey key;
  key.m = m.c.rows();
  key.n = m.c.cols();
  key.k = m.trans_a ? m.a.rows() : m.a.cols();
  if (key.k == 0) return affine_bias(ctx, m.c, m.beta, m.bias, m.c);
  key.ab = m.a.dtype;
  key.c = m.c.dtype;
  key.ta = m.trans_a;
  key.tb = m.trans_b;
  key.beta_zero = m.beta == 0.0f;
  key.tf32 = cache.options.allow_tf32 && m.a.dtype == DType::kF32;
  key.align_a = alignment_of(m.a.data);
  key.align_b = alignment_of(m.b.data);
  key.align_c = alignment_of(m.c.data);
  key.lda = m.trans_a ? key.m : key.k;  // dense row-major storage of A, B and C
  key.ldb = m.trans_b ? key.k : key.n;
  key.ldc = key.n;
  const bool has_bias = !m.bias.empty();
  if (has_bias) {
    key.has_bias = true;
    key.bias = m.bias.dtype;
    key.align_bias = alignment_of(m.bias.data);
  }

  if (cache.options.fallback_gemm_only) {
    ++cache.stats.fallback_gemms;
    return gemm_fallback(ctx, m);
  }

  // 1. cuBLASLt with everything in the epilogue.
  AMPD_ASSIGN_OR_RETURN(Plan * plan, cache.plan(key, has_bias ? m.bias.data : nullptr));
  if (plan->unusable.empty()) {
    AMPD_RETURN_IF_ERROR(execute(cache, ctx, *plan, m.alpha, m.a.data, m.b.data, m.c.data, m.c.data,
                                 m.beta, has_bias ? m.bias.data : nullptr));
    if (plan->unusable.empty()) return Status::ok_status();
  }

  // 2. A bias cuBLASLt would not take: the product in FP32 (no epilogue), then the bias and
  //    one rounding into C.
  if (has_bias) {
    PlanKey plain = key;
    plain.has_bias = false;
    plain.bias = DType::kF32;
    plain.align_bias = 0;
    void* c32 = m.c.data;
    if (m.c.dtype != DType::kF32) {
      AMPD_ASSIGN_OR_RETURN(void* scratch,
                            ctx.scratch(static_cast<size_t>(m.c.numel()) * sizeof(float)));
      c32 = scratch;
      plain.c = DType::kF32;
      plain.align_c = alignment_of(c32);
    }
    AMPD_ASSIGN_OR_RETURN(Plan * p2, cache.plan(plain, nullptr));
    if (p2->unusable.empty()) {
      if (c32 != m.c.data && m.beta != 0.0f) {
        AMPD_RETURN_IF_ERROR(cast(ctx, m.c, Tensor{c32, DType::kF32, m.c.rows(), m.c.cols()}));
      }
      AMPD_RETURN_IF_ERROR(
          execute(cache, ctx, *p2, m.alpha, m.a.data, m.b.data, c32, c32, m.beta, nullptr));
      if (p2->unusable.empty()) {
        ++cache.stats.bias_fallbacks;
        return affine_bias(ctx, Tensor{c32, DType::kF32, m.c.rows(), m.c.cols()}, 1.0f, m.bias,
                           m.c);
      }
    }
  }

  // 3. No cuBLASLt algorithm for these pointers / leading dimensions: the plain GEMM.
  ++cache.stats.fallback_gemms;
  return gemm_fallback(ctx, m);
}

namespace {

// The alignment cuBLASLt may assume for every matrix of a strided batch: that of the base
// pointer and of each batch stride in bytes (the start of batch (o, i) is
// base + o * outer_stride + i * inner_stride).
uint16_t batch_alignment(const BatchedGeometry& g, const BatchedOperand& x) {
  uint16_t align = alignment_of(x.data);
  const auto fold = [&](int64_t count, int64_t stride) {
    if (count <= 1) return;
    const uint64_t bytes = static_cast<uint64_t>(stride) * dtype_size(x.dtype);
    while (align > 1 && (bytes & (align - 1u)) != 0) align = static_cast<uint16_t>(align >> 1);
  };
  fold(g.outer, x.outer_stride);
  fold(g.inner, x.inner_stride);
  return align;
}

const void* at(const BatchedOperand& x, int64_t outer_index) {
  return static_cast<const char*>(x.data) +
         outer_index * x.outer_stride * static_cast<int64_t>(dtype_size(x.dtype));
}

}  // namespace

Status batched_matmul(MatmulCache& cache, CudaContext& ctx, const BatchedMatmulArgs& args) {
  const BatchedGeometry g = batched_geometry(args);
  // K == 0 (C = beta C), a batch count past int32, or the tests' fallback-only mode.
  if (g.k == 0 || g.inner > INT32_MAX || cache.options.fallback_gemm_only) {
    if (g.k != 0) ++cache.stats.fallback_gemms;
    return batched_gemm_fallback(ctx, g, args.alpha, args.beta);
  }
  PlanKey key;
  key.m = g.m;
  key.n = g.n;
  key.k = g.k;
  key.ab = g.a.dtype;
  key.c = g.c.dtype;
  key.ta = !g.a.row_major();
  key.tb = !g.b.row_major();
  key.beta_zero = args.beta == 0.0f;
  key.tf32 = cache.options.allow_tf32 && g.a.dtype == DType::kF32;
  key.align_a = batch_alignment(g, g.a);
  key.align_b = batch_alignment(g, g.b);
  key.align_c = batch_alignment(g, g.c);
  key.lda = g.a.ld();
  key.ldb = g.b.ld();
  key.ldc = g.c.ld();
  key.batch = static_cast<int32_t>(g.inner);
  if (g.inner > 1) {
    key.stride_a = g.a.inner_stride;
    key.stride_b = g.b.inner_stride;
    key.stride_c = g.c.inner_stride;
  }

  // One strided-batched cublasLtMatmul per outer index (one in all when the batch
  // dimensions merged into one stride), all on the same plan.
  AMPD_ASSIGN_OR_RETURN(Plan * plan, cache.plan(key, nullptr));
  int64_t done = 0;
  if (plan->unusable.empty()) {
    if (g.outer > 1) ++cache.stats.batched_outer_loops;
    for (; done < g.outer; ++done) {
      void* c = const_cast<void*>(at(g.c, done));
      AMPD_RETURN_IF_ERROR(execute(cache, ctx, *plan, args.alpha, at(g.a, done), at(g.b, done), c,
                                   c, args.beta, nullptr));
      if (!plan->unusable.empty()) break;  // declined: the rest on the fallback GEMM
    }
  }
  if (done == g.outer) return Status::ok_status();

  // No cuBLASLt algorithm for these pointers / leading dimensions / strides: the outer
  // indices not yet done on the plain GEMM.
  ++cache.stats.fallback_gemms;
  BatchedGeometry rest = g;
  rest.outer = g.outer - done;
  for (BatchedOperand* x : {&rest.a, &rest.b, &rest.c}) {
    x->data = const_cast<void*>(at(*x, done));
  }
  return batched_gemm_fallback(ctx, rest, args.alpha, args.beta);
}

MatmulCacheStats matmul_cache_stats(const MatmulCache& cache) {
  return cache.stats;
}

}  // namespace ampd::cuda
