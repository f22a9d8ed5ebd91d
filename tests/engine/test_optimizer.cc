// The optimizer interface (engine/optimizer.h): each optimizer declares its named state,
// owns it, maps it to the backend's slots, and names its checkpoint keys; and the
// checkpoint file names, search and pruning of engine/checkpoint.h.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/job_spec.h"
#include "engine/optimizer.h"
#include "engine/trainer.h"
#include "kernels/reference/reference_backend.h"
#include "tests/engine/engine_test_util.h"

namespace ampd::engine {
namespace {

namespace fs = std::filesystem;

ampd::v1::OptimizerSpec opt_spec(const std::string& yaml) {
  auto s = parse_job_spec(
      "name: o\nmodel: {layers: [{linear: {out_features: 2}}]}\n"
      "data: {digits: {}}\noptimizer: " +
          yaml + "\n",
      "yaml");
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  return s.ok() ? s->optimizer() : ampd::v1::OptimizerSpec();
}

// Two FP32 parameters, "0.weight" (2 x 3) and "0.bias" (1 x 2), gradients all `grad`.
struct TwoParams {
  explicit TwoParams(Backend& be, float grad = 0.5f) {
    for (auto [name, rows, cols] : {std::tuple{"0.weight", 2, 3}, std::tuple{"0.bias", 1, 2}}) {
      Param& p = params.emplace_back();
      p.name = name;
      p.rows = rows;
      p.cols = cols;
      p.decay = p.rows > 1;
      const size_t bytes = static_cast<size_t>(rows * cols) * sizeof(float);
      p.master = be.allocate(bytes).value();
      p.grad = be.allocate(bytes).value();
      EXPECT_TRUE(be.fill(p.master_t(), 1.0f).ok());
      EXPECT_TRUE(be.fill(p.grad_t(), grad).ok());
    }
  }
  std::vector<Param*> ptrs() {
    std::vector<Param*> out;
    for (Param& p : params) out.push_back(&p);
    return out;
  }
  std::vector<Param> params;
};

std::vector<float> host(Backend& be, const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  EXPECT_TRUE(be.download(out.data(), t).ok());
  return out;
}

std::vector<std::string> keys(const Optimizer& o) {
  std::vector<std::string> out;
  for (const auto& [key, t] : o.state_tensors()) out.push_back(key);
  return out;
}

TEST(Optimizer, EachDeclaresPyTorchStateNamesAndTheCheckpointKeys) {
  auto be = make_reference_backend();
  struct Case {
    const char* yaml;
    const char* name;
    std::vector<std::string> states;
    std::vector<std::string> keys;
  };
  const Case cases[] = {
      {"{adamw: {lr: 0.1}}",
       "adamw",
       {"exp_avg", "exp_avg_sq"},
       {"optimizer.0.weight.exp_avg", "optimizer.0.weight.exp_avg_sq", "optimizer.0.bias.exp_avg",
        "optimizer.0.bias.exp_avg_sq"}},
      {"{sgd: {lr: 0.1, momentum: 0.9}}",
       "sgd",
       {"momentum_buffer"},
       {"optimizer.0.weight.momentum_buffer", "optimizer.0.bias.momentum_buffer"}},
      {"{sgd: {lr: 0.1}}", "sgd", {}, {}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.yaml);
    TwoParams tp(*be);
    const auto spec = opt_spec(c.yaml);
    auto opt = Optimizer::create(*be, spec, tp.ptrs());
    ASSERT_TRUE(opt.ok()) << opt.status().to_string();
    const Optimizer& o = **opt;
    EXPECT_EQ(o.name(), c.name);
    EXPECT_EQ(o.state_names(), c.states);
    EXPECT_EQ(optimizer_state_names(spec), c.states);
    EXPECT_EQ(keys(o), c.keys);
    EXPECT_EQ(o.state_bytes(), static_cast<int64_t>(c.states.size()) * (6 + 2) * 4);
    EXPECT_DOUBLE_EQ(o.peak_lr(), 0.1f);
    for (const auto& [key, t] : o.state_tensors()) {
      for (float v : host(*be, t)) EXPECT_EQ(v, 0.0f) << key << " starts at zero";
    }
    EXPECT_TRUE(o.state(0, "no_such_state").empty());
    EXPECT_TRUE(o.state(7, c.states.empty() ? "" : c.states[0]).empty());
  }
}

TEST(Optimizer, AnUnsetKindNamesTheChoices) {
  auto be = make_reference_backend();
  TwoParams tp(*be);
  auto opt = Optimizer::create(*be, ampd::v1::OptimizerSpec(), tp.ptrs());
  ASSERT_FALSE(opt.ok());
  EXPECT_EQ(opt.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(opt.status().message(), "optimizer: set sgd or adamw");
  EXPECT_TRUE(optimizer_state_names(ampd::v1::OptimizerSpec()).empty());
  EXPECT_EQ(find_optimizer(ampd::v1::OptimizerSpec::KIND_NOT_SET), nullptr);
}

TEST(Optimizer, StepsUpdateTheNamedStateThroughTheBackendSlots) {
  // One step with gradient 0.5: SGD's momentum buffer is the gradient (first step);
  // AdamW's exp_avg is (1 - beta1) g and exp_avg_sq (1 - beta2) g^2 (in FP32).
  auto be = make_reference_backend();
  {
    TwoParams tp(*be);
    auto opt = Optimizer::create(*be, opt_spec("{sgd: {lr: 0.1, momentum: 0.9}}"), tp.ptrs());
    ASSERT_TRUE(opt.ok());
    ASSERT_TRUE((*opt)->step(0.1, 1.0f).ok());
    EXPECT_EQ((*opt)->applied_steps(), 1);
    for (float v : host(*be, (*opt)->state(0, "momentum_buffer"))) EXPECT_EQ(v, 0.5f);
    for (float v : host(*be, tp.params[0].master_t())) EXPECT_FLOAT_EQ(v, 1.0f - 0.1f * 0.5f);
  }
  {
    TwoParams tp(*be);
    auto opt = Optimizer::create(*be, opt_spec("{adamw: {lr: 0.1, weight_decay: 0}}"), tp.ptrs());
    ASSERT_TRUE(opt.ok());
    ASSERT_TRUE((*opt)->step(0.1, 1.0f).ok());
    for (size_t i = 0; i < 2; ++i) {
      for (float v : host(*be, (*opt)->state(i, "exp_avg")))
        EXPECT_NEAR(v, (1.0f - 0.9f) * 0.5f, 1e-8);
      for (float v : host(*be, (*opt)->state(i, "exp_avg_sq"))) {
        EXPECT_NEAR(v, (1.0f - 0.999f) * 0.25f, 1e-10);
      }
    }
  }
}

// ---- checkpoint files ----------------------------------------------------------------

TEST(CheckpointFiles, NamesStepsAndTemporaryFiles) {
  EXPECT_EQ(checkpoint_file_name(40), "step-40.safetensors");
  EXPECT_EQ(checkpoint_path("/x/y", 7), "/x/y/step-7.safetensors");
  EXPECT_EQ(checkpoint_step("step-40.safetensors"), 40);
  EXPECT_EQ(checkpoint_step("/x/y/step-0.safetensors"), 0);
  EXPECT_EQ(checkpoint_step(checkpoint_path("d", 123456789012)), 123456789012);
  for (const char* bad : {"step-.safetensors", "step-4a.safetensors", "step-4.safetensors.tmp-1-2",
                          "x-4.safetensors", "step-4.json", "/x/step-4.safetensors/",
                          "step-1234567890123456789.safetensors", "step--4.safetensors"}) {
    EXPECT_EQ(checkpoint_step(bad), -1) << bad;
  }
  const std::string tmp = checkpoint_temp_path("/x/step-4.safetensors");
  EXPECT_EQ(tmp.rfind("/x/step-4.safetensors.tmp-", 0), 0u) << tmp;
  EXPECT_NE(tmp, checkpoint_temp_path("/x/step-4.safetensors"));
  EXPECT_TRUE(is_checkpoint_temp_name(fs::path(tmp).filename().string()));
  EXPECT_EQ(checkpoint_step(tmp), -1);
  EXPECT_FALSE(is_checkpoint_temp_name("step-4.safetensors"));
}

TEST(CheckpointFiles, TheNewestValidOneIsFoundAndOldOnesPruned) {
  auto be = make_reference_backend();
  const fs::path dir = test::temp_dir("ckfiles");
  auto spec = parse_job_spec(
      "name: files\nprecision: fp32\n"
      "model: {layers: [{linear: {out_features: 3}}]}\n"
      "data: {synthetic: {kind: blobs, samples: 32, features: 4, classes: 3}, batch_size: 8}\n"
      "optimizer: {adamw: {lr: 0.01}}\n"
      "training: {max_steps: 6, checkpoint_every: 2}\n",
      "yaml");
  ASSERT_TRUE(spec.ok());
  // An empty or missing directory has none.
  EXPECT_EQ(find_latest_checkpoint((dir / "missing").string(), false).path, "");
  TrainerOptions o;
  o.checkpoint_dir = dir.string();
  auto t = Trainer::create(*be, *spec, std::move(o));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  ASSERT_EQ((*t)->run().state(), ampd::v1::SUCCEEDED);
  // The trainer kept the newest two: steps 4 and 6.
  const std::string s4 = checkpoint_path(dir.string(), 4), s6 = checkpoint_path(dir.string(), 6);
  ASSERT_TRUE(fs::exists(s4) && fs::exists(s6));
  EXPECT_FALSE(fs::exists(checkpoint_path(dir.string(), 2)));
  // A corrupt newest file, a newer partial write and an unrelated file.
  fs::copy_file(s6, checkpoint_path(dir.string(), 8));
  { std::ofstream(checkpoint_path(dir.string(), 8), std::ios::app) << "x"; }
  const std::string partial = checkpoint_temp_path(checkpoint_path(dir.string(), 10));
  { std::ofstream(partial) << "half"; }
  { std::ofstream(dir / "notes.txt") << "keep me"; }

  CheckpointSearch found = find_latest_checkpoint(dir.string(), /*remove_partial_writes=*/false);
  EXPECT_EQ(found.path, s6);
  EXPECT_EQ(found.step, 6);
  ASSERT_EQ(found.skipped.size(), 1u);
  EXPECT_EQ(found.skipped[0].path, checkpoint_path(dir.string(), 8));
  EXPECT_NE(found.skipped[0].reason.find("corrupt"), std::string::npos) << found.skipped[0].reason;
  EXPECT_EQ(found.note(), "skipped " + found.skipped[0].path + ": " + found.skipped[0].reason);
  EXPECT_TRUE(found.removed.empty());
  EXPECT_TRUE(fs::exists(partial));

  found = find_latest_checkpoint(dir.string(), /*remove_partial_writes=*/true);
  EXPECT_EQ(found.path, s6);
  EXPECT_EQ(found.removed, std::vector<std::string>{partial});
  EXPECT_FALSE(fs::exists(partial));

  prune_checkpoints(dir.string(), {s6});
  EXPECT_FALSE(fs::exists(s4));
  EXPECT_FALSE(fs::exists(checkpoint_path(dir.string(), 8)));
  EXPECT_TRUE(fs::exists(s6));
  EXPECT_TRUE(fs::exists(dir / "notes.txt"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ampd::engine
