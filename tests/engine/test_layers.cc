// Every layer's backward against central finite differences (FP32 mode, loss summed in
// FP64 on the host), on the reference and the CPU backend; and every layer's FP16/BF16
// forward against its FP32 forward.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>

#include "engine/layers.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/half.h"
#include "kernels/reference/reference_backend.h"

namespace ampd::engine {
namespace {

constexpr int64_t kBatch = 6;
constexpr int64_t kIn = 5;

std::unique_ptr<Backend> make(const std::string& which) {
  if (which == "reference") return make_reference_backend();
  CpuBackendOptions o;
  o.threads = 1;
  return std::move(make_cpu_backend(o)).value();
}

ampd::v1::LayerSpec layer_spec(const std::string& kind) {
  ampd::v1::LayerSpec s;
  if (kind == "linear") s.mutable_linear()->set_out_features(4);
  if (kind == "relu") s.mutable_relu();
  if (kind == "gelu") s.mutable_gelu();
  if (kind == "tanh") s.mutable_tanh();
  if (kind == "layer_norm") s.mutable_layer_norm();
  if (kind == "batch_norm") s.mutable_batch_norm();
  if (kind == "dropout") s.mutable_dropout()->set_p(0.3f);
  return s;
}

struct Bufs {
  Buffer x, y, dy, dx;
};

// Input values kept away from ReLU's kink so the central difference sees one branch.
std::vector<float> make_input(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(kBatch * kIn);
  for (auto& v : x) {
    do v = n(rng);
    while (std::abs(v) < 0.05f);
  }
  return x;
}

class LayerGradient : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(LayerGradient, BackwardMatchesFiniteDifferences) {
  const auto& [backend_name, kind] = GetParam();
  auto be = make(backend_name);
  auto layer = make_layer(layer_spec(kind));
  ASSERT_TRUE(layer.ok());
  Layer& l = **layer;
  BuildContext bc;
  bc.backend = be.get();
  bc.max_batch = kBatch;
  bc.index = 2;
  bc.seed = 99;
  bc.name = "2";
  ASSERT_TRUE(l.build(bc, kIn).ok());
  // Give normalization parameters non-trivial values so their gradients matter.
  for (Param& p : l.params()) {
    if (kind == "layer_norm" || kind == "batch_norm") {
      std::vector<float> v(static_cast<size_t>(p.rows * p.cols));
      for (size_t i = 0; i < v.size(); ++i) v[i] = 0.5f + 0.1f * static_cast<float>(i);
      ASSERT_TRUE(be->upload(p.master_t(), v.data()).ok());
    }
  }
  const int64_t out = l.out_features();
  std::vector<float> x = make_input(1), r(kBatch * out);
  std::mt19937_64 rng(2);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (auto& v : r) v = n(rng);

  auto alloc = [&](int64_t rows, int64_t cols) {
    return std::move(be->allocate(static_cast<size_t>(rows * cols) * 4)).value();
  };
  Buffer xb = alloc(kBatch, kIn), yb = alloc(kBatch, out), dyb = alloc(kBatch, out),
         dxb = alloc(kBatch, kIn);
  const Tensor xt = xb.view(DType::kF32, kBatch, kIn), yt = yb.view(DType::kF32, kBatch, out),
               dyt = dyb.view(DType::kF32, kBatch, out), dxt = dxb.view(DType::kF32, kBatch, kIn);
  PassContext ctx{be.get(), true, 3, 5};

  // L = sum(y * r) in FP64 on the host.
  auto loss = [&]() {
    EXPECT_TRUE(be->upload(xt, x.data()).ok());
    EXPECT_TRUE(l.forward(ctx, xt, yt).ok());
    std::vector<float> y(kBatch * out);
    EXPECT_TRUE(be->download(y.data(), yt).ok());
    double s = 0;
    for (size_t i = 0; i < y.size(); ++i) s += static_cast<double>(y[i]) * r[i];
    return s;
  };

  loss();  // forward with the unperturbed input, then the analytic backward
  ASSERT_TRUE(be->upload(dyt, r.data()).ok());
  ASSERT_TRUE(l.backward(ctx, xt, dyt, dxt).ok());
  std::vector<float> dx(kBatch * kIn);
  ASSERT_TRUE(be->download(dx.data(), dxt).ok());
  std::vector<std::vector<float>> dparams;
  for (Param& p : l.params()) {
    std::vector<float> g(static_cast<size_t>(p.rows * p.cols));
    ASSERT_TRUE(be->download(g.data(), p.grad_t()).ok());
    dparams.push_back(g);
  }

  // Central differences, h = 1e-3: truncation error O(h^2), FP32 rounding of the
  // outputs contributes ~1e-7 * sum|y r| / h; the tolerance covers both.
  constexpr float h = 1e-3f;
  auto check = [&](float& v, double analytic, const std::string& what) {
    const float saved = v;
    v = saved + h;
    const double up = loss();
    v = saved - h;
    const double down = loss();
    v = saved;
    const double fd = (up - down) / (2.0 * static_cast<double>(h));
    EXPECT_NEAR(analytic, fd, 2e-3 + 1e-2 * std::abs(fd)) << kind << " " << what;
  };
  for (size_t i = 0; i < x.size(); ++i) check(x[i], dx[i], "dx[" + std::to_string(i) + "]");
  for (size_t k = 0; k < l.params().size(); ++k) {
    Param& p = l.params()[k];
    std::vector<float> m(static_cast<size_t>(p.rows * p.cols));
    ASSERT_TRUE(be->download(m.data(), p.master_t()).ok());
    for (size_t i = 0; i < m.size(); ++i) {
      const float saved = m[i];
      auto at = [&](float v) {
        m[i] = v;
        EXPECT_TRUE(be->upload(p.master_t(), m.data()).ok());
        return loss();
      };
      const double fd = (at(saved + h) - at(saved - h)) / (2.0 * static_cast<double>(h));
      at(saved);
      EXPECT_NEAR(dparams[k][i], fd, 2e-3 + 1e-2 * std::abs(fd))
          << kind << " " << p.name << "[" << i << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllLayers, LayerGradient,
    ::testing::Combine(::testing::Values("reference", "cpu"),
                       ::testing::Values("linear", "relu", "gelu", "tanh", "layer_norm",
                                         "batch_norm", "dropout")),
    [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

// FP16/BF16 forward vs FP32 forward of the same layer (same master weights). Tolerance:
// the input is rounded to the working dtype (half an ulp), the layer computes in FP32
// and rounds its output once (half an ulp), and LayerNorm/BatchNorm amplify input
// error by up to rstd; 8 ulps of the dtype relative to max |y| covers it:
// fp16 8 * 2^-10 = 7.8e-3, bf16 8 * 2^-7 = 6.3e-2.
class LayerPrecision : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(LayerPrecision, LowPrecisionForwardTracksFp32) {
  const auto& [dtype_name, kind] = GetParam();
  const DType dt = dtype_name == "fp16" ? DType::kF16 : DType::kBF16;
  auto be = make("cpu");
  constexpr int64_t B = 64, In = 96;
  std::mt19937_64 rng(4);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(B * In);
  for (auto& v : x) v = n(rng);

  auto forward = [&](DType act) {
    auto layer = std::move(make_layer(layer_spec(kind))).value();
    BuildContext bc;
    bc.backend = be.get();
    bc.act_dtype = act;
    bc.max_batch = B;
    bc.seed = 42;
    bc.name = "0";
    EXPECT_TRUE(layer->build(bc, In).ok());
    const int64_t out = layer->out_features();
    Buffer x32 = std::move(be->allocate(B * In * 4)).value();
    Buffer xl = std::move(be->allocate(B * In * dtype_size(act))).value();
    Buffer yl = std::move(be->allocate(B * out * dtype_size(act))).value();
    Buffer y32 = std::move(be->allocate(B * out * 4)).value();
    EXPECT_TRUE(be->upload(x32.view(DType::kF32, B, In), x.data()).ok());
    EXPECT_TRUE(be->cast(x32.view(DType::kF32, B, In), xl.view(act, B, In)).ok());
    PassContext ctx{be.get(), true, 1, 9};
    EXPECT_TRUE(layer->forward(ctx, xl.view(act, B, In), yl.view(act, B, out)).ok());
    EXPECT_TRUE(be->cast(yl.view(act, B, out), y32.view(DType::kF32, B, out)).ok());
    std::vector<float> y(B * out);
    EXPECT_TRUE(be->download(y.data(), y32.view(DType::kF32, B, out)).ok());
    return y;
  };
  const auto ref = forward(DType::kF32);
  const auto low = forward(dt);
  ASSERT_EQ(ref.size(), low.size());
  double max_ref = 0, max_err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, std::abs(static_cast<double>(ref[i])));
    max_err = std::max(max_err, std::abs(static_cast<double>(ref[i]) - low[i]));
  }
  const double ulp = dt == DType::kF16 ? 0x1p-10 : 0x1p-7;
  EXPECT_LE(max_err, 8 * ulp * max_ref)
      << kind << " " << dtype_name << " max_err " << max_err << " max |y| " << max_ref;
}

INSTANTIATE_TEST_SUITE_P(
    AllLayers, LayerPrecision,
    ::testing::Combine(::testing::Values("fp16", "bf16"),
                       ::testing::Values("linear", "relu", "gelu", "tanh", "layer_norm",
                                         "batch_norm", "dropout")),
    [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

}  // namespace
}  // namespace ampd::engine
