// Conformance of every fast backend with the FP64 reference backend (the oracle).
//
// The suite is parameterized over (backend, dtype): every op of the Backend interface runs
// on the backend under test ("dut") and on ReferenceBackend with the same inputs, and the
// outputs are compared. Backends come from conformance_backends() below: "cpu" (oneDNN),
// and "cuda" (the dlopen plugin), which skips itself with the reason when no plugin or no
// GPU is there. To add a backend, add one line to that list.
//
// Method:
//   * Inputs are random (fixed seeds) and exactly representable in their dtype, so both
//     backends see the same values. Sizes are awkward on purpose: 1, 7, 513, 1031,
//     4099 ... (not multiples of any vector width), and a few tensors larger than one
//     parallel task of the CPU backend (32768 elements).
//   * Outputs are poisoned before the op (NaN for floats, junk for integers), on both
//     backends, so an element the dut forgets to write shows up as a mismatch.
//   * Tolerances: default_tolerance(out_dtype, K, magnitude) from test_util.h (one ulp of
//     the output dtype for the rounding, 4 sqrt(K) 2^-24 for an FP32 sum of K terms, and an
//     absolute part scaled by the size of the terms), stated per op where it differs.
//     Results that are exact by construction (casts, ReLU, masks, argmax, flags) are
//     compared bit for bit (kExact).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <ostream>
#include <source_location>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/backend.h"
#include "kernels/backend_factory.h"  // load_cuda_backend (ampd_kernels)
#include "kernels/reference/reference_backend.h"
#include "tests/kernels/test_util.h"
#if AMPD_TEST_HAVE_CPU_BACKEND
#include "kernels/cpu/cpu_backend.h"
#endif

// Where the CUDA plugin is looked for: the build's bin directory (tests/kernels/CMakeLists.txt
// sets it); "" means next to this test executable.
#ifndef AMPD_TEST_CUDA_PLUGIN_DIR
#define AMPD_TEST_CUDA_PLUGIN_DIR ""
#endif

namespace ampd {
// Readable dtypes in gtest's messages ("GetParam() = (cpu, bf16)").
inline void PrintTo(DType t, std::ostream* os) {
  *os << dtype_name(t);
}
}  // namespace ampd

namespace ampd::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- the backends under test -------------------------------------------------------------

struct BackendEntry {
  std::string name;
  std::function<StatusOr<std::unique_ptr<Backend>>()> create;
};

// Every backend that is checked against the reference. A backend whose create() fails
// (no GPU, plugin not built) is skipped with the reason. "cpu" needs oneDNN, which the
// AMPD_KERNELS_ONLY build (the GPU machine) does not have; "cuda" is always registered.
std::vector<BackendEntry> conformance_backends() {
  std::vector<BackendEntry> list;
#if AMPD_TEST_HAVE_CPU_BACKEND
  list.push_back({"cpu", [] { return make_cpu_backend(CpuBackendOptions{}); }});
#endif
  list.push_back({"cuda", [] { return load_cuda_backend(AMPD_TEST_CUDA_PLUGIN_DIR); }});
  return list;
}

std::vector<std::string> backend_names() {
  std::vector<std::string> names;
  for (const BackendEntry& e : conformance_backends()) names.push_back(e.name);
  return names;
}

// One instance of each backend for the whole run (a CUDA context is slow to create).
struct Instance {
  std::unique_ptr<Backend> backend;
  std::string unavailable;  // why backend is null
};

Instance& instance(const std::string& name) {
  static std::map<std::string, Instance> instances;
  auto it = instances.find(name);
  if (it != instances.end()) return it->second;
  Instance inst;
  for (const BackendEntry& e : conformance_backends()) {
    if (e.name != name) continue;
    StatusOr<std::unique_ptr<Backend>> made = e.create();
    if (made.ok()) {
      inst.backend = std::move(made).value();
    } else {
      inst.unavailable = made.status().to_string();
    }
  }
  if (!inst.backend && inst.unavailable.empty()) inst.unavailable = "not registered";
  return instances.emplace(name, std::move(inst)).first->second;
}

Backend& reference() {
  static std::unique_ptr<Backend> ref = make_reference_backend();
  return *ref;
}

// ---- helpers -----------------------------------------------------------------------------

HostTensor normal(DType t, int64_t rows, int64_t cols, Rng& rng, double mean = 0.0,
                  double stddev = 1.0) {
  HostTensor h(t, rows, cols);
  fill_normal(h, rng, mean, stddev);
  return h;
}

HostTensor uniform(DType t, int64_t rows, int64_t cols, Rng& rng, double lo, double hi) {
  HostTensor h(t, rows, cols);
  fill_uniform(h, rng, lo, hi);
  return h;
}

// Fills with values no op produces by accident: NaN for floats, junk for integers.
DeviceTensor poisoned(Backend& be, DType t, int64_t rows, int64_t cols) {
  DeviceTensor d = device_tensor(be, t, rows, cols);
  const float junk = t == DType::kI32 ? -12345.0f : t == DType::kU8 ? 165.0f : kNaN;
  const Status s = be.fill(d.tensor, junk);
  if (!s.ok()) ADD_FAILURE() << "poison: " << s.to_string();
  return d;
}

std::string dims(int64_t a, int64_t b, int64_t c) {
  return std::to_string(a) + "x" + std::to_string(b) + "x" + std::to_string(c);
}

// The same tensor on the backend under test and on the reference.
struct Pair {
  DeviceTensor dut;
  DeviceTensor ref;
};

using Param = std::tuple<std::string, DType>;

class Conformance : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    Instance& inst = instance(std::get<0>(GetParam()));
    if (!inst.backend) GTEST_SKIP() << std::get<0>(GetParam()) << ": " << inst.unavailable;
    dut_ = inst.backend.get();
    if (!dut_->supports(dt())) {
      GTEST_SKIP() << dut_->name() << " does not support " << dtype_name(dt());
    }
  }

  Backend& dut() { return *dut_; }
  Backend& ref() { return reference(); }
  DType dt() const { return std::get<1>(GetParam()); }

  Pair both(const HostTensor& h) { return {to_device(dut(), h), to_device(ref(), h)}; }
  Pair outputs(DType t, int64_t rows, int64_t cols) {
    return {poisoned(dut(), t, rows, cols), poisoned(ref(), t, rows, cols)};
  }
  // An output that the op also reads (beta != 0, in-place): the same start values.
  Pair inout(const HostTensor& h) { return both(h); }

  HostTensor dut_host(const Pair& p) { return to_host(dut(), p.dut); }
  HostTensor ref_host(const Pair& p) { return to_host(ref(), p.ref); }

  void expect_same(const Pair& p, Tolerance tol, const std::string& what,
                   std::source_location loc = std::source_location::current()) {
    expect_close(dut_host(p), ref_host(p), tol, what, loc);
  }

  // Runs op(backend, tensor-of-that-backend...) on both backends; both must succeed.
  template <typename Op>
  void run(Op op) {
    const Status a = op(dut(), false);
    ASSERT_TRUE(a.ok()) << dut().name() << ": " << a.to_string();
    const Status b = op(ref(), true);
    ASSERT_TRUE(b.ok()) << "reference: " << b.to_string();
  }

 private:
  Backend* dut_ = nullptr;
};

// Selects the dut's or the reference's half of a Pair.
const Tensor& pick(const Pair& p, bool is_ref) {
  return is_ref ? p.ref.tensor : p.dut.tensor;
}
Tensor pick_opt(const Pair* p, bool is_ref) {
  return p ? pick(*p, is_ref) : Tensor{};
}

// ---- memory ---------------------------------------------------------------------------------

TEST_P(Conformance, UploadDownloadCopyRoundTripBitExact) {
  Rng rng(11);
  for (int64_t n : {1, 7, 513, 40000}) {
    HostTensor h = normal(dt(), 1, n, rng);
    DeviceTensor a = to_device(dut(), h);
    DeviceTensor b = poisoned(dut(), dt(), 1, n);
    AMPD_ASSERT_OK(dut().copy(b, a));
    HostTensor back = to_host(dut(), b);
    EXPECT_EQ(back.bytes, h.bytes) << "n=" << n;
  }
  HostTensor labels(DType::kI32, 1, 9);
  fill_integers(labels, rng, -5, 5);
  EXPECT_EQ(to_host(dut(), to_device(dut(), labels)).bytes, labels.bytes);
  AMPD_EXPECT_OK(dut().synchronize());
}

TEST_P(Conformance, MemoryStatsCountAllocations) {
  const MemoryStats before = dut().memory_stats();
  {
    StatusOr<Buffer> buf = dut().allocate(1000);
    ASSERT_TRUE(buf.ok()) << buf.status().to_string();
    EXPECT_NE(buf->data(), nullptr);
    EXPECT_EQ(dut().memory_stats().in_use_bytes, before.in_use_bytes + 1000);
    EXPECT_GE(dut().memory_stats().peak_bytes, before.in_use_bytes + 1000);
  }
  EXPECT_EQ(dut().memory_stats().in_use_bytes, before.in_use_bytes);
}

TEST_P(Conformance, FillRoundsOnceLikeReference) {
  for (float v : {0.0f, -0.0f, 0.1f, -3.5f, 65519.996f, 65520.0f, 1e-8f, 3e38f, kInf, kNaN}) {
    Pair t = outputs(dt(), 3, 7);
    run([&](Backend& be, bool r) { return be.fill(pick(t, r), v); });
    expect_same(t, kExact, "fill " + std::to_string(v));
  }
  // Integer dtypes: round half to even, saturate, NaN -> 0.
  for (DType it : {DType::kI32, DType::kU8}) {
    for (float v : {2.5f, 3.5f, -1.0f, 300.0f, kNaN}) {
      Pair t = outputs(it, 1, 5);
      run([&](Backend& be, bool r) { return be.fill(pick(t, r), v); });
      expect_same(t, kExact,
                  std::string("fill ") + std::string(dtype_name(it)) + " " + std::to_string(v));
    }
  }
}

// ---- dense algebra ---------------------------------------------------------------------------

// C = alpha op(A) op(B) + beta C + bias for M, N, K in {1, 7, 64, 513} (product bounded to
// keep the FP64 reference quick), every transpose pair, C in f32 and in A's dtype, and a
// rotation of alpha / beta / bias variants. Tolerance: an entry sums K products of
// unit-normal values, so partial sums grow like sqrt(K): default_tolerance(c, K,
// |alpha| sqrt(K) + |beta| + |bias|).
TEST_P(Conformance, Matmul) {
  struct Variant {
    float alpha, beta;
    int bias;  // 0 none, 1 f32, 2 C's dtype
  };
  const Variant variants[] = {{1, 0, 0},      {0.5f, 0, 1}, {1, 1, 2},
                              {-2, 0.25f, 1}, {1, 0, 2},    {0.75f, -1, 0}};
  Rng rng(21);
  int case_no = 0;
  const int64_t sizes[] = {1, 7, 64, 513};
  for (int64_t M : sizes) {
    for (int64_t N : sizes) {
      for (int64_t K : sizes) {
        if (M * N * K > 64 * 64 * 513) continue;
        for (int t = 0; t < 4; ++t) {
          const bool ta = t & 1, tb = t & 2;
          std::vector<DType> c_types = {DType::kF32};
          if (dt() != DType::kF32) c_types.push_back(dt());
          for (DType ct : c_types) {
            const Variant v = variants[case_no++ % 6];
            const std::string what =
                "matmul " + dims(M, N, K) + " ta=" + std::to_string(ta) +
                " tb=" + std::to_string(tb) + " c=" + std::string(dtype_name(ct)) +
                " alpha=" + std::to_string(v.alpha) + " beta=" + std::to_string(v.beta) +
                " bias=" + std::to_string(v.bias);
            SCOPED_TRACE(what);
            Pair a = both(normal(dt(), ta ? K : M, ta ? M : K, rng));
            Pair b = both(normal(dt(), tb ? N : K, tb ? K : N, rng));
            // beta == 0 must not read C: it stays poisoned (NaN) then.
            Pair c = v.beta != 0 ? inout(normal(ct, M, N, rng)) : outputs(ct, M, N);
            std::unique_ptr<Pair> bias;
            if (v.bias != 0) {
              bias =
                  std::make_unique<Pair>(both(normal(v.bias == 1 ? DType::kF32 : ct, 1, N, rng)));
            }
            run([&](Backend& be, bool r) {
              MatmulArgs args;
              args.a = pick(a, r);
              args.b = pick(b, r);
              args.c = pick(c, r);
              args.trans_a = ta;
              args.trans_b = tb;
              args.alpha = v.alpha;
              args.beta = v.beta;
              args.bias = pick_opt(bias.get(), r);
              return be.matmul(args);
            });
            const double mag = std::fabs(v.alpha) * std::sqrt(double(K)) + std::fabs(v.beta) +
                               (v.bias ? 1.0 : 0.0);
            expect_same(c, default_tolerance(ct, K, mag), what);
          }
        }
      }
    }
  }
}

// K == 0: an empty sum, C = beta C + bias.
TEST_P(Conformance, MatmulEmptyReduction) {
  Rng rng(22);
  Pair a = both(HostTensor(dt(), 5, 0));
  Pair b = both(HostTensor(dt(), 0, 9));
  Pair c = inout(normal(dt(), 5, 9, rng));
  Pair bias = both(normal(DType::kF32, 1, 9, rng));
  run([&](Backend& be, bool r) {
    MatmulArgs args;
    args.a = pick(a, r);
    args.b = pick(b, r);
    args.c = pick(c, r);
    args.beta = 0.5f;
    args.bias = pick(bias, r);
    return be.matmul(args);
  });
  expect_same(c, default_tolerance(dt()), "matmul K=0");
}

// ---- batched matmul -----------------------------------------------------------------------

// A host tensor of `batch` stacked rows x cols matrices (one (batch * rows) x cols matrix).
HostTensor normal_batch(DType t, int64_t batch, int64_t rows, int64_t cols, Rng& rng) {
  return normal(t, batch * rows, cols, rng);
}

// The whole of a device tensor seen with another (contiguous) shape.
Tensor shaped(const DeviceTensor& d, std::initializer_list<int64_t> dims) {
  return d.tensor.view(dims);
}

// Tolerance of a batched product as in Matmul: K products of unit normals per entry.
Tolerance batched_tolerance(DType c, int64_t k, float alpha, float beta) {
  return default_tolerance(
      c, k, std::fabs(alpha) * std::sqrt(double(std::max<int64_t>(k, 1))) + std::fabs(beta));
}

// C[i] = alpha op(A[i]) op(B[i]) + beta C[i] over batches of 1, 7 and 65 (3-D) and 2 x 3
// (4-D, contiguous: the batch dimensions merge), M, N, K from {1, 3, 17, 33}, every
// transpose pair (the trans flags on stored-transposed operands), C in f32 and in A's
// dtype, and a rotation of alpha / beta. beta == 0 gets a NaN-poisoned C, which must be
// overwritten. Tolerance as Matmul: default_tolerance(c, K, |alpha| sqrt(K) + |beta|).
TEST_P(Conformance, BatchedMatmul) {
  struct Shape {
    int64_t m, n, k;
  };
  const Shape shapes[] = {{1, 1, 1},  {3, 17, 33}, {33, 3, 17}, {17, 33, 1},
                          {1, 33, 3}, {33, 1, 33}, {17, 17, 17}};
  struct Batch {
    int64_t b0, b1;  // b1 == 0: 3-D with b0 matrices
  };
  const Batch batches[] = {{1, 0}, {7, 0}, {65, 0}, {2, 3}};
  const std::pair<float, float> scalars[] = {{1, 0}, {0.5f, 1}, {-2, 0.25f}, {1, -1}, {0.75f, 0}};
  Rng rng(23);
  int case_no = 0;
  for (const Batch& bt : batches) {
    const int64_t nb = bt.b0 * (bt.b1 ? bt.b1 : 1);
    auto nd = [&](const DeviceTensor& d, int64_t r, int64_t c) {
      return bt.b1 ? shaped(d, {bt.b0, bt.b1, r, c}) : shaped(d, {bt.b0, r, c});
    };
    for (const Shape& sh : shapes) {
      if (nb * sh.m * sh.n * sh.k > 65 * 17 * 17 * 17) continue;  // keep the reference quick
      const int64_t M = sh.m, N = sh.n, K = sh.k;
      for (int t = 0; t < 4; ++t) {
        const bool ta = t & 1, tb = t & 2;
        std::vector<DType> c_types = {DType::kF32};
        if (dt() != DType::kF32) c_types.push_back(dt());
        for (DType ct : c_types) {
          const auto [alpha, beta] = scalars[case_no++ % 5];
          const std::string what =
              "batched_matmul batch " + std::to_string(bt.b0) +
              (bt.b1 ? "x" + std::to_string(bt.b1) : "") + " " + dims(M, N, K) +
              " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) +
              " c=" + std::string(dtype_name(ct)) + " alpha=" + std::to_string(alpha) +
              " beta=" + std::to_string(beta);
          SCOPED_TRACE(what);
          const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
          Pair a = both(normal_batch(dt(), nb, ar, ac, rng));
          Pair b = both(normal_batch(dt(), nb, br, bc, rng));
          Pair c = beta != 0 ? inout(normal_batch(ct, nb, M, N, rng)) : outputs(ct, nb * M, N);
          run([&](Backend& be, bool r) {
            BatchedMatmulArgs args;
            args.a = nd(r ? a.ref : a.dut, ar, ac);
            args.b = nd(r ? b.ref : b.dut, br, bc);
            args.c = nd(r ? c.ref : c.dut, M, N);
            args.trans_a = ta;
            args.trans_b = tb;
            args.alpha = alpha;
            args.beta = beta;
            return be.batched_matmul(args);
          });
          expect_same(c, batched_tolerance(ct, K, alpha, beta), what);
        }
      }
    }
  }
}

// transposed(-2, -1) views instead of trans flags (and both together, which cancel):
// op(A) = A^T through the view's strides is the same product as the flag on the same memory.
TEST_P(Conformance, BatchedMatmulTransposedViews) {
  Rng rng(24);
  const int64_t nb = 7, M = 17, N = 3, K = 33;
  for (int t = 0; t < 4; ++t) {
    for (bool flags : {false, true}) {
      const bool ta = t & 1, tb = t & 2;
      const std::string what = "transposed views ta=" + std::to_string(ta) +
                               " tb=" + std::to_string(tb) + " flags=" + std::to_string(flags);
      SCOPED_TRACE(what);
      // Stored as (nb, K, M) when op(A) is a transposed view; likewise B.
      Pair a = both(normal_batch(dt(), nb, ta ? K : M, ta ? M : K, rng));
      Pair b = both(normal_batch(dt(), nb, tb ? N : K, tb ? K : N, rng));
      Pair c = outputs(DType::kF32, nb * M, N);
      run([&](Backend& be, bool r) {
        BatchedMatmulArgs args;
        // The view of op(X); with `flags`, transposed once more and the flag set.
        Tensor av = shaped(r ? a.ref : a.dut, {nb, ta ? K : M, ta ? M : K});
        Tensor bv = shaped(r ? b.ref : b.dut, {nb, tb ? N : K, tb ? K : N});
        if (ta) av = av.transposed(-2, -1);
        if (tb) bv = bv.transposed(-2, -1);
        if (flags) {
          av = av.transposed(-2, -1);
          bv = bv.transposed(-2, -1);
          args.trans_a = args.trans_b = true;
        }
        args.a = av;
        args.b = bv;
        args.c = shaped(r ? c.ref : c.dut, {nb, M, N});
        args.alpha = -0.5f;
        return be.batched_matmul(args);
      });
      expect_same(c, batched_tolerance(DType::kF32, K, 0.5f, 0), what);
    }
  }
}

// Causal self-attention's products on (B, H, T, D) head views carved out of one fused
// (B, T, 3C) buffer (narrowed + split + transposed): batch strides (T*3C, D) that do not
// merge into one uniform stride, matrix rows 3C apart. Forward S = alpha Q K^T, Y = P V
// into a (B, T, C) output seen per head (strides (T*C, D, C, 1)), also with beta != 0
// (a low-precision strided C read and rounded once); backward dP = dY V^T,
// dV = P^T dY, dQ = dS K, dK = dS^T Q into the heads of a NaN-poisoned (B, T, 3C) gradient
// buffer, whose untouched parts must stay NaN, and dQ accumulated once more with beta = 1.
// Awkward sizes (odd T, D) and B = 1 (the two batch levels then merge).
TEST_P(Conformance, BatchedMatmulAttentionHeadViews) {
  struct Size {
    int64_t b, t, h, d;
  };
  Rng rng(25);
  for (const Size& z : {Size{2, 17, 3, 5}, Size{3, 33, 4, 8}, Size{1, 7, 2, 3}}) {
    const int64_t B = z.b, T = z.t, H = z.h, D = z.d, C = H * D;
    const std::string at = "B=" + std::to_string(B) + " T=" + std::to_string(T) +
                           " H=" + std::to_string(H) + " D=" + std::to_string(D);
    SCOPED_TRACE(at);
    Pair qkv = both(normal(dt(), B * T, 3 * C, rng));
    Pair p = both(normal(dt(), B * H * T, T, rng));
    Pair dy = both(normal(dt(), B * T, C, rng));
    Pair s = outputs(DType::kF32, B * H * T, T);
    Pair y = outputs(dt(), B * T, C);
    Pair dp = outputs(dt(), B * H * T, T);
    Pair dqkv = outputs(DType::kF32, B * T, 3 * C);
    // Head `part` (0 Q, 1 K, 2 V) of a (B, T, 3C) buffer, as (B, H, T, D).
    auto head = [&](const Tensor& buf, int64_t part) {
      return buf.view({B, T, 3 * C}).narrowed(-1, part * C, C).split(-1, H, D).transposed(1, 2);
    };
    auto per_head = [&](const Tensor& buf) {  // (B, T, C) as (B, H, T, D)
      return buf.view({B, T, C}).split(-1, H, D).transposed(1, 2);
    };
    auto square = [&](const Tensor& buf) { return buf.view({B, H, T, T}); };
    const float scale = 1.0f / std::sqrt(float(D));
    auto product = [&](const std::string& what, const Pair& out, DType ct, int64_t k, float alpha,
                       float beta, auto&& make) {
      SCOPED_TRACE(what);
      run([&](Backend& be, bool r) {
        BatchedMatmulArgs args = make(r);
        args.alpha = alpha;
        args.beta = beta;
        return be.batched_matmul(args);
      });
      expect_same(out, batched_tolerance(ct, k, alpha, beta), what + " " + at);
    };
    product("S = Q K^T", s, DType::kF32, D, scale, 0, [&](bool r) {
      return BatchedMatmulArgs{.a = head(pick(qkv, r), 0),
                               .b = head(pick(qkv, r), 1),
                               .c = square(pick(s, r)),
                               .trans_b = true};
    });
    product("Y = P V", y, dt(), T, 1, 0, [&](bool r) {
      return BatchedMatmulArgs{
          .a = square(pick(p, r)), .b = head(pick(qkv, r), 2), .c = per_head(pick(y, r))};
    });
    Pair y2 = inout(normal(dt(), B * T, C, rng));  // the same start values on both
    product("Y2 = 0.5 P V - Y2", y2, dt(), T, 0.5f, -1, [&](bool r) {
      return BatchedMatmulArgs{
          .a = square(pick(p, r)), .b = head(pick(qkv, r), 2), .c = per_head(pick(y2, r))};
    });
    product("dP = dY V^T", dp, dt(), D, 1, 0, [&](bool r) {
      return BatchedMatmulArgs{.a = per_head(pick(dy, r)),
                               .b = head(pick(qkv, r), 2).transposed(-2, -1),
                               .c = square(pick(dp, r))};
    });
    product("dV = P^T dY", dqkv, DType::kF32, T, 1, 0, [&](bool r) {
      return BatchedMatmulArgs{.a = square(pick(p, r)),
                               .b = per_head(pick(dy, r)),
                               .c = head(pick(dqkv, r), 2),
                               .trans_a = true};
    });
    // dS: P reused as the (already scaled) score gradient.
    product("dQ = dS K", dqkv, DType::kF32, T, scale, 0, [&](bool r) {
      return BatchedMatmulArgs{
          .a = square(pick(p, r)), .b = head(pick(qkv, r), 1), .c = head(pick(dqkv, r), 0)};
    });
    product("dK = dS^T Q", dqkv, DType::kF32, T, scale, 0, [&](bool r) {
      return BatchedMatmulArgs{.a = square(pick(p, r)).transposed(-2, -1),
                               .b = head(pick(qkv, r), 0),
                               .c = head(pick(dqkv, r), 1)};
    });
    product("dQ += dS K", dqkv, DType::kF32, T, scale, 1, [&](bool r) {
      return BatchedMatmulArgs{
          .a = square(pick(p, r)), .b = head(pick(qkv, r), 1), .c = head(pick(dqkv, r), 0)};
    });
    const HostTensor g = dut_host(dqkv);
    int64_t nan = 0;
    for (int64_t i = 0; i < g.numel(); ++i) nan += std::isnan(g.get(i)) ? 1 : 0;
    EXPECT_EQ(nan, 0) << "every element of dqkv is one of dQ, dK, dV";
  }
}

// K == 0: an empty sum, C = beta C (beta == 0: zeros over a NaN C). Empty batches or
// matrices are no-ops.
TEST_P(Conformance, BatchedMatmulEmptyReduction) {
  Rng rng(26);
  for (float beta : {0.5f, 0.0f}) {
    Pair a = both(HostTensor(dt(), 3 * 5, 0));
    Pair b = both(HostTensor(dt(), 3 * 0, 9));
    Pair c = beta != 0 ? inout(normal(dt(), 3 * 5, 9, rng)) : outputs(dt(), 3 * 5, 9);
    run([&](Backend& be, bool r) {
      return be.batched_matmul({.a = shaped(r ? a.ref : a.dut, {3, 5, 0}),
                                .b = shaped(r ? b.ref : b.dut, {3, 0, 9}),
                                .c = shaped(r ? c.ref : c.dut, {3, 5, 9}),
                                .beta = beta});
    });
    expect_same(c, default_tolerance(dt()), "batched_matmul K=0 beta=" + std::to_string(beta));
  }
  Pair a = both(normal(dt(), 4, 3, rng));
  Pair b = both(normal(dt(), 3, 2, rng));
  Pair c = inout(normal(dt(), 4, 2, rng));
  const HostTensor before = dut_host(c);
  AMPD_EXPECT_OK(dut().batched_matmul({.a = shaped(a.dut, {0, 4, 3}),
                                       .b = shaped(b.dut, {0, 3, 2}),
                                       .c = shaped(c.dut, {0, 4, 2})}));
  AMPD_EXPECT_OK(dut().batched_matmul({.a = shaped(a.dut, {1, 0, 3}),
                                       .b = shaped(b.dut, {1, 3, 2}),
                                       .c = shaped(c.dut, {1, 0, 2})}));
  EXPECT_EQ(dut_host(c).bytes, before.bytes);
}

// Malformed calls are InvalidArgument naming the argument, on every backend (backend.cc
// validates before any kernel), and change nothing.
TEST_P(Conformance, BatchedMatmulValidationNamesTheArgument) {
  Rng rng(27);
  DeviceTensor a = to_device(dut(), normal(dt(), 2 * 3 * 4, 5, rng));      // (2, 3, 4, 5)
  DeviceTensor b = to_device(dut(), normal(dt(), 2 * 3 * 5, 6, rng));      // (2, 3, 5, 6)
  DeviceTensor c = to_device(dut(), normal(dt(), 2 * 3 * 4, 6, rng));      // (2, 3, 4, 6)
  DeviceTensor wide = to_device(dut(), normal(dt(), 2 * 3 * 4, 12, rng));  // (2, 3, 4, 12)
  const HostTensor c_before = to_host(dut(), c);
  const Tensor A = shaped(a, {2, 3, 4, 5}), B = shaped(b, {2, 3, 5, 6}),
               C = shaped(c, {2, 3, 4, 6});
  const DType other = dt() == DType::kF32 ? DType::kBF16 : DType::kF32;
  auto expect_invalid = [&](BatchedMatmulArgs args, const std::string& needle) {
    const Status s = dut().batched_matmul(args);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << needle << ": " << s.to_string();
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.to_string();
  };
  AMPD_EXPECT_OK(dut().batched_matmul({.a = A, .b = B, .c = C}));  // the well-formed call
  const HostTensor c_good = to_host(dut(), c);
  // ndim
  expect_invalid({.a = a, .b = B, .c = C}, "a must be 3-D or 4-D");
  expect_invalid({.a = A, .b = shaped(b, {6, 5, 6}), .c = C}, "must have as many dimensions as a");
  // batch dims, inner dims, C's shape
  expect_invalid({.a = A, .b = shaped(b, {3, 2, 5, 6}), .c = C}, "b's batch dimensions 3x2");
  expect_invalid({.a = A, .b = shaped(b, {2, 3, 6, 5}), .c = C}, "inner dimensions differ");
  expect_invalid({.a = A, .b = B, .c = shaped(c, {2, 3, 6, 4})}, "c must be 2x3x4x6");
  expect_invalid({.a = A, .b = B, .c = shaped(c, {2, 3, 4, 6}), .trans_a = true},
                 "inner dimensions differ");
  // dtypes
  Tensor b_other = B;
  b_other.dtype = other;
  expect_invalid({.a = A, .b = b_other, .c = C}, "must have the dtype of a");
  Tensor c_int = C;
  c_int.dtype = DType::kI32;
  expect_invalid({.a = A, .b = B, .c = c_int}, "c must be f32, f16 or bf16");
  if (dt() != DType::kF32) {
    Tensor c_other = shaped(c, {2, 3, 4, 6});
    c_other.dtype = dt() == DType::kF16 ? DType::kBF16 : DType::kF16;
    expect_invalid({.a = A, .b = B, .c = c_other}, "c must be f32 or a's dtype");
  }
  // strides: no unit stride in A's matrix, overlapping rows in B, C's last dim not unit
  Tensor a_strided = shaped(wide, {2, 3, 4, 12}).narrowed(-1, 0, 5);
  a_strided.strides[3] = 2;  // (4, 5) with strides (12, 2)
  expect_invalid({.a = a_strided, .b = B, .c = C}, "a needs a unit stride");
  Tensor b_overlap = B;
  b_overlap.strides[2] = 3;  // rows 3 apart but 6 long
  expect_invalid({.a = A, .b = b_overlap, .c = C}, "b needs a unit stride");
  const Tensor c_t = shaped(c, {2, 3, 6, 4}).transposed(-2, -1);  // (2, 3, 4, 6), unit rows
  expect_invalid({.a = A, .b = B, .c = c_t}, "c needs a unit stride in its last dimension");
  Tensor c_neg = C;
  c_neg.strides[0] = -72;
  expect_invalid({.a = A, .b = B, .c = c_neg}, "c must have positive strides");
  Tensor a_null = A;
  a_null.data = nullptr;
  expect_invalid({.a = a_null, .b = B, .c = C}, "a has no data");
  expect_invalid({.a = A, .b = B, .c = C, .alpha = kInf}, "alpha and beta must be finite");
  EXPECT_EQ(to_host(dut(), c).bytes, c_good.bytes) << "a rejected call wrote to c";
  EXPECT_NE(c_good.bytes, c_before.bytes);
}

// Widening is exact and narrowing rounds once: bit-exact, special values included.
TEST_P(Conformance, CastAllPairsBitExact) {
  Rng rng(31);
  const double specials[] = {0.0,     -0.0,    INFINITY, -INFINITY,     NAN,
                             65504.0, 65520.0, -65519.0, 1e-8,          -3e-5,
                             6e-8,    3e38,    1e-40,    1.0 + 0x1p-11, 1.0 + 3 * 0x1p-8};
  for (DType to : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t n : {1, 7, 513, 1031}) {
      HostTensor src = normal(dt(), 1, n, rng, 0.0, 100.0);
      for (int64_t i = 0; i < n && i < 15; ++i) src.set(i * 7 % n, specials[i]);
      Pair s = both(src);
      Pair d = outputs(to, 1, n);
      run([&](Backend& be, bool r) { return be.cast(pick(s, r), pick(d, r)); });
      expect_same(d, kExact, "cast to " + std::string(dtype_name(to)) + " n=" + std::to_string(n));
    }
  }
}

TEST_P(Conformance, AddBias) {
  Rng rng(41);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {7, 513}, {65, 7}, {3, 1031}}) {
    for (DType bt : {DType::kF32, dt()}) {
      Pair x = inout(normal(dt(), rows, cols, rng));
      Pair bias = both(normal(bt, 1, cols, rng));
      run([&](Backend& be, bool r) { return be.add_bias(pick(x, r), pick(bias, r)); });
      // One FP32 addition, then one rounding to x's dtype (two roundings for f16/bf16).
      expect_same(x, default_tolerance(dt(), 1, 2.0), "add_bias " + dims(rows, cols, 0));
    }
  }
}

TEST_P(Conformance, BiasGrad) {
  Rng rng(42);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {7, 513}, {513, 7}, {100, 1031}}) {
    for (float beta : {0.0f, 0.5f}) {
      Pair dy = both(normal(dt(), rows, cols, rng));
      Pair db =
          beta != 0 ? inout(normal(DType::kF32, 1, cols, rng)) : outputs(DType::kF32, 1, cols);
      run([&](Backend& be, bool r) { return be.bias_grad(pick(dy, r), pick(db, r), beta); });
      // A column sum of `rows` unit normals.
      expect_same(db, default_tolerance(DType::kF32, rows, std::sqrt(double(rows)) + 1),
                  "bias_grad " + dims(rows, cols, 0) + " beta=" + std::to_string(beta));
    }
  }
}

TEST_P(Conformance, ScaleAndAccumulate) {
  Rng rng(43);
  for (int64_t n : {1, 7, 513, 40000}) {
    for (float alpha : {0.5f, -3.0f, 1.0f / 3.0f}) {
      Pair x = inout(normal(dt(), 1, n, rng));
      run([&](Backend& be, bool r) { return be.scale(pick(x, r), alpha); });
      // One product rounded (f32: correctly rounded, the same as the reference).
      expect_same(x, default_tolerance(dt()), "scale n=" + std::to_string(n));
    }
    for (DType xt : {DType::kF32, DType::kF16, DType::kBF16}) {
      Pair x = both(normal(xt, 1, n, rng));
      Pair y = inout(normal(dt(), 1, n, rng));
      run([&](Backend& be, bool r) { return be.accumulate(pick(x, r), pick(y, r)); });
      expect_same(y, default_tolerance(dt(), 1, 2.0),
                  "accumulate x=" + std::string(dtype_name(xt)) + " n=" + std::to_string(n));
    }
  }
}

// ---- activations ------------------------------------------------------------------------------

// GELU and tanh are transcendental: the reference is FP64 erf / tanh, a fast backend uses
// FP32 approximations. atol 1e-6 covers the ~4e-7 absolute error of vectorized erf
// approximations (oneDNN's, PyTorch's CPU GELU) where GELU and its derivative are tiny
// (x < -3); everywhere else the default relative tolerance applies.
Tolerance activation_tolerance(Activation act, DType t) {
  Tolerance tol = default_tolerance(t, 1, 1.0);
  if (act != Activation::kReLU) tol.atol = std::max(tol.atol, 1e-6);
  if (act == Activation::kReLU) tol = kExact;  // selects, never rounds
  return tol;
}

// N(0, 3) with zeros, tiny and large values, infinities and NaN mixed in.
HostTensor activation_input(DType t, int64_t n, Rng& rng) {
  HostTensor x = normal(t, 1, n, rng, 0.0, 3.0);
  const double specials[] = {0.0,  -0.0,  1e-3, -1e-3,    8.0,      -8.0,
                             20.0, -20.0, NAN,  INFINITY, -INFINITY};
  for (int64_t i = 0; i < n && i < 11; ++i) x.set(i * 5 % n, specials[i]);
  return x;
}

TEST_P(Conformance, ActivationForward) {
  Rng rng(51);
  for (Activation act : {Activation::kReLU, Activation::kGELU, Activation::kTanh}) {
    for (int64_t n : {1, 7, 513, 40000}) {
      Pair x = both(activation_input(dt(), n, rng));
      Pair y = outputs(dt(), 1, n);
      run([&](Backend& be, bool r) { return be.activation_forward(act, pick(x, r), pick(y, r)); });
      expect_same(y, activation_tolerance(act, dt()),
                  std::string(activation_name(act)) + " forward n=" + std::to_string(n));
    }
  }
}

TEST_P(Conformance, ActivationBackward) {
  Rng rng(52);
  for (Activation act : {Activation::kReLU, Activation::kGELU, Activation::kTanh}) {
    for (int64_t n : {1, 7, 513, 40000}) {
      // x in every dtype (it may differ from dy's), dy and dx in the suite's dtype.
      for (DType xt : {dt(), DType::kF32}) {
        const std::string what = std::string(activation_name(act)) +
                                 " backward n=" + std::to_string(n) +
                                 " x=" + std::string(dtype_name(xt));
        Pair x = both(activation_input(xt, n, rng));
        Pair dy = both(normal(dt(), 1, n, rng));
        Pair dx = outputs(dt(), 1, n);
        run([&](Backend& be, bool r) {
          return be.activation_backward(act, pick(x, r), pick(dy, r), pick(dx, r));
        });
        // dy * act'(x) is one more product: ReLU stays exact (it selects dy).
        expect_same(dx, activation_tolerance(act, dt()), what);
        // In place: dx aliases dy.
        run([&](Backend& be, bool r) {
          return be.activation_backward(act, pick(x, r), pick(dy, r), pick(dy, r));
        });
        expect_same(dy, activation_tolerance(act, dt()), what + " (dx aliases dy)");
      }
    }
  }
}

// ---- normalization -----------------------------------------------------------------------------

// Shapes: a single column (zero variance: y = beta), short and long rows, 1 and many rows.
const std::pair<int64_t, int64_t> kNormShapes[] = {{1, 1}, {7, 1},    {1, 513},
                                                   {7, 7}, {64, 513}, {33, 1031}};

// LayerNorm statistics sum C terms; y = xhat gamma + beta with |xhat| up to ~4.
TEST_P(Conformance, LayerNormForward) {
  Rng rng(61);
  for (auto [rows, cols] : kNormShapes) {
    const std::string what = "layernorm forward " + dims(rows, cols, 0);
    Pair x = both(normal(dt(), rows, cols, rng, 0.5, 2.0));
    Pair g = both(normal(DType::kF32, 1, cols, rng, 1.0, 0.5));
    Pair b = both(normal(DType::kF32, 1, cols, rng));
    Pair y = outputs(dt(), rows, cols);
    Pair mean = outputs(DType::kF32, 1, rows);
    Pair rstd = outputs(DType::kF32, 1, rows);
    run([&](Backend& be, bool r) {
      return be.layernorm_forward(pick(x, r), pick(g, r), pick(b, r), pick(y, r), pick(mean, r),
                                  pick(rstd, r), 1e-5f);
    });
    expect_same(y, default_tolerance(dt(), cols, 8.0), what + " y");
    expect_same(mean, default_tolerance(DType::kF32, cols, 2.0), what + " mean");
    expect_same(rstd, default_tolerance(DType::kF32, cols), what + " rstd");
  }
}

// Backward from the reference's statistics (the same FP32 mean / rstd on both sides).
// dx: two row reductions of C terms, scaled by rstd (~0.5 here); dgamma / dbeta: column
// sums of N terms.
TEST_P(Conformance, LayerNormBackward) {
  Rng rng(62);
  for (auto [rows, cols] : kNormShapes) {
    const std::string what = "layernorm backward " + dims(rows, cols, 0);
    HostTensor xh = normal(dt(), rows, cols, rng, 0.5, 2.0);
    HostTensor gh = normal(DType::kF32, 1, cols, rng, 1.0, 0.5);
    DeviceTensor x = to_device(ref(), xh), g = to_device(ref(), gh);
    DeviceTensor b = device_filled(ref(), DType::kF32, 1, cols, 0.0f);
    DeviceTensor y = device_tensor(ref(), dt(), rows, cols);
    DeviceTensor m = device_tensor(ref(), DType::kF32, 1, rows);
    DeviceTensor rs = device_tensor(ref(), DType::kF32, 1, rows);
    AMPD_ASSERT_OK(ref().layernorm_forward(x, g, b, y, m, rs, 1e-5f));
    Pair X = both(xh), G = both(gh);
    Pair mean = both(to_host(ref(), m)), rstd = both(to_host(ref(), rs));
    Pair dy = both(normal(dt(), rows, cols, rng));
    Pair dx = outputs(dt(), rows, cols);
    Pair dg = outputs(DType::kF32, 1, cols), db = outputs(DType::kF32, 1, cols);
    run([&](Backend& be, bool r) {
      return be.layernorm_backward(pick(dy, r), pick(X, r), pick(G, r), pick(mean, r),
                                   pick(rstd, r), pick(dx, r), pick(dg, r), pick(db, r));
    });
    expect_same(dx, default_tolerance(dt(), cols, 4.0), what + " dx");
    expect_same(dg, default_tolerance(DType::kF32, rows, 2.0 * std::sqrt(double(rows)) + 1),
                what + " dgamma");
    expect_same(db, default_tolerance(DType::kF32, rows, std::sqrt(double(rows)) + 1),
                what + " dbeta");
  }
}

const std::pair<int64_t, int64_t> kBatchNormShapes[] = {
    {2, 1}, {7, 7}, {64, 513}, {513, 7}, {33, 1031}};

TEST_P(Conformance, BatchNormForwardTrainAndEval) {
  Rng rng(71);
  for (auto [rows, cols] : kBatchNormShapes) {
    const std::string what = "batchnorm " + dims(rows, cols, 0);
    Pair x = both(normal(dt(), rows, cols, rng, 0.5, 2.0));
    Pair g = both(normal(DType::kF32, 1, cols, rng, 1.0, 0.5));
    Pair b = both(normal(DType::kF32, 1, cols, rng));
    Pair y = outputs(dt(), rows, cols);
    Pair mean = outputs(DType::kF32, 1, cols), rstd = outputs(DType::kF32, 1, cols);
    Pair rm = inout(normal(DType::kF32, 1, cols, rng));
    Pair rv = inout(uniform(DType::kF32, 1, cols, rng, 0.5, 2.0));
    run([&](Backend& be, bool r) {
      return be.batchnorm_forward_train(pick(x, r), pick(g, r), pick(b, r), pick(y, r),
                                        pick(mean, r), pick(rstd, r), pick(rm, r), pick(rv, r),
                                        0.1f, 1e-5f);
    });
    expect_same(y, default_tolerance(dt(), rows, 8.0), what + " train y");
    expect_same(mean, default_tolerance(DType::kF32, rows, 2.0), what + " mean");
    expect_same(rstd, default_tolerance(DType::kF32, rows), what + " rstd");
    expect_same(rm, default_tolerance(DType::kF32, rows, 2.0), what + " running_mean");
    expect_same(rv, default_tolerance(DType::kF32, rows, 4.0), what + " running_var");

    Pair ye = outputs(dt(), rows, cols);
    run([&](Backend& be, bool r) {
      return be.batchnorm_forward_eval(pick(x, r), pick(g, r), pick(b, r), pick(rm, r), pick(rv, r),
                                       pick(ye, r), 1e-5f);
    });
    expect_same(ye, default_tolerance(dt(), 1, 8.0), what + " eval y");
  }
}

TEST_P(Conformance, BatchNormBackward) {
  Rng rng(72);
  for (auto [rows, cols] : kBatchNormShapes) {
    const std::string what = "batchnorm backward " + dims(rows, cols, 0);
    HostTensor xh = normal(dt(), rows, cols, rng, 0.5, 2.0);
    HostTensor gh = normal(DType::kF32, 1, cols, rng, 1.0, 0.5);
    DeviceTensor x = to_device(ref(), xh), g = to_device(ref(), gh);
    DeviceTensor b = device_filled(ref(), DType::kF32, 1, cols, 0.0f);
    DeviceTensor y = device_tensor(ref(), dt(), rows, cols);
    DeviceTensor m = device_tensor(ref(), DType::kF32, 1, cols);
    DeviceTensor rs = device_tensor(ref(), DType::kF32, 1, cols);
    DeviceTensor rm = device_filled(ref(), DType::kF32, 1, cols, 0.0f);
    DeviceTensor rv = device_filled(ref(), DType::kF32, 1, cols, 1.0f);
    AMPD_ASSERT_OK(ref().batchnorm_forward_train(x, g, b, y, m, rs, rm, rv, 0.1f, 1e-5f));
    Pair X = both(xh), G = both(gh);
    Pair mean = both(to_host(ref(), m)), rstd = both(to_host(ref(), rs));
    Pair dy = both(normal(dt(), rows, cols, rng));
    Pair dx = outputs(dt(), rows, cols);
    Pair dg = outputs(DType::kF32, 1, cols), db = outputs(DType::kF32, 1, cols);
    run([&](Backend& be, bool r) {
      return be.batchnorm_backward(pick(dy, r), pick(X, r), pick(G, r), pick(mean, r),
                                   pick(rstd, r), pick(dx, r), pick(dg, r), pick(db, r));
    });
    // dx = gamma rstd (dy - dbeta/N - xhat dgamma/N): the column sums cancel against dy.
    expect_same(dx, default_tolerance(dt(), rows, 4.0), what + " dx");
    expect_same(dg, default_tolerance(DType::kF32, rows, 2.0 * std::sqrt(double(rows)) + 1),
                what + " dgamma");
    expect_same(db, default_tolerance(DType::kF32, rows, std::sqrt(double(rows)) + 1),
                what + " dbeta");
  }
}

// ---- dropout
// -------------------------------------------------------------------------------------

// The mask must be the shared hash's, bit for bit; y = x mask / (1 - p) within ~2 ulp
// (a fast backend may multiply by a rounded 1 / (1 - p)).
TEST_P(Conformance, DropoutMaskBitExact) {
  Rng rng(81);
  for (int64_t n : {1, 7, 513, 40000}) {
    for (float p : {0.0f, 0.1f, 0.5f, 0.9f}) {
      for (uint64_t offset : {uint64_t{0}, uint64_t{123457}}) {
        const std::string what = "dropout n=" + std::to_string(n) + " p=" + std::to_string(p) +
                                 " offset=" + std::to_string(offset);
        Pair x = both(normal(dt(), 1, n, rng));
        Pair y = outputs(dt(), 1, n);
        Pair mask = outputs(DType::kU8, 1, n);
        run([&](Backend& be, bool r) {
          return be.dropout_forward(pick(x, r), pick(y, r), pick(mask, r), p, 0xdecafbadull + n,
                                    offset);
        });
        const HostTensor md = dut_host(mask), mr = ref_host(mask);
        EXPECT_EQ(md.bytes, mr.bytes) << what << ": masks differ";
        const Tolerance tol{default_tolerance(dt(), 1, 4.0).atol,
                            4.0 * default_tolerance(dt()).rtol};
        expect_same(y, tol, what + " y");

        // Backward with the (identical) reference mask.
        Pair dy = both(normal(dt(), 1, n, rng));
        Pair m2 = both(mr);
        Pair dx = outputs(dt(), 1, n);
        run([&](Backend& be, bool r) {
          return be.dropout_backward(pick(dy, r), pick(m2, r), pick(dx, r), p);
        });
        expect_same(dx, tol, what + " backward");
      }
    }
  }
}

// ---- losses
// ----------------------------------------------------------------------------------------

const std::pair<int64_t, int64_t> kLossShapes[] = {{1, 1}, {7, 7}, {1, 513}, {64, 513}, {5, 4099}};

HostTensor random_labels(int64_t rows, int64_t classes, Rng& rng) {
  HostTensor l(DType::kI32, 1, rows);
  fill_integers(l, rng, 0, classes - 1);
  return l;
}

// lse and loss of logits ~ N(0, 3): lse is a sum of C exponentials (<= 2 ulp each), and
// loss = lse - x[label] cancels, so its absolute tolerance is scaled by |lse| (~16).
TEST_P(Conformance, SoftmaxCrossEntropy) {
  Rng rng(91);
  for (auto [rows, cols] : kLossShapes) {
    const std::string what = "softmax_xent " + dims(rows, cols, 0);
    Pair logits = both(normal(dt(), rows, cols, rng, 0.0, 3.0));
    Pair labels = both(random_labels(rows, cols, rng));
    Pair loss = outputs(DType::kF32, 1, rows), lse = outputs(DType::kF32, 1, rows);
    run([&](Backend& be, bool r) {
      return be.softmax_xent_forward(pick(logits, r), pick(labels, r), pick(loss, r), pick(lse, r));
    });
    expect_same(lse, default_tolerance(DType::kF32, cols, 16.0), what + " lse");
    expect_same(loss, default_tolerance(DType::kF32, cols, 16.0), what + " loss");

    // Backward from the reference's lse; probabilities are <= 1, times grad_scale.
    Pair lse_in = both(ref_host(lse));
    const float gs = 1024.0f / static_cast<float>(rows);
    for (DType gt : {dt(), DType::kF32}) {
      Pair d = outputs(gt, rows, cols);
      run([&](Backend& be, bool r) {
        return be.softmax_xent_backward(pick(logits, r), pick(labels, r), pick(lse_in, r),
                                        pick(d, r), gs);
      });
      const Tolerance tol = default_tolerance(gt, 16 * cols, gs);
      expect_same(d, tol, what + " dlogits " + std::string(dtype_name(gt)));
    }
    // dlogits aliasing logits.
    run([&](Backend& be, bool r) {
      return be.softmax_xent_backward(pick(logits, r), pick(labels, r), pick(lse_in, r),
                                      pick(logits, r), gs);
    });
    expect_same(logits, default_tolerance(dt(), 16 * cols, gs), what + " dlogits in place");
  }
}

// Labels outside [0, C) are the caller's error, not checked (backend.h): the call succeeds,
// exactly the rows with a bad label get loss = NaN (lse as computed) and an all-NaN dlogits
// row, every other row equals the reference, and the backend goes on working. (Before:
// InvalidArgument naming labels[i] with the outputs untouched, which cost the CUDA backend
// two stream synchronizations per step.)
TEST_P(Conformance, SoftmaxCrossEntropyBadLabelRowsAreNaN) {
  Rng rng(92);
  constexpr int64_t rows = 6, cols = 7;
  const std::vector<int64_t> bad_rows = {1, 4, 5};
  for (int32_t bad :
       {-1, 7, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()}) {
    SCOPED_TRACE("bad label " + std::to_string(bad));
    const HostTensor xh = normal(dt(), rows, cols, rng);
    Pair logits = both(xh);
    HostTensor lh = random_labels(rows, cols, rng);
    for (int64_t r : bad_rows) lh.set(r, bad);
    Pair labels = both(lh);
    Pair loss = outputs(DType::kF32, 1, rows), lse = outputs(DType::kF32, 1, rows);
    run([&](Backend& be, bool r) {
      return be.softmax_xent_forward(pick(logits, r), pick(labels, r), pick(loss, r), pick(lse, r));
    });
    const Tolerance tol = default_tolerance(DType::kF32, cols, 16.0);
    expect_same(lse, tol, "lse, every row");
    expect_same(loss, tol, "loss");  // NaN matches NaN only
    for (const HostTensor& h : {dut_host(loss), ref_host(loss)}) {
      for (int64_t r = 0; r < rows; ++r) {
        const bool is_bad = std::find(bad_rows.begin(), bad_rows.end(), r) != bad_rows.end();
        EXPECT_EQ(std::isnan(h.get(r)), is_bad) << "loss row " << r << " = " << h.get(r);
      }
    }
    for (const HostTensor& h : {dut_host(lse), ref_host(lse)}) {
      for (int64_t r = 0; r < rows; ++r) EXPECT_TRUE(std::isfinite(h.get(r))) << "lse row " << r;
    }

    Pair lse_in = both(ref_host(lse));
    const float gs = 1024.0f / static_cast<float>(rows);
    for (DType gt : {dt(), DType::kF32}) {
      Pair d = outputs(gt, rows, cols);
      run([&](Backend& be, bool r) {
        return be.softmax_xent_backward(pick(logits, r), pick(labels, r), pick(lse_in, r),
                                        pick(d, r), gs);
      });
      expect_same(d, default_tolerance(gt, 16 * cols, gs),
                  "dlogits " + std::string(dtype_name(gt)));
      const HostTensor dh = dut_host(d);
      for (int64_t r = 0; r < rows; ++r) {
        const bool is_bad = std::find(bad_rows.begin(), bad_rows.end(), r) != bad_rows.end();
        for (int64_t j = 0; j < cols; ++j) {
          EXPECT_EQ(std::isnan(dh.get(r * cols + j)), is_bad) << "dlogits " << r << "," << j;
        }
      }
    }
    // In place: the bad rows of logits become NaN, the others their gradients.
    run([&](Backend& be, bool r) {
      return be.softmax_xent_backward(pick(logits, r), pick(labels, r), pick(lse_in, r),
                                      pick(logits, r), gs);
    });
    expect_same(logits, default_tolerance(dt(), 16 * cols, gs), "dlogits in place");

    // Still usable: the same logits with the labels fixed give finite losses everywhere.
    for (int64_t r : bad_rows) lh.set(r, static_cast<double>(r % cols));
    Pair good_labels = both(lh);
    Pair fresh = both(xh);
    run([&](Backend& be, bool r) {
      return be.softmax_xent_forward(pick(fresh, r), pick(good_labels, r), pick(loss, r),
                                     pick(lse, r));
    });
    expect_same(loss, tol, "loss after the bad batch");
    const HostTensor after = dut_host(loss);
    for (int64_t r = 0; r < rows; ++r) EXPECT_TRUE(std::isfinite(after.get(r))) << r;
  }
}

TEST_P(Conformance, MeanSquaredError) {
  Rng rng(93);
  for (auto [rows, cols] : kLossShapes) {
    const std::string what = "mse " + dims(rows, cols, 0);
    Pair pred = both(normal(dt(), rows, cols, rng));
    Pair target = both(normal(DType::kF32, rows, cols, rng));
    Pair loss = outputs(DType::kF32, 1, rows);
    run([&](Backend& be, bool r) {
      return be.mse_forward(pick(pred, r), pick(target, r), pick(loss, r));
    });
    // Mean of C squares of ~N(0, 2): positive terms, no cancellation.
    expect_same(loss, default_tolerance(DType::kF32, cols, 1.0), what + " loss");
    for (DType gt : {dt(), DType::kF32}) {
      Pair d = outputs(gt, rows, cols);
      run([&](Backend& be, bool r) {
        return be.mse_backward(pick(pred, r), pick(target, r), pick(d, r), 3.0f);
      });
      // (2 gs / C) (p - t): a subtraction and a product.
      expect_same(d, default_tolerance(gt, 4, 6.0 / cols), what + " dpred");
    }
  }
}

TEST_P(Conformance, ArgmaxRowsBitExact) {
  Rng rng(94);
  for (auto [rows, cols] : kLossShapes) {
    // Small integers: many ties (the first wins).
    HostTensor xh(dt(), rows, cols);
    fill_integers(xh, rng, -3, 3);
    if (rows * cols > 3) {
      xh.set(1, NAN);  // row 0 holds a NaN: it wins
    }
    Pair x = both(xh);
    Pair out = outputs(DType::kI32, 1, rows);
    run([&](Backend& be, bool r) { return be.argmax_rows(pick(x, r), pick(out, r)); });
    expect_same(out, kExact, "argmax " + dims(rows, cols, 0));
  }
}

// ---- sequence models --------------------------------------------------------------------------

DType other_float(DType t) {
  return t == DType::kF32 ? DType::kBF16 : DType::kF32;
}

// ids in [0, used) (so rows [used, V) are never selected), with out-of-range ids at the
// positions `bad` (cycling through -1, V, INT32_MIN, INT32_MAX).
HostTensor embedding_ids(int64_t n, int64_t vocab, int64_t used, const std::vector<int64_t>& bad,
                         Rng& rng) {
  HostTensor ids(DType::kI32, 1, n);
  fill_integers(ids, rng, 0, used - 1);
  const double out_of_range[] = {-1.0, static_cast<double>(vocab),
                                 static_cast<double>(std::numeric_limits<int32_t>::min()),
                                 static_cast<double>(std::numeric_limits<int32_t>::max())};
  for (size_t k = 0; k < bad.size(); ++k) {
    if (bad[k] >= 0 && bad[k] < n) ids.set(bad[k], out_of_range[k % 4]);
  }
  return ids;
}

bool id_in_range(const HostTensor& ids, int64_t i, int64_t vocab) {
  const double id = ids.get(i);
  return id >= 0 && id < static_cast<double>(vocab);
}

// (V, C, N): one element; awkward widths; more tokens than rows (repeats); a table larger
// than one CPU task; a sparse table (most rows unused).
struct EmbeddingShape {
  int64_t vocab, cols, n;
};
const EmbeddingShape kEmbeddingShapes[] = {
    {1, 1, 1}, {7, 513, 40}, {50, 64, 700}, {3000, 7, 50}, {5, 1031, 9}};

// A gather is a copy: out = round(table[id]) exactly, for every (table, out) dtype pair; an
// id outside [0, V) gives a NaN row (and no out-of-bounds read).
TEST_P(Conformance, EmbeddingForwardBitExact) {
  Rng rng(101);
  for (const EmbeddingShape& s : kEmbeddingShapes) {
    for (DType tt : {DType::kF32, DType::kF16, DType::kBF16}) {
      const std::string what = "embedding_forward V=" + std::to_string(s.vocab) +
                               " C=" + std::to_string(s.cols) + " N=" + std::to_string(s.n) +
                               " table " + std::string(dtype_name(tt));
      // Table values beyond f16's range and below bf16's precision, so that narrowing
      // rounds and overflows.
      HostTensor th = normal(tt, s.vocab, s.cols, rng, 0.0, tt == DType::kF16 ? 100.0 : 3e4);
      const HostTensor ih = embedding_ids(s.n, s.vocab, s.vocab, {s.n / 2, s.n - 1, 3, 5}, rng);
      Pair table = both(th);
      Pair ids = both(ih);
      Pair out = outputs(dt(), s.n, s.cols);
      run([&](Backend& be, bool r) {
        return be.embedding_forward(pick(ids, r), pick(table, r), pick(out, r));
      });
      expect_same(out, kExact, what);
      const HostTensor got = dut_host(out);
      for (int64_t i = 0; i < s.n; ++i) {
        const bool valid = id_in_range(ih, i, s.vocab);
        for (int64_t j = 0; j < s.cols; ++j) {
          const double v = got.get(i, j);
          if (!valid) {
            ASSERT_TRUE(std::isnan(v))
                << what << ": out[" << i << ", " << j << "] = " << v << " for id " << ih.get(i);
          } else {
            const double expected = round_to(dt(), th.get(static_cast<int64_t>(ih.get(i)), j));
            ASSERT_EQ(v, expected) << what << ": out[" << i << ", " << j << "]";
          }
        }
      }
    }
  }
}

// dtable = beta dtable + scatter-add of dy rows. An element sums `count` unit normals (count
// = how often its id occurs) onto beta * dtable: default_tolerance(f32, count, sqrt(count) +
// 1) with the largest count. Rows no id selects are exactly beta * dtable (0 for beta = 0,
// even over a NaN-poisoned dtable: it is not read); out-of-range ids add nothing.
TEST_P(Conformance, EmbeddingBackward) {
  Rng rng(102);
  for (const EmbeddingShape& s : kEmbeddingShapes) {
    for (float beta : {0.0f, 1.0f, 0.5f}) {
      const std::string what = "embedding_backward V=" + std::to_string(s.vocab) +
                               " C=" + std::to_string(s.cols) + " N=" + std::to_string(s.n) +
                               " beta=" + std::to_string(beta);
      const int64_t used = std::max<int64_t>(1, (s.vocab + 1) / 2);
      const HostTensor ih = embedding_ids(s.n, s.vocab, used, {1, s.n - 2, s.n / 3, 0}, rng);
      std::vector<int64_t> count(static_cast<size_t>(s.vocab), 0);
      for (int64_t i = 0; i < s.n; ++i) {
        if (id_in_range(ih, i, s.vocab)) ++count[static_cast<size_t>(ih.get(i))];
      }
      const int64_t max_count = *std::max_element(count.begin(), count.end());
      Pair ids = both(ih);
      Pair dy = both(normal(dt(), s.n, s.cols, rng));
      const HostTensor old = normal(DType::kF32, s.vocab, s.cols, rng);
      Pair dtable = beta != 0.0f ? inout(old) : outputs(DType::kF32, s.vocab, s.cols);
      run([&](Backend& be, bool r) {
        return be.embedding_backward(pick(ids, r), pick(dy, r), pick(dtable, r), beta);
      });
      expect_same(dtable,
                  default_tolerance(DType::kF32, max_count + 1,
                                    std::sqrt(static_cast<double>(max_count)) + 1.0),
                  what);
      const HostTensor got = dut_host(dtable);
      for (int64_t v = 0; v < s.vocab; ++v) {
        if (count[static_cast<size_t>(v)] != 0) continue;
        for (int64_t j = 0; j < s.cols; ++j) {
          const double expected = beta == 0.0f ? 0.0 : round_to(DType::kF32, beta * old.get(v, j));
          ASSERT_EQ(got.get(v, j), expected) << what << ": unselected row " << v << ", col " << j;
        }
      }

      // Deterministic: a second run from the same start gives the same bits.
      DeviceTensor again =
          beta != 0.0f ? to_device(dut(), old) : poisoned(dut(), DType::kF32, s.vocab, s.cols);
      AMPD_ASSERT_OK(dut().embedding_backward(ids.dut, dy.dut, again, beta));
      EXPECT_EQ(to_host(dut(), again).bytes, got.bytes) << what << ": two runs differ";
    }
  }
  // Every id out of range: nothing is added, beta = 0 gives zeros.
  HostTensor bad(DType::kI32, 1, 4);
  for (int64_t i = 0; i < 4; ++i) bad.set(i, i % 2 == 0 ? -3.0 : 9.0);
  Pair ids = both(bad);
  Pair dy = both(normal(dt(), 4, 5, rng));
  Pair dtable = outputs(DType::kF32, 9, 5);
  run([&](Backend& be, bool r) {
    return be.embedding_backward(pick(ids, r), pick(dy, r), pick(dtable, r), 0.0f);
  });
  for (double v : dut_host(dtable).values()) ASSERT_EQ(v, 0.0);
}

// Row sums of probabilities rounded to `t`: each probability is within 1 + 2^-p of its
// FP32 value (unit roundoff of t), plus FP32 error.
double row_sum_tolerance(DType t) {
  return (t == DType::kF16 ? 0x1p-11 : t == DType::kBF16 ? 0x1p-8 : 0.0) + 1e-5;
}

// Scores ~ N(0, 3) with NaN / +inf / -inf written into masked positions (must not spread),
// one unmasked -inf (probability 0) and one unmasked NaN (its row is NaN, as in the
// reference). Tolerance: default_tolerance(probs, T) (a sum of T exponentials of ~2 ulp).
TEST_P(Conformance, CausalSoftmaxForward) {
  Rng rng(103);
  const float masked_poison[] = {kNaN, kInf, -kInf};
  for (int64_t t : {1, 5, 64, 65, 300}) {
    for (int64_t batch : {1, 3}) {
      const int64_t rows = batch * t;
      for (DType st : {dt(), DType::kF32}) {
        for (DType pt : {dt(), other_float(dt())}) {
          const std::string what =
              "causal_softmax_forward T=" + std::to_string(t) + " batch=" + std::to_string(batch) +
              " scores " + std::string(dtype_name(st)) + " probs " + std::string(dtype_name(pt));
          HostTensor sh = normal(st, rows, t, rng, 0.0, 3.0);
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t j = r % t + 1; j < t; ++j) sh.set(r, j, masked_poison[(r + j) % 3]);
          }
          int64_t nan_row = -1;
          if (t >= 5) {
            sh.set(t + 3 < rows ? t + 3 : 3, 1, -INFINITY);  // an unmasked -inf: p = 0
            nan_row = rows - 2;                              // q = t - 2 >= 3
            sh.set(nan_row, 2, NAN);
          }
          Pair scores = both(sh);
          Pair probs = outputs(pt, rows, t);
          run([&](Backend& be, bool r) {
            return be.causal_softmax_forward(pick(scores, r), pick(probs, r));
          });
          expect_same(probs, default_tolerance(pt, t), what);
          const HostTensor got = dut_host(probs);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t q = r % t;
            double sum = 0.0;
            for (int64_t j = 0; j < t; ++j) {
              const double p = got.get(r, j);
              if (j > q) {
                ASSERT_EQ(p, 0.0) << what << ": masked (" << r << ", " << j << ")";
                ASSERT_FALSE(std::signbit(p)) << what << ": masked (" << r << ", " << j << ")";
              } else if (r == nan_row) {
                ASSERT_TRUE(std::isnan(p)) << what << ": row " << r << " holds a NaN score";
              } else {
                ASSERT_TRUE(std::isfinite(p)) << what << ": (" << r << ", " << j << ") = " << p;
              }
              sum += p;
            }
            if (r != nan_row) {
              EXPECT_NEAR(sum, 1.0, row_sum_tolerance(pt)) << what << ": row " << r;
            }
          }
        }
      }
      // In place (probs == scores, same dtype).
      HostTensor sh = normal(dt(), rows, t, rng, 0.0, 3.0);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = r % t + 1; j < t; ++j) sh.set(r, j, masked_poison[(r + j) % 3]);
      }
      Pair x = inout(sh);
      run([&](Backend& be, bool r) { return be.causal_softmax_forward(pick(x, r), pick(x, r)); });
      expect_same(x, default_tolerance(dt(), t),
                  "causal_softmax_forward in place T=" + std::to_string(t));
    }
  }
}

// dscores = p (dp - sum_{k <= q} p_k dp_k) from the reference's probabilities; masked dprobs
// are NaN-poisoned (never read) and masked dscores exactly 0. |dp| ~ N(0, 1) and sum p = 1,
// so |dscores| stays below ~8: default_tolerance(dscores, T, 4) (a dot product of T terms,
// then one product).
TEST_P(Conformance, CausalSoftmaxBackward) {
  Rng rng(104);
  for (int64_t t : {1, 5, 64, 65, 300}) {
    for (int64_t batch : {1, 3}) {
      const int64_t rows = batch * t;
      // Probabilities of the reference's forward pass (rounded to dt()).
      DeviceTensor s = to_device(ref(), normal(DType::kF32, rows, t, rng, 0.0, 2.0));
      DeviceTensor p = device_tensor(ref(), dt(), rows, t);
      AMPD_ASSERT_OK(ref().causal_softmax_forward(s, p));
      const HostTensor ph = to_host(ref(), p);
      HostTensor dph = normal(dt(), rows, t, rng);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = r % t + 1; j < t; ++j) dph.set(r, j, j % 2 ? NAN : INFINITY);
      }
      for (DType pt : {dt(), DType::kF32}) {
        HostTensor ph_t(pt, rows, t);
        for (int64_t i = 0; i < ph.numel(); ++i) ph_t.set(i, ph.get(i));
        Pair probs = both(ph_t);
        Pair dprobs = both(dph);
        for (DType gt : {dt(), other_float(dt())}) {
          const std::string what =
              "causal_softmax_backward T=" + std::to_string(t) + " batch=" + std::to_string(batch) +
              " probs " + std::string(dtype_name(pt)) + " dscores " + std::string(dtype_name(gt));
          Pair ds = outputs(gt, rows, t);
          run([&](Backend& be, bool r) {
            return be.causal_softmax_backward(pick(probs, r), pick(dprobs, r), pick(ds, r));
          });
          expect_same(ds, default_tolerance(gt, t, 4.0), what);
          const HostTensor got = dut_host(ds);
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t j = 0; j < t; ++j) {
              const double v = got.get(r, j);
              if (j > r % t) {
                ASSERT_EQ(v, 0.0) << what << ": masked (" << r << ", " << j << ")";
              } else {
                ASSERT_TRUE(std::isfinite(v)) << what << ": (" << r << ", " << j << ") = " << v;
              }
            }
          }
        }
        // In place: dscores aliases dprobs.
        Pair inplace = inout(dph);
        run([&](Backend& be, bool r) {
          return be.causal_softmax_backward(pick(probs, r), pick(inplace, r), pick(inplace, r));
        });
        expect_same(inplace, default_tolerance(dt(), t, 4.0),
                    "causal_softmax_backward in place T=" + std::to_string(t));
      }
    }
  }
}

// Malformed calls are InvalidArgument naming the argument (backend.cc validates before any
// kernel) and change nothing.
TEST_P(Conformance, SequenceOpsValidationNamesTheArgument) {
  Rng rng(105);
  auto expect_invalid = [&](const Status& s, const std::string& needle) {
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << needle << ": " << s.to_string();
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.to_string();
  };
  HostTensor ih(DType::kI32, 1, 6);
  fill_integers(ih, rng, 0, 3);
  DeviceTensor ids = to_device(dut(), ih);
  DeviceTensor ids_f = to_device(dut(), normal(dt(), 1, 6, rng));
  DeviceTensor table = to_device(dut(), normal(dt(), 4, 5, rng));
  DeviceTensor out = to_device(dut(), normal(dt(), 6, 5, rng));
  DeviceTensor out_wide = to_device(dut(), normal(dt(), 6, 7, rng));
  DeviceTensor out_short = to_device(dut(), normal(dt(), 5, 5, rng));
  const HostTensor out_before = to_host(dut(), out);
  expect_invalid(dut().embedding_forward(ids_f, table, out), "ids must be i32");
  expect_invalid(dut().embedding_forward(ids, table, out_wide), "must have table's 5 columns");
  expect_invalid(dut().embedding_forward(ids, table, out_short), "ids must be a vector of 5");
  DeviceTensor ids_i32_as_table = to_device(dut(), ih);
  expect_invalid(dut().embedding_forward(ids, ids_i32_as_table, out),
                 "table must be f32, f16 or bf16");
  EXPECT_EQ(to_host(dut(), out).bytes, out_before.bytes) << "a rejected call wrote to out";

  DeviceTensor dy = to_device(dut(), normal(dt(), 6, 5, rng));
  DeviceTensor dtable = to_device(dut(), normal(DType::kF32, 4, 5, rng));
  DeviceTensor dtable_low = to_device(dut(), normal(other_float(DType::kF32), 4, 5, rng));
  DeviceTensor dtable_wide = to_device(dut(), normal(DType::kF32, 4, 6, rng));
  const HostTensor dtable_before = to_host(dut(), dtable);
  expect_invalid(dut().embedding_backward(ids_f, dy, dtable), "ids must be i32");
  expect_invalid(dut().embedding_backward(ids, dy, dtable_low), "dtable must be f32");
  expect_invalid(dut().embedding_backward(ids, dy, dtable_wide), "must have dy's 5 columns");
  expect_invalid(dut().embedding_backward(ids, out_short, dtable), "ids must be a vector of 5");
  EXPECT_EQ(to_host(dut(), dtable).bytes, dtable_before.bytes) << "a rejected call wrote dtable";

  DeviceTensor sq = to_device(dut(), normal(dt(), 8, 4, rng));     // two 4 x 4 matrices
  DeviceTensor nonsq = to_device(dut(), normal(dt(), 7, 4, rng));  // 7 rows: not a multiple
  DeviceTensor sq_other = to_device(dut(), normal(other_float(dt()), 8, 4, rng));
  DeviceTensor sq_small = to_device(dut(), normal(dt(), 4, 4, rng));
  DeviceTensor probs = to_device(dut(), normal(dt(), 8, 4, rng));
  const HostTensor probs_before = to_host(dut(), probs);
  expect_invalid(dut().causal_softmax_forward(nonsq, nonsq), "scores must hold square");
  expect_invalid(dut().causal_softmax_forward(sq, sq_small), "must have the shape of scores");
  expect_invalid(dut().causal_softmax_forward(ids, probs), "scores must be f32, f16 or bf16");
  Tensor sq_as_other = sq;
  sq_as_other.dtype = other_float(dt());
  if (dtype_size(sq_as_other.dtype) <= dtype_size(dt())) {
    expect_invalid(dut().causal_softmax_forward(sq, sq_as_other),
                   "probs may alias scores only with the same dtype");
  }
  expect_invalid(dut().causal_softmax_backward(nonsq, nonsq, nonsq), "probs must hold square");
  expect_invalid(dut().causal_softmax_backward(probs, sq_small, sq), "dprobs");
  expect_invalid(dut().causal_softmax_backward(probs, sq, sq_small), "dscores");
  expect_invalid(dut().causal_softmax_backward(probs, sq, ids), "dscores must be f32, f16 or bf16");
  Tensor dp_as_other = sq_other;
  dp_as_other.data = sq.tensor.data;
  if (dtype_size(dp_as_other.dtype) <= dtype_size(dt())) {
    expect_invalid(dut().causal_softmax_backward(probs, sq, dp_as_other),
                   "dscores may alias dprobs only with the same dtype");
  }
  EXPECT_EQ(to_host(dut(), probs).bytes, probs_before.bytes) << "a rejected call wrote probs";
}

// ---- mixed-precision bookkeeping ----------------------------------------------------------------

// Flags identical; unflagged tensors scaled exactly like the reference (one FP32 product,
// correctly rounded). Flagged tensors may be left partially scaled, so they are not compared.
TEST_P(Conformance, UnscaleAndCheck) {
  Rng rng(101);
  const int64_t sizes[] = {1, 7, 513, 40000, 70001, 33};
  for (float inv : {0x1p-16f, 1.0f / 3.0f, 1.0f, 0x1p100f}) {
    std::vector<HostTensor> host;
    for (int64_t n : sizes) host.push_back(normal(DType::kF32, 1, n, rng, 0.0, 1e3));
    host[1].set(3, NAN);
    host[3].set(39999, INFINITY);   // last element
    host[4].set(65536, -INFINITY);  // in the third 32768-element span
    host[5].set(32, 3e38);          // finite; overflows only when inv > 1
    std::vector<Pair> g;
    for (const HostTensor& h : host) g.push_back(both(h));
    Pair flags = outputs(DType::kI32, 1, static_cast<int64_t>(host.size()));
    run([&](Backend& be, bool r) {
      std::vector<Tensor> ts;
      for (const Pair& p : g) ts.push_back(pick(p, r));
      return be.unscale_and_check(ts, inv, pick(flags, r));
    });
    const std::string what = "unscale_and_check inv=" + std::to_string(inv);
    expect_same(flags, kExact, what + " flags");
    const HostTensor f = ref_host(flags);
    for (size_t t = 0; t < g.size(); ++t) {
      if (f.get(static_cast<int64_t>(t)) == 0) {
        expect_same(g[t], kExact, what + " tensor " + std::to_string(t));
      }
    }
  }
}

TEST_P(Conformance, GlobalNorm) {
  Rng rng(102);
  std::vector<Pair> g;
  for (int64_t n : {1, 7, 513, 70001}) g.push_back(both(normal(DType::kF32, 1, n, rng)));
  Pair out = outputs(DType::kF32, 1, 1);
  run([&](Backend& be, bool r) {
    std::vector<Tensor> ts;
    for (const Pair& p : g) ts.push_back(pick(p, r));
    return be.global_norm(ts, pick(out, r));
  });
  // A sum of 70522 squares: FP32 accumulation allowed.
  expect_same(out, default_tolerance(DType::kF32, 70522, 1.0), "global_norm");
}

// ---- optimizers
// ------------------------------------------------------------------------------------

// A parameter list with awkward sizes (one spanning several 32768-element tasks of the CPU
// backend), a bias-like slot exempt from weight decay, and (f16 / bf16 suites) a
// low-precision working copy. Fresh gradients every step; several steps, so that the
// optimizer state is exercised. Master weights and state are compared with a tolerance
// that grows with the step count (each step may differ by a few FP32 ulps, and the
// differences add up); the working copy must equal the backend's own master rounded once,
// bit for bit, and the reference's within one ulp of its dtype.
constexpr int64_t kParamSizes[] = {1, 7, 513, 70001};

struct Slots {
  std::vector<Pair> master, grad, s1, s2, low;
  std::vector<float> decay_mult;
  std::vector<ParamSlot> side(bool is_ref, bool with_s2) const {
    std::vector<ParamSlot> v;
    for (size_t i = 0; i < master.size(); ++i) {
      ParamSlot p;
      p.master = pick(master[i], is_ref);
      p.grad = pick(grad[i], is_ref);
      p.state1 = pick(s1[i], is_ref);
      if (with_s2) p.state2 = pick(s2[i], is_ref);
      if (!low.empty()) p.low_precision = pick(low[i], is_ref);
      p.weight_decay_multiplier = decay_mult[i];
      v.push_back(p);
    }
    return v;
  }
};

TEST_P(Conformance, SgdSteps) {
  struct Config {
    float momentum, dampening, weight_decay;
    bool nesterov;
  };
  for (const Config cfg : {Config{0, 0, 0, false}, Config{0.9f, 0, 1e-2f, false},
                           Config{0.9f, 0, 1e-2f, true}, Config{0.5f, 0.25f, 0, false}}) {
    Rng rng(111);
    Slots s;
    for (int64_t n : kParamSizes) {
      s.master.push_back(both(normal(DType::kF32, 1, n, rng)));
      s.grad.push_back(both(HostTensor(DType::kF32, 1, n)));
      s.s1.push_back(both(HostTensor(DType::kF32, 1, n)));
      s.s2.push_back(both(HostTensor(DType::kF32, 1, n)));
      if (dt() != DType::kF32) s.low.push_back(outputs(dt(), 1, n));
      s.decay_mult.push_back(n == 7 ? 0.0f : 1.0f);
    }
    for (int step = 1; step <= 5; ++step) {
      for (size_t i = 0; i < s.grad.size(); ++i) {
        s.grad[i] = both(normal(DType::kF32, 1, kParamSizes[i], rng));
      }
      SgdParams hp;
      hp.lr = 0.1f;
      hp.momentum = cfg.momentum;
      hp.dampening = cfg.dampening;
      hp.weight_decay = cfg.weight_decay;
      hp.nesterov = cfg.nesterov;
      hp.first_step = step == 1;
      hp.grad_scale = 0.5f;
      run([&](Backend& be, bool r) { return be.sgd_step(s.side(r, false), hp); });
      const std::string what = "sgd momentum=" + std::to_string(cfg.momentum) +
                               " nesterov=" + std::to_string(cfg.nesterov) + " step " +
                               std::to_string(step);
      const Tolerance tol{1e-6 * step, 1e-6 * step};
      for (size_t i = 0; i < s.master.size(); ++i) {
        const std::string at = what + " slot " + std::to_string(i);
        expect_same(s.master[i], tol, at + " master");
        if (cfg.momentum != 0) expect_same(s.s1[i], tol, at + " momentum");
        if (!s.low.empty()) {
          expect_same(s.low[i], default_tolerance(dt(), 1, 4.0), at + " low_precision");
          const HostTensor w = dut_host(s.master[i]), lp = dut_host(s.low[i]);
          std::vector<double> expected;
          for (int64_t k = 0; k < w.numel(); ++k) expected.push_back(round_to(dt(), w.get(k)));
          expect_close(lp, expected, kExact, at + " low_precision == round(master)");
        }
      }
    }
  }
}

TEST_P(Conformance, AdamWSteps) {
  Rng rng(112);
  Slots s;
  for (int64_t n : kParamSizes) {
    s.master.push_back(both(normal(DType::kF32, 1, n, rng)));
    s.grad.push_back(both(HostTensor(DType::kF32, 1, n)));
    s.s1.push_back(both(HostTensor(DType::kF32, 1, n)));
    s.s2.push_back(both(HostTensor(DType::kF32, 1, n)));
    if (dt() != DType::kF32) s.low.push_back(outputs(dt(), 1, n));
    s.decay_mult.push_back(n == 7 ? 0.0f : 1.0f);
  }
  for (int step = 1; step <= 5; ++step) {
    for (size_t i = 0; i < s.grad.size(); ++i) {
      s.grad[i] = both(normal(DType::kF32, 1, kParamSizes[i], rng, 0.0, step == 3 ? 1e-3 : 1.0));
    }
    AdamWParams hp;
    hp.lr = 1e-2f;
    hp.weight_decay = 0.1f;
    hp.step = step;
    hp.grad_scale = 0.5f;
    run([&](Backend& be, bool r) { return be.adamw_step(s.side(r, true), hp); });
    const std::string what = "adamw step " + std::to_string(step);
    const Tolerance tol{1e-6 * step, 1e-6 * step};
    for (size_t i = 0; i < s.master.size(); ++i) {
      const std::string at = what + " slot " + std::to_string(i);
      expect_same(s.master[i], tol, at + " master");
      expect_same(s.s1[i], tol, at + " m");
      expect_same(s.s2[i], tol, at + " v");
      if (!s.low.empty()) {
        expect_same(s.low[i], default_tolerance(dt(), 1, 4.0), at + " low_precision");
        const HostTensor w = dut_host(s.master[i]), lp = dut_host(s.low[i]);
        std::vector<double> expected;
        for (int64_t k = 0; k < w.numel(); ++k) expected.push_back(round_to(dt(), w.get(k)));
        expect_close(lp, expected, kExact, at + " low_precision == round(master)");
      }
    }
  }
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  return std::get<0>(info.param) + "_" + std::string(dtype_name(std::get<1>(info.param)));
}

INSTANTIATE_TEST_SUITE_P(Backends, Conformance,
                         ::testing::Combine(::testing::ValuesIn(backend_names()),
                                            ::testing::Values(DType::kF32, DType::kF16,
                                                              DType::kBF16)),
                         param_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(Conformance);

}  // namespace
}  // namespace ampd::test
