#include "engine/export_hf.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/job_spec.h"
#include "engine/text_data.h"

namespace ampd::engine {

namespace {

namespace fs = std::filesystem;

// What the export needs of a checkpoint: its resolved gpt spec and its vocabulary.
struct GptInfo {
  ampd::v1::GptSpec gpt;
  Vocabulary vocab;
  int64_t V = 0, C = 0, T = 0, L = 0;
  bool bias = true;
};

StatusOr<GptInfo> gpt_info(const LoadedCheckpoint& ck) {
  if (!ck.meta.spec.data().has_text() || ck.meta.vocabulary.empty()) {
    return invalid_argument(
        "not a language model's checkpoint (no text data, no vocabulary): only GPT checkpoints "
        "(model.gpt) can be exported");
  }
  if (!ck.meta.spec.model().has_gpt()) {
    return invalid_argument(
        "a language model of model.layers, not model.gpt: only GPT checkpoints can be exported "
        "to GPT-2's layout");
  }
  GptInfo g;
  AMPD_ASSIGN_OR_RETURN(const ampd::v1::JobSpec spec, validate_and_resolve(ck.meta.spec));
  g.gpt = spec.model().gpt();
  AMPD_ASSIGN_OR_RETURN(g.vocab, Vocabulary::parse(ck.meta.vocabulary));
  g.V = g.gpt.vocab_size() > 0 ? g.gpt.vocab_size() : g.vocab.size();
  g.C = g.gpt.n_embd();
  g.T = g.gpt.block_size();
  g.L = g.gpt.n_layer();
  g.bias = g.gpt.bias();
  return g;
}

// The checkpoint's FP32 tensor `name` of rows x cols elements.
StatusOr<const StTensor*> take(const StFile& f, const std::string& name, int64_t rows,
                               int64_t cols) {
  const StTensor* t = f.find(name);
  if (t == nullptr) return failed_precondition("the checkpoint has no tensor '" + name + "'");
  int64_t numel = 1;
  for (int64_t d : t->shape) numel *= d;
  if (t->dtype != DType::kF32 || numel != rows * cols ||
      t->data.size() != static_cast<size_t>(rows * cols) * sizeof(float)) {
    return failed_precondition("checkpoint tensor '" + name + "' is not FP32 " +
                               std::to_string(rows) + " x " + std::to_string(cols) +
                               " as its spec says");
  }
  return t;
}

StTensor make(const std::string& name, std::vector<int64_t> shape) {
  StTensor t;
  t.name = name;
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  int64_t numel = 1;
  for (int64_t d : t.shape) numel *= d;
  t.data.assign(static_cast<size_t>(numel) * sizeof(float), 0);  // zeros: an absent bias
  return t;
}

// Copies `name` (rows x cols) as GPT-2 tensor `to` of shape `shape`.
Status copy(const StFile& in, StFile& out, const std::string& name, int64_t rows, int64_t cols,
            const std::string& to, std::vector<int64_t> shape) {
  AMPD_ASSIGN_OR_RETURN(const StTensor* t, take(in, name, rows, cols));
  StTensor o = make(to, std::move(shape));
  o.data = t->data;
  out.tensors.push_back(std::move(o));
  return Status::ok_status();
}

// nn.Linear (out, in) -> Conv1D (in, out).
Status transpose(const StFile& in, StFile& out, const std::string& name, int64_t rows,
                 int64_t cols) {
  AMPD_ASSIGN_OR_RETURN(const StTensor* t, take(in, name, rows, cols));
  StTensor o = make(name, {cols, rows});
  const auto* src = reinterpret_cast<const float*>(t->data.data());
  auto* dst = reinterpret_cast<float*>(o.data.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  }
  out.tensors.push_back(std::move(o));
  return Status::ok_status();
}

// A bias of n elements: the checkpoint's when the model has biases, else zeros.
Status bias(const StFile& in, StFile& out, const std::string& name, int64_t n, bool present) {
  if (present) return copy(in, out, name, 1, n, name, {n});
  out.tensors.push_back(make(name, {n}));
  return Status::ok_status();
}

// Each byte as the code point of the same value, UTF-8 encoded (latin-1 decoding).
std::string latin1_to_utf8(std::string_view bytes) {
  std::string s;
  for (const char ch : bytes) {
    const auto b = static_cast<unsigned char>(ch);
    if (b < 0x80) {
      s.push_back(static_cast<char>(b));
    } else {
      s.push_back(static_cast<char>(0xC0 | (b >> 6)));
      s.push_back(static_cast<char>(0x80 | (b & 0x3F)));
    }
  }
  return s;
}

}  // namespace

StatusOr<StFile> hf_gpt2_tensors(const LoadedCheckpoint& ck) {
  AMPD_ASSIGN_OR_RETURN(const GptInfo g, gpt_info(ck));
  const StFile& in = ck.file;
  const int64_t C = g.C;
  StFile out;
  AMPD_RETURN_IF_ERROR(
      copy(in, out, "transformer.wte.weight", g.V, C, "transformer.wte.weight", {g.V, C}));
  AMPD_RETURN_IF_ERROR(
      copy(in, out, "transformer.wpe.weight", g.T, C, "transformer.wpe.weight", {g.T, C}));
  for (int64_t i = 0; i < g.L; ++i) {
    const std::string h = "transformer.h." + std::to_string(i);
    for (const char* ln : {".ln_1", ".ln_2"}) {
      AMPD_RETURN_IF_ERROR(copy(in, out, h + ln + ".weight", 1, C, h + ln + ".weight", {C}));
      AMPD_RETURN_IF_ERROR(bias(in, out, h + ln + ".bias", C, g.bias));
    }
    AMPD_RETURN_IF_ERROR(transpose(in, out, h + ".attn.c_attn.weight", 3 * C, C));
    AMPD_RETURN_IF_ERROR(bias(in, out, h + ".attn.c_attn.bias", 3 * C, g.bias));
    AMPD_RETURN_IF_ERROR(transpose(in, out, h + ".attn.c_proj.weight", C, C));
    AMPD_RETURN_IF_ERROR(bias(in, out, h + ".attn.c_proj.bias", C, g.bias));
    AMPD_RETURN_IF_ERROR(transpose(in, out, h + ".mlp.c_fc.weight", 4 * C, C));
    AMPD_RETURN_IF_ERROR(bias(in, out, h + ".mlp.c_fc.bias", 4 * C, g.bias));
    AMPD_RETURN_IF_ERROR(transpose(in, out, h + ".mlp.c_proj.weight", C, 4 * C));
    AMPD_RETURN_IF_ERROR(bias(in, out, h + ".mlp.c_proj.bias", C, g.bias));
  }
  AMPD_RETURN_IF_ERROR(
      copy(in, out, "transformer.ln_f.weight", 1, C, "transformer.ln_f.weight", {C}));
  AMPD_RETURN_IF_ERROR(bias(in, out, "transformer.ln_f.bias", C, g.bias));
  // transformers refuses a safetensors file whose metadata lacks format "pt".
  out.metadata["format"] = "pt";
  out.metadata[kStFormatKey] = "ampd-hf-gpt2-export-v1";
  out.metadata["ampd.source_step"] = std::to_string(ck.meta.step);
  out.metadata["ampd.source_precision"] = ck.meta.precision;
  out.metadata["ampd.vocabulary"] = ck.meta.vocabulary;
  return out;
}

StatusOr<std::string> hf_gpt2_config_json(const LoadedCheckpoint& ck) {
  AMPD_ASSIGN_OR_RETURN(const GptInfo g, gpt_info(ck));
  const double p = static_cast<double>(g.gpt.dropout());
  nlohmann::ordered_json j;
  j["model_type"] = "gpt2";
  j["architectures"] = {"GPT2LMHeadModel"};
  j["vocab_size"] = g.V;
  j["n_positions"] = g.T;
  j["n_ctx"] = g.T;
  j["n_embd"] = g.C;
  j["n_layer"] = g.L;
  j["n_head"] = g.gpt.n_head();
  j["n_inner"] = nullptr;             // 4 * n_embd
  j["activation_function"] = "gelu";  // exact erf GELU (torch.nn.functional.gelu)
  j["layer_norm_epsilon"] = 1e-5;
  j["resid_pdrop"] = p;
  j["embd_pdrop"] = p;
  j["attn_pdrop"] = p;
  j["initializer_range"] = 0.02;
  j["scale_attn_weights"] = true;
  j["scale_attn_by_inverse_layer_idx"] = false;
  j["reorder_and_upcast_attn"] = false;
  j["tie_word_embeddings"] = true;
  j["use_cache"] = true;
  j["bos_token_id"] = 0;
  j["eos_token_id"] = nullptr;
  j["torch_dtype"] = "float32";
  j["ampd_bias"] = g.bias;
  j["ampd_source_step"] = ck.meta.step;
  return j.dump(2) + "\n";
}

StatusOr<std::string> hf_vocab_json(const LoadedCheckpoint& ck) {
  AMPD_ASSIGN_OR_RETURN(const GptInfo g, gpt_info(ck));
  nlohmann::ordered_json j;
  j["format"] = "ampd-vocab-v1";
  j["type"] = g.vocab.is_bytes() ? "bytes" : "chars";
  j["vocabulary"] = latin1_to_utf8(g.vocab.to_string());
  j["note"] =
      "Token id i is the byte byte_values[i]; itos[i] is its text (bytes >= 0x80 as the code "
      "point of the same value). Encode: [byte_values.index(b) for b in text.encode()].";
  auto values = nlohmann::ordered_json::array();
  auto itos = nlohmann::ordered_json::array();
  for (const char ch : g.vocab.symbols()) {
    values.push_back(static_cast<int>(static_cast<unsigned char>(ch)));
    itos.push_back(latin1_to_utf8(std::string_view(&ch, 1)));
  }
  j["byte_values"] = std::move(values);
  j["itos"] = std::move(itos);
  return j.dump(2) + "\n";
}

StatusOr<HfExport> export_hf_gpt2(const LoadedCheckpoint& ck, const std::string& dir, bool force) {
  // Everything is computed before anything is written.
  AMPD_ASSIGN_OR_RETURN(StFile tensors, hf_gpt2_tensors(ck));
  AMPD_ASSIGN_OR_RETURN(const std::string config, hf_gpt2_config_json(ck));
  AMPD_ASSIGN_OR_RETURN(const std::string vocab, hf_vocab_json(ck));
  AMPD_ASSIGN_OR_RETURN(const GptInfo g, gpt_info(ck));

  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (fs::exists(st)) {
    if (!fs::is_directory(st)) {
      return failed_precondition(dir + " exists and is not a directory");
    }
    const bool empty = fs::is_empty(dir, ec);
    if (ec) return failed_precondition("cannot read directory " + dir + ": " + ec.message());
    if (!empty && !force) {
      return failed_precondition(dir +
                                 " exists and is not empty: choose a new directory, or pass "
                                 "--force to replace config.json, model.safetensors and "
                                 "vocab.json in it");
    }
  } else {
    fs::create_directories(dir, ec);
    if (ec) return failed_precondition("cannot create directory " + dir + ": " + ec.message());
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return failed_precondition("cannot write into " + dir + ": " + std::strerror(errno));
  }

  HfExport r;
  const fs::path d(dir);
  const std::string model_path = (d / "model.safetensors").string();
  AMPD_RETURN_IF_ERROR(write_safetensors(model_path, tensors));
  r.files.push_back(model_path);
  const std::string config_path = (d / "config.json").string();
  AMPD_RETURN_IF_ERROR(write_file_atomically(config_path, config));
  r.files.push_back(config_path);
  const std::string vocab_path = (d / "vocab.json").string();
  AMPD_RETURN_IF_ERROR(write_file_atomically(vocab_path, vocab));
  r.files.push_back(vocab_path);
  r.tensors = static_cast<int64_t>(tensors.tensors.size());
  for (const auto& t : tensors.tensors) {
    r.parameters += static_cast<int64_t>(t.data.size() / sizeof(float));
  }
  r.vocab_size = g.V;
  r.block_size = g.T;
  return r;
}

}  // namespace ampd::engine
