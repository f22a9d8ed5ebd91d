// CUDA-specific behaviour that the conformance suite (every op against the FP64 reference,
// test_backend_conformance.cc) does not show:
//   * the plugin's entry point: API version check and an actionable reason when there is no
//     GPU (these run everywhere, GPU or not);
//   * the device, memory statistics (high-water mark, device capacity, out of memory);
//   * cuBLASLt: plan cache reuse, beta == 0 never reads C, FP32 accumulation of FP16
//     products, no TF32 by default, the engine's matmul shapes with an FP32 bias, pointers
//     at odd alignments (a view that starts mid-row), and the bias fallback counter;
//   * kernels at awkward sizes and misaligned views (vector and scalar paths), outputs
//     poisoned first; grid-stride paths past gridDim.y's limit; long softmax rows;
//   * multi-tensor ops over more tensors than one launch takes (several launches);
//   * the embedding scatter-add equals the ordered FP32 sum bit for bit (hot ids, a large
//     vocabulary) and needs no host round trip; causal softmax on long rows;
//   * determinism: the same inputs give the same bits, run after run;
//   * errors come back as Status and leave the backend usable (misaligned pointers, out of
//     memory); bad labels give NaN rows (not an error) and need no host round trip.
// Without a GPU every test that needs one is skipped with the reason.
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend_factory.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/reference/reference_backend.h"
#include "tests/kernels/test_util.h"

#ifndef AMPD_TEST_CUDA_PLUGIN_DIR
#define AMPD_TEST_CUDA_PLUGIN_DIR ""
#endif

namespace ampd::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- the plugin entry point (no GPU needed) ---------------------------------------------------

std::string plugin_path() {
  return std::string(AMPD_TEST_CUDA_PLUGIN_DIR) + "/libampd_backend_cuda.so";
}

BackendPluginEntry plugin_entry() {
  void* handle = dlopen(plugin_path().c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) return nullptr;
  return reinterpret_cast<BackendPluginEntry>(dlsym(handle, kCudaPluginEntryPoint));
}

TEST(CudaPlugin, ExportsOnlyTheEntryPointAndChecksTheApiVersion) {
  BackendPluginEntry entry = plugin_entry();
  ASSERT_NE(entry, nullptr) << "cannot load " << plugin_path() << ": " << dlerror();
  char error[512] = {0};
  Backend* be = entry(kBackendPluginApiVersion + 100, error, sizeof error);
  EXPECT_EQ(be, nullptr);
  EXPECT_NE(std::string(error).find("API version"), std::string::npos) << error;
}

TEST(CudaPlugin, ExplainsWhyThereIsNoBackend) {
  BackendPluginEntry entry = plugin_entry();
  ASSERT_NE(entry, nullptr) << "cannot load " << plugin_path();
  char error[512] = {0};
  std::unique_ptr<Backend> be(entry(kBackendPluginApiVersion, error, sizeof error));
  if (be != nullptr) {
    EXPECT_EQ(be->name(), "cuda");
    EXPECT_NE(be->device_description().find("sm_"), std::string::npos);
    return;
  }
  const std::string reason = error;
  EXPECT_FALSE(reason.empty());
  // e.g. "no CUDA GPU: cudaGetDeviceCount returned cudaErrorInsufficientDriver (CUDA driver
  // is not installed or too old)"
  EXPECT_TRUE(reason.find("CUDA") != std::string::npos || reason.find("cuda") != std::string::npos)
      << reason;
  std::printf("plugin says: %s\n", reason.c_str());
}

TEST(CudaPlugin, LoaderReportsTheReasonAsUnavailable) {
  auto be = load_cuda_backend(AMPD_TEST_CUDA_PLUGIN_DIR);
  if (be.ok()) {
    EXPECT_EQ((*be)->name(), "cuda");
    return;
  }
  EXPECT_EQ(be.status().code(), StatusCode::kUnavailable) << be.status().to_string();
  EXPECT_FALSE(be.status().message().empty());
}

// ---- the backend under test -----------------------------------------------------------------

struct Shared {
  std::unique_ptr<CudaBackend> cuda;
  std::unique_ptr<Backend> ref;
  std::string unavailable;
};

Shared& shared() {
  static Shared s = [] {
    Shared x;
    auto made = make_cuda_backend();  // the same device checks as the plugin
    if (made.ok()) {
      x.cuda.reset(static_cast<CudaBackend*>(made.value().release()));
    } else {
      x.unavailable = made.status().to_string();
    }
    x.ref = make_reference_backend();
    return x;
  }();
  return s;
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!shared().cuda) GTEST_SKIP() << "no usable CUDA GPU: " << shared().unavailable;
  }
  CudaBackend& be() { return *shared().cuda; }
  Backend& ref() { return *shared().ref; }
};

HostTensor normal(DType t, int64_t rows, int64_t cols, Rng& rng, double mean = 0.0,
                  double stddev = 1.0) {
  HostTensor h(t, rows, cols);
  fill_normal(h, rng, mean, stddev);
  return h;
}

DeviceTensor poisoned(Backend& be, DType t, int64_t rows, int64_t cols) {
  return device_filled(be, t, rows, cols, t == DType::kI32 ? -12345.0f : kNaN);
}

MatmulArgs mm(const Tensor& a, const Tensor& b, const Tensor& c, bool ta = false, bool tb = false) {
  MatmulArgs m;
  m.a = a;
  m.b = b;
  m.c = c;
  m.trans_a = ta;
  m.trans_b = tb;
  return m;
}

// A view of `count` elements that starts `offset` elements into the buffer (misaligned for
// 16-byte vector access when offset * size is not a multiple of 16).
Tensor view_at(const DeviceTensor& d, int64_t offset, int64_t rows, int64_t cols) {
  Tensor t = d.tensor;
  t.data = static_cast<char*>(t.data) + offset * static_cast<int64_t>(dtype_size(t.dtype));
  t = Tensor(t.data, t.dtype, rows, cols);
  return t;
}

// Uploads h into a buffer `offset` elements in (the view), poisoning the buffer first.
struct OffsetTensor {
  DeviceTensor buffer;
  Tensor view;
};
OffsetTensor offset_upload(Backend& be, const HostTensor& h, int64_t offset) {
  OffsetTensor o;
  o.buffer = poisoned(be, h.dtype, 1, h.numel() + offset + 8);
  o.view = view_at(o.buffer, offset, h.rows, h.cols);
  const Status s = be.upload(o.view, h.data());
  if (!s.ok()) ADD_FAILURE() << s.to_string();
  return o;
}

HostTensor download_view(Backend& be, const Tensor& t) {
  return to_host(be, t);
}

// ---- device and memory ------------------------------------------------------------------------

TEST_F(CudaBackendTest, DescribesTheDevice) {
  EXPECT_EQ(be().name(), "cuda");
  EXPECT_NE(be().device_description().find("sm_"), std::string::npos) << be().device_description();
  EXPECT_TRUE(be().supports(DType::kF32) && be().supports(DType::kF16) &&
              be().supports(DType::kBF16));
  EXPECT_TRUE(be().prefers_bf16());
  EXPECT_GT(be().memory_stats().device_total_bytes, size_t{1} << 30);
  RecordProperty("device", be().device_description());
  std::printf("device: %s, TF32 %s\n", be().device_description().c_str(),
              be().allow_tf32() ? "on" : "off");
}

TEST_F(CudaBackendTest, MemoryHighWaterMark) {
  const MemoryStats before = be().memory_stats();
  const size_t a_bytes = size_t{64} << 20, b_bytes = size_t{32} << 20;
  {
    StatusOr<Buffer> a = be().allocate(a_bytes);
    ASSERT_TRUE(a.ok()) << a.status().to_string();
    StatusOr<Buffer> b = be().allocate(b_bytes);
    ASSERT_TRUE(b.ok()) << b.status().to_string();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % 256, 0u);
    EXPECT_EQ(be().memory_stats().in_use_bytes, before.in_use_bytes + a_bytes + b_bytes);
    a->reset();
    const MemoryStats mid = be().memory_stats();
    EXPECT_EQ(mid.in_use_bytes, before.in_use_bytes + b_bytes);
    EXPECT_GE(mid.peak_bytes, before.in_use_bytes + a_bytes + b_bytes);
    be().reset_peak_memory();
    EXPECT_EQ(be().memory_stats().peak_bytes, mid.in_use_bytes);
  }
  EXPECT_EQ(be().memory_stats().in_use_bytes, before.in_use_bytes);
  EXPECT_LT(be().memory_stats().in_use_bytes, be().memory_stats().device_total_bytes);
}

TEST_F(CudaBackendTest, OutOfMemoryIsResourceExhaustedAndRecoverable) {
  const size_t too_much = be().memory_stats().device_total_bytes * 2;
  StatusOr<Buffer> huge = be().allocate(too_much);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), StatusCode::kResourceExhausted) << huge.status().to_string();
  // The backend still works.
  DeviceTensor x = device_filled(be(), DType::kF32, 1, 1000, 2.5f);
  const HostTensor h = to_host(be(), x);
  EXPECT_EQ(h.get(999), 2.5);
}

// ---- matmul -----------------------------------------------------------------------------------

TEST_F(CudaBackendTest, MatmulPlansAreBuiltOnceAndReused) {
  Rng rng(1);
  DeviceTensor a = to_device(be(), normal(DType::kBF16, 96, 64, rng));
  DeviceTensor b = to_device(be(), normal(DType::kBF16, 64, 80, rng));
  DeviceTensor c = device_tensor(be(), DType::kF32, 96, 80);
  const cuda::MatmulCacheStats s0 = be().matmul_stats();
  for (int i = 0; i < 3; ++i) AMPD_ASSERT_OK(be().matmul(mm(a, b, c)));
  const cuda::MatmulCacheStats s1 = be().matmul_stats();
  EXPECT_EQ(s1.plans, s0.plans + 1);
  EXPECT_EQ(s1.executions, s0.executions + 3);
  // Another shape (a row slice: same buffers), another plan; then both are reused.
  const Tensor a2 = a.tensor.row_slice(0, 48), c2 = c.tensor.row_slice(0, 48);
  AMPD_ASSERT_OK(be().matmul(mm(a2, b, c2)));
  AMPD_ASSERT_OK(be().matmul(mm(a2, b, c2)));
  AMPD_ASSERT_OK(be().matmul(mm(a, b, c)));
  const cuda::MatmulCacheStats s2 = be().matmul_stats();
  EXPECT_EQ(s2.plans, s1.plans + 1);
  EXPECT_EQ(s2.executions, s1.executions + 3);
  AMPD_EXPECT_OK(be().synchronize());
}

// beta == 0: C holds NaN and must not leak into the result (BLAS semantics).
TEST_F(CudaBackendTest, MatmulBetaZeroNeverReadsC) {
  Rng rng(2);
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (DType ct : {DType::kF32, t}) {
      DeviceTensor a = to_device(be(), normal(t, 33, 40, rng));
      DeviceTensor b = to_device(be(), normal(t, 40, 24, rng));
      DeviceTensor c = poisoned(be(), ct, 33, 24);
      AMPD_ASSERT_OK(be().matmul(mm(a, b, c)));
      const HostTensor h = to_host(be(), c);
      for (int64_t i = 0; i < h.numel(); ++i) {
        ASSERT_FALSE(std::isnan(h.get(i)))
            << dtype_name(t) << "->" << dtype_name(ct) << " [" << i << "]";
      }
    }
  }
}

// FP16 products summed in FP32 (cf. test_cpu_numerics.cc): an FP16 accumulator (or FP16
// split-K partials) would stagnate at 2048 and be off by ~87%; FP32 stays within 2^-8.
TEST_F(CudaBackendTest, Fp16MatmulAccumulatesInFp32) {
  const int64_t M = 4, N = 3, K = 65536;
  Rng rng(3);
  HostTensor a(DType::kF16, M, K), b(DType::kF16, K, N);
  for (int64_t i = 0; i < a.numel(); ++i) a.set(i, rng.integer(1, 1023) * 0x1p-10);
  for (int64_t i = 0; i < b.numel(); ++i) b.set(i, rng.integer(1, 1023) * 0x1p-10);
  for (DType ct : {DType::kF32, DType::kF16}) {
    DeviceTensor A = to_device(be(), a), B = to_device(be(), b);
    DeviceTensor C = poisoned(be(), ct, M, N);
    AMPD_ASSERT_OK(be().matmul(mm(A, B, C)));
    const HostTensor c = to_host(be(), C);
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) {
        double exact = 0;
        for (int64_t k = 0; k < K; ++k) exact += a.get(i, k) * b.get(k, j);
        EXPECT_NEAR(c.get(i, j), exact, exact * (0x1p-8 + 0x1p-10)) << i << "," << j;
      }
    }
  }
}

// FP32 mode is FP32 arithmetic unless AMPD_CUDA_ALLOW_TF32=1: TF32's 10-bit products would
// miss this bound by ~100x.
TEST_F(CudaBackendTest, Fp32MatmulIsNotTf32ByDefault) {
  if (be().allow_tf32()) GTEST_SKIP() << "AMPD_CUDA_ALLOW_TF32 is set";
  Rng rng(4);
  const int64_t M = 64, N = 48, K = 4096;
  const HostTensor a = normal(DType::kF32, M, K, rng), b = normal(DType::kF32, K, N, rng);
  DeviceTensor A = to_device(be(), a), B = to_device(be(), b);
  DeviceTensor C = poisoned(be(), DType::kF32, M, N);
  AMPD_ASSERT_OK(be().matmul(mm(A, B, C)));
  DeviceTensor RA = to_device(ref(), a), RB = to_device(ref(), b);
  DeviceTensor RC = device_tensor(ref(), DType::kF32, M, N);
  AMPD_ASSERT_OK(ref().matmul(mm(RA, RB, RC)));
  expect_close(to_host(be(), C), to_host(ref(), RC),
               default_tolerance(DType::kF32, K, std::sqrt(double(K))), "fp32 matmul K=4096");
}

// The engine's three products per linear layer (engine/layers.cc), in every precision:
// y = x W^T + b (FP32 bias, C in the working dtype), dW = dy^T x (FP32 C), dx = dy W.
TEST_F(CudaBackendTest, EngineLinearLayerProducts) {
  Rng rng(5);
  const int64_t B = 96, in = 80, out = 72;
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    const HostTensor x = normal(t, B, in, rng), w = normal(t, out, in, rng, 0.0, 0.1);
    const HostTensor bias = normal(DType::kF32, 1, out, rng), dy = normal(t, B, out, rng);
    struct Run {
      DeviceTensor x, w, bias, dy, y, dw, dx;
    };
    auto run = [&](Backend& b) {
      Run r{to_device(b, x),      to_device(b, w),        to_device(b, bias),
            to_device(b, dy),     poisoned(b, t, B, out), poisoned(b, DType::kF32, out, in),
            poisoned(b, t, B, in)};
      MatmulArgs fwd = mm(r.x, r.w, r.y, false, true);
      fwd.bias = r.bias;
      AMPD_EXPECT_OK(b.matmul(fwd));
      AMPD_EXPECT_OK(b.matmul(mm(r.dy, r.x, r.dw, true, false)));
      AMPD_EXPECT_OK(b.matmul(mm(r.dy, r.w, r.dx)));
      return r;
    };
    const size_t fallbacks_before = be().matmul_stats().bias_fallbacks;
    Run g = run(be());
    Run c = run(ref());
    const std::string what = std::string(dtype_name(t));
    expect_close(to_host(be(), g.y), to_host(ref(), c.y),
                 default_tolerance(t, in, 0.1 * std::sqrt(double(in)) + 1), what + " y");
    expect_close(to_host(be(), g.dw), to_host(ref(), c.dw),
                 default_tolerance(DType::kF32, B, std::sqrt(double(B))), what + " dW");
    expect_close(to_host(be(), g.dx), to_host(ref(), c.dx),
                 default_tolerance(t, out, 0.1 * std::sqrt(double(out))), what + " dx");
    const size_t fallbacks = be().matmul_stats().bias_fallbacks - fallbacks_before;
    std::printf("%s: FP32 bias with %s C %s\n", what.c_str(), what.c_str(),
                fallbacks == 0 ? "ran in the cuBLASLt epilogue" : "took the FP32 fallback");
  }
}

// Operands that start mid-row (2-byte aligned FP16/BF16, 4-byte FP32) with odd leading
// dimensions, with and without a bias: the right answer, from a cuBLASLt algorithm valid for
// that alignment or from the fallback GEMM (counted); the backend keeps working.
TEST_F(CudaBackendTest, MatmulWithMisalignedViews) {
  Rng rng(6);
  const cuda::MatmulCacheStats before = be().matmul_stats();
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (DType ct : {DType::kF32, t}) {
      for (bool with_bias : {false, true}) {
        const int64_t M = 9, K = 7, N = 5;
        const HostTensor a = normal(t, M, K, rng), b = normal(t, K, N, rng);
        const HostTensor c0 = normal(ct, M, N, rng), bias = normal(DType::kF32, 1, N, rng);
        OffsetTensor A = offset_upload(be(), a, 1);
        OffsetTensor B = offset_upload(be(), b, 3);
        OffsetTensor C = offset_upload(be(), c0, 1);
        OffsetTensor Bias = offset_upload(be(), bias, 1);
        MatmulArgs args = mm(A.view, B.view, C.view);
        args.beta = 0.5f;
        if (with_bias) args.bias = Bias.view;
        AMPD_ASSERT_OK(be().matmul(args));
        DeviceTensor RA = to_device(ref(), a), RB = to_device(ref(), b), RC = to_device(ref(), c0);
        DeviceTensor RBias = to_device(ref(), bias);
        MatmulArgs rargs = mm(RA, RB, RC);
        rargs.beta = 0.5f;
        if (with_bias) rargs.bias = RBias;
        AMPD_ASSERT_OK(ref().matmul(rargs));
        expect_close(download_view(be(), C.view), to_host(ref(), RC),
                     default_tolerance(ct, K, std::sqrt(double(K)) + 2),
                     std::string("misaligned ") + std::string(dtype_name(t)) + " -> " +
                         std::string(dtype_name(ct)) + (with_bias ? " + bias" : ""));
      }
    }
  }
  const cuda::MatmulCacheStats after = be().matmul_stats();
  std::printf("misaligned matmuls: %zu on cuBLASLt, %zu bias fallbacks, %zu fallback GEMMs\n",
              after.executions - before.executions, after.bias_fallbacks - before.bias_fallbacks,
              after.fallback_gemms - before.fallback_gemms);
  DeviceTensor x = device_filled(be(), DType::kF32, 4, 4, 1.0f);
  DeviceTensor y = device_tensor(be(), DType::kF32, 4, 4);
  AMPD_ASSERT_OK(be().matmul(mm(x, x, y)));
  EXPECT_EQ(to_host(be(), y).get(5), 4.0);
}

// The fallback GEMM itself (what runs when cuBLASLt declines), against the reference over
// the conformance suite's sizes, transposes, alpha / beta and bias variants.
TEST_F(CudaBackendTest, FallbackGemmMatchesReference) {
  CudaBackendOptions opts;
  opts.fallback_gemm_only = true;
  auto made = CudaBackend::create(opts);
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  CudaBackend& fb = *made.value();
  Rng rng(12);
  int variant = 0;
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t M : {1, 7, 64}) {
      for (int64_t N : {1, 9, 33}) {
        for (int64_t K : {1, 17, 513}) {
          for (int tr = 0; tr < 4; ++tr) {
            const bool ta = tr & 1, tb = tr & 2;
            const DType ct = variant % 2 == 0 ? DType::kF32 : t;
            const float alpha = variant % 3 == 0 ? 1.0f : -0.5f;
            const float beta = variant % 4 == 1 ? 0.25f : 0.0f;
            const bool with_bias = variant % 5 != 0;
            ++variant;
            const HostTensor a = normal(t, ta ? K : M, ta ? M : K, rng);
            const HostTensor b = normal(t, tb ? N : K, tb ? K : N, rng);
            const HostTensor c0 = normal(ct, M, N, rng), bias = normal(DType::kF32, 1, N, rng);
            auto run = [&](Backend& be, DeviceTensor& C) {
              DeviceTensor A = to_device(be, a), B = to_device(be, b), Bias = to_device(be, bias);
              C = beta != 0.0f ? to_device(be, c0) : poisoned(be, ct, M, N);
              MatmulArgs args = mm(A, B, C, ta, tb);
              args.alpha = alpha;
              args.beta = beta;
              if (with_bias) args.bias = Bias;
              return be.matmul(args);
            };
            DeviceTensor gc, rc;
            AMPD_ASSERT_OK(run(fb, gc));
            AMPD_ASSERT_OK(run(ref(), rc));
            const double mag = std::fabs(alpha) * std::sqrt(double(K)) + 2;
            expect_close(to_host(fb, gc), to_host(ref(), rc), default_tolerance(ct, K, mag),
                         "fallback gemm " + std::string(dtype_name(t)) + " " + std::to_string(M) +
                             "x" + std::to_string(N) + "x" + std::to_string(K) +
                             " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
          }
        }
      }
    }
  }
  EXPECT_GT(fb.matmul_stats().fallback_gemms, 0u);
  EXPECT_EQ(fb.matmul_stats().executions, 0u);
}

// ---- batched_matmul ---------------------------------------------------------------------------

// Attention's S = alpha Q K^T and Y = P V on (B, H, T, D) head views of one fused (B, T, 3C)
// buffer, on `be` and on the reference; returns the reference's and be's S and y.
struct AttentionRun {
  HostTensor s, y, ref_s, ref_y;
};
AttentionRun attention_products(Backend& be, Backend& ref, DType t, int64_t B, int64_t T, int64_t H,
                                int64_t D, uint64_t seed) {
  const int64_t C = H * D;
  Rng rng(seed);
  const HostTensor qkv = normal(t, B * T, 3 * C, rng), p = normal(t, B * H * T, T, rng);
  AttentionRun out;
  for (Backend* x : {&be, &ref}) {
    DeviceTensor dqkv = to_device(*x, qkv), dp = to_device(*x, p);
    DeviceTensor ds = poisoned(*x, DType::kF32, B * H * T, T), dy = poisoned(*x, t, B * T, C);
    const Tensor fused = dqkv.tensor.view({B, T, 3 * C});
    auto head = [&](int64_t part) {
      return fused.narrowed(-1, part * C, C).split(-1, H, D).transposed(1, 2);
    };
    const Status s1 = x->batched_matmul({.a = head(0),
                                         .b = head(1),
                                         .c = ds.tensor.view({B, H, T, T}),
                                         .trans_b = true,
                                         .alpha = 0.25f});
    EXPECT_TRUE(s1.ok()) << s1.to_string();
    const Status s2 =
        x->batched_matmul({.a = dp.tensor.view({B, H, T, T}),
                           .b = head(2),
                           .c = dy.tensor.view({B, T, C}).split(-1, H, D).transposed(1, 2)});
    EXPECT_TRUE(s2.ok()) << s2.to_string();
    (x == &be ? out.s : out.ref_s) = to_host(*x, ds);
    (x == &be ? out.y : out.ref_y) = to_host(*x, dy);
  }
  return out;
}

void expect_attention_close(const AttentionRun& r, DType t, int64_t T, int64_t D,
                            const std::string& what) {
  expect_close(r.s, r.ref_s, default_tolerance(DType::kF32, D, 0.25 * std::sqrt(double(D))),
               what + " S");
  expect_close(r.y, r.ref_y, default_tolerance(t, T, std::sqrt(double(T))), what + " y");
}

// Head views whose batch dimensions do not merge: one strided-batched cublasLtMatmul per
// index of the outer (B) dimension on one plan; contiguous 4-D tensors: one call.
TEST_F(CudaBackendTest, BatchedMatmulLoopsOverTheOuterBatchDimensionOnlyWhenNeeded) {
  constexpr int64_t B = 3, T = 64, H = 4, D = 16;
  for (DType t : {DType::kBF16, DType::kF16, DType::kF32}) {
    const cuda::MatmulCacheStats before = be().matmul_stats();
    const AttentionRun r = attention_products(be(), ref(), t, B, T, H, D, 31);
    expect_attention_close(r, t, T, D, std::string("head views ") + std::string(dtype_name(t)));
    const cuda::MatmulCacheStats after = be().matmul_stats();
    EXPECT_EQ(after.batched_outer_loops - before.batched_outer_loops, 2u);  // S and y
    EXPECT_EQ(after.executions - before.executions, static_cast<size_t>(2 * B))
        << "aligned views: all on cuBLASLt";
    EXPECT_EQ(after.fallback_gemms, before.fallback_gemms);
  }
  Rng rng(32);
  DeviceTensor a = to_device(be(), normal(DType::kBF16, 2 * 3 * 32, 16, rng));
  DeviceTensor b = to_device(be(), normal(DType::kBF16, 2 * 3 * 16, 24, rng));
  DeviceTensor c = poisoned(be(), DType::kF32, 2 * 3 * 32, 24);
  const cuda::MatmulCacheStats before = be().matmul_stats();
  AMPD_ASSERT_OK(be().batched_matmul({.a = a.tensor.view({2, 3, 32, 16}),
                                      .b = b.tensor.view({2, 3, 16, 24}),
                                      .c = c.tensor.view({2, 3, 32, 24})}));
  const cuda::MatmulCacheStats after = be().matmul_stats();
  EXPECT_EQ(after.executions - before.executions, 1u);
  EXPECT_EQ(after.batched_outer_loops, before.batched_outer_loops);
  DeviceTensor ra = to_device(ref(), to_host(be(), a)), rb = to_device(ref(), to_host(be(), b));
  DeviceTensor rc = poisoned(ref(), DType::kF32, 2 * 3 * 32, 24);
  AMPD_ASSERT_OK(ref().batched_matmul({.a = ra.tensor.view({2, 3, 32, 16}),
                                       .b = rb.tensor.view({2, 3, 16, 24}),
                                       .c = rc.tensor.view({2, 3, 32, 24})}));
  expect_close(to_host(be(), c), to_host(ref(), rc), default_tolerance(DType::kF32, 16, 4.0),
               "contiguous 4-D");
}

// Odd head sizes: batch strides of 3 or 5 elements (2-byte aligned FP16/BF16 matrices).
// The right answer from a cuBLASLt algorithm valid for that alignment or from the batched
// fallback GEMM; the backend keeps working.
TEST_F(CudaBackendTest, BatchedMatmulMisalignedHeadViews) {
  for (DType t : {DType::kF16, DType::kBF16, DType::kF32}) {
    for (int64_t D : {3, 5}) {
      const AttentionRun r = attention_products(be(), ref(), t, 2, 17, 3, D, 33);
      expect_attention_close(r, t, 17, D,
                             "D=" + std::to_string(D) + " " + std::string(dtype_name(t)));
    }
  }
  const cuda::MatmulCacheStats s = be().matmul_stats();
  std::printf("after misaligned batched matmuls: %zu executions, %zu fallback GEMMs\n",
              s.executions, s.fallback_gemms);
}

// The batched fallback GEMM itself (what runs when cuBLASLt declines, and K == 0).
TEST_F(CudaBackendTest, BatchedFallbackGemmMatchesReference) {
  CudaBackendOptions opts;
  opts.fallback_gemm_only = true;
  auto made = CudaBackend::create(opts);
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  CudaBackend& fb = *made.value();
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    const AttentionRun r = attention_products(fb, ref(), t, 2, 33, 3, 8, 34);
    expect_attention_close(r, t, 33, 8, "fallback " + std::string(dtype_name(t)));
  }
  // 3-D, every transpose pair, beta != 0.
  Rng rng(35);
  for (int tr = 0; tr < 4; ++tr) {
    const bool ta = tr & 1, tb = tr & 2;
    const int64_t nb = 7, M = 17, N = 9, K = 33;
    const HostTensor a = normal(DType::kBF16, nb * (ta ? K : M), ta ? M : K, rng);
    const HostTensor b = normal(DType::kBF16, nb * (tb ? N : K), tb ? K : N, rng);
    const HostTensor c0 = normal(DType::kBF16, nb * M, N, rng);
    HostTensor out[2];
    int i = 0;
    for (Backend* x : {static_cast<Backend*>(&fb), &ref()}) {
      DeviceTensor A = to_device(*x, a), Bm = to_device(*x, b), Cm = to_device(*x, c0);
      AMPD_ASSERT_OK(x->batched_matmul({.a = A.tensor.view({nb, ta ? K : M, ta ? M : K}),
                                        .b = Bm.tensor.view({nb, tb ? N : K, tb ? K : N}),
                                        .c = Cm.tensor.view({nb, M, N}),
                                        .trans_a = ta,
                                        .trans_b = tb,
                                        .alpha = -0.5f,
                                        .beta = 0.25f}));
      out[i++] = to_host(*x, Cm);
    }
    expect_close(out[0], out[1], default_tolerance(DType::kBF16, K, 0.5 * std::sqrt(33.0) + 1),
                 "fallback 3-D ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
  }
  EXPECT_GT(fb.matmul_stats().fallback_gemms, 0u);
  EXPECT_EQ(fb.matmul_stats().executions, 0u);
}

// A pointer not aligned to its element size is rejected before any kernel can fault.
TEST_F(CudaBackendTest, PointerNotAlignedToItsElementsIsInvalidArgument) {
  DeviceTensor buf = device_filled(be(), DType::kF32, 1, 64, 1.0f);
  Tensor bad = buf.tensor;
  bad.data = static_cast<char*>(bad.data) + 2;
  bad = Tensor(bad.data, bad.dtype, 1, 16);
  DeviceTensor out = device_tensor(be(), DType::kBF16, 1, 16);
  const Status s = be().cast(bad, out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("aligned"), std::string::npos) << s.to_string();
  AMPD_ASSERT_OK(be().cast(buf.tensor.reshaped(4, 16).row_slice(0, 1), out));
  EXPECT_EQ(to_host(be(), out).get(15), 1.0);
}

// ---- kernels at awkward sizes and alignments ----------------------------------------------------

// Sizes around the 8-element vector width and large enough for many blocks; views offset
// by 0 (vector path) and 1 element (scalar path). Outputs poisoned, compared with the
// reference: casts bit for bit, the rest with the conformance tolerances.
TEST_F(CudaBackendTest, ElementwiseOpsAtAwkwardSizesAndOffsets) {
  Rng rng(7);
  for (int64_t n :
       {int64_t{1}, int64_t{3}, int64_t{8}, int64_t{9}, int64_t{4097}, (int64_t{1} << 20) + 3}) {
    for (int64_t offset : {0, 1}) {
      for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
        const std::string what = std::string(dtype_name(t)) + " n=" + std::to_string(n) +
                                 " offset=" + std::to_string(offset);
        const HostTensor x = normal(t, 1, n, rng, 0.0, 3.0);
        OffsetTensor gx = offset_upload(be(), x, offset);
        DeviceTensor rx = to_device(ref(), x);
        // cast to each other dtype
        for (DType to : {DType::kF32, DType::kF16, DType::kBF16}) {
          OffsetTensor gy = offset_upload(be(), HostTensor(to, 1, n), offset);
          AMPD_ASSERT_OK(be().fill(gy.view, kNaN));
          DeviceTensor ry = device_tensor(ref(), to, 1, n);
          AMPD_ASSERT_OK(be().cast(gx.view, gy.view));
          AMPD_ASSERT_OK(ref().cast(rx, ry));
          expect_close(download_view(be(), gy.view), to_host(ref(), ry), kExact,
                       what + " cast to " + std::string(dtype_name(to)));
        }
        // GELU forward
        OffsetTensor gy = offset_upload(be(), HostTensor(t, 1, n), offset);
        AMPD_ASSERT_OK(be().fill(gy.view, kNaN));
        DeviceTensor ry = device_tensor(ref(), t, 1, n);
        AMPD_ASSERT_OK(be().activation_forward(Activation::kGELU, gx.view, gy.view));
        AMPD_ASSERT_OK(ref().activation_forward(Activation::kGELU, rx, ry));
        Tolerance tol = default_tolerance(t);
        tol.atol = std::max(tol.atol, 1e-6);
        expect_close(download_view(be(), gy.view), to_host(ref(), ry), tol, what + " gelu");
        // accumulate y += x from the same y on both sides, then scale
        const HostTensor y0 = normal(t, 1, n, rng);
        AMPD_ASSERT_OK(be().upload(gy.view, y0.data()));
        AMPD_ASSERT_OK(ref().upload(ry, y0.data()));
        AMPD_ASSERT_OK(be().accumulate(gx.view, gy.view));
        AMPD_ASSERT_OK(ref().accumulate(rx, ry));
        AMPD_ASSERT_OK(be().scale(gy.view, 0.75f));
        AMPD_ASSERT_OK(ref().scale(ry, 0.75f));
        expect_close(download_view(be(), gy.view), to_host(ref(), ry), default_tolerance(t, 4, 4.0),
                     what + " accumulate+scale");
        // dropout: masks bit-identical
        OffsetTensor gm = offset_upload(be(), HostTensor(DType::kU8, 1, n), offset);
        DeviceTensor rm = device_tensor(ref(), DType::kU8, 1, n);
        AMPD_ASSERT_OK(be().dropout_forward(gx.view, gy.view, gm.view, 0.3f, 99, 12345));
        AMPD_ASSERT_OK(ref().dropout_forward(rx, ry, rm, 0.3f, 99, 12345));
        EXPECT_EQ(download_view(be(), gm.view).bytes, to_host(ref(), rm).bytes) << what;
      }
    }
  }
}

// 600000 rows x 1 column: the row/column kernels' grid-stride loop over gridDim.y's 65535
// limit; a softmax row much longer than a block.
TEST_F(CudaBackendTest, LongAndTallShapes) {
  Rng rng(8);
  {
    const HostTensor x = normal(DType::kBF16, 600000, 1, rng), b = normal(DType::kF32, 1, 1, rng);
    DeviceTensor gx = to_device(be(), x), gb = to_device(be(), b);
    DeviceTensor rx = to_device(ref(), x), rb = to_device(ref(), b);
    AMPD_ASSERT_OK(be().add_bias(gx, gb));
    AMPD_ASSERT_OK(ref().add_bias(rx, rb));
    expect_close(to_host(be(), gx), to_host(ref(), rx), default_tolerance(DType::kBF16, 1, 2.0),
                 "add_bias 600000x1");
    DeviceTensor gd = poisoned(be(), DType::kF32, 1, 1), rd = poisoned(ref(), DType::kF32, 1, 1);
    AMPD_ASSERT_OK(be().bias_grad(gx, gd));
    AMPD_ASSERT_OK(ref().bias_grad(rx, rd));
    expect_close(to_host(be(), gd), to_host(ref(), rd),
                 default_tolerance(DType::kF32, 600000, std::sqrt(600000.0) + 2), "bias_grad tall");
  }
  {
    const int64_t rows = 3, cols = 50000;
    const HostTensor x = normal(DType::kF16, rows, cols, rng, 0.0, 3.0);
    HostTensor labels(DType::kI32, 1, rows);
    for (int64_t i = 0; i < rows; ++i) labels.set(i, static_cast<double>(rng.integer(0, cols - 1)));
    DeviceTensor gx = to_device(be(), x), gl = to_device(be(), labels);
    DeviceTensor rx = to_device(ref(), x), rl = to_device(ref(), labels);
    DeviceTensor gloss = poisoned(be(), DType::kF32, 1, rows),
                 glse = poisoned(be(), DType::kF32, 1, rows);
    DeviceTensor rloss = poisoned(ref(), DType::kF32, 1, rows),
                 rlse = poisoned(ref(), DType::kF32, 1, rows);
    AMPD_ASSERT_OK(be().softmax_xent_forward(gx, gl, gloss, glse));
    AMPD_ASSERT_OK(ref().softmax_xent_forward(rx, rl, rloss, rlse));
    expect_close(to_host(be(), glse), to_host(ref(), rlse),
                 default_tolerance(DType::kF32, cols, 16.0), "lse of 50000 classes");
    DeviceTensor gam = poisoned(be(), DType::kI32, 1, rows),
                 ram = poisoned(ref(), DType::kI32, 1, rows);
    AMPD_ASSERT_OK(be().argmax_rows(gx, gam));
    AMPD_ASSERT_OK(ref().argmax_rows(rx, ram));
    expect_close(to_host(be(), gam), to_host(ref(), ram), kExact, "argmax of 50000 classes");
  }
}

// ---- errors leave the backend usable
// -------------------------------------------------------------

// A label outside [0, C) is the caller's error and is not checked (backend.h): the row gets
// loss = NaN and an all-NaN dlogits row, the other rows their ordinary values, nothing is
// read out of bounds, and the backend stays usable. (Before: InvalidArgument naming
// labels[2], outputs untouched, at the price of two stream synchronizations per call.)
TEST_F(CudaBackendTest, BadLabelRowsAreNaNAndBackendStaysUsable) {
  Rng rng(9);
  const HostTensor x = normal(DType::kBF16, 4, 7, rng);
  HostTensor labels = HostTensor::from(DType::kI32, 1, 4, {1, 2, 7, -1});
  DeviceTensor gx = to_device(be(), x), gl = to_device(be(), labels);
  DeviceTensor rx = to_device(ref(), x), rl = to_device(ref(), labels);
  DeviceTensor loss = device_filled(be(), DType::kF32, 1, 4, 5.0f);
  DeviceTensor lse = device_filled(be(), DType::kF32, 1, 4, 6.0f);
  DeviceTensor rloss = device_filled(ref(), DType::kF32, 1, 4, 5.0f);
  DeviceTensor rlse = device_filled(ref(), DType::kF32, 1, 4, 6.0f);
  AMPD_ASSERT_OK(be().softmax_xent_forward(gx, gl, loss, lse));
  AMPD_ASSERT_OK(ref().softmax_xent_forward(rx, rl, rloss, rlse));
  const Tolerance tol = default_tolerance(DType::kF32, 7, 16.0);
  const HostTensor hl = to_host(be(), loss);
  expect_close(hl, to_host(ref(), rloss), tol, "loss");
  expect_close(to_host(be(), lse), to_host(ref(), rlse), tol, "lse, every row");
  for (int64_t r = 0; r < 4; ++r)
    EXPECT_EQ(std::isnan(hl.get(r)), r >= 2) << r << ": " << hl.get(r);

  // Backward in place (dlogits = logits): rows 2 and 3 all NaN, rows 0 and 1 as the reference.
  DeviceTensor lse_in = to_device(be(), to_host(ref(), rlse));
  AMPD_ASSERT_OK(be().softmax_xent_backward(gx, gl, lse_in, gx, 0.25f));
  AMPD_ASSERT_OK(ref().softmax_xent_backward(rx, rl, rlse, rx, 0.25f));
  const HostTensor hd = to_host(be(), gx);
  expect_close(hd, to_host(ref(), rx), default_tolerance(DType::kBF16, 16 * 7, 0.25), "dlogits");
  for (int64_t i = 0; i < hd.numel(); ++i) EXPECT_EQ(std::isnan(hd.get(i)), i >= 14) << i;

  // Still usable: the labels fixed, every loss is finite.
  labels.set(2, 0);
  labels.set(3, 6);
  AMPD_ASSERT_OK(be().upload(gl, labels.data()));
  AMPD_ASSERT_OK(be().upload(gx, x.data()));
  AMPD_ASSERT_OK(be().softmax_xent_forward(gx, gl, loss, lse));
  for (double v : to_host(be(), loss).values()) EXPECT_TRUE(std::isfinite(v) && v > 0) << v;
}

// Neither softmax cross-entropy launcher synchronizes or reads anything back to the host:
// both can be captured into a CUDA graph (synchronizing a capturing stream is an error that
// would come back as a failed Status), and the graph, replayed, computes exactly what the
// direct calls compute, bad-label row included.
TEST_F(CudaBackendTest, SoftmaxXentNeedsNoHostRoundTrip) {
  Rng rng(12);
  constexpr int64_t rows = 64, cols = 10;
  const HostTensor x = normal(DType::kF16, rows, cols, rng);
  HostTensor labels(DType::kI32, 1, rows);
  fill_integers(labels, rng, 0, cols - 1);
  labels.set(5, cols);  // a bad row
  DeviceTensor gx = to_device(be(), x), gl = to_device(be(), labels);
  DeviceTensor loss = device_filled(be(), DType::kF32, 1, rows, 5.0f);
  DeviceTensor lse = device_filled(be(), DType::kF32, 1, rows, 6.0f);
  DeviceTensor dx = device_filled(be(), DType::kF16, rows, cols, 7.0f);
  AMPD_ASSERT_OK(be().synchronize());

  const cudaStream_t stream = be().stream();
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  const Status f = be().softmax_xent_forward(gx, gl, loss, lse);
  const Status b = be().softmax_xent_backward(gx, gl, lse, dx, 0.5f);
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  (void)cudaGetLastError();
  AMPD_EXPECT_OK(f);
  AMPD_EXPECT_OK(b);
  ASSERT_EQ(end, cudaSuccess) << cudaGetErrorString(end);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  const cudaError_t launch = inst == cudaSuccess ? cudaGraphLaunch(exec, stream) : inst;
  EXPECT_EQ(launch, cudaSuccess) << cudaGetErrorString(launch);
  AMPD_ASSERT_OK(be().synchronize());
  if (exec != nullptr) (void)cudaGraphExecDestroy(exec);
  (void)cudaGraphDestroy(graph);
  ASSERT_EQ(launch, cudaSuccess);
  const HostTensor graph_loss = to_host(be(), loss), graph_dx = to_host(be(), dx);

  DeviceTensor loss2 = device_filled(be(), DType::kF32, 1, rows, 5.0f);
  DeviceTensor lse2 = device_filled(be(), DType::kF32, 1, rows, 6.0f);
  DeviceTensor dx2 = device_filled(be(), DType::kF16, rows, cols, 7.0f);
  AMPD_ASSERT_OK(be().softmax_xent_forward(gx, gl, loss2, lse2));
  AMPD_ASSERT_OK(be().softmax_xent_backward(gx, gl, lse2, dx2, 0.5f));
  expect_close(graph_loss, to_host(be(), loss2), kExact, "loss from the graph");
  expect_close(graph_dx, to_host(be(), dx2), kExact, "dlogits from the graph");
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(std::isnan(graph_loss.get(r)), r == 5) << r;
}

// ---- sequence ops ---------------------------------------------------------------------------

// The scatter-add sums every (row, column) in token order in FP32 with unfused operations
// (cuda_sequence.cu), so it equals, bit for bit, the sequential FP32 loop below (which is
// also what the CPU backend computes): a hot id (half of all tokens: one long segment), a
// vocabulary larger than one sort digit, out-of-range ids, beta 0 over NaN and beta 0.5.
TEST_F(CudaBackendTest, EmbeddingBackwardEqualsTheOrderedFp32Sum) {
  Rng rng(13);
  constexpr int64_t V = 70000, C = 300, N = 20000;
  HostTensor ids(DType::kI32, 1, N);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t r = rng.integer(0, 99);
    ids.set(i, r < 50    ? 12345.0
               : r == 99 ? (i % 2 ? -7.0 : double(V))
                         : double(rng.integer(0, V - 1)));
  }
  for (DType dyt : {DType::kF32, DType::kBF16}) {
    const HostTensor dy = normal(dyt, N, C, rng);
    const HostTensor old = normal(DType::kF32, V, C, rng);
    DeviceTensor gi = to_device(be(), ids), gdy = to_device(be(), dy);
    for (float beta : {0.0f, 0.5f}) {
      std::vector<float> expected(static_cast<size_t>(V * C));
      for (int64_t k = 0; k < V * C; ++k) {
        expected[static_cast<size_t>(k)] =
            beta == 0.0f ? 0.0f : beta * static_cast<float>(old.get(k));
      }
      for (int64_t i = 0; i < N; ++i) {
        const double id = ids.get(i);
        if (id < 0 || id >= V) continue;
        float* row = expected.data() + static_cast<int64_t>(id) * C;
        for (int64_t j = 0; j < C; ++j) row[j] += static_cast<float>(dy.get(i, j));
      }
      DeviceTensor g = beta == 0.0f ? poisoned(be(), DType::kF32, V, C) : to_device(be(), old);
      AMPD_ASSERT_OK(be().embedding_backward(gi, gdy, g, beta));
      const HostTensor got = to_host(be(), g);
      ASSERT_EQ(got.bytes.size(), expected.size() * sizeof(float));
      EXPECT_EQ(std::memcmp(got.bytes.data(), expected.data(), got.bytes.size()), 0)
          << dtype_name(dyt) << " beta " << beta;
    }
  }
}

// The scatter-add only enqueues: it can be captured into a CUDA graph (its scratch grown
// beforehand, so the capture allocates nothing), and the replay computes the same bits.
TEST_F(CudaBackendTest, EmbeddingBackwardNeedsNoHostRoundTrip) {
  Rng rng(14);
  constexpr int64_t V = 5000, C = 64, N = 4096;
  HostTensor ids(DType::kI32, 1, N);
  fill_integers(ids, rng, -1, V);
  DeviceTensor gi = to_device(be(), ids), gdy = to_device(be(), normal(DType::kF16, N, C, rng));
  DeviceTensor direct = poisoned(be(), DType::kF32, V, C);
  AMPD_ASSERT_OK(be().embedding_backward(gi, gdy, direct, 0.0f));
  DeviceTensor captured = poisoned(be(), DType::kF32, V, C);
  AMPD_ASSERT_OK(be().synchronize());

  const cudaStream_t stream = be().stream();
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  const Status s = be().embedding_backward(gi, gdy, captured, 0.0f);
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  (void)cudaGetLastError();
  AMPD_EXPECT_OK(s);
  ASSERT_EQ(end, cudaSuccess) << cudaGetErrorString(end);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  const cudaError_t launch = inst == cudaSuccess ? cudaGraphLaunch(exec, stream) : inst;
  EXPECT_EQ(launch, cudaSuccess) << cudaGetErrorString(launch);
  AMPD_ASSERT_OK(be().synchronize());
  if (exec != nullptr) (void)cudaGraphExecDestroy(exec);
  (void)cudaGraphDestroy(graph);
  ASSERT_EQ(launch, cudaSuccess);
  EXPECT_EQ(to_host(be(), captured).bytes, to_host(be(), direct).bytes);
}

// Rows longer than a warp's 32 lanes many times over (T = 2500, not a power of two), and a
// 4-D (B, H, T, T) batch with T = 1024; masked scores NaN-poisoned.
TEST_F(CudaBackendTest, CausalSoftmaxLongRows) {
  Rng rng(15);
  for (auto [batch, t] : {std::pair<int64_t, int64_t>{1, 2500}, {4, 1024}}) {
    const int64_t rows = batch * t;
    HostTensor s = normal(DType::kBF16, rows, t, rng, 0.0, 3.0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = r % t + 1; j < t; ++j) s.set(r, j, kNaN);
    }
    DeviceTensor gs = to_device(be(), s), rs = to_device(ref(), s);
    DeviceTensor gp = poisoned(be(), DType::kF32, rows, t),
                 rp = poisoned(ref(), DType::kF32, rows, t);
    AMPD_ASSERT_OK(be().causal_softmax_forward(gs, gp));
    AMPD_ASSERT_OK(ref().causal_softmax_forward(rs, rp));
    expect_close(to_host(be(), gp), to_host(ref(), rp), default_tolerance(DType::kF32, t),
                 "probs T=" + std::to_string(t));
    const HostTensor dp = normal(DType::kBF16, rows, t, rng);
    DeviceTensor gdp = to_device(be(), dp), rdp = to_device(ref(), dp);
    DeviceTensor gds = poisoned(be(), DType::kBF16, rows, t),
                 rds = poisoned(ref(), DType::kBF16, rows, t);
    DeviceTensor gp_ref = to_device(be(), to_host(ref(), rp));  // the reference's probs
    AMPD_ASSERT_OK(be().causal_softmax_backward(gp_ref, gdp, gds));
    AMPD_ASSERT_OK(ref().causal_softmax_backward(rp, rdp, rds));
    expect_close(to_host(be(), gds), to_host(ref(), rds), default_tolerance(DType::kBF16, t, 4.0),
                 "dscores T=" + std::to_string(t));
  }
}

// ---- multi-tensor ops over several launches
// ---------------------------------------------------------

// 300 tensors (the kernels take 128 per launch), sizes from 0 to ~70000, a few holding
// inf / NaN at their last element or in a later chunk.
TEST_F(CudaBackendTest, MultiTensorOpsOverManyTensors) {
  Rng rng(10);
  const size_t count = 300;
  std::vector<HostTensor> host;
  for (size_t t = 0; t < count; ++t) {
    const int64_t n = t % 37 == 0 ? 0 : rng.integer(1, t % 10 == 0 ? 70000 : 300);
    host.push_back(normal(DType::kF32, 1, n, rng));
  }
  host[5].set(host[5].numel() - 1, INFINITY);
  host[130].set(0, NAN);
  host[290].set(host[290].numel() / 2, -INFINITY);
  std::vector<DeviceTensor> g, r;
  std::vector<Tensor> gt, rt;
  for (const HostTensor& h : host) {
    g.push_back(to_device(be(), h));
    r.push_back(to_device(ref(), h));
  }
  for (size_t t = 0; t < count; ++t) {
    gt.push_back(g[t].tensor);
    rt.push_back(r[t].tensor);
  }
  DeviceTensor gf = poisoned(be(), DType::kI32, 1, count),
               rf = poisoned(ref(), DType::kI32, 1, count);
  AMPD_ASSERT_OK(be().unscale_and_check(gt, 0.25f, gf));
  AMPD_ASSERT_OK(ref().unscale_and_check(rt, 0.25f, rf));
  const HostTensor flags = to_host(be(), gf);
  expect_close(flags, to_host(ref(), rf), kExact, "flags of 300 tensors");
  for (size_t t = 0; t < count; ++t) {
    if (flags.get(static_cast<int64_t>(t)) == 0) {
      expect_close(to_host(be(), g[t]), to_host(ref(), r[t]), kExact,
                   "unscaled " + std::to_string(t));
    }
  }
  // global norm and AdamW over the finite tensors only
  std::vector<Tensor> gfin, rfin;
  std::vector<ParamSlot> gslots, rslots;
  std::vector<DeviceTensor> keep;
  int64_t total = 0;
  for (size_t t = 0; t < count; ++t) {
    if (flags.get(static_cast<int64_t>(t)) != 0) continue;
    gfin.push_back(gt[t]);
    rfin.push_back(rt[t]);
    total += gt[t].numel();
    const int64_t n = gt[t].numel();
    const HostTensor w = normal(DType::kF32, 1, n, rng);
    HostTensor zeros(DType::kF32, 1, n);
    ParamSlot gs, rs;
    for (Backend* b : {static_cast<Backend*>(&be()), &ref()}) {
      const bool is_ref = b == &ref();
      keep.push_back(to_device(*b, w));
      ParamSlot& s = is_ref ? rs : gs;
      s.master = keep.back().tensor;
      s.grad = is_ref ? rt[t] : gt[t];
      keep.push_back(to_device(*b, zeros));
      s.state1 = keep.back().tensor;
      keep.push_back(to_device(*b, zeros));
      s.state2 = keep.back().tensor;
      keep.push_back(poisoned(*b, DType::kBF16, 1, n));
      s.low_precision = keep.back().tensor;
    }
    gslots.push_back(gs);
    rslots.push_back(rs);
  }
  DeviceTensor gn = poisoned(be(), DType::kF32, 1, 1), rn = poisoned(ref(), DType::kF32, 1, 1);
  AMPD_ASSERT_OK(be().global_norm(gfin, gn));
  AMPD_ASSERT_OK(ref().global_norm(rfin, rn));
  expect_close(to_host(be(), gn), to_host(ref(), rn), default_tolerance(DType::kF32, total, 1.0),
               "global_norm of " + std::to_string(gfin.size()) + " tensors");
  AdamWParams hp;
  hp.lr = 1e-2f;
  hp.weight_decay = 0.1f;
  for (int step = 1; step <= 2; ++step) {
    hp.step = step;
    AMPD_ASSERT_OK(be().adamw_step(gslots, hp));
    AMPD_ASSERT_OK(ref().adamw_step(rslots, hp));
  }
  for (size_t i = 0; i < gslots.size(); ++i) {
    const std::string at = "adamw slot " + std::to_string(i);
    const HostTensor w = to_host(be(), gslots[i].master);
    expect_close(w, to_host(ref(), rslots[i].master), Tolerance{2e-6, 2e-6}, at + " master");
    std::vector<double> rounded;
    for (int64_t k = 0; k < w.numel(); ++k) rounded.push_back(round_to(DType::kBF16, w.get(k)));
    expect_close(to_host(be(), gslots[i].low_precision), rounded, kExact, at + " bf16 copy");
  }
}

// ---- determinism
// ------------------------------------------------------------------------------------

// Everything that reduces (matmul with a long K, column sums, row statistics, the global
// norm, the loss) gives the same bits when run again on the same inputs.
TEST_F(CudaBackendTest, ResultsAreBitIdenticalRunToRun) {
  Rng rng(11);
  const int64_t N = 1024, C = 1000, K = 8192;
  const HostTensor a = normal(DType::kBF16, 128, K, rng), b = normal(DType::kBF16, K, 96, rng);
  const HostTensor x = normal(DType::kBF16, N, C, rng, 0.5, 2.0),
                   dy = normal(DType::kBF16, N, C, rng);
  const HostTensor gamma = normal(DType::kF32, 1, C, rng, 1.0, 0.5),
                   beta = normal(DType::kF32, 1, C, rng);
  HostTensor labels(DType::kI32, 1, N);
  for (int64_t i = 0; i < N; ++i) labels.set(i, static_cast<double>(rng.integer(0, C - 1)));
  DeviceTensor A = to_device(be(), a), B = to_device(be(), b), X = to_device(be(), x),
               DY = to_device(be(), dy), G = to_device(be(), gamma), Bt = to_device(be(), beta),
               L = to_device(be(), labels);
  auto run = [&]() {
    std::vector<std::vector<uint8_t>> out;
    DeviceTensor c = poisoned(be(), DType::kF32, 128, 96);
    AMPD_EXPECT_OK(be().matmul(mm(A, B, c)));
    out.push_back(to_host(be(), c).bytes);
    DeviceTensor db = poisoned(be(), DType::kF32, 1, C);
    AMPD_EXPECT_OK(be().bias_grad(DY, db));
    out.push_back(to_host(be(), db).bytes);
    DeviceTensor y = poisoned(be(), DType::kBF16, N, C), mean = poisoned(be(), DType::kF32, 1, N),
                 rstd = poisoned(be(), DType::kF32, 1, N), dx = poisoned(be(), DType::kBF16, N, C),
                 dg = poisoned(be(), DType::kF32, 1, C), dbt = poisoned(be(), DType::kF32, 1, C);
    AMPD_EXPECT_OK(be().layernorm_forward(X, G, Bt, y, mean, rstd, 1e-5f));
    AMPD_EXPECT_OK(be().layernorm_backward(DY, X, G, mean, rstd, dx, dg, dbt));
    for (const DeviceTensor* t : {&y, &mean, &rstd, &dx, &dg, &dbt})
      out.push_back(to_host(be(), *t).bytes);
    DeviceTensor bm = poisoned(be(), DType::kF32, 1, C), brs = poisoned(be(), DType::kF32, 1, C),
                 rm = device_filled(be(), DType::kF32, 1, C, 0.0f),
                 rv = device_filled(be(), DType::kF32, 1, C, 1.0f);
    AMPD_EXPECT_OK(be().batchnorm_forward_train(X, G, Bt, y, bm, brs, rm, rv, 0.1f, 1e-5f));
    AMPD_EXPECT_OK(be().batchnorm_backward(DY, X, G, bm, brs, dx, dg, dbt));
    for (const DeviceTensor* t : {&y, &bm, &brs, &rm, &rv, &dx, &dg, &dbt}) {
      out.push_back(to_host(be(), *t).bytes);
    }
    DeviceTensor loss = poisoned(be(), DType::kF32, 1, N), lse = poisoned(be(), DType::kF32, 1, N);
    AMPD_EXPECT_OK(be().softmax_xent_forward(X, L, loss, lse));
    out.push_back(to_host(be(), loss).bytes);
    DeviceTensor norm = poisoned(be(), DType::kF32, 1, 1);
    const std::vector<Tensor> gl = {c.tensor, db.tensor, dg.tensor};
    AMPD_EXPECT_OK(be().global_norm(gl, norm));
    out.push_back(to_host(be(), norm).bytes);
    return out;
  };
  const auto first = run();
  const auto second = run();
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(first[i], second[i]) << "output " << i;
}

}  // namespace
}  // namespace ampd::test
