// Models as graphs of blocks (engine/model.*, engine/sequential.*, engine/layers/residual.cc,
// weight tying in engine/layers/linear.cc) and the layer registry:
//   * every LayerSpec oneof field has exactly one registry entry;
//   * the dry-run plan (the admission estimate) equals what create() allocates, byte for
//     byte, and the backend's own allocation counter agrees;
//   * whole-model gradients (a nested residual path, a tied weight, (batch, time, features)
//     activations) against central finite differences of the FP64-summed mean loss;
//   * the residual digits example reaches 0.97 in fp32, fp16 and bf16.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>

#include "engine/job_spec.h"
#include "engine/layer_registry.h"
#include "engine/model.h"
#include "engine/trainer.h"
#include "kernels/reference/reference_backend.h"
#include "tests/engine/engine_test_util.h"

namespace ampd::engine {
namespace {

ampd::v1::ModelSpec model_from_yaml(const std::string& layers_yaml) {
  auto s = parse_job_spec("model:\n  layers: " + layers_yaml + "\noptimizer: {sgd: {lr: 0.1}}\n" +
                              "data: {digits: {}}\ntraining: {max_steps: 1}\n",
                          "yaml");
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  auto r = validate_and_resolve(s.value());
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? r->model() : ampd::v1::ModelSpec();
}

// Two nested residual blocks, a BatchNorm and dropout (aux buffers), and a final layer
// whose weight is tied to a hidden one of the same (5, 5) shape.
constexpr const char* kGraph =
    "[{linear: {out_features: 5}},"
    " {residual: {layers: [{layer_norm: {}}, {linear: {out_features: 7}}, {gelu: {}},"
    "   {residual: {layers: [{linear: {out_features: 7}}, {tanh: {}}]}},"
    "   {linear: {out_features: 5}}]}},"
    " {batch_norm: {}}, {dropout: {p: 0.25}},"
    " {linear: {out_features: 5, tie_weight_to: '0.weight', bias: false}}]";

TEST(LayerRegistry, EveryLayerSpecKindHasOneEntry) {
  const auto* oneof = ampd::v1::LayerSpec::descriptor()->FindOneofByName("kind");
  ASSERT_NE(oneof, nullptr);
  std::set<std::string> names;
  for (int i = 0; i < oneof->field_count(); ++i) {
    const auto* field = oneof->field(i);
    const LayerKind* k =
        find_layer_kind(static_cast<ampd::v1::LayerSpec::KindCase>(field->number()));
    ASSERT_NE(k, nullptr) << "LayerSpec." << field->name() << " has no registry entry";
    EXPECT_EQ(k->name, field->name());
    names.insert(std::string(k->name));
  }
  EXPECT_EQ(names.size(), layer_kinds().size()) << "an entry without a LayerSpec field";
  EXPECT_EQ(find_layer_kind(ampd::v1::LayerSpec::KIND_NOT_SET), nullptr);
  EXPECT_NE(layer_kind_list().find("residual"), std::string::npos);
}

TEST(ModelGraph, PlanEqualsAllocationByteForByte) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t time : {1, 3}) {
      auto be = test::cpu_backend(1);
      Model::Options o;
      o.act_dtype = dt;
      o.max_batch = 9;
      o.time = time;
      o.in_features = 5;
      o.out_features = 5;
      const auto spec = model_from_yaml(kGraph);
      auto plan = Model::plan(spec, o);
      ASSERT_TRUE(plan.ok()) << plan.status().to_string();
      const size_t before = be->memory_stats().in_use_bytes;
      auto m = Model::create(*be, spec, o);
      ASSERT_TRUE(m.ok()) << m.status().to_string();
      const size_t used = be->memory_stats().in_use_bytes - before;
      EXPECT_EQ((*m)->activation_bytes(), plan->activation_bytes);
      EXPECT_EQ((*m)->parameter_bytes(), plan->parameter_bytes);
      EXPECT_EQ(static_cast<int64_t>(used), plan->parameter_bytes + plan->activation_bytes)
          << "an allocation the tally does not count";
      // 5x5+5, LN 2x5, 5x7+7, 7x7+7, 7x5+5, BN 2x5, tied 0.weight counted once.
      EXPECT_EQ((*m)->parameter_count(), 30 + 10 + 42 + 56 + 40 + 10);
      std::set<std::string> names;
      for (Param* p : (*m)->params()) EXPECT_TRUE(names.insert(p->name).second) << p->name;
      for (const char* n :
           {"0.weight", "1.0.weight", "1.1.weight", "1.3.0.weight", "1.4.bias", "2.weight"}) {
        EXPECT_TRUE(names.count(n)) << n;
      }
      EXPECT_FALSE(names.count("4.weight")) << "a tied weight is stored once, as its owner";
    }
  }
}

TEST(ModelGraph, BuildErrorsNameTheLayer) {
  auto be = test::cpu_backend(1);
  Model::Options o;
  o.in_features = 4;
  o.out_features = 3;
  auto bad_tie = Model::create(
      *be, model_from_yaml("[{linear: {out_features: 3, tie_weight_to: '9.weight'}}]"), o);
  ASSERT_FALSE(bad_tie.ok());
  EXPECT_NE(bad_tie.status().message().find("model.layers[0].linear"), std::string::npos)
      << bad_tie.status().message();
  EXPECT_NE(bad_tie.status().message().find("no earlier parameter is named '9.weight'"),
            std::string::npos)
      << bad_tie.status().message();
  auto bad_shape =
      Model::create(*be,
                    model_from_yaml("[{linear: {out_features: 6}},"
                                    " {linear: {out_features: 3, tie_weight_to: '0.weight'}}]"),
                    o);
  ASSERT_FALSE(bad_shape.ok());
  EXPECT_NE(bad_shape.status().message().find("is 6x4 but this layer's weight is 3x6"),
            std::string::npos)
      << bad_shape.status().message();
  auto bad_width =
      Model::create(*be,
                    model_from_yaml("[{residual: {layers: [{linear: {out_features: 2}}]}},"
                                    " {linear: {out_features: 3}}]"),
                    o);
  ASSERT_FALSE(bad_width.ok());
  EXPECT_NE(bad_width.status().message().find("model.layers[0].residual"), std::string::npos);
  EXPECT_NE(bad_width.status().message().find("must give back the width"), std::string::npos)
      << bad_width.status().message();
}

TEST(ModelGraph, SpecValidationCoversBlocks) {
  auto check = [](const std::string& layers, const std::string& expect) {
    auto s = parse_job_spec("model:\n  layers: " + layers +
                                "\noptimizer: {sgd: {lr: 0.1}}\ndata: {digits: {}}\n"
                                "training: {max_steps: 1}\n",
                            "yaml");
    ASSERT_TRUE(s.ok()) << s.status().to_string();
    auto r = validate_and_resolve(*s);
    ASSERT_FALSE(r.ok()) << layers;
    EXPECT_NE(r.status().message().find(expect), std::string::npos) << r.status().message();
  };
  check("[{residual: {}}, {linear: {out_features: 10}}]",
        "model.layers[0].residual.layers: a residual block needs at least one layer");
  check("[{residual: {layers: [{linear: {out_features: 0}}]}}, {linear: {out_features: 10}}]",
        "model.layers[0].residual.layers[0].linear.out_features: must be in [1, 65536]");
  check("[{residual: {layers: [{dropout: {p: 1.5}}]}}, {linear: {out_features: 10}}]",
        "model.layers[0].residual.layers[0].dropout.p");
  std::string deep = "{linear: {out_features: 4}}";
  for (int i = 0; i < kMaxNesting + 1; ++i) deep = "{residual: {layers: [" + deep + "]}}";
  check("[" + deep + ", {linear: {out_features: 10}}]", "nest at most 8 deep");
}

// The whole model's gradients against central differences of the mean loss, on the
// reference backend in FP32 with (batch 3, time 2) sequences: the residual skip paths, the
// nested block and the tied weight's two contributions all feed the checked values.
TEST(ModelGraph, GradientsMatchFiniteDifferencesThroughBlocksAndATiedWeight) {
  auto be = make_reference_backend();
  Model::Options o;
  o.max_batch = 3;
  o.time = 2;
  o.in_features = 5;
  o.out_features = 5;
  o.seed = 11;
  // No dropout or batch norm here: the central difference needs a deterministic,
  // batch-independent function of each weight.
  const auto spec = model_from_yaml(
      "[{linear: {out_features: 5}},"
      " {residual: {layers: [{layer_norm: {}}, {linear: {out_features: 7}}, {gelu: {}},"
      "   {residual: {layers: [{linear: {out_features: 7}}, {tanh: {}}]}},"
      "   {linear: {out_features: 5}}]}},"
      " {linear: {out_features: 5, tie_weight_to: '0.weight', bias: false}}]");
  auto created = Model::create(*be, spec, o);
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  Model& m = **created;
  const int64_t n = 3, rows = n * o.time;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * o.in_features));
  for (auto& v : x) v = nd(rng);
  std::vector<int32_t> labels(static_cast<size_t>(rows));
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int32_t>((i * 3) % 5);
  PassContext ctx{be.get(), true, 0, 1};
  auto loss = [&]() {
    EXPECT_TRUE(m.load_batch(n, x.data(), labels.data(), nullptr).ok());
    EXPECT_TRUE(m.forward(ctx, n).ok());
    std::vector<float> l(static_cast<size_t>(rows));
    EXPECT_TRUE(m.read_losses(n, l.data()).ok());
    double s = 0;
    for (float v : l) s += v;
    return s / static_cast<double>(rows);
  };
  loss();
  ASSERT_TRUE(m.backward(ctx, n, 1.0f).ok());
  constexpr float h = 1e-3f;
  int checked = 0;
  for (Param* p : m.params()) {
    std::vector<float> g(static_cast<size_t>(p->rows * p->cols)), w(g.size());
    ASSERT_TRUE(be->download(g.data(), p->grad_t()).ok());
    ASSERT_TRUE(be->download(w.data(), p->master_t()).ok());
    for (size_t i = 0; i < w.size(); i += 3) {  // every third element keeps this quick
      const float saved = w[i];
      auto at = [&](float v) {
        w[i] = v;
        EXPECT_TRUE(be->upload(p->master_t(), w.data()).ok());
        return loss();
      };
      const double fd = (at(saved + h) - at(saved - h)) / (2.0 * static_cast<double>(h));
      at(saved);
      EXPECT_NEAR(g[i], fd, 1e-3 + 1e-2 * std::abs(fd)) << p->name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 60);
}

// The tied weight's gradient is the sum of both users' contributions: untie it (same
// initial values, copied) and the owner's gradient plus the copy's equals the tied one.
TEST(ModelGraph, ATiedWeightGetsBothContributionsInOneFp32Gradient) {
  auto be = make_reference_backend();
  Model::Options o;
  o.max_batch = 4;
  o.in_features = 6;
  o.out_features = 6;
  o.seed = 3;
  auto tied =
      Model::create(*be,
                    model_from_yaml("[{linear: {out_features: 6}}, {tanh: {}},"
                                    " {linear: {out_features: 6, tie_weight_to: '0.weight'}}]"),
                    o);
  auto untied = Model::create(
      *be,
      model_from_yaml("[{linear: {out_features: 6}}, {tanh: {}}, {linear: {out_features: 6}}]"), o);
  ASSERT_TRUE(tied.ok() && untied.ok());
  // Same values everywhere: the untied model's second weight is the first one's copy.
  auto tp = (*tied)->params(), up = (*untied)->params();
  ASSERT_EQ(tp.size(), 3u);  // 0.weight, 0.bias, 2.bias
  ASSERT_EQ(up.size(), 4u);  // 0.weight, 0.bias, 2.weight, 2.bias
  ASSERT_TRUE(be->copy(up[0]->master_t(), tp[0]->master_t()).ok());
  ASSERT_TRUE(be->copy(up[1]->master_t(), tp[1]->master_t()).ok());
  ASSERT_TRUE(be->copy(up[2]->master_t(), tp[0]->master_t()).ok());
  ASSERT_TRUE(be->copy(up[3]->master_t(), tp[2]->master_t()).ok());
  std::vector<float> x(24);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i));
  std::vector<int32_t> y = {0, 3, 5, 1};
  PassContext ctx{be.get(), true, 0, 1};
  for (Model* m : {tied->get(), untied->get()}) {
    for (int step = 0; step < 2; ++step) {  // twice: the second backward must not accumulate
      ASSERT_TRUE(m->load_batch(4, x.data(), y.data(), nullptr).ok());
      ASSERT_TRUE(m->forward(ctx, 4).ok());
      ASSERT_TRUE(m->backward(ctx, 4, 1.0f).ok());
    }
  }
  std::vector<float> gt(36), g0(36), g2(36);
  ASSERT_TRUE(be->download(gt.data(), tp[0]->grad_t()).ok());
  ASSERT_TRUE(be->download(g0.data(), up[0]->grad_t()).ok());
  ASSERT_TRUE(be->download(g2.data(), up[2]->grad_t()).ok());
  for (size_t i = 0; i < gt.size(); ++i) {
    // The reference sums in FP64 and rounds each product once; the tied gradient is the
    // first contribution rounded to FP32, then the second added to it and rounded again:
    // within a few ulp of the contributions' magnitudes (they may cancel).
    const double want = static_cast<double>(g0[i]) + g2[i];
    const double scale = std::abs(static_cast<double>(g0[i])) + std::abs(g2[i]);
    EXPECT_NEAR(gt[i], want, 4e-7 * scale + 1e-12) << i;
  }
}

// One test per precision, so that ctest runs them in parallel (each is 20 epochs).
class ResidualDigits : public ::testing::TestWithParam<std::string> {};

TEST_P(ResidualDigits, ExampleReachesAccuracy) {
  const std::string precision = GetParam();
  auto be = test::cpu_backend(1);
  auto spec = load_job_spec_file(std::string(AMPD_SOURCE_DIR) + "/examples/digits-residual.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().to_string();
  ampd::v1::JobSpec s = *spec;
  s.set_precision(precision);
  auto t = Trainer::create(*be, s, TrainerOptions{});
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  const ampd::v1::Job job = (*t)->run();
  ASSERT_EQ(job.state(), ampd::v1::SUCCEEDED) << job.failure_reason();
  EXPECT_GE(job.metrics().val_accuracy(), 0.97) << precision;
  RecordProperty("val_accuracy_" + precision, std::to_string(job.metrics().val_accuracy()));
  // The job's memory figure is the model's own build (what the estimate also runs).
  auto est = estimate_memory(*validate_and_resolve(s), 64, 10);
  EXPECT_EQ(job.memory().activation_bytes(), est.activation_bytes) << precision;
  EXPECT_EQ(job.memory().parameter_bytes(), est.parameter_bytes) << precision;
}

INSTANTIATE_TEST_SUITE_P(Precisions, ResidualDigits, ::testing::Values("fp32", "fp16", "bf16"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace ampd::engine
