// Job specs: parsing (YAML -> JSON -> protobuf, in proto/job_spec_io.cc, shared with ampctl),
// then validation with defaults.
//
// Validation rules and defaults (field paths in proto field names; 0 / unset means "use the
// default" where one is listed; every float and double must also be finite):
//
//   field                                   rule                                 default
//   --------------------------------------  -----------------------------------  -------------
//   name                                    <= 128 characters (UTF-8), no        ""
//                                           control characters
//   (any message)                           no unknown fields or wrong wire types
//                                           (a binary spec from another schema)
//   precision                               fp32 | fp16 | bf16 | auto            auto
//   model.layers                            1 .. 256 layers, each with a kind;
//                                           the last one linear (the outputs)
//   model.layers[i].linear.out_features     [1, 65536]
//   model.layers[i].linear.bias                                                  true
//   model.layers[i].layer_norm.eps          (0, 1]                               1e-5
//   model.layers[i].batch_norm.eps          (0, 1]                               1e-5
//   model.layers[i].batch_norm.momentum     [0, 1]                               0.1
//   model.layers[i].dropout.p               [0, 1)                               0
//   model.loss                              cross_entropy | mse                  cross_entropy
//   data                                    one of digits, csv, synthetic
//   data.csv.path                           non-empty, relative, no '..' component, no NUL
//                                           or control character, <= 1024 bytes
//   data.csv.target_columns                 [1, 65536]                           1
//   data.synthetic.kind                     spirals | blobs | linear_regression
//   data.synthetic.samples                  >= 0; samples x (features + classes)
//                                           <= 2^28 (1 GiB of float32)           1000
//   data.synthetic.features                 [0, 65536]              2 (spirals), else 16
//   data.synthetic.classes                  [0, 65536]     1 (linear_regression), else 3
//   data.synthetic.noise                    >= 0                                 0.1
//   data.batch_size                         [1, 1048576]                         64
//   data.validation_fraction                [0, 0.9]                             0.2
//   data.shuffle                                                                 true
//   optimizer                               one of sgd, adamw
//   optimizer.sgd.lr                        > 0
//   optimizer.sgd.momentum                  [0, 1)                               0
//   optimizer.sgd.dampening                 [0, 1]                               0
//   optimizer.sgd.weight_decay              >= 0                                 0
//   optimizer.sgd.nesterov                  needs momentum > 0 and dampening 0   false
//   optimizer.adamw.lr                      > 0
//   optimizer.adamw.beta1 / beta2           [0, 1)                               0.9 / 0.999
//   optimizer.adamw.eps                     > 0                                  1e-8
//   optimizer.adamw.weight_decay            >= 0                                 0.01
//   optimizer.grad_clip_norm                >= 0 (0 = off)                       0
//   optimizer.no_decay_on_bias_and_norm                                          true
//   lr_schedule.warmup_steps                >= 0                                 0
//   lr_schedule.decay                       constant | cosine                    constant
//   lr_schedule.cosine.min_lr_ratio         [0, 1]                               0
//   loss_scaling (mode)                     dynamic | static | off      fp16, auto: dynamic
//                                                                       fp32, bf16: off
//   loss_scaling.dynamic.init_scale         > 0, min_scale <= it <= max_scale    65536
//   loss_scaling.dynamic.growth_factor      > 1                                  2
//   loss_scaling.dynamic.backoff_factor     (0, 1)                               0.5
//   loss_scaling.dynamic.growth_interval    >= 1                                 2000
//   loss_scaling.dynamic.hysteresis         >= 1                                 1
//   loss_scaling.dynamic.min_scale          > 0                                  1
//   loss_scaling.dynamic.max_scale          >= init_scale                        2^24
//   loss_scaling.static.scale               > 0
//   training.epochs                         [0, 100000]; epochs or max_steps > 0;
//                                           with synthetic data, epochs x steps per
//                                           epoch <= 10^9 unless max_steps caps it
//   training.max_steps                      [0, 10^9]
//   training.eval_every                     >= 0 (0 = only at the end)           0
//   training.report_every                   >= 0                                 10
//   training.checkpoint_every               >= 0 (0 = only at the end)           0
//   training.telemetry_every                >= 0 (0 = off)                       0
#include "engine/job_spec.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/gpt.h"
#include "engine/layer_registry.h"
#include "engine/model.h"
#include "engine/optimizer.h"
#include "engine/spec_checker.h"
#include "proto/job_spec_io.h"

namespace ampd::engine {
namespace {

using Checker = SpecChecker;

namespace pb = google::protobuf;
using ampd::v1::BatchNormSpec;
using ampd::v1::DataSpec;
using ampd::v1::DynamicLossScalingSpec;
using ampd::v1::JobSpec;
using ampd::v1::LayerSpec;
using ampd::v1::LossScalingSpec;
using ampd::v1::LrScheduleSpec;
using ampd::v1::ModelSpec;
using ampd::v1::OptimizerSpec;
using ampd::v1::TrainingSpec;

// ---------------------------------------------------------------------------------------
// Formatting helpers
// ---------------------------------------------------------------------------------------

// Number of UTF-8 code points (bytes that do not continue a sequence).
size_t utf8_length(std::string_view s) {
  return static_cast<size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// ---------------------------------------------------------------------------------------
// Parsing: proto/job_spec_io (shared with ampctl) does it; its errors become Status here.
// ---------------------------------------------------------------------------------------

StatusOr<JobSpec> from_spec_io(spec_io::ParseResult r) {
  switch (r.error) {
    case spec_io::ErrorKind::kNone: return std::move(r.spec);
    case spec_io::ErrorKind::kNotFound: return not_found(std::move(r.message));
    case spec_io::ErrorKind::kInvalid: return invalid_argument(std::move(r.message));
    case spec_io::ErrorKind::kInternal: break;
  }
  return internal(std::move(r.message));
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// Fields this build does not know
// ---------------------------------------------------------------------------------------

const char* wire_type_name(pb::UnknownField::Type type) {
  switch (type) {
    case pb::UnknownField::TYPE_VARINT: return "varint";
    case pb::UnknownField::TYPE_FIXED32: return "fixed32";
    case pb::UnknownField::TYPE_FIXED64: return "fixed64";
    case pb::UnknownField::TYPE_LENGTH_DELIMITED: return "length-delimited";
    case pb::UnknownField::TYPE_GROUP: return "group";
  }
  return "unknown";
}

// A JobSpec that arrives in binary (SubmitJob) keeps the fields protobuf could not match
// as "unknown fields": numbers this schema does not have (a newer or a different client),
// and known numbers sent with the wrong wire type (a string where an integer belongs).
// Ignoring them would run a job other than the one the client described, so each is an
// error naming where it was found. (Job files never get here with one: the JSON parser
// rejects unknown names itself.)
void check_unknown_fields(const pb::Message& message, const std::string& path, Checker* c) {
  const pb::Reflection* reflection = message.GetReflection();
  const pb::Descriptor* descriptor = message.GetDescriptor();
  const pb::UnknownFieldSet& unknown = reflection->GetUnknownFields(message);
  const std::string where = path.empty() ? "spec" : path;
  for (int i = 0; i < unknown.field_count(); ++i) {
    const pb::UnknownField& f = unknown.field(i);
    const pb::FieldDescriptor* known = descriptor->FindFieldByNumber(f.number());
    if (known != nullptr) {
      c->add(path.empty() ? known->name() : path + "." + known->name(),
             std::string("wrong type: field ") + std::to_string(f.number()) + " was sent as " +
                 wire_type_name(f.type()) + ", but it is a " + known->type_name() +
                 "; regenerate the client from ampd/v1/job.proto");
    } else {
      c->add(where, "unknown field number " + std::to_string(f.number()) + " (" +
                        wire_type_name(f.type()) + "); " + descriptor->full_name() +
                        " has no such field: remove it, or update the server");
    }
    if (i >= 20) break;  // the rest of a garbage message adds nothing
  }
  std::vector<const pb::FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const pb::FieldDescriptor* field : fields) {
    if (field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    const std::string child = path.empty() ? field->name() : path + "." + field->name();
    if (field->is_repeated()) {
      const int n = reflection->FieldSize(message, field);
      for (int i = 0; i < n; ++i) {
        check_unknown_fields(reflection->GetRepeatedMessage(message, field, i),
                             child + "[" + std::to_string(i) + "]", c);
      }
    } else {
      check_unknown_fields(reflection->GetMessage(message, field), child, c);
    }
  }
}

constexpr int64_t kMaxSyntheticValues = int64_t{1} << 28;
constexpr size_t kMaxPathBytes = 1024;
constexpr int64_t kMaxTotalSteps = 1000000000;

void resolve_model(ModelSpec* model, Checker* c) {
  if (model->loss().empty()) model->set_loss("cross_entropy");
  c->one_of("model.loss", model->loss(), {"cross_entropy", "mse"});

  if (model->has_gpt()) {
    if (model->layers_size() > 0) {
      c->add("model", "set either layers or gpt, not both");
      return;
    }
    resolve_gpt(model->mutable_gpt(), "model.gpt", *c);
    if (model->loss() != "cross_entropy") {
      c->add("model.loss",
             "a gpt model is trained with cross_entropy, got " + quote(model->loss()));
    }
    if (model->block_size() != 0 && model->block_size() != model->gpt().block_size()) {
      c->add("model.block_size", "must be unset or equal to gpt.block_size");
    }
    model->set_block_size(model->gpt().block_size());
    return;
  }
  if (model->block_size() != 0)
    c->closed("model.block_size", model->block_size(), 1, kMaxBlockSize);
  const int n = model->layers_size();
  if (n == 0) c->add("model.layers", "must have at least one layer (the last one linear)");
  const int total = count_layers(model->layers());
  if (total > kMaxLayers) {
    c->add("model.layers", "must have at most " + std::to_string(kMaxLayers) +
                               " layers (residual blocks' layers included), got " +
                               std::to_string(total));
  }
  resolve_layers(model->mutable_layers(), "model.layers", 0, *c);
  if (n > 0) {
    const LayerSpec& last = model->layers(n - 1);
    if (last.kind_case() != LayerSpec::kLinear && last.kind_case() != LayerSpec::KIND_NOT_SET) {
      c->add("model.layers[" + std::to_string(n - 1) + "]",
             std::string("the last layer must be linear (it produces the outputs), got ") +
                 std::string(layer_kind_name(last)));
    }
  }
}

// '/'-separated components; "a//b" has an empty one, which is harmless.
bool has_dot_dot_component(std::string_view path) {
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    if (path.substr(start, end - start) == "..") return true;
    start = end + 1;
  }
  return false;
}

// A path under the data directory, as written in a spec.
void check_data_path(const std::string& field, const std::string& path, Checker* c) {
  if (path.empty()) {
    c->add(field, "must not be empty");
  } else if (path.find('\0') != std::string::npos) {
    c->add(field, "must not contain a NUL character, got " + quote(path));
  } else if (path[0] == '/') {
    c->add(field, "must be relative to the data directory, got " + quote(path));
  } else if (has_dot_dot_component(path)) {
    c->add(field, "must not contain '..' components, got " + quote(path));
  } else if (path.size() > kMaxPathBytes) {
    c->add(field, "must be at most " + std::to_string(kMaxPathBytes) + " bytes, got " +
                      std::to_string(path.size()));
  } else if (std::any_of(path.begin(), path.end(), [](char ch) {
               return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f;
             })) {
    c->add(field, "must not contain control characters, got " + quote(path));
  }
}

void resolve_data(DataSpec* data, Checker* c) {
  switch (data->source_case()) {
    case DataSpec::kDigits: break;
    case DataSpec::kCsv: {
      auto* csv = data->mutable_csv();
      check_data_path("data.csv.path", csv->path(), c);
      if (csv->target_columns() == 0) csv->set_target_columns(1);
      c->closed("data.csv.target_columns", csv->target_columns(), 1, kMaxWidth);
      break;
    }
    case DataSpec::kSynthetic: {
      auto* syn = data->mutable_synthetic();
      bool kind_ok =
          c->one_of("data.synthetic.kind", syn->kind(), {"spirals", "blobs", "linear_regression"});
      if (c->non_negative("data.synthetic.samples", syn->samples()) && syn->samples() == 0) {
        syn->set_samples(1000);
      }
      if (c->non_negative("data.synthetic.features", syn->features()) && syn->features() == 0 &&
          kind_ok) {
        syn->set_features(syn->kind() == "spirals" ? 2 : 16);
      }
      if (c->non_negative("data.synthetic.classes", syn->classes()) && syn->classes() == 0 &&
          kind_ok) {
        syn->set_classes(syn->kind() == "linear_regression" ? 1 : 3);
      }
      if (!syn->has_noise()) syn->set_noise(0.1f);
      c->non_negative("data.synthetic.noise", syn->noise());
      // The set is generated in host memory before training starts: bound it here, where
      // the error can still name the field.
      bool widths_ok = syn->features() >= 0 && syn->classes() >= 0;
      for (auto [field, v] : {std::pair{"data.synthetic.features", syn->features()},
                              std::pair{"data.synthetic.classes", syn->classes()}}) {
        if (v > kMaxWidth) {
          c->add(field, "must be <= " + num(kMaxWidth) + ", got " + num(v));
          widths_ok = false;
        }
      }
      const int64_t values = int64_t{syn->samples()} * (int64_t{syn->features()} + syn->classes());
      if (widths_ok && values > kMaxSyntheticValues) {
        c->add("data.synthetic.samples",
               "samples x (features + classes) = " + std::to_string(values) +
                   " values is over the limit of " + std::to_string(kMaxSyntheticValues) +
                   " (1 GiB of float32); lower samples or features");
      }
      break;
    }
    case DataSpec::kText: {
      auto* text = data->mutable_text();
      if (text->has_path()) {
        check_data_path("data.text.path", text->path(), c);
      } else if (text->has_builtin()) {
        c->one_of("data.text.builtin", text->builtin(), {"tinyshakespeare"});
      } else {
        c->add("data.text", "set path (a file under the data directory) or builtin");
      }
      if (text->vocabulary().empty()) text->set_vocabulary("chars");
      c->one_of("data.text.vocabulary", text->vocabulary(), {"chars", "bytes"});
      if (text->eval_batches() == 0) text->set_eval_batches(200);
      c->closed("data.text.eval_batches", text->eval_batches(), 1, 100000);
      break;
    }
    case DataSpec::SOURCE_NOT_SET:
      c->add("data", "set one source: digits, csv, synthetic or text");
      break;
  }
  if (data->batch_size() == 0) data->set_batch_size(64);
  c->closed("data.batch_size", data->batch_size(), 1, 1 << 20);
  if (!data->has_validation_fraction()) data->set_validation_fraction(0.2f);
  c->closed("data.validation_fraction", data->validation_fraction(), 0.0f, 0.9f);
  if (!data->has_shuffle()) data->set_shuffle(true);
}

void resolve_optimizer(OptimizerSpec* opt, Checker* c) {
  switch (opt->kind_case()) {
    case OptimizerSpec::kSgd: {
      const auto& sgd = opt->sgd();
      c->positive("optimizer.sgd.lr", sgd.lr());
      bool momentum_ok =
          c->in_range("optimizer.sgd.momentum", sgd.momentum(), 0.0f, true, 1.0f, false);
      bool dampening_ok = c->closed("optimizer.sgd.dampening", sgd.dampening(), 0.0f, 1.0f);
      c->non_negative("optimizer.sgd.weight_decay", sgd.weight_decay());
      if (sgd.nesterov() && momentum_ok && dampening_ok &&
          (sgd.momentum() <= 0 || sgd.dampening() != 0)) {
        c->add("optimizer.sgd.nesterov", "requires momentum > 0 and dampening == 0, got momentum " +
                                             num(sgd.momentum()) + ", dampening " +
                                             num(sgd.dampening()));
      }
      break;
    }
    case OptimizerSpec::kAdamw: {
      auto* adamw = opt->mutable_adamw();
      if (!adamw->has_beta1()) adamw->set_beta1(0.9f);
      if (!adamw->has_beta2()) adamw->set_beta2(0.999f);
      if (!adamw->has_eps()) adamw->set_eps(1e-8f);
      if (!adamw->has_weight_decay()) adamw->set_weight_decay(0.01f);
      c->positive("optimizer.adamw.lr", adamw->lr());
      c->in_range("optimizer.adamw.beta1", adamw->beta1(), 0.0f, true, 1.0f, false);
      c->in_range("optimizer.adamw.beta2", adamw->beta2(), 0.0f, true, 1.0f, false);
      c->positive("optimizer.adamw.eps", adamw->eps());
      c->non_negative("optimizer.adamw.weight_decay", adamw->weight_decay());
      break;
    }
    case OptimizerSpec::KIND_NOT_SET: c->add("optimizer", "set sgd or adamw"); break;
  }
  c->non_negative("optimizer.grad_clip_norm", opt->grad_clip_norm());
  if (!opt->has_no_decay_on_bias_and_norm()) opt->set_no_decay_on_bias_and_norm(true);
}

void resolve_lr_schedule(LrScheduleSpec* schedule, Checker* c) {
  c->non_negative("lr_schedule.warmup_steps", schedule->warmup_steps());
  switch (schedule->decay_case()) {
    case LrScheduleSpec::kConstant: break;
    case LrScheduleSpec::kCosine:
      c->closed("lr_schedule.cosine.min_lr_ratio", schedule->cosine().min_lr_ratio(), 0.0f, 1.0f);
      break;
    case LrScheduleSpec::DECAY_NOT_SET: schedule->mutable_constant(); break;
  }
}

void resolve_loss_scaling(LossScalingSpec* scaling, const std::string& precision, Checker* c) {
  if (scaling->mode_case() == LossScalingSpec::MODE_NOT_SET) {
    if (precision == "fp16" || precision == "auto") {
      scaling->mutable_dynamic();
    } else if (precision == "fp32" || precision == "bf16") {
      scaling->mutable_off();
    }
    // An invalid precision has been reported; leave the mode for the user to fix.
  }
  switch (scaling->mode_case()) {
    case LossScalingSpec::kDynamic: {
      DynamicLossScalingSpec* d = scaling->mutable_dynamic();
      // PyTorch GradScaler's defaults, DeepSpeed's hysteresis of 1, a floor and a cap.
      if (!d->has_init_scale()) d->set_init_scale(65536.0);
      if (!d->has_growth_factor()) d->set_growth_factor(2.0);
      if (!d->has_backoff_factor()) d->set_backoff_factor(0.5);
      if (!d->has_growth_interval()) d->set_growth_interval(2000);
      if (!d->has_hysteresis()) d->set_hysteresis(1);
      if (!d->has_min_scale()) d->set_min_scale(1.0);
      if (!d->has_max_scale()) d->set_max_scale(16777216.0);
      const std::string p = "loss_scaling.dynamic.";
      bool init_ok = c->positive(p + "init_scale", d->init_scale());
      c->above(p + "growth_factor", d->growth_factor(), 1.0, true);
      c->in_range(p + "backoff_factor", d->backoff_factor(), 0.0, false, 1.0, false);
      c->above<int64_t>(p + "growth_interval", d->growth_interval(), 1, false);
      c->above<int32_t>(p + "hysteresis", d->hysteresis(), 1, false);
      bool min_ok = c->positive(p + "min_scale", d->min_scale());
      bool max_ok = c->finite(p + "max_scale", d->max_scale());
      if (init_ok && max_ok && d->max_scale() < d->init_scale()) {
        c->add(p + "max_scale",
               "must be >= init_scale (" + num(d->init_scale()) + "), got " + num(d->max_scale()));
      }
      if (init_ok && min_ok && d->init_scale() < d->min_scale()) {
        c->add(p + "init_scale",
               "must be >= min_scale (" + num(d->min_scale()) + "), got " + num(d->init_scale()));
      }
      break;
    }
    case LossScalingSpec::kStatic:
      c->positive("loss_scaling.static.scale", scaling->static_().scale());
      break;
    case LossScalingSpec::kOff:
    case LossScalingSpec::MODE_NOT_SET: break;
  }
}

void resolve_training(TrainingSpec* t, Checker* c) {
  bool epochs_ok = c->closed("training.epochs", t->epochs(), 0, 100000);
  bool steps_ok = c->closed<int64_t>("training.max_steps", t->max_steps(), 0, kMaxTotalSteps);
  if (epochs_ok && steps_ok && t->epochs() == 0 && t->max_steps() == 0) {
    c->add("training", "set epochs or max_steps (at least one must be > 0)");
  }
  c->non_negative("training.eval_every", t->eval_every());
  if (t->report_every() == 0) t->set_report_every(10);
  c->non_negative("training.report_every", t->report_every());
  c->non_negative("training.checkpoint_every", t->checkpoint_every());
  c->non_negative("training.telemetry_every", t->telemetry_every());
}

// epochs x steps per epoch, where the data set's size is known from the spec (synthetic
// data), is bounded like max_steps: a job that could never finish is refused up front.
// Text data needs a token model (gpt, or layers starting with an embedding, with a
// block_size), and a token model needs text data.
void check_model_fits_data(const JobSpec& spec, Checker* c) {
  const ModelSpec& m = spec.model();
  const bool tokens = m.has_gpt() || (m.layers_size() > 0 && m.layers(0).has_embedding());
  const bool text = spec.data().has_text();
  if (text && !tokens) {
    c->add("model",
           "text data needs a language model: set model.gpt, or start model.layers "
           "with an embedding layer");
  } else if (tokens && !text && spec.data().source_case() != DataSpec::SOURCE_NOT_SET) {
    c->add("data", "a language model (gpt or embedding) needs text data: set data.text");
  } else if (text && !m.has_gpt() && m.block_size() == 0) {
    c->add("model.block_size", "set the context length (positions per example) for text data");
  }
  if (text && (spec.training().epochs() > 0 && spec.training().max_steps() == 0)) {
    c->add("training.max_steps",
           "text data is sampled in random windows: set max_steps (iterations), not epochs");
  }
}

void check_total_steps(const JobSpec& spec, Checker* c) {
  const TrainingSpec& t = spec.training();
  if (t.epochs() == 0 || !spec.data().has_synthetic()) return;
  const double train = std::floor(spec.data().synthetic().samples() *
                                  (1.0 - double{spec.data().validation_fraction()}));
  const double per_epoch = std::ceil(std::max(train, 1.0) / spec.data().batch_size());
  const double total = per_epoch * t.epochs();
  if (total > static_cast<double>(kMaxTotalSteps) &&
      (t.max_steps() == 0 || t.max_steps() > kMaxTotalSteps)) {
    c->add("training.epochs", std::to_string(t.epochs()) + " epochs of about " +
                                  num(static_cast<int64_t>(per_epoch)) + " steps is over " +
                                  num(kMaxTotalSteps) +
                                  " steps; lower epochs, raise data.batch_size or set max_steps");
  }
}

// ---------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

int64_t mul(int64_t a, int64_t b) {
  if (a <= 0 || b <= 0) return 0;
  int64_t r;
  return __builtin_mul_overflow(a, b, &r) ? kInt64Max : r;
}
int64_t add(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_add_overflow(a, b, &r) ? kInt64Max : r;
}

// The input width when the caller does not know it: the data spec's own, else (CSV) the
// widest linear layer, which overstates a narrow input rather than understating it.
int64_t assumed_input_width(const JobSpec& spec) {
  switch (spec.data().source_case()) {
    case DataSpec::kDigits: return 64;
    case DataSpec::kSynthetic:
      if (spec.data().synthetic().features() > 0) return spec.data().synthetic().features();
      return spec.data().synthetic().kind() == "spirals" ? 2 : 16;
    default: break;
  }
  int64_t widest = 1;
  for (const LayerSpec& layer : spec.model().layers()) {
    if (layer.has_linear()) widest = std::max<int64_t>(widest, layer.linear().out_features());
  }
  return widest;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------

StatusOr<JobSpec> parse_job_spec(std::string_view text, std::string_view format) {
  return from_spec_io(spec_io::parse_job_spec_text(text, format));
}

StatusOr<JobSpec> load_job_spec_file(const std::string& path) {
  return from_spec_io(spec_io::read_job_spec_file(path));
}

StatusOr<JobSpec> validate_and_resolve(const JobSpec& input) {
  JobSpec spec = input;
  Checker c;
  check_unknown_fields(spec, "", &c);
  if (!c.ok()) return c.to_status();  // the rest would be judged on a misread spec
  if (utf8_length(spec.name()) > 128) {
    c.add("name",
          "must be at most 128 characters, got " + std::to_string(utf8_length(spec.name())));
  } else if (std::any_of(spec.name().begin(), spec.name().end(), [](char ch) {
               return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f;
             })) {
    // Names end up in logs and terminal tables: no line breaks, escapes or NULs.
    c.add("name", "must not contain control characters, got " + quote(spec.name()));
  }
  if (spec.precision().empty()) spec.set_precision("auto");
  c.one_of("precision", spec.precision(), {"fp32", "fp16", "bf16", "auto"});
  resolve_model(spec.mutable_model(), &c);
  resolve_data(spec.mutable_data(), &c);
  check_model_fits_data(spec, &c);
  resolve_optimizer(spec.mutable_optimizer(), &c);
  resolve_lr_schedule(spec.mutable_lr_schedule(), &c);
  resolve_loss_scaling(spec.mutable_loss_scaling(), spec.precision(), &c);
  resolve_training(spec.mutable_training(), &c);
  if (c.ok()) check_total_steps(spec, &c);
  if (!c.ok()) return c.to_status();
  return spec;
}

MemoryEstimate estimate_memory(const JobSpec& spec, int64_t input_features,
                               int64_t output_features) {
  // The model's own build, run dry (engine/layers.h): the figures are what Model::create
  // allocates for this spec, not a second formula. fp16, bf16 and auto (which resolves to
  // one of them) keep 2-byte activations and working copies.
  Model::Options o;
  o.act_dtype = spec.precision() == "fp32" ? DType::kF32 : DType::kF16;
  o.max_batch = spec.data().batch_size() > 0 ? spec.data().batch_size() : 64;
  o.in_features = input_features > 0 ? input_features : assumed_input_width(spec);
  o.loss = spec.model().loss() == "mse" ? LossKind::kMse : LossKind::kCrossEntropy;
  int64_t out = output_features;
  if (spec.data().has_text()) {
    // A language model: the vocabulary is the data's (Tiny Shakespeare's 65 symbols), at
    // most 256 before a text file is read.
    o.token_input = true;
    o.time = std::max(spec.model().block_size(), 1);
    if (input_features <= 0) {
      const auto& text = spec.data().text();
      o.in_features = text.has_builtin() && text.vocabulary() != "bytes" ? 65 : 256;
      if (spec.model().has_gpt() && spec.model().gpt().vocab_size() > 0) {
        o.in_features = spec.model().gpt().vocab_size();
      }
    }
    out = o.in_features;
  }
  if (out <= 0) {
    const auto& layers = spec.model().layers();
    out = !layers.empty() && layers.rbegin()->has_linear()
              ? std::max(layers.rbegin()->linear().out_features(), 1)
              : 1;
  }
  o.out_features = out;
  MemoryEstimate m;
  auto plan = Model::plan(spec.model(), o);
  if (!plan.ok() && output_features > 0) {
    // The data's width disagrees with the last layer: the job will be refused when it
    // starts; estimate it with the model's own outputs.
    o.out_features = 0;
    const auto& layers = spec.model().layers();
    if (!layers.empty() && layers.rbegin()->has_linear()) {
      o.out_features = std::max(layers.rbegin()->linear().out_features(), 1);
    }
    plan = Model::plan(spec.model(), o);
  }
  if (plan.ok()) {
    m.parameter_bytes = plan->parameter_bytes;
    m.activation_bytes = plan->activation_bytes;
    // One FP32 tensor per parameter for every state the optimizer declares.
    const auto states = static_cast<int64_t>(optimizer_state_names(spec.optimizer()).size());
    m.optimizer_bytes = mul(plan->parameter_count, 4 * states);
  }
  m.total_bytes = add(add(m.parameter_bytes, m.optimizer_bytes), m.activation_bytes);
  return m;
}

std::string job_spec_to_json(const JobSpec& spec, bool pretty) {
  pb::util::JsonPrintOptions options;
  options.add_whitespace = pretty;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = false;
  std::string out;
  pb::util::Status status = pb::util::MessageToJsonString(spec, &out, options);
  if (!status.ok()) return "{}";  // JobSpec has no Any or maps: printing cannot fail
  return out;
}

}  // namespace ampd::engine
