// Job specs: YAML and JSON parse to the same message, defaults, validation messages that
// name the field, collected errors, the memory estimate and the JSON round trip.
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "engine/job_spec.h"

namespace ampd::engine {
namespace {

using ampd::v1::JobSpec;
using ampd::v1::LayerSpec;
using google::protobuf::util::MessageDifferencer;

// Every field set, in the spellings a user might mix: proto names, lowerCamel JSON names,
// flow and block style, an empty `relu:` for the empty message, YAML 1.2 number forms.
constexpr char kFullYaml[] = R"yaml(
# A digits classifier in FP16 with everything spelled out.
name: digits-mlp
precision: fp16
model:
  loss: cross_entropy
  layers:
    - linear: {out_features: 128, bias: true}
    - layer_norm: {eps: 1e-5}
    - gelu: {}
    - dropout: {p: 0.1}
    - linear:
        outFeatures: 64
        bias: false
    - batch_norm: {eps: 1.0e-3, momentum: 0.2}
    - relu:
    - tanh: {}
    - linear: {out_features: 10, bias: true}
data:
  digits: {}
  batch_size: 32
  validationFraction: 0.25
  shuffle: false
  standardize: true
optimizer:
  adamw: {lr: 3e-3, beta1: 0.8, beta2: 0.99, eps: 1e-6, weight_decay: 0}
  grad_clip_norm: 1.0
  no_decay_on_bias_and_norm: false
lr_schedule:
  warmup_steps: 100
  cosine: {min_lr_ratio: 0.1}
loss_scaling:
  dynamic:
    init_scale: 1024
    growth_factor: 2.0
    backoff_factor: .5
    growth_interval: 500
    hysteresis: 2
    min_scale: 1
    max_scale: 65536
training:
  epochs: 20
  max_steps: 5000
  eval_every: 100
  report_every: 25
  checkpoint_every: 1000
  seed: 42
  allow_tf32: true
)yaml";

constexpr char kFullJson[] = R"json({
  "name": "digits-mlp",
  "precision": "fp16",
  "model": {
    "loss": "cross_entropy",
    "layers": [
      {"linear": {"outFeatures": 128, "bias": true}},
      {"layerNorm": {"eps": 1e-5}},
      {"gelu": {}},
      {"dropout": {"p": 0.1}},
      {"linear": {"out_features": 64, "bias": false}},
      {"batch_norm": {"eps": 0.001, "momentum": 0.2}},
      {"relu": {}},
      {"tanh": {}},
      {"linear": {"out_features": 10, "bias": true}}
    ]
  },
  "data": {"digits": {}, "batchSize": 32, "validation_fraction": 0.25, "shuffle": false,
           "standardize": true},
  "optimizer": {
    "adamw": {"lr": 0.003, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weightDecay": 0},
    "gradClipNorm": 1, "no_decay_on_bias_and_norm": false
  },
  "lr_schedule": {"warmup_steps": "100", "cosine": {"min_lr_ratio": 0.1}},
  "loss_scaling": {"dynamic": {"init_scale": 1024, "growth_factor": 2, "backoff_factor": 0.5,
                               "growth_interval": 500, "hysteresis": 2, "min_scale": 1,
                               "max_scale": 65536}},
  "training": {"epochs": 20, "max_steps": 5000, "eval_every": 100, "report_every": 25,
               "checkpoint_every": 1000, "seed": "42", "allow_tf32": true}
})json";

JobSpec parse_ok(std::string_view text, std::string_view format = "") {
  StatusOr<JobSpec> spec = parse_job_spec(text, format);
  EXPECT_TRUE(spec.ok()) << spec.status().to_string() << "\n" << text;
  return spec.ok() ? spec.value() : JobSpec();
}

JobSpec resolve_ok(const JobSpec& spec) {
  StatusOr<JobSpec> resolved = validate_and_resolve(spec);
  EXPECT_TRUE(resolved.ok()) << resolved.status().to_string() << "\n" << spec.DebugString();
  return resolved.ok() ? resolved.value() : JobSpec();
}

std::string diff(const JobSpec& a, const JobSpec& b) {
  std::string report;
  MessageDifferencer d;
  d.ReportDifferencesToString(&report);
  d.Compare(a, b);
  return report;
}

// A minimal valid spec in YAML flow style with some top-level entries replaced ("" removes
// one), so that each malformed case below states only what is wrong with it.
std::string spec_text(std::vector<std::pair<std::string, std::string>> overrides = {}) {
  std::vector<std::pair<std::string, std::string>> fields = {
      {"model", "{layers: [{linear: {out_features: 10}}]}"},
      {"data", "{digits: {}}"},
      {"optimizer", "{adamw: {lr: 0.001}}"},
      {"training", "{epochs: 1}"},
  };
  for (auto& [key, value] : overrides) {
    auto it = std::find_if(fields.begin(), fields.end(), [&](auto& f) { return f.first == key; });
    if (it != fields.end()) {
      it->second = value;
    } else {
      fields.emplace_back(key, value);
    }
  }
  std::string out = "{";
  for (auto& [key, value] : fields) {
    if (value.empty()) continue;
    if (out.size() > 1) out += ", ";
    out += key + ": " + value;
  }
  return out + "}";
}

// Parses and validates; the first error from either stage.
Status parse_and_validate(std::string_view text) {
  StatusOr<JobSpec> spec = parse_job_spec(text);
  if (!spec.ok()) return spec.status();
  StatusOr<JobSpec> resolved = validate_and_resolve(spec.value());
  return resolved.status();
}

TEST(JobSpecParse, FullYamlEqualsJson) {
  JobSpec from_yaml = parse_ok(kFullYaml);
  JobSpec from_json = parse_ok(kFullJson);
  EXPECT_TRUE(MessageDifferencer::Equals(from_yaml, from_json)) << diff(from_yaml, from_json);
  // Spot checks that the content is what was written, not merely equal.
  EXPECT_EQ(from_yaml.name(), "digits-mlp");
  ASSERT_EQ(from_yaml.model().layers_size(), 9);
  EXPECT_EQ(from_yaml.model().layers(4).linear().out_features(), 64);
  EXPECT_TRUE(from_yaml.model().layers(4).linear().has_bias());
  EXPECT_FALSE(from_yaml.model().layers(4).linear().bias());
  EXPECT_TRUE(from_yaml.model().layers(6).has_relu());  // `- relu:` with no value
  EXPECT_TRUE(from_yaml.data().has_digits());
  EXPECT_FLOAT_EQ(from_yaml.optimizer().adamw().lr(), 3e-3f);
  EXPECT_TRUE(from_yaml.optimizer().adamw().has_weight_decay());
  EXPECT_EQ(from_yaml.optimizer().adamw().weight_decay(), 0.0f);
  EXPECT_DOUBLE_EQ(from_yaml.loss_scaling().dynamic().backoff_factor(), 0.5);
  EXPECT_EQ(from_yaml.training().seed(), 42u);

  // The full spec is already explicit: resolving changes nothing.
  JobSpec resolved = resolve_ok(from_yaml);
  EXPECT_TRUE(MessageDifferencer::Equals(resolved, from_yaml)) << diff(resolved, from_yaml);
}

TEST(JobSpecParse, FormatGuessAndExplicitFormats) {
  JobSpec guessed = parse_ok(kFullJson);  // leading '{'
  JobSpec as_json = parse_ok(kFullJson, "json");
  JobSpec as_yaml = parse_ok(kFullJson, "yaml");  // JSON is YAML
  EXPECT_TRUE(MessageDifferencer::Equals(guessed, as_json));
  EXPECT_TRUE(MessageDifferencer::Equals(guessed, as_yaml)) << diff(guessed, as_yaml);
  // A UTF-8 byte order mark and leading blank lines are fine.
  JobSpec bom = parse_ok(std::string("\xEF\xBB\xBF\n  ") + kFullJson);
  EXPECT_TRUE(MessageDifferencer::Equals(guessed, bom));

  StatusOr<JobSpec> bad = parse_job_spec("name: x", "toml");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("format"), std::string::npos);

  for (const char* empty : {"", "   \n", "# only a comment\n", "~"}) {
    StatusOr<JobSpec> s = parse_job_spec(empty);
    ASSERT_FALSE(s.ok()) << "'" << empty << "'";
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find("empty"), std::string::npos) << s.status().message();
  }
}

TEST(JobSpecParse, YamlScalarsFollowTheCoreSchemaAndTheFieldType) {
  JobSpec spec = parse_ok(R"(
name: 2024              # a plain number given to a string field stays text
precision: 'fp16'
model:
  layers:
    - linear: {out_features: "12"}   # protobuf reads numeric strings for numbers
    - linear: {out_features: 0x10}
    - linear: {out_features: 0o17}
    - linear: {out_features: +007}
    - dropout: {p: .5}
    - layer_norm: {eps: 1.e-3}
  loss: ~
data: {csv: {path: 'true', header: TRUE, label_column: -1}}
optimizer: {sgd: {lr: 1E-2, momentum: +0.5}}
training: {max_steps: 1e3, seed: 18446744073709551615}
)");
  EXPECT_EQ(spec.name(), "2024");
  EXPECT_EQ(spec.precision(), "fp16");
  EXPECT_EQ(spec.model().layers(0).linear().out_features(), 12);
  EXPECT_EQ(spec.model().layers(1).linear().out_features(), 16);
  EXPECT_EQ(spec.model().layers(2).linear().out_features(), 15);
  EXPECT_EQ(spec.model().layers(3).linear().out_features(), 7);
  EXPECT_FLOAT_EQ(spec.model().layers(4).dropout().p(), 0.5f);
  EXPECT_FLOAT_EQ(spec.model().layers(5).layer_norm().eps(), 1e-3f);
  EXPECT_EQ(spec.model().loss(), "");
  EXPECT_EQ(spec.data().csv().path(), "true");
  EXPECT_TRUE(spec.data().csv().header());
  EXPECT_EQ(spec.data().csv().label_column(), -1);
  EXPECT_FLOAT_EQ(spec.optimizer().sgd().lr(), 0.01f);
  EXPECT_FLOAT_EQ(spec.optimizer().sgd().momentum(), 0.5f);
  EXPECT_EQ(spec.training().max_steps(), 1000);
  EXPECT_EQ(spec.training().seed(), 18446744073709551615ull);

  // .inf and .nan reach float fields (protobuf's "Infinity"/"NaN") for validation to name.
  JobSpec inf = parse_ok("optimizer: {adamw: {lr: .inf, eps: -.Inf, beta1: .NaN}}");
  EXPECT_TRUE(std::isinf(inf.optimizer().adamw().lr()));
  EXPECT_LT(inf.optimizer().adamw().eps(), 0);
  EXPECT_TRUE(std::isnan(inf.optimizer().adamw().beta1()));

  // An empty value for a repeated field is an empty list, not one empty element.
  JobSpec no_layers = parse_ok("model: {layers: }");
  EXPECT_EQ(no_layers.model().layers_size(), 0);
}

TEST(JobSpecResolve, FillsEveryDefault) {
  JobSpec spec = resolve_ok(parse_ok(spec_text()));
  EXPECT_EQ(spec.name(), "");
  EXPECT_EQ(spec.precision(), "auto");
  EXPECT_EQ(spec.model().loss(), "cross_entropy");
  ASSERT_TRUE(spec.model().layers(0).linear().has_bias());
  EXPECT_TRUE(spec.model().layers(0).linear().bias());
  EXPECT_EQ(spec.data().batch_size(), 64);
  ASSERT_TRUE(spec.data().has_validation_fraction());
  EXPECT_FLOAT_EQ(spec.data().validation_fraction(), 0.2f);
  ASSERT_TRUE(spec.data().has_shuffle());
  EXPECT_TRUE(spec.data().shuffle());
  EXPECT_FALSE(spec.data().standardize());
  const auto& adamw = spec.optimizer().adamw();
  ASSERT_TRUE(adamw.has_beta1() && adamw.has_beta2() && adamw.has_eps() &&
              adamw.has_weight_decay());
  EXPECT_FLOAT_EQ(adamw.beta1(), 0.9f);
  EXPECT_FLOAT_EQ(adamw.beta2(), 0.999f);
  EXPECT_FLOAT_EQ(adamw.eps(), 1e-8f);
  EXPECT_FLOAT_EQ(adamw.weight_decay(), 0.01f);
  EXPECT_EQ(spec.optimizer().grad_clip_norm(), 0.0f);
  ASSERT_TRUE(spec.optimizer().has_no_decay_on_bias_and_norm());
  EXPECT_TRUE(spec.optimizer().no_decay_on_bias_and_norm());
  ASSERT_TRUE(spec.has_lr_schedule());
  EXPECT_TRUE(spec.lr_schedule().has_constant());
  EXPECT_EQ(spec.lr_schedule().warmup_steps(), 0);
  // auto may become fp16: dynamic loss scaling with PyTorch's defaults.
  ASSERT_TRUE(spec.loss_scaling().has_dynamic());
  const auto& d = spec.loss_scaling().dynamic();
  ASSERT_TRUE(d.has_init_scale() && d.has_growth_factor() && d.has_backoff_factor() &&
              d.has_growth_interval() && d.has_hysteresis() && d.has_min_scale() &&
              d.has_max_scale());
  EXPECT_EQ(d.init_scale(), 65536.0);
  EXPECT_EQ(d.growth_factor(), 2.0);
  EXPECT_EQ(d.backoff_factor(), 0.5);
  EXPECT_EQ(d.growth_interval(), 2000);
  EXPECT_EQ(d.hysteresis(), 1);
  EXPECT_EQ(d.min_scale(), 1.0);
  EXPECT_EQ(d.max_scale(), 16777216.0);
  EXPECT_EQ(spec.training().epochs(), 1);
  EXPECT_EQ(spec.training().max_steps(), 0);
  EXPECT_EQ(spec.training().eval_every(), 0);
  EXPECT_EQ(spec.training().report_every(), 10);
  EXPECT_EQ(spec.training().checkpoint_every(), 0);

  // Resolving is idempotent.
  JobSpec again = resolve_ok(spec);
  EXPECT_TRUE(MessageDifferencer::Equals(spec, again)) << diff(spec, again);
  // The input is not modified.
  JobSpec input = parse_ok(spec_text());
  (void)validate_and_resolve(input);
  EXPECT_EQ(input.precision(), "");
}

TEST(JobSpecResolve, LayerDefaults) {
  JobSpec spec = resolve_ok(parse_ok(spec_text(
      {{"model",
        "{layers: [{layer_norm: {}}, {batch_norm: {}}, {dropout: {}}, {linear: {out_features: 3, "
        "bias: false}}], loss: mse}"}})));
  const auto& layers = spec.model().layers();
  ASSERT_TRUE(layers[0].layer_norm().has_eps());
  EXPECT_FLOAT_EQ(layers[0].layer_norm().eps(), 1e-5f);
  ASSERT_TRUE(layers[1].batch_norm().has_eps() && layers[1].batch_norm().has_momentum());
  EXPECT_FLOAT_EQ(layers[1].batch_norm().eps(), 1e-5f);
  EXPECT_FLOAT_EQ(layers[1].batch_norm().momentum(), 0.1f);
  EXPECT_EQ(layers[2].dropout().p(), 0.0f);
  EXPECT_FALSE(layers[3].linear().bias());
  EXPECT_EQ(spec.model().loss(), "mse");
}

TEST(JobSpecResolve, LossScalingFollowsPrecision) {
  for (const char* precision : {"fp16", "auto"}) {
    JobSpec spec = resolve_ok(parse_ok(spec_text({{"precision", precision}})));
    EXPECT_EQ(spec.precision(), precision);  // auto stays auto
    EXPECT_TRUE(spec.loss_scaling().has_dynamic()) << precision;
  }
  for (const char* precision : {"fp32", "bf16"}) {
    JobSpec spec = resolve_ok(parse_ok(spec_text({{"precision", precision}})));
    EXPECT_TRUE(spec.loss_scaling().has_off()) << precision;
  }
  // An explicit choice is kept whatever the precision; partial dynamic settings are filled.
  JobSpec bf16_static = resolve_ok(
      parse_ok(spec_text({{"precision", "bf16"}, {"loss_scaling", "{static: {scale: 128}}"}})));
  EXPECT_EQ(bf16_static.loss_scaling().static_().scale(), 128.0);
  JobSpec fp16_off =
      resolve_ok(parse_ok(spec_text({{"precision", "fp16"}, {"loss_scaling", "{off: {}}"}})));
  EXPECT_TRUE(fp16_off.loss_scaling().has_off());
  JobSpec partial = resolve_ok(parse_ok(spec_text(
      {{"precision", "fp16"}, {"loss_scaling", "{dynamic: {init_scale: 256, hysteresis: 3}}"}})));
  EXPECT_EQ(partial.loss_scaling().dynamic().init_scale(), 256.0);
  EXPECT_EQ(partial.loss_scaling().dynamic().hysteresis(), 3);
  EXPECT_EQ(partial.loss_scaling().dynamic().growth_interval(), 2000);
  EXPECT_EQ(partial.loss_scaling().dynamic().max_scale(), 16777216.0);
  // `loss_scaling: {}` chooses nothing: the precision's default applies.
  JobSpec empty = resolve_ok(parse_ok(spec_text({{"precision", "fp32"}, {"loss_scaling", "{}"}})));
  EXPECT_TRUE(empty.loss_scaling().has_off());
}

TEST(JobSpecResolve, DataDefaults) {
  JobSpec spirals = resolve_ok(parse_ok(spec_text({{"data", "{synthetic: {kind: spirals}}"}})));
  const auto& s = spirals.data().synthetic();
  EXPECT_EQ(s.samples(), 1000);
  EXPECT_EQ(s.features(), 2);
  EXPECT_EQ(s.classes(), 3);
  ASSERT_TRUE(s.has_noise());
  EXPECT_FLOAT_EQ(s.noise(), 0.1f);

  JobSpec regression = resolve_ok(parse_ok(
      spec_text({{"data", "{synthetic: {kind: linear_regression, samples: 50, noise: 0}}"}})));
  const auto& r = regression.data().synthetic();
  EXPECT_EQ(r.samples(), 50);
  EXPECT_EQ(r.features(), 16);
  EXPECT_EQ(r.classes(), 1);
  EXPECT_EQ(r.noise(), 0.0f);
  JobSpec blobs = resolve_ok(parse_ok(spec_text({{"data", "{synthetic: {kind: blobs}}"}})));
  EXPECT_EQ(blobs.data().synthetic().features(), 16);
  EXPECT_EQ(blobs.data().synthetic().classes(), 3);

  JobSpec csv = resolve_ok(parse_ok(spec_text({{"data", "{csv: {path: sub/dir/x.csv.gz}}"}})));
  EXPECT_EQ(csv.data().csv().path(), "sub/dir/x.csv.gz");
  EXPECT_EQ(csv.data().csv().target_columns(), 1);
  // Dots that are not a '..' component are fine.
  resolve_ok(parse_ok(spec_text({{"data", "{csv: {path: ./a..b/..c/x.csv}}"}})));
}

TEST(JobSpecResolve, BoundaryValuesAreAccepted) {
  resolve_ok(parse_ok(spec_text({
      {"name", std::string(128, 'n')},
      {"model",
       "{layers: [{linear: {out_features: 65536}}, {batch_norm: {momentum: 0, eps: 1}}, "
       "{dropout: {p: 0.999}}, {linear: {out_features: 1}}]}"},
      {"data", "{digits: {}, batch_size: 1048576, validation_fraction: 0.9}"},
      {"optimizer", "{sgd: {lr: 1e-30, momentum: 0.99, dampening: 0, nesterov: true}}"},
      {"lr_schedule", "{cosine: {min_lr_ratio: 1}}"},
      {"loss_scaling", "{dynamic: {init_scale: 1, min_scale: 1, max_scale: 1}}"},
      {"training", "{epochs: 100000, max_steps: 1000000000}"},
  })));
  resolve_ok(parse_ok(spec_text({{"training", "{max_steps: 1}"}})));
  // A layer list of exactly 256.
  std::string layers = "{layers: [";
  for (int i = 0; i < 256; ++i) layers += i ? ", {linear: {out_features: 4}}" : "{relu: {}}";
  resolve_ok(parse_ok(spec_text({{"model", layers + "]}"}})));
}

struct BadCase {
  const char* what;
  std::string text;
  std::string expected;  // a substring of the message: the field path, at least
};

std::vector<BadCase> bad_cases() {
  std::string many_layers = "{layers: [";
  for (int i = 0; i < 300; ++i) many_layers += i ? ", {linear: {out_features: 4}}" : "{relu: {}}";
  many_layers += "]}";
  const std::string ls_fp16 = "fp16";
  return {
      // Schema errors, reported by protobuf with the field named.
      {"unknown top-level field", spec_text({{"modle", "{}"}}), "modle"},
      {"unknown layer kind", spec_text({{"model", "{layers: [{conv: {}}]}"}}),
       "model.layers[0]) conv"},
      {"unknown nested field", spec_text({{"optimizer", "{adamw: {lr: 0.1, momentum: 0.9}}"}}),
       "momentum"},
      {"string for an int", spec_text({{"model", "{layers: [{linear: {out_features: wide}}]}"}}),
       "model.layers[0].linear.out_features"},
      {"fraction for an int", spec_text({{"training", "{epochs: 1.5}"}}), "training.epochs"},
      {"scalar for a message", spec_text({{"model", "5"}}), "model"},
      {"int32 overflow", spec_text({{"training", "{epochs: 99999999999}"}}), "training.epochs"},
      {"float overflow", spec_text({{"optimizer", "{adamw: {lr: 1e40}}"}}), "optimizer.adamw.lr"},
      {"inf for an int", spec_text({{"training", "{max_steps: .inf}"}}), "training.max_steps"},
      {"number for a bool", spec_text({{"data", "{digits: {}, shuffle: 3}"}}), "data.shuffle"},
      {"two kinds in one layer", spec_text({{"model", "{layers: [{relu: {}, linear: {}}]}"}}),
       "model.layers[0]"},
      {"JSON wrong type", R"({"optimizer": {"adamw": {"lr": "fast"}}})", "optimizer.adamw.lr"},
      // YAML errors.
      {"YAML syntax error", "model: {layers: [1, 2\ndata: x\n", "YAML syntax error at line"},
      {"YAML duplicate key", "training: {epochs: 1}\ntraining: {epochs: 2}\n",
       "line 2, column 1: duplicate key 'training'"},
      {"YAML top-level list", "- a\n- b\n", "top level"},
      {"YAML two documents", spec_text() + "\n---\n" + spec_text(), "one YAML document"},
      {"YAML unknown tag", spec_text({{"name", "!secret x"}}), "tag"},
      // Model.
      {"zero width", spec_text({{"model", "{layers: [{linear: {out_features: 0}}]}"}}),
       "model.layers[0].linear.out_features: must be in [1, 65536], got 0"},
      {"negative width", spec_text({{"model", "{layers: [{linear: {out_features: -3}}]}"}}),
       "model.layers[0].linear.out_features"},
      {"huge width",
       spec_text({{"model",
                   "{layers: [{linear: {out_features: 100000}}, {linear: {out_features: 2}}]}"}}),
       "model.layers[0].linear.out_features"},
      {"too many layers", spec_text({{"model", many_layers}}),
       "model.layers: must have at most 256"},
      {"no layers", spec_text({{"model", "{layers: []}"}}), "model.layers: must have at least one"},
      {"no model", spec_text({{"model", ""}}), "model.layers"},
      {"layer without kind", spec_text({{"model", "{layers: [{}, {linear: {out_features: 2}}]}"}}),
       "model.layers[0]: no layer kind"},
      {"last layer not linear",
       spec_text({{"model", "{layers: [{linear: {out_features: 2}}, {relu: {}}]}"}}),
       "model.layers[1]: the last layer must be linear"},
      {"layer_norm eps 0",
       spec_text({{"model", "{layers: [{layer_norm: {eps: 0}}, {linear: {out_features: 2}}]}"}}),
       "model.layers[0].layer_norm.eps"},
      {"batch_norm momentum > 1",
       spec_text(
           {{"model", "{layers: [{batch_norm: {momentum: 1.5}}, {linear: {out_features: 2}}]}"}}),
       "model.layers[0].batch_norm.momentum"},
      {"dropout p 1",
       spec_text({{"model", "{layers: [{dropout: {p: 1}}, {linear: {out_features: 2}}]}"}}),
       "model.layers[0].dropout.p: must be in [0, 1), got 1"},
      {"dropout p NaN",
       spec_text({{"model", "{layers: [{dropout: {p: .nan}}, {linear: {out_features: 2}}]}"}}),
       "model.layers[0].dropout.p: must be finite"},
      {"bad loss", spec_text({{"model", "{layers: [{linear: {out_features: 2}}], loss: hinge}"}}),
       "model.loss: must be one of cross_entropy, mse; got 'hinge'"},
      // Top level.
      {"bad precision", spec_text({{"precision", "fp8"}}),
       "precision: must be one of fp32, fp16, bf16, auto; got 'fp8'"},
      {"name too long", spec_text({{"name", std::string(129, 'x')}}), "name: must be at most 128"},
      // Data.
      {"missing data", spec_text({{"data", ""}}), "data: set one source"},
      {"data without source", spec_text({{"data", "{batch_size: 8}"}}), "data: set one source"},
      {"csv path traversal", spec_text({{"data", "{csv: {path: ../secret.csv}}"}}),
       "data.csv.path: must not contain '..'"},
      {"csv inner traversal", spec_text({{"data", "{csv: {path: a/../../b.csv}}"}}),
       "data.csv.path"},
      {"csv trailing ..", spec_text({{"data", "{csv: {path: a/..}}"}}), "data.csv.path"},
      {"csv absolute path", spec_text({{"data", "{csv: {path: /etc/passwd}}"}}),
       "data.csv.path: must be relative"},
      {"csv empty path", spec_text({{"data", "{csv: {header: true}}"}}),
       "data.csv.path: must not be empty"},
      {"csv NUL in path", R"({"model": {"layers": [{"linear": {"out_features": 2}}]},
          "data": {"csv": {"path": "a\u0000.csv"}}, "optimizer": {"adamw": {"lr": 0.1}},
          "training": {"epochs": 1}})",
       "data.csv.path: must not contain a NUL"},
      {"synthetic bad kind", spec_text({{"data", "{synthetic: {kind: moons}}"}}),
       "data.synthetic.kind"},
      {"synthetic no kind", spec_text({{"data", "{synthetic: {samples: 10}}"}}),
       "data.synthetic.kind"},
      {"synthetic negative samples",
       spec_text({{"data", "{synthetic: {kind: blobs, samples: -1}}"}}),
       "data.synthetic.samples: must be >= 0"},
      {"synthetic negative noise", spec_text({{"data", "{synthetic: {kind: blobs, noise: -0.5}}"}}),
       "data.synthetic.noise"},
      {"negative batch", spec_text({{"data", "{digits: {}, batch_size: -1}"}}), "data.batch_size"},
      {"huge batch", spec_text({{"data", "{digits: {}, batch_size: 2000000}"}}), "data.batch_size"},
      {"validation fraction", spec_text({{"data", "{digits: {}, validation_fraction: 0.95}"}}),
       "data.validation_fraction: must be in [0, 0.9], got 0.95"},
      // Optimizer.
      {"missing optimizer", spec_text({{"optimizer", ""}}), "optimizer: set sgd or adamw"},
      {"negative lr", spec_text({{"optimizer", "{adamw: {lr: -1}}"}}),
       "optimizer.adamw.lr: must be > 0, got -1"},
      {"zero lr", spec_text({{"optimizer", "{adamw: {}}"}}),
       "optimizer.adamw.lr: must be > 0, got 0"},
      {"NaN lr", spec_text({{"optimizer", "{adamw: {lr: .nan}}"}}),
       "optimizer.adamw.lr: must be finite, got nan"},
      {"inf lr", spec_text({{"optimizer", "{sgd: {lr: .inf}}"}}),
       "optimizer.sgd.lr: must be finite, got inf"},
      {"beta2 = 1", spec_text({{"optimizer", "{adamw: {lr: 0.1, beta2: 1}}"}}),
       "optimizer.adamw.beta2"},
      {"adamw eps 0", spec_text({{"optimizer", "{adamw: {lr: 0.1, eps: 0}}"}}),
       "optimizer.adamw.eps"},
      {"negative weight decay",
       spec_text({{"optimizer", "{adamw: {lr: 0.1, weight_decay: -0.1}}"}}),
       "optimizer.adamw.weight_decay"},
      {"nesterov without momentum", spec_text({{"optimizer", "{sgd: {lr: 0.1, nesterov: true}}"}}),
       "optimizer.sgd.nesterov: requires momentum > 0"},
      {"nesterov with dampening",
       spec_text(
           {{"optimizer", "{sgd: {lr: 0.1, momentum: 0.9, dampening: 0.1, nesterov: true}}"}}),
       "optimizer.sgd.nesterov"},
      {"sgd momentum 1", spec_text({{"optimizer", "{sgd: {lr: 0.1, momentum: 1}}"}}),
       "optimizer.sgd.momentum"},
      {"sgd negative dampening", spec_text({{"optimizer", "{sgd: {lr: 0.1, dampening: -0.1}}"}}),
       "optimizer.sgd.dampening"},
      {"negative clip", spec_text({{"optimizer", "{adamw: {lr: 0.1}, grad_clip_norm: -1}"}}),
       "optimizer.grad_clip_norm"},
      {"inf clip", spec_text({{"optimizer", "{adamw: {lr: 0.1}, grad_clip_norm: .inf}"}}),
       "optimizer.grad_clip_norm: must be finite"},
      // Schedule.
      {"negative warmup", spec_text({{"lr_schedule", "{warmup_steps: -1}"}}),
       "lr_schedule.warmup_steps"},
      {"cosine ratio > 1", spec_text({{"lr_schedule", "{cosine: {min_lr_ratio: 2}}"}}),
       "lr_schedule.cosine.min_lr_ratio"},
      // Loss scaling.
      {"max_scale < init_scale",
       spec_text({{"precision", ls_fp16},
                  {"loss_scaling", "{dynamic: {init_scale: 1024, max_scale: 512}}"}}),
       "loss_scaling.dynamic.max_scale: must be >= init_scale (1024), got 512"},
      {"init_scale above the default cap",
       spec_text({{"loss_scaling", "{dynamic: {init_scale: 1e9}}"}}),
       "loss_scaling.dynamic.max_scale"},
      {"init_scale < min_scale",
       spec_text({{"loss_scaling", "{dynamic: {init_scale: 2, min_scale: 4}}"}}),
       "loss_scaling.dynamic.init_scale: must be >= min_scale (4), got 2"},
      {"growth_factor 1", spec_text({{"loss_scaling", "{dynamic: {growth_factor: 1}}"}}),
       "loss_scaling.dynamic.growth_factor: must be > 1"},
      {"backoff_factor 1", spec_text({{"loss_scaling", "{dynamic: {backoff_factor: 1}}"}}),
       "loss_scaling.dynamic.backoff_factor: must be in (0, 1)"},
      {"growth_interval 0", spec_text({{"loss_scaling", "{dynamic: {growth_interval: 0}}"}}),
       "loss_scaling.dynamic.growth_interval"},
      {"hysteresis 0", spec_text({{"loss_scaling", "{dynamic: {hysteresis: 0}}"}}),
       "loss_scaling.dynamic.hysteresis"},
      {"min_scale 0", spec_text({{"loss_scaling", "{dynamic: {min_scale: 0}}"}}),
       "loss_scaling.dynamic.min_scale"},
      {"NaN init_scale", spec_text({{"loss_scaling", "{dynamic: {init_scale: .nan}}"}}),
       "loss_scaling.dynamic.init_scale: must be finite"},
      {"static scale 0", spec_text({{"loss_scaling", "{static: {}}"}}),
       "loss_scaling.static.scale"},
      {"static scale -inf", spec_text({{"loss_scaling", "{static: {scale: -.inf}}"}}),
       "loss_scaling.static.scale: must be finite"},
      // Training.
      {"epochs and max_steps both 0", spec_text({{"training", "{epochs: 0, max_steps: 0}"}}),
       "training: set epochs or max_steps"},
      {"no training", spec_text({{"training", ""}}), "training: set epochs or max_steps"},
      {"too many epochs", spec_text({{"training", "{epochs: 200000}"}}), "training.epochs"},
      {"too many steps", spec_text({{"training", "{max_steps: 2000000000}"}}),
       "training.max_steps"},
      {"negative epochs", spec_text({{"training", "{epochs: -1, max_steps: 10}"}}),
       "training.epochs"},
      {"negative report_every", spec_text({{"training", "{epochs: 1, report_every: -5}"}}),
       "training.report_every"},
      {"negative eval_every", spec_text({{"training", "{epochs: 1, eval_every: -1}"}}),
       "training.eval_every"},
      {"negative checkpoint_every", spec_text({{"training", "{epochs: 1, checkpoint_every: -1}"}}),
       "training.checkpoint_every"},
  };
}

TEST(JobSpecValidate, MalformedSpecsNameTheField) {
  std::vector<BadCase> cases = bad_cases();
  EXPECT_GE(cases.size(), 30u);
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.what);
    Status status = parse_and_validate(c.text);
    ASSERT_FALSE(status.ok()) << c.text;
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
    EXPECT_NE(status.message().find(c.expected), std::string::npos)
        << "expected '" << c.expected << "' in: " << status.message() << "\nspec: " << c.text;
  }
}

// A spec that arrives in binary keeps what protobuf could not match as unknown fields;
// validation refuses them with the path where they sit.
TEST(JobSpecValidate, UnknownAndWrongTypeFieldsAreRefusedWithTheirPath) {
  auto parsed = engine::parse_job_spec(spec_text());
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  JobSpec spec = parsed.value();
  auto* linear = spec.mutable_model()->mutable_layers(0)->mutable_linear();
  linear->GetReflection()->MutableUnknownFields(linear)->AddVarint(9, 1);
  Status status = engine::validate_and_resolve(spec).status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("model.layers[0].linear: unknown field number 9 (varint)"),
            std::string::npos)
      << status.message();

  spec = parsed.value();
  spec.GetReflection()->MutableUnknownFields(&spec)->AddLengthDelimited(8, "x");  // training
  status = engine::validate_and_resolve(spec).status();
  EXPECT_NE(status.message().find("training: wrong type: field 8 was sent as length-delimited"),
            std::string::npos)
      << status.message();
  // A resolved spec has none, and validates to itself.
  auto resolved = engine::validate_and_resolve(parsed.value());
  ASSERT_TRUE(resolved.ok());
  EXPECT_TRUE(engine::validate_and_resolve(resolved.value()).ok());
}

TEST(JobSpecValidate, HostileSizesAndStringsAreRefused) {
  const struct {
    const char* what;
    std::string text;
    const char* expected;
  } cases[] = {
      {"synthetic set over 1 GiB",
       spec_text({{"data", "{synthetic: {kind: blobs, samples: 100000000, features: 64}}"}}),
       "data.synthetic.samples: samples x (features + classes)"},
      {"synthetic features over 65536",
       spec_text({{"data", "{synthetic: {kind: blobs, features: 70000}}"}}),
       "data.synthetic.features: must be <= 65536"},
      {"epochs x steps over 10^9",
       spec_text({{"data", "{synthetic: {kind: spirals, samples: 1000000}, batch_size: 1}"},
                  {"training", "{epochs: 100000}"}}),
       "training.epochs: 100000 epochs of about"},
      {"name with a control character", spec_text({{"name", "\"a\\u001bb\""}}),
       "name: must not contain"},
      {"csv path with a tab", spec_text({{"data", "{csv: {path: \"a\\tb.csv\"}}"}}),
       "data.csv.path"},
      {"csv path over 1024 bytes",
       spec_text({{"data", "{csv: {path: " + std::string(2000, 'p') + "}}"}}),
       "data.csv.path: must be at most 1024 bytes"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    Status status = parse_and_validate(c.text);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
    EXPECT_NE(status.message().find(c.expected), std::string::npos) << status.message();
  }
  // max_steps caps a long epoch count: accepted.
  EXPECT_TRUE(parse_and_validate(spec_text({{"data",
                                             "{synthetic: {kind: spirals, samples: 1000000}, "
                                             "batch_size: 1}"},
                                            {"training", "{epochs: 100000, max_steps: 1000}"}}))
                  .ok());
}

// Job files outside YAML's printable Unicode are refused with the position (yaml-cpp would
// misread them), and the messages never carry raw control bytes.
TEST(JobSpecParse, NonPrintableTextIsRefusedWithItsPosition) {
  const struct {
    std::string text;
    const char* expected;
  } cases[] = {
      {std::string("name: a\n\0", 10), "line 2, column 1: control character U+0000"},
      {"name: \x1b[31mred\n", "line 1, column 7: control character U+001B"},
      {"name: \xc3\x28\n", "line 1, column 7: invalid UTF-8 (byte 0xc3)"},
      {"name: \xed\xa0\x80\n", "invalid UTF-8"},  // a UTF-16 surrogate
      {"name: \xc2\x85ok\n\x7f", "line 2, column 1: control character U+007F"},
      {"name: \"\\", "job spec"},  // yaml-cpp quoted the byte after the backslash
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.expected);
    auto spec = engine::parse_job_spec(c.text);
    ASSERT_FALSE(spec.ok());
    EXPECT_NE(spec.status().message().find(c.expected), std::string::npos)
        << spec.status().message();
    for (char ch : spec.status().message()) EXPECT_GE(static_cast<unsigned char>(ch), 0x20);
  }
  // Printable non-ASCII is fine.
  EXPECT_TRUE(engine::parse_job_spec("name: \"caf\xc3\xa9 \xf0\x9f\x9a\x80\"\n").ok());
}

TEST(JobSpecValidate, SingleErrorStartsWithTheFieldPath) {
  Status status = parse_and_validate(spec_text({{"optimizer", "{adamw: {lr: -1}}"}}));
  EXPECT_EQ(status.message(), "optimizer.adamw.lr: must be > 0, got -1");
  status = parse_and_validate(spec_text({{"modle", "{}"}}));
  EXPECT_EQ(status.message().rfind("job spec: ", 0), 0u) << status.message();
}

TEST(JobSpecValidate, ReportsEveryError) {
  Status status = parse_and_validate(spec_text({
      {"precision", "fp8"},
      {"model", "{layers: [{linear: {out_features: 0}}, {dropout: {p: 2}}]}"},
      {"data", "{csv: {path: /abs.csv}, batch_size: -5}"},
      {"optimizer", "{adamw: {lr: -1}}"},
      {"training", "{epochs: 0}"},
  }));
  ASSERT_EQ(status.code(), StatusCode::kInvalidArgument);
  const std::string& m = status.message();
  EXPECT_EQ(m.rfind("job spec has 8 errors:\n", 0), 0u) << m;
  for (const char* expected :
       {"\n  precision: must be one of", "\n  model.layers[0].linear.out_features: must be in",
        "\n  model.layers[1].dropout.p: must be in [0, 1), got 2",
        "\n  model.layers[1]: the last layer must be linear", "\n  data.csv.path: must be relative",
        "\n  data.batch_size: must be in [1, 1048576], got -5",
        "\n  optimizer.adamw.lr: must be > 0, got -1", "\n  training: set epochs or max_steps"}) {
    EXPECT_NE(m.find(expected), std::string::npos) << expected << "\nin:\n" << m;
  }
}

TEST(JobSpecValidate, LongErrorListsAreCapped) {
  std::string layers = "{layers: [";
  for (int i = 0; i < 100; ++i) layers += i ? ", {linear: {out_features: 0}}" : "{linear: {}}";
  Status status = parse_and_validate(spec_text({{"model", layers + "]}"}}));
  ASSERT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message().rfind("job spec has 100 errors:\n", 0), 0u);
  EXPECT_NE(status.message().find("... and 50 more"), std::string::npos);
}

JobSpec Mlp(const std::string& precision, int hidden, int batch) {
  return resolve_ok(parse_ok(spec_text({
      {"precision", precision},
      {"model", "{layers: [{linear: {out_features: " + std::to_string(hidden) +
                    "}}, {relu: {}}, {linear: {out_features: " + std::to_string(hidden) +
                    "}}, {gelu: {}}, {linear: {out_features: 10}}]}"},
      {"data", "{digits: {}, batch_size: " + std::to_string(batch) + "}"},
  })));
}

TEST(JobSpecMemory, CountsParametersAndOptimizerState) {
  // 64 inputs -> 10 outputs with bias: 650 parameters.
  JobSpec fp32 = resolve_ok(parse_ok(spec_text({{"precision", "fp32"}})));
  MemoryEstimate m = estimate_memory(fp32, 64, 10);
  EXPECT_EQ(m.parameter_bytes, 650 * (4 + 4));  // master + gradient
  EXPECT_EQ(m.optimizer_bytes, 650 * 8);        // AdamW m and v
  JobSpec fp16 = resolve_ok(parse_ok(spec_text({{"precision", "fp16"}})));
  // + an fp16 copy of the 640 weights; the 10 biases are read in FP32 by the matmul and
  // keep none (the estimate is the model's own build, run dry: exactly what it allocates).
  EXPECT_EQ(estimate_memory(fp16, 64, 10).parameter_bytes, 650 * (4 + 4) + 640 * 2);
  JobSpec sgd = resolve_ok(parse_ok(spec_text({{"optimizer", "{sgd: {lr: 0.1}}"}})));
  EXPECT_EQ(estimate_memory(sgd, 64, 10).optimizer_bytes, 0);
  JobSpec momentum =
      resolve_ok(parse_ok(spec_text({{"optimizer", "{sgd: {lr: 0.1, momentum: 0.9}}"}})));
  EXPECT_EQ(estimate_memory(momentum, 64, 10).optimizer_bytes, 650 * 4);
  EXPECT_EQ(m.total_bytes, m.parameter_bytes + m.optimizer_bytes + m.activation_bytes);
  // Unknown widths fall back to the data set's (digits: 64 inputs) and the last layer.
  MemoryEstimate guessed = estimate_memory(fp32, 0, 0);
  EXPECT_EQ(guessed.total_bytes, m.total_bytes);
}

TEST(JobSpecMemory, ScalesWithWidthAndBatch) {
  MemoryEstimate narrow = estimate_memory(Mlp("fp32", 256, 64), 784, 10);
  MemoryEstimate wide = estimate_memory(Mlp("fp32", 512, 64), 784, 10);
  EXPECT_GT(wide.parameter_bytes, 2 * narrow.parameter_bytes);  // the hidden GEMM is quadratic
  EXPECT_GT(wide.optimizer_bytes, 2 * narrow.optimizer_bytes);
  EXPECT_GT(wide.activation_bytes, narrow.activation_bytes);
  EXPECT_GT(wide.total_bytes, narrow.total_bytes);

  MemoryEstimate big_batch = estimate_memory(Mlp("fp32", 256, 128), 784, 10);
  EXPECT_EQ(big_batch.parameter_bytes, narrow.parameter_bytes);
  EXPECT_EQ(big_batch.optimizer_bytes, narrow.optimizer_bytes);
  EXPECT_EQ(big_batch.activation_bytes, 2 * narrow.activation_bytes);  // every term is per row
  // Wider inputs than the data spec suggests cost more.
  EXPECT_GT(estimate_memory(Mlp("fp32", 256, 64), 4096, 10).total_bytes, narrow.total_bytes);
}

TEST(JobSpecMemory, HalfPrecisionHalvesActivations) {
  MemoryEstimate fp32 = estimate_memory(Mlp("fp32", 1024, 256), 784, 10);
  for (const char* precision : {"fp16", "bf16", "auto"}) {
    MemoryEstimate half = estimate_memory(Mlp(precision, 1024, 256), 784, 10);
    double ratio = static_cast<double>(half.activation_bytes) / fp32.activation_bytes;
    EXPECT_GT(ratio, 0.49) << precision;
    EXPECT_LT(ratio, 0.55) << precision;
    // Parameters grow by the 2-byte working copy; optimizer state is the same FP32.
    EXPECT_GT(half.parameter_bytes, fp32.parameter_bytes);
    EXPECT_EQ(half.optimizer_bytes, fp32.optimizer_bytes);
  }
}

TEST(JobSpecMemory, SaturatesInsteadOfOverflowing) {
  MemoryEstimate m =
      estimate_memory(Mlp("fp32", 65536, 1048576), std::numeric_limits<int64_t>::max(), 10);
  EXPECT_EQ(m.total_bytes, std::numeric_limits<int64_t>::max());
  EXPECT_GT(m.parameter_bytes, 0);
}

TEST(JobSpecJson, RoundTripsThroughParse) {
  for (const char* text : {kFullYaml, kFullJson}) {
    JobSpec resolved = resolve_ok(parse_ok(text));
    for (bool pretty : {false, true}) {
      std::string json = job_spec_to_json(resolved, pretty);
      EXPECT_NE(json.find("\"out_features\""), std::string::npos) << json;  // proto names
      EXPECT_EQ(json.find("outFeatures"), std::string::npos) << json;
      EXPECT_EQ(json.find('\n') != std::string::npos, pretty) << json;
      JobSpec back = parse_ok(json);
      EXPECT_TRUE(MessageDifferencer::Equals(resolved, back)) << diff(resolved, back) << json;
    }
  }
  // Defaults: only what differs from proto3 zero values is printed...
  JobSpec empty;
  EXPECT_EQ(job_spec_to_json(empty), "{}");
  // ...but explicitly set optional fields are, even at zero, and so survive the round trip.
  JobSpec resolved =
      resolve_ok(parse_ok(spec_text({{"optimizer", "{adamw: {lr: 0.1, weight_decay: 0}}"}})));
  JobSpec back = parse_ok(job_spec_to_json(resolved));
  ASSERT_TRUE(back.optimizer().adamw().has_weight_decay());
  EXPECT_EQ(back.optimizer().adamw().weight_decay(), 0.0f);
}

class JobSpecFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("job_spec_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
  std::filesystem::path dir_;
};

TEST_F(JobSpecFile, LoadsYamlAndJsonByExtension) {
  JobSpec expected = parse_ok(kFullYaml);
  for (auto [name, text] : std::vector<std::pair<std::string, std::string>>{{"job.yaml", kFullYaml},
                                                                            {"job.YML", kFullYaml},
                                                                            {"job.json", kFullJson},
                                                                            {"job.spec", kFullJson},
                                                                            {"job", kFullYaml}}) {
    StatusOr<JobSpec> spec = load_job_spec_file(write(name, text));
    ASSERT_TRUE(spec.ok()) << name << ": " << spec.status().to_string();
    EXPECT_TRUE(MessageDifferencer::Equals(spec.value(), expected)) << name;
  }
}

TEST_F(JobSpecFile, ErrorsNameThePath) {
  std::string missing = (dir_ / "missing.yaml").string();
  StatusOr<JobSpec> spec = load_job_spec_file(missing);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), StatusCode::kNotFound);
  EXPECT_NE(spec.status().message().find(missing), std::string::npos);

  spec = load_job_spec_file(dir_.string());
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(spec.status().message().find(dir_.string()), std::string::npos);

  std::string bad = write("bad.yaml", "name: x\nmodel: [\n");
  spec = load_job_spec_file(bad);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(spec.status().message().rfind(bad + ": job spec: YAML syntax error at line", 0), 0u)
      << spec.status().message();

  // A .json file is read as JSON only: YAML in it is an error.
  std::string yaml_as_json = write("job.json", "name: x\n");
  spec = load_job_spec_file(yaml_as_json);
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find(yaml_as_json + ": job spec: "), std::string::npos);

  std::string huge = write("huge.yaml", "name: x\n" + std::string(2 << 20, '#'));
  spec = load_job_spec_file(huge);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(spec.status().message().find("larger than"), std::string::npos);
}

}  // namespace
}  // namespace ampd::engine
