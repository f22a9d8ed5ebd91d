// Numerics of the CPU backend that a comparison with the reference cannot show:
//   (a) FP16 matmul accumulates in FP32: within the FP32 error bound where an FP16
//       accumulator would be off by most of the result;
//   (b) unscale_and_check flags exactly the tensors holding inf / NaN, wherever the bad
//       element sits (middle, last element, a vector tail, a later parallel task), and
//       scales the others exactly;
//   (c) determinism: the same inputs give the same bits, run after run, and the
//       hand-written reductions (and the sequence ops) do not even depend on the thread
//       count;
//   (d) an FP16 matmul is bit-identical to the FP32 matmul of the widened operands (the
//       same arithmetic: products of FP16 values are exact in FP32);
//   (e) the optimizers flush FP32 subnormals to zero (m, v and w never hold one), agree
//       with the reference to the last bit that matters, and leave every thread's MXCSR
//       as they found it (later ops keep IEEE subnormals);
// plus the primitive cache, the accuracy of oneDNN's GELU / tanh, and softmax on large
// logits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <numbers>
#include <string>
#include <vector>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "kernels/cpu/cpu_backend.h"
#include "kernels/half.h"
#include "kernels/reference/reference_backend.h"
#include "tests/kernels/test_util.h"

namespace ampd::test {
namespace {

std::unique_ptr<Backend> cpu(int threads = 0) {
  StatusOr<std::unique_ptr<Backend>> be = make_cpu_backend(CpuBackendOptions{threads});
  EXPECT_TRUE(be.ok()) << be.status().to_string();
  return be.ok() ? std::move(be).value() : nullptr;
}

HostTensor normal(DType t, int64_t rows, int64_t cols, Rng& rng, double mean = 0.0,
                  double stddev = 1.0) {
  HostTensor h(t, rows, cols);
  fill_normal(h, rng, mean, stddev);
  return h;
}

MatmulArgs mm(const Tensor& a, const Tensor& b, const Tensor& c) {
  MatmulArgs m;
  m.a = a;
  m.b = b;
  m.c = c;
  return m;
}

DeviceTensor nan_filled(Backend& be, DType t, int64_t rows, int64_t cols) {
  return device_filled(be, t, rows, cols, std::numeric_limits<float>::quiet_NaN());
}

// ---- (a) FP32 accumulation of FP16 products ---------------------------------------------------

// C (4 x 3) = A (4 x K) B (K x 3), K = 65536, with FP16 entries k 2^-10, k in [1, 1023]:
// positive products k1 k2 2^-20 (exact in FP32), sums below 2^16 with 2^-20 resolution, so
// the FP64 dot product is exact.
//
// Bound: recursive FP32 summation of K non-negative terms has relative error at most
// gamma_K = K u / (1 - K u), u = 2^-24 (Higham, Accuracy and Stability, 4.2); for K = 2^16
// that is ~2^-8 = 0.0039. Any FP32 summation order (oneDNN's blocked sums do better) is
// within it.
//
// FP16 accumulation (the running sum rounded to FP16 after each addition) stagnates: once
// the sum reaches 2048 the FP16 spacing is 2, and every product (< 1) rounds away. The
// true sum is ~16384, so the FP16 result is off by ~87%, more than 200x the FP32 bound.
TEST(CpuNumerics, Fp16MatmulAccumulatesInFp32) {
  auto be = cpu();
  ASSERT_NE(be, nullptr);
  const int64_t M = 4, N = 3, K = 65536;
  Rng rng(1);
  HostTensor a(DType::kF16, M, K), b(DType::kF16, K, N);
  for (int64_t i = 0; i < a.numel(); ++i) a.set(i, rng.integer(1, 1023) * 0x1p-10);
  for (int64_t i = 0; i < b.numel(); ++i) b.set(i, rng.integer(1, 1023) * 0x1p-10);
  DeviceTensor A = to_device(*be, a), B = to_device(*be, b);
  DeviceTensor C = nan_filled(*be, DType::kF32, M, N);
  AMPD_ASSERT_OK(be->matmul(mm(A, B, C)));
  const HostTensor c = to_host(*be, C);

  const double bound = K * 0x1p-24 / (1.0 - K * 0x1p-24);
  double worst_fp32 = 0.0, best_fp16 = 1.0;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double exact = 0.0;
      uint16_t fp16_sum = 0;  // +0
      for (int64_t k = 0; k < K; ++k) {
        const double p = a.get(i, k) * b.get(k, j);  // exact
        exact += p;                                  // exact (see above)
        // FP16 accumulator: the exact sum of the FP16 partial sum and the product,
        // rounded once to FP16.
        fp16_sum = f64_to_f16_bits(static_cast<double>(f16_bits_to_f32(fp16_sum)) + p);
      }
      const double rel32 = std::fabs(c.get(i, j) - exact) / exact;
      const double rel16 = std::fabs(f16_bits_to_f32(fp16_sum) - exact) / exact;
      worst_fp32 = std::max(worst_fp32, rel32);
      best_fp16 = std::min(best_fp16, rel16);
      EXPECT_LE(rel32, bound) << "C[" << i << "," << j << "] = " << c.get(i, j) << ", exact "
                              << exact;
      EXPECT_GT(rel16, 100 * bound)
          << "FP16 accumulation unexpectedly accurate: " << f16_bits_to_f32(fp16_sum) << " vs "
          << exact;
      EXPECT_LE(f16_bits_to_f32(fp16_sum), 4096.0) << "FP16 running sum should stagnate";
    }
  }
  RecordProperty("fp32_worst_relative_error", std::to_string(worst_fp32));
  RecordProperty("fp16_best_relative_error", std::to_string(best_fp16));
  // In practice the FP32 result is far better than the worst-case bound.
  EXPECT_LT(worst_fp32, 1e-5);
}

// The same for BF16 operands (vdpbf16ps accumulates in FP32): BF16 k 2^-7, k in [1, 127].
TEST(CpuNumerics, Bf16MatmulAccumulatesInFp32) {
  auto be = cpu();
  ASSERT_NE(be, nullptr);
  const int64_t M = 3, N = 2, K = 65536;
  Rng rng(2);
  HostTensor a(DType::kBF16, M, K), b(DType::kBF16, N, K);  // B transposed
  for (int64_t i = 0; i < a.numel(); ++i) a.set(i, rng.integer(1, 127) * 0x1p-7);
  for (int64_t i = 0; i < b.numel(); ++i) b.set(i, rng.integer(1, 127) * 0x1p-7);
  DeviceTensor A = to_device(*be, a), B = to_device(*be, b);
  DeviceTensor C = nan_filled(*be, DType::kF32, M, N);
  MatmulArgs args = mm(A, B, C);
  args.trans_b = true;
  AMPD_ASSERT_OK(be->matmul(args));
  const HostTensor c = to_host(*be, C);
  const double bound = K * 0x1p-24 / (1.0 - K * 0x1p-24);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double exact = 0.0;
      for (int64_t k = 0; k < K; ++k) exact += a.get(i, k) * b.get(j, k);
      EXPECT_LE(std::fabs(c.get(i, j) - exact) / exact, bound) << i << "," << j;
    }
  }
}

// ---- (b) unscale_and_check ------------------------------------------------------------------

struct Grad {
  int64_t n;
  int64_t bad_at;  // -1: clean
  float bad;
};

void check_unscale(const std::vector<Grad>& spec, float inv_scale) {
  auto be = cpu();
  ASSERT_NE(be, nullptr);
  Rng rng(3);
  std::vector<HostTensor> host;
  std::vector<DeviceTensor> dev;
  std::vector<Tensor> views;
  for (const Grad& g : spec) {
    HostTensor h = normal(DType::kF32, 1, g.n, rng, 0.0, 1e4);
    if (g.bad_at >= 0) h.set(g.bad_at, g.bad);
    host.push_back(h);
    dev.push_back(to_device(*be, h));
    views.push_back(dev.back().tensor);
  }
  DeviceTensor flags = device_filled(*be, DType::kI32, 1, static_cast<int64_t>(spec.size()), -7);
  AMPD_ASSERT_OK(be->unscale_and_check(views, inv_scale, flags));
  const HostTensor f = to_host(*be, flags);
  for (size_t t = 0; t < spec.size(); ++t) {
    const bool bad = spec[t].bad_at >= 0 && !std::isfinite(spec[t].bad * inv_scale);
    EXPECT_EQ(f.get(static_cast<int64_t>(t)), bad ? 1 : 0)
        << "tensor " << t << " (n=" << spec[t].n << ", bad at " << spec[t].bad_at << ")";
    if (bad) continue;
    // A power-of-two scale is exact (no underflow here): every element must be g * s.
    const HostTensor got = to_host(*be, dev[t].tensor);
    for (int64_t i = 0; i < spec[t].n; ++i) {
      const float expected = static_cast<float>(host[t].get(i)) * inv_scale;
      ASSERT_EQ(std::memcmp(&expected, got.bytes.data() + 4 * i, 4), 0)
          << "tensor " << t << " element " << i << ": " << got.get(i) << " vs " << expected;
    }
  }
}

TEST(CpuNumerics, UnscaleAndCheckFlagsExactlyTheNonFiniteTensors) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  check_unscale(
      {
          {1000, -1, 0},         // clean
          {1000, 500, nan},      // NaN in the middle
          {4099, 4098, inf},     // +inf at the last element
          {37, 33, -inf},        // -inf in the tail after two 16-lane vectors
          {100000, -1, 0},       // clean, several parallel tasks
          {100000, 40000, nan},  // NaN in the second task of a tensor
          {1, -1, 0},            // clean single element
          {1, 0, -inf},          // a single bad element
          {70001, 70000, inf},   // last element of the last (short) task
      },
      0x1p-16f);
}

TEST(CpuNumerics, UnscaleAndCheckWithUnitScaleOnlyChecks) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  check_unscale({{513, -1, 0}, {513, 512, nan}, {40000, 32768, nan}}, 1.0f);
}

TEST(CpuNumerics, UnscaleAndCheckFlagsOverflowCausedByTheScale) {
  // 3e38 is finite, but 3e38 * 2 is not: flagged "after scaling".
  check_unscale({{100, 50, 3e38f}, {100, -1, 0}}, 2.0f);
}

// ---- (c) determinism ---------------------------------------------------------------------------

struct LayerNormRun {
  HostTensor y, mean, rstd, dx, dgamma, dbeta;
};

LayerNormRun run_layernorm(Backend& be, DType t) {
  Rng rng(4);
  const int64_t rows = 67, cols = 1031;
  DeviceTensor x = to_device(be, normal(t, rows, cols, rng, 1.0, 3.0));
  DeviceTensor g = to_device(be, normal(DType::kF32, 1, cols, rng, 1.0, 0.5));
  DeviceTensor b = to_device(be, normal(DType::kF32, 1, cols, rng));
  DeviceTensor dy = to_device(be, normal(t, rows, cols, rng));
  DeviceTensor y = nan_filled(be, t, rows, cols), dx = nan_filled(be, t, rows, cols);
  DeviceTensor m = nan_filled(be, DType::kF32, 1, rows), r = nan_filled(be, DType::kF32, 1, rows);
  DeviceTensor dg = nan_filled(be, DType::kF32, 1, cols), db = nan_filled(be, DType::kF32, 1, cols);
  EXPECT_TRUE(be.layernorm_forward(x, g, b, y, m, r, 1e-5f).ok());
  EXPECT_TRUE(be.layernorm_backward(dy, x, g, m, r, dx, dg, db).ok());
  return {to_host(be, y),  to_host(be, m),  to_host(be, r),
          to_host(be, dx), to_host(be, dg), to_host(be, db)};
}

void expect_same_bits(const LayerNormRun& a, const LayerNormRun& b, const std::string& what) {
  EXPECT_EQ(a.y.bytes, b.y.bytes) << what << " y";
  EXPECT_EQ(a.mean.bytes, b.mean.bytes) << what << " mean";
  EXPECT_EQ(a.rstd.bytes, b.rstd.bytes) << what << " rstd";
  EXPECT_EQ(a.dx.bytes, b.dx.bytes) << what << " dx";
  EXPECT_EQ(a.dgamma.bytes, b.dgamma.bytes) << what << " dgamma";
  EXPECT_EQ(a.dbeta.bytes, b.dbeta.bytes) << what << " dbeta";
}

HostTensor run_matmul(Backend& be, DType t, bool ta, bool tb) {
  Rng rng(5);
  const int64_t M = 257, N = 513, K = 1031;
  DeviceTensor a = to_device(be, normal(t, ta ? K : M, ta ? M : K, rng));
  DeviceTensor b = to_device(be, normal(t, tb ? N : K, tb ? K : N, rng));
  DeviceTensor c = to_device(be, normal(DType::kF32, M, N, rng));
  DeviceTensor bias = to_device(be, normal(DType::kF32, 1, N, rng));
  MatmulArgs args = mm(a, b, c);
  args.trans_a = ta;
  args.trans_b = tb;
  args.alpha = 0.5f;
  args.beta = 1.0f;
  args.bias = bias;
  EXPECT_TRUE(be.matmul(args).ok());
  return to_host(be, c);
}

TEST(CpuNumerics, MatmulIsDeterministic) {
  auto be = cpu(2);
  ASSERT_NE(be, nullptr);
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int tr = 0; tr < 4; ++tr) {
      const HostTensor first = run_matmul(*be, t, tr & 1, tr & 2);
      const HostTensor second = run_matmul(*be, t, tr & 1, tr & 2);
      EXPECT_EQ(first.bytes, second.bytes) << dtype_name(t) << " transposes " << tr;
    }
  }
}

TEST(CpuNumerics, LayerNormIsDeterministicForAnyThreadCount) {
  auto two = cpu(2);
  auto one = cpu(1);
  ASSERT_NE(two, nullptr);
  ASSERT_NE(one, nullptr);
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    const LayerNormRun a = run_layernorm(*two, t);
    const LayerNormRun b = run_layernorm(*two, t);
    const LayerNormRun c = run_layernorm(*one, t);
    expect_same_bits(a, b, std::string(dtype_name(t)) + " run twice:");
    expect_same_bits(a, c, std::string(dtype_name(t)) + " 2 threads vs 1:");
  }
}

// AdamW, bias_grad and global_norm: several steps / calls, bit-identical across runs and
// thread counts.
struct OptimRun {
  HostTensor master, m, v, low, dbias, norm;
};

OptimRun run_optim(Backend& be) {
  Rng rng(6);
  const int64_t n = 100003;
  DeviceTensor w = to_device(be, normal(DType::kF32, 1, n, rng));
  DeviceTensor m = device_filled(be, DType::kF32, 1, n, 0.0f);
  DeviceTensor v = device_filled(be, DType::kF32, 1, n, 0.0f);
  DeviceTensor low = nan_filled(be, DType::kBF16, 1, n);
  DeviceTensor norm = nan_filled(be, DType::kF32, 1, 1);
  for (int step = 1; step <= 3; ++step) {
    DeviceTensor g = to_device(be, normal(DType::kF32, 1, n, rng));
    const Tensor grads[] = {g.tensor};
    EXPECT_TRUE(be.global_norm(grads, norm).ok());
    ParamSlot slot{w, g, m, v, low};
    AdamWParams hp;
    hp.step = step;
    EXPECT_TRUE(be.adamw_step({&slot, 1}, hp).ok());
  }
  DeviceTensor dy = to_device(be, normal(DType::kBF16, 4099, 77, rng));
  DeviceTensor db = nan_filled(be, DType::kF32, 1, 77);
  EXPECT_TRUE(be.bias_grad(dy, db).ok());
  return {to_host(be, w),   to_host(be, m),  to_host(be, v),
          to_host(be, low), to_host(be, db), to_host(be, norm)};
}

TEST(CpuNumerics, OptimizerAndReductionsAreDeterministicForAnyThreadCount) {
  auto two = cpu(2);
  auto one = cpu(1);
  ASSERT_NE(two, nullptr);
  ASSERT_NE(one, nullptr);
  const OptimRun a = run_optim(*two), b = run_optim(*two), c = run_optim(*one);
  for (const OptimRun* other : {&b, &c}) {
    const char* what = other == &b ? "run twice" : "2 threads vs 1";
    EXPECT_EQ(a.master.bytes, other->master.bytes) << what;
    EXPECT_EQ(a.m.bytes, other->m.bytes) << what;
    EXPECT_EQ(a.v.bytes, other->v.bytes) << what;
    EXPECT_EQ(a.low.bytes, other->low.bytes) << what;
    EXPECT_EQ(a.dbias.bytes, other->dbias.bytes) << what;
    EXPECT_EQ(a.norm.bytes, other->norm.bytes) << what;
  }
}

// Embedding backward (several column blocks, repeated ids) and causal softmax (many
// parallel tasks): bit-identical across runs and thread counts.
struct SequenceRun {
  HostTensor dtable, probs, dscores, gathered;
};

SequenceRun run_sequence(Backend& be) {
  Rng rng(8);
  constexpr int64_t V = 300, C = 200, N = 5000, T = 64, rows = 48 * T;
  HostTensor ih(DType::kI32, 1, N);
  fill_integers(ih, rng, -2, V);  // a few out of range
  DeviceTensor ids = to_device(be, ih);
  DeviceTensor dy = to_device(be, normal(DType::kBF16, N, C, rng));
  DeviceTensor dtable = to_device(be, normal(DType::kF32, V, C, rng));
  EXPECT_TRUE(be.embedding_backward(ids, dy, dtable, 0.5f).ok());
  DeviceTensor gathered = nan_filled(be, DType::kF16, N, C);
  EXPECT_TRUE(be.embedding_forward(ids, dtable, gathered).ok());
  DeviceTensor s = to_device(be, normal(DType::kBF16, rows, T, rng, 0.0, 3.0));
  DeviceTensor p = nan_filled(be, DType::kF32, rows, T);
  EXPECT_TRUE(be.causal_softmax_forward(s, p).ok());
  DeviceTensor dp = to_device(be, normal(DType::kF32, rows, T, rng));
  DeviceTensor ds = nan_filled(be, DType::kBF16, rows, T);
  EXPECT_TRUE(be.causal_softmax_backward(p, dp, ds).ok());
  return {to_host(be, dtable), to_host(be, p), to_host(be, ds), to_host(be, gathered)};
}

TEST(CpuNumerics, SequenceOpsAreDeterministicForAnyThreadCount) {
  auto two = cpu(2);
  auto one = cpu(1);
  ASSERT_NE(two, nullptr);
  ASSERT_NE(one, nullptr);
  const SequenceRun a = run_sequence(*two), b = run_sequence(*two), c = run_sequence(*one);
  for (const SequenceRun* other : {&b, &c}) {
    const char* what = other == &b ? "run twice" : "2 threads vs 1";
    EXPECT_EQ(a.dtable.bytes, other->dtable.bytes) << what << ": embedding_backward";
    EXPECT_EQ(a.gathered.bytes, other->gathered.bytes) << what << ": embedding_forward";
    EXPECT_EQ(a.probs.bytes, other->probs.bytes) << what << ": causal_softmax_forward";
    EXPECT_EQ(a.dscores.bytes, other->dscores.bytes) << what << ": causal_softmax_backward";
  }
}

// ---- (d) FP16 matmul == FP32 matmul of the widened operands
// --------------------------------------

HostTensor widened(const HostTensor& h) {
  HostTensor w(DType::kF32, h.rows, h.cols);
  for (int64_t i = 0; i < h.numel(); ++i) w.set(i, h.get(i));
  return w;
}

TEST(CpuNumerics, Fp16MatmulEqualsFp32MatmulOfWidenedInputs) {
  auto be = cpu();
  ASSERT_NE(be, nullptr);
  Rng rng(7);
  struct Case {
    int64_t M, N, K;
    float alpha, beta;
    bool bias;
  };
  for (const Case cs : {Case{1, 1, 1, 1, 0, false}, Case{7, 513, 64, 1, 0, true},
                        Case{64, 7, 513, 0.5f, 1, true}, Case{129, 65, 1031, -1, 0.25f, false}}) {
    for (int tr = 0; tr < 4; ++tr) {
      const bool ta = tr & 1, tb = tr & 2;
      const std::string what = std::to_string(cs.M) + "x" + std::to_string(cs.N) + "x" +
                               std::to_string(cs.K) + " transposes " + std::to_string(tr);
      const HostTensor a = normal(DType::kF16, ta ? cs.K : cs.M, ta ? cs.M : cs.K, rng);
      const HostTensor b = normal(DType::kF16, tb ? cs.N : cs.K, tb ? cs.K : cs.N, rng);
      const HostTensor c16 = normal(DType::kF16, cs.M, cs.N, rng);
      const HostTensor bias16 = normal(DType::kF16, 1, cs.N, rng);
      auto run = [&](DType in, DType out) {
        const bool wide = in == DType::kF32;
        DeviceTensor A = to_device(*be, wide ? widened(a) : a);
        DeviceTensor B = to_device(*be, wide ? widened(b) : b);
        DeviceTensor C = to_device(*be, out == DType::kF32 ? widened(c16) : c16);
        DeviceTensor bias = to_device(*be, out == DType::kF32 ? widened(bias16) : bias16);
        MatmulArgs args = mm(A, B, C);
        args.trans_a = ta;
        args.trans_b = tb;
        args.alpha = cs.alpha;
        args.beta = cs.beta;
        if (cs.bias) args.bias = bias;
        EXPECT_TRUE(be->matmul(args).ok());
        return to_host(*be, C);
      };
      // FP16 inputs, FP32 output: bit-identical to the FP32 matmul.
      const HostTensor f32 = run(DType::kF32, DType::kF32);
      EXPECT_EQ(run(DType::kF16, DType::kF32).bytes, f32.bytes) << what << " (f32 C)";
      // FP16 output: the FP32 result rounded once.
      const HostTensor h = run(DType::kF16, DType::kF16);
      for (int64_t i = 0; i < h.numel(); ++i) {
        ASSERT_EQ(h.bits16(i), f32_to_f16_bits(static_cast<float>(f32.get(i))))
            << what << " (f16 C) element " << i;
      }
    }
  }
}

// ---- CPU-specific behaviour
// -----------------------------------------------------------------------

// ---- (e) optimizers flush subnormals, and only inside the op
// -------------------------------------

bool is_subnormal(float x) {
  return x != 0.0f && std::fabs(x) < std::numeric_limits<float>::min();
}

// n elements, several parallel tasks (kGrain = 32768), so both threads run the update.
// Gradients cycle through: 1e-20 (g^2 = 1e-40 is subnormal), 1e-39 (itself subnormal),
// -2^-64 and 1 (normal moments). State starts at 0, master at 1.
TEST(CpuNumerics, OptimizersFlushSubnormalsAndRestoreTheFloatingPointMode) {
  auto be = cpu(2);
  auto ref = make_reference_backend();
  ASSERT_NE(be, nullptr);
  const int64_t n = 100003;
  const float grads[] = {1e-20f, 1e-39f, -0x1p-64f, 1.0f};
  std::vector<double> g(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) g[static_cast<size_t>(i)] = grads[i % 4];
  const HostTensor g_host = HostTensor::from(DType::kF32, 1, n, g);
  ASSERT_TRUE(is_subnormal(static_cast<float>(g_host.get(1))));

  struct Side {
    DeviceTensor w, grad, m, v;
  };
  auto make = [&](Backend& b) {
    return Side{device_filled(b, DType::kF32, 1, n, 1.0f), to_device(b, g_host),
                device_filled(b, DType::kF32, 1, n, 0.0f),
                device_filled(b, DType::kF32, 1, n, 0.0f)};
  };
  Side c = make(*be), r = make(*ref);
  for (int step = 1; step <= 3; ++step) {
    AdamWParams hp;
    hp.step = step;
    ParamSlot cs{c.w, c.grad, c.m, c.v, {}}, rs{r.w, r.grad, r.m, r.v, {}};
    AMPD_ASSERT_OK(be->adamw_step({&cs, 1}, hp));
    AMPD_ASSERT_OK(ref->adamw_step({&rs, 1}, hp));
  }
  const HostTensor w = to_host(*be, c.w), m = to_host(*be, c.m), v = to_host(*be, c.v);
  const HostTensor rw = to_host(*ref, r.w), rv = to_host(*ref, r.v);
  // The reference keeps IEEE subnormals: v of the 1e-20 gradients is one.
  ASSERT_TRUE(is_subnormal(static_cast<float>(rv.get(0)))) << rv.get(0);
  for (int64_t i = 0; i < n; ++i) {
    const auto wi = static_cast<float>(w.get(i)), mi = static_cast<float>(m.get(i)),
               vi = static_cast<float>(v.get(i));
    ASSERT_FALSE(is_subnormal(wi) || is_subnormal(mi) || is_subnormal(vi))
        << "element " << i << ": w " << wi << " m " << mi << " v " << vi;
    // g^2 (1e-40) and the subnormal gradient itself flush: v = 0 (and m = 0 for 1e-39).
    if (i % 4 == 0 || i % 4 == 1) {
      ASSERT_EQ(vi, 0.0f) << "element " << i;
    }
    if (i % 4 == 1) {
      ASSERT_EQ(mi, 0.0f) << "element " << i;
    }
    // The weights agree with the IEEE reference: a flushed v moves sqrt(v) + eps by less
    // than 1e-20 against eps = 1e-8.
    ASSERT_NEAR(wi, rw.get(i), 2e-7) << "element " << i;
  }

  SgdParams sgd;
  sgd.lr = 1e-20f;  // lr * g: 1e-40 for g = 1e-20, subnormal
  sgd.momentum = 0.5f;
  sgd.first_step = true;
  DeviceTensor zero_w = device_filled(*be, DType::kF32, 1, n, 0.0f);
  DeviceTensor buf = device_filled(*be, DType::kF32, 1, n, 0.0f);
  ParamSlot ss{zero_w, c.grad, buf, {}, {}};
  AMPD_ASSERT_OK(be->sgd_step({&ss, 1}, sgd));
  const HostTensor sw = to_host(*be, zero_w), sb = to_host(*be, buf);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_FALSE(is_subnormal(static_cast<float>(sw.get(i))) ||
                 is_subnormal(static_cast<float>(sb.get(i))))
        << "sgd element " << i << ": w " << sw.get(i) << " buffer " << sb.get(i);
  }

  // Outside the optimizers subnormals are IEEE again, on the calling thread and on every
  // worker: unscaling 2^-100 by 2^-30 gives exactly 2^-130 in every parallel task.
#if defined(__x86_64__)
  EXPECT_EQ(_mm_getcsr() & 0x8040u, 0u) << "FTZ/DAZ left set on the calling thread";
#endif
  volatile float tiny = 0x1p-100f;
  EXPECT_EQ(tiny * 0x1p-30f, 0x1p-130f);
  DeviceTensor t = device_filled(*be, DType::kF32, 1, n, 0x1p-100f);
  DeviceTensor flag = device_filled(*be, DType::kI32, 1, 1, 0.0f);
  const Tensor list[] = {t.tensor};
  AMPD_ASSERT_OK(be->unscale_and_check(list, 0x1p-30f, flag));
  const HostTensor th = to_host(*be, t);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(static_cast<float>(th.get(i)), 0x1p-130f) << "element " << i;
  }
}

TEST(CpuBackend, DescribesItself) {
  auto be = cpu(2);
  ASSERT_NE(be, nullptr);
  EXPECT_EQ(be->name(), "cpu");
  const std::string d = be->device_description();
  EXPECT_NE(d.find("oneDNN"), std::string::npos) << d;
  EXPECT_NE(d.find("2 threads"), std::string::npos) << d;
  EXPECT_TRUE(be->supports(DType::kF32));
  EXPECT_TRUE(be->supports(DType::kF16));
  EXPECT_TRUE(be->supports(DType::kBF16));
  EXPECT_FALSE(be->supports(DType::kI32));
  RecordProperty("device", d);
  RecordProperty("prefers_bf16", be->prefers_bf16() ? "true" : "false");
  EXPECT_GT(be->memory_stats().device_total_bytes, 0u);
}

TEST(CpuBackend, RejectsNegativeThreadCount) {
  EXPECT_EQ(make_cpu_backend(CpuBackendOptions{-1}).status().code(), StatusCode::kInvalidArgument);
}

TEST(CpuBackend, MatmulPrimitivesAreCachedPerShape) {
  CpuBackend be(CpuBackendOptions{});
  Rng rng(8);
  DeviceTensor a = to_device(be, normal(DType::kF32, 33, 65, rng));
  DeviceTensor b = to_device(be, normal(DType::kF32, 65, 17, rng));
  DeviceTensor c = nan_filled(be, DType::kF32, 33, 17);
  for (int i = 0; i < 5; ++i) AMPD_ASSERT_OK(be.matmul(mm(a, b, c)));
  EXPECT_EQ(be.cached_matmul_primitives(), 1u);
  MatmulArgs scaled = mm(a, b, c);
  scaled.alpha = 2.0f;
  AMPD_ASSERT_OK(be.matmul(scaled));
  EXPECT_EQ(be.cached_matmul_primitives(), 2u);
  // FP16 operands reuse the FP32 primitive (they are widened first).
  DeviceTensor a16 = to_device(be, normal(DType::kF16, 33, 65, rng));
  DeviceTensor b16 = to_device(be, normal(DType::kF16, 65, 17, rng));
  AMPD_ASSERT_OK(be.matmul(mm(a16, b16, c)));
  EXPECT_EQ(be.cached_matmul_primitives(), 2u);
}

// oneDNN's GELU uses an erf approximation; pin its accuracy (in FP32, over [-10, 10]) so
// that a library change which loosens it is noticed: absolute error < 5e-7 in GELU and in
// its derivative (measured: 3.7e-7 and 2.8e-7), relative error < 2e-6 where |GELU(x)| > 0.1
// (measured: 1.0e-6). tanh: < 2^-22 relative (measured 7e-8); tanh' < 2e-7 absolute.
TEST(CpuBackend, GeluAndTanhAccuracy) {
  auto be = cpu();
  ASSERT_NE(be, nullptr);
  const int64_t n = 20001;
  HostTensor x(DType::kF32, 1, n);
  for (int64_t i = 0; i < n; ++i) x.set(i, -10.0 + 20.0 * i / (n - 1));
  DeviceTensor X = to_device(*be, x);
  DeviceTensor ones = device_filled(*be, DType::kF32, 1, n, 1.0f);
  DeviceTensor y = nan_filled(*be, DType::kF32, 1, n), dx = nan_filled(*be, DType::kF32, 1, n);
  for (Activation act : {Activation::kGELU, Activation::kTanh}) {
    AMPD_ASSERT_OK(be->activation_forward(act, X, y));
    AMPD_ASSERT_OK(be->activation_backward(act, X, ones, dx));
    const HostTensor yh = to_host(*be, y), dh = to_host(*be, dx);
    for (int64_t i = 0; i < n; ++i) {
      const double v = x.get(i);
      double f, df;
      if (act == Activation::kGELU) {
        const double cdf = 0.5 * std::erfc(-v / std::sqrt(2.0));
        f = v * cdf;
        df = cdf + v * std::exp(-0.5 * v * v) / std::sqrt(2.0 * std::numbers::pi);
        ASSERT_LE(std::fabs(yh.get(i) - f), 5e-7) << "gelu(" << v << ")";
        ASSERT_LE(std::fabs(dh.get(i) - df), 5e-7) << "gelu'(" << v << ")";
        if (std::fabs(f) > 0.1) {
          ASSERT_LE(std::fabs(yh.get(i) - f) / std::fabs(f), 2e-6) << "gelu(" << v << ")";
        }
      } else {
        f = std::tanh(v);
        df = 1.0 - f * f;
        ASSERT_LE(std::fabs(yh.get(i) - f), 0x1p-22 * std::fabs(f)) << "tanh(" << v << ")";
        ASSERT_LE(std::fabs(dh.get(i) - df), 2e-7) << "tanh'(" << v << ")";
      }
    }
  }
}

// Logits far from 0 (a constant shift of 1e4): the max-subtraction keeps exp in range.
TEST(CpuBackend, SoftmaxCrossEntropyOnLargeLogits) {
  auto be = cpu();
  ASSERT_NE(be, nullptr);
  auto ref = make_reference_backend();
  Rng rng(9);
  HostTensor logits = normal(DType::kF32, 5, 1000, rng, 1e4, 3.0);
  HostTensor labels(DType::kI32, 1, 5);
  fill_integers(labels, rng, 0, 999);
  HostTensor out[2][2];
  Backend* backends[] = {be.get(), ref.get()};
  for (int k = 0; k < 2; ++k) {
    DeviceTensor x = to_device(*backends[k], logits), l = to_device(*backends[k], labels);
    DeviceTensor loss = nan_filled(*backends[k], DType::kF32, 1, 5);
    DeviceTensor lse = nan_filled(*backends[k], DType::kF32, 1, 5);
    AMPD_ASSERT_OK(backends[k]->softmax_xent_forward(x, l, loss, lse));
    out[k][0] = to_host(*backends[k], loss);
    out[k][1] = to_host(*backends[k], lse);
  }
  // lse ~ 1e4: its FP32 ulp is 2^-10; the loss inherits that absolute error.
  expect_close(out[0][1], out[1][1], Tolerance{2 * 0x1p-10, 0}, "lse");
  expect_close(out[0][0], out[1][0], Tolerance{2 * 0x1p-10, 0}, "loss");
}

}  // namespace
}  // namespace ampd::test
