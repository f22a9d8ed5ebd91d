// gpt_grad_dump: one forward and backward pass of a tiny GPT (engine/gpt.h) on fixed
// tokens, written to a safetensors file for tests/python/gpt_reference.py, which
// recomputes the loss and every parameter gradient in FP64 numpy and compares.
//
//   gpt_grad_dump OUT.safetensors [--precision fp32|fp16|bf16] [--backend cpu|reference]
//                 [--no-bias]
//
// The model: n_layer 2, n_head 2, n_embd 16, block_size 8, vocab_size 11, dropout 0, a batch
// of 3 sequences. Its parameters are not the N(0, 0.02) initialization (under which
// attention is nearly uniform and LayerNorm's affine is the identity) but values of O(1)
// drawn from a fixed SplitMix64 stream: embeddings N(0, 0.5), Linear weights N(0, 1/sqrt(in)),
// biases N(0, 0.1), LayerNorm weights 1 + N(0, 0.2), so every term of the gradient matters.
// FP16 runs the backward pass with a static loss scale of 1024 (as the trainer would with a
// scaler) and unscales the gradients; FP32 and BF16 use 1.
//
// The file holds: every parameter under its checkpoint name (FP32 master), "grad.<name>" its
// FP32 gradient of the mean loss, "loss" (the mean of the FP32 per-position losses, summed
// in double), "loss_rows", "logits" (B, T, V; FP32, widened from the working dtype),
// "tokens" and "labels" (B, T; I32); metadata ampd.spec (the resolved job spec, JSON, as in
// a checkpoint), ampd.precision, ampd.backend, ampd.loss_scale.
#include <cmath>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "engine/job_spec.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/trainer.h"
#include "kernels/convert.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/dropout_hash.h"
#include "kernels/reference/reference_backend.h"

namespace ampd::engine {
namespace {

constexpr int64_t kBatch = 3, kTime = 8, kVocab = 11;

// A standard normal from a SplitMix64 counter (Box-Muller), reproducible everywhere.
double normal(uint64_t& state) {
  state = splitmix64(state);
  const double u1 = (static_cast<double>(state >> 11) + 0.5) * 0x1p-53;
  state = splitmix64(state);
  const double u2 = static_cast<double>(state >> 11) * 0x1p-53;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

StTensor f32_tensor(const std::string& name, std::vector<int64_t> shape,
                    const std::vector<float>& v) {
  StTensor t;
  t.name = name;
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  t.data.resize(v.size() * sizeof(float));
  std::memcpy(t.data.data(), v.data(), t.data.size());
  return t;
}

StTensor i32_tensor(const std::string& name, std::vector<int64_t> shape,
                    const std::vector<int32_t>& v) {
  StTensor t;
  t.name = name;
  t.dtype = DType::kI32;
  t.shape = std::move(shape);
  t.data.resize(v.size() * sizeof(int32_t));
  std::memcpy(t.data.data(), v.data(), t.data.size());
  return t;
}

Status run(const std::string& out, const std::string& precision, const std::string& backend_name,
           bool bias) {
  const std::string yaml =
      std::string("precision: ") + precision +
      "\nmodel:\n  gpt: {n_layer: 2, n_head: 2, n_embd: 16, block_size: " + std::to_string(kTime) +
      ", dropout: 0.0, vocab_size: " + std::to_string(kVocab) +
      ", bias: " + (bias ? "true" : "false") +
      "}\ndata:\n  text: {builtin: tinyshakespeare}\n  batch_size: " + std::to_string(kBatch) +
      "\noptimizer: {sgd: {lr: 0.1}}\ntraining: {max_steps: 1, seed: 7}\n";
  AMPD_ASSIGN_OR_RETURN(const ampd::v1::JobSpec parsed, parse_job_spec(yaml, "yaml"));
  AMPD_ASSIGN_OR_RETURN(const ampd::v1::JobSpec spec, validate_and_resolve(parsed));

  std::unique_ptr<Backend> be;
  if (backend_name == "reference") {
    be = make_reference_backend();
  } else if (backend_name == "cpu") {
    CpuBackendOptions co;
    co.threads = 1;
    AMPD_ASSIGN_OR_RETURN(be, make_cpu_backend(co));
  } else {
    return invalid_argument("--backend: cpu or reference, got " + backend_name);
  }
  const DType dt = precision_dtype(precision);
  if (!be->supports(dt)) return invalid_argument(backend_name + " does not support " + precision);

  Model::Options mo;
  mo.act_dtype = dt;
  mo.max_batch = kBatch;
  mo.time = kTime;
  mo.token_input = true;
  mo.in_features = kVocab;
  mo.out_features = kVocab;
  mo.seed = 7;
  AMPD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::create(*be, spec.model(), mo));

  // O(1) parameters (see the top of the file).
  uint64_t rng = 0x9e3779b97f4a7c15ull;
  for (Param* p : model->params()) {
    std::vector<float> v(static_cast<size_t>(p->rows * p->cols));
    const bool is_bias = ends_with(p->name, ".bias");
    const bool is_norm = p->name.find(".ln_") != std::string::npos;
    const bool is_embedding =
        p->name.rfind("transformer.wte", 0) == 0 || p->name.rfind("transformer.wpe", 0) == 0;
    for (float& x : v) {
      const double z = normal(rng);
      if (is_bias) {
        x = static_cast<float>(0.1 * z);
      } else if (is_norm) {
        x = static_cast<float>(1.0 + 0.2 * z);
      } else if (is_embedding) {
        x = static_cast<float>(0.5 * z);
      } else {
        x = static_cast<float>(z / std::sqrt(static_cast<double>(p->cols)));
      }
    }
    AMPD_RETURN_IF_ERROR(be->upload(p->master_t(), v.data()));
  }
  AMPD_RETURN_IF_ERROR(model->refresh_low_precision());

  // Fixed tokens: B sequences of T + 1 ids; x = seq[:T], y = seq[1:].
  std::vector<int32_t> tokens(kBatch * kTime), labels(kBatch * kTime);
  uint64_t trng = 12345;
  for (int64_t b = 0; b < kBatch; ++b) {
    std::vector<int32_t> seq(kTime + 1);
    for (auto& s : seq) {
      trng = splitmix64(trng);
      s = static_cast<int32_t>(trng % kVocab);
    }
    for (int64_t t = 0; t < kTime; ++t) {
      tokens[static_cast<size_t>(b * kTime + t)] = seq[static_cast<size_t>(t)];
      labels[static_cast<size_t>(b * kTime + t)] = seq[static_cast<size_t>(t + 1)];
    }
  }
  const float loss_scale = dt == DType::kF16 ? 1024.0f : 1.0f;
  PassContext ctx{be.get(), /*training=*/true, /*step=*/0, /*seed=*/7};
  AMPD_RETURN_IF_ERROR(model->load_tokens(kBatch, tokens.data(), labels.data()));
  AMPD_RETURN_IF_ERROR(model->forward(ctx, kBatch));
  std::vector<float> rows(kBatch * kTime);
  AMPD_RETURN_IF_ERROR(model->read_losses(kBatch, rows.data()));
  double sum = 0;
  for (float r : rows) sum += r;
  const float loss = static_cast<float>(sum / static_cast<double>(rows.size()));

  const Tensor out_t = model->outputs(kBatch);
  std::vector<float> logits(static_cast<size_t>(out_t.numel()));
  if (out_t.dtype == DType::kF32) {
    AMPD_RETURN_IF_ERROR(be->download(logits.data(), out_t));
  } else {
    std::vector<uint16_t> raw(logits.size());
    AMPD_RETURN_IF_ERROR(be->download(raw.data(), out_t));
    convert(raw.data(), out_t.dtype, logits.data(), DType::kF32, logits.size());
  }
  AMPD_RETURN_IF_ERROR(model->backward(ctx, kBatch, loss_scale));

  StFile file;
  auto shape_of = [](const Param& p) {
    return p.rows == 1 ? std::vector<int64_t>{p.cols} : std::vector<int64_t>{p.rows, p.cols};
  };
  for (Param* p : model->params()) {
    std::vector<float> v(static_cast<size_t>(p->rows * p->cols));
    AMPD_RETURN_IF_ERROR(be->download(v.data(), p->master_t()));
    file.tensors.push_back(f32_tensor(p->name, shape_of(*p), v));
    AMPD_RETURN_IF_ERROR(be->download(v.data(), p->grad_t()));
    for (float& g : v) g /= loss_scale;
    file.tensors.push_back(f32_tensor("grad." + p->name, shape_of(*p), v));
  }
  file.tensors.push_back(f32_tensor("loss", {}, {loss}));
  file.tensors.push_back(f32_tensor("loss_rows", {kBatch, kTime}, rows));
  file.tensors.push_back(f32_tensor("logits", {kBatch, kTime, kVocab}, logits));
  file.tensors.push_back(i32_tensor("tokens", {kBatch, kTime}, tokens));
  file.tensors.push_back(i32_tensor("labels", {kBatch, kTime}, labels));
  file.metadata["ampd.spec"] = job_spec_to_json(spec);
  file.metadata["ampd.precision"] = precision;
  file.metadata["ampd.backend"] = backend_name;
  file.metadata["ampd.loss_scale"] = std::to_string(loss_scale);
  file.metadata[kStFormatKey] = "ampd-gpt-grad-dump-v1";
  return write_safetensors(out, file);
}

}  // namespace
}  // namespace ampd::engine

int main(int argc, char** argv) {
  std::string out, precision = "fp32", backend = "cpu";
  bool bias = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--precision" && i + 1 < argc) {
      precision = argv[++i];
    } else if (a == "--backend" && i + 1 < argc) {
      backend = argv[++i];
    } else if (a == "--no-bias") {
      bias = false;
    } else if (out.empty() && !a.empty() && a[0] != '-') {
      out = a;
    } else {
      out.clear();
      break;
    }
  }
  if (out.empty()) {
    std::cerr << "usage: gpt_grad_dump OUT.safetensors [--precision fp32|fp16|bf16] "
                 "[--backend cpu|reference] [--no-bias]\n";
    return 2;
  }
  const ampd::Status st = ampd::engine::run(out, precision, backend, bias);
  if (!st.ok()) {
    std::cerr << "gpt_grad_dump: " << st.to_string() << "\n";
    return 1;
  }
  return 0;
}
