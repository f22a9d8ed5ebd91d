#include "engine/checkpoint.h"

#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string_view>

#include "engine/job_spec.h"

namespace ampd::engine {

namespace {

// v2 (written): both checksums of engine/safetensors.h are required, so that a flipped
// byte cannot turn one of them into an unchecked key. v1 (read): the buffer checksum.
constexpr const char* kFormat = "ampd-checkpoint-v2";
constexpr const char* kFormatV1 = "ampd-checkpoint-v1";

Status add_tensor(StFile& file, Backend& be, const std::string& name, const Tensor& t) {
  StTensor st;
  st.name = name;
  st.dtype = DType::kF32;
  st.shape =
      t.rows() == 1 ? std::vector<int64_t>{t.cols()} : std::vector<int64_t>{t.rows(), t.cols()};
  st.data.resize(t.bytes());
  AMPD_RETURN_IF_ERROR(be.download(st.data.data(), t));
  file.tensors.push_back(std::move(st));
  return Status::ok_status();
}

Status take_tensor(const StFile& file, Backend& be, const std::string& name, const Tensor& t) {
  const StTensor* st = file.find(name);
  if (st == nullptr) return data_loss("checkpoint has no tensor '" + name + "'");
  int64_t numel = 1;
  for (int64_t d : st->shape) numel *= d;
  if (st->dtype != DType::kF32 || numel != t.numel() || st->data.size() != t.bytes()) {
    return failed_precondition("checkpoint tensor '" + name + "' does not match the model (" +
                               t.describe() + "): was it written for another spec?");
  }
  return be.upload(t, st->data.data());
}

StatusOr<int64_t> parse_int(const StFile& f, const std::string& key) {
  auto it = f.metadata.find(key);
  if (it == f.metadata.end()) return data_loss("checkpoint metadata lacks '" + key + "'");
  try {
    size_t used = 0;
    const long long v = std::stoll(it->second, &used);
    if (used != it->second.size()) throw std::invalid_argument(key);
    return static_cast<int64_t>(v);
  } catch (const std::exception&) {
    return data_loss("checkpoint metadata '" + key + "' is not an integer: " + it->second);
  }
}

}  // namespace

StatusOr<int64_t> save_checkpoint(const std::string& path, Model& model, const Optimizer& optimizer,
                                  const CheckpointMeta& meta, WriteFaults* faults) {
  Backend& be = model.backend();
  StFile file;
  for (Param* p : model.params()) {
    AMPD_RETURN_IF_ERROR(add_tensor(file, be, p->name, p->master_t()));
  }
  for (StateTensor* s : model.states()) {
    AMPD_RETURN_IF_ERROR(add_tensor(file, be, s->name, s->t()));
  }
  for (const auto& [key, t] : optimizer.state_tensors()) {
    AMPD_RETURN_IF_ERROR(add_tensor(file, be, key, t));
  }
  std::string scaler_json;
  google::protobuf::util::JsonPrintOptions jopt;
  jopt.preserve_proto_field_names = true;
  jopt.always_print_primitive_fields = true;
  if (!google::protobuf::util::MessageToJsonString(meta.scaler, &scaler_json, jopt).ok()) {
    return internal("cannot serialize the loss-scaler state");
  }
  auto& md = file.metadata;
  md["ampd.format"] = kFormat;
  md["ampd.step"] = std::to_string(meta.step);
  md["ampd.applied_steps"] = std::to_string(meta.applied_steps);
  md["ampd.epoch"] = std::to_string(meta.epoch);
  md["ampd.overflow_skipped_steps"] = std::to_string(meta.overflow_skipped_steps);
  md["ampd.scaler"] = scaler_json;
  md["ampd.rng"] = "{\"seed\":" + std::to_string(meta.spec.training().seed()) +
                   ",\"streams\":\"splitmix64 counters: init(seed,layer,tensor,i), "
                   "shuffle(seed,epoch), dropout(seed,layer,step*numel+i)\"}";
  md["ampd.spec"] = job_spec_to_json(meta.spec);
  md["ampd.precision"] = meta.precision;
  md["ampd.backend"] = meta.backend;
  if (!meta.standardization.empty()) md["ampd.standardization"] = meta.standardization;
  if (!meta.vocabulary.empty()) md["ampd.vocabulary"] = meta.vocabulary;
  AMPD_RETURN_IF_ERROR(write_safetensors(path, file, faults));
  int64_t bytes = 0;
  for (const auto& t : file.tensors) bytes += static_cast<int64_t>(t.data.size());
  return bytes;
}

StatusOr<LoadedCheckpoint> read_checkpoint(const std::string& path) {
  LoadedCheckpoint ck;
  AMPD_ASSIGN_OR_RETURN(ck.file, read_safetensors(path));
  const auto& md = ck.file.metadata;
  auto fmt = md.find("ampd.format");
  if (fmt == md.end() || (fmt->second != kFormat && fmt->second != kFormatV1)) {
    return failed_precondition(path + " is not an ampd checkpoint (metadata ampd.format is not " +
                               kFormat + ")");
  }
  for (const char* key : {kStChecksumKey, kStHeaderChecksumKey}) {
    if (key == std::string_view(kStHeaderChecksumKey) && fmt->second == kFormatV1) continue;
    if (md.count(key) == 0) {
      return data_loss("checkpoint " + path + " is corrupt: its metadata lacks " + key);
    }
  }
  AMPD_ASSIGN_OR_RETURN(ck.meta.step, parse_int(ck.file, "ampd.step"));
  AMPD_ASSIGN_OR_RETURN(ck.meta.applied_steps, parse_int(ck.file, "ampd.applied_steps"));
  AMPD_ASSIGN_OR_RETURN(int64_t epoch, parse_int(ck.file, "ampd.epoch"));
  ck.meta.epoch = static_cast<int32_t>(epoch);
  AMPD_ASSIGN_OR_RETURN(ck.meta.overflow_skipped_steps,
                        parse_int(ck.file, "ampd.overflow_skipped_steps"));
  auto scaler = md.find("ampd.scaler");
  if (scaler == md.end() ||
      !google::protobuf::util::JsonStringToMessage(scaler->second, &ck.meta.scaler).ok()) {
    return data_loss(path + ": missing or malformed loss-scaler state");
  }
  auto spec = md.find("ampd.spec");
  if (spec == md.end()) return data_loss(path + ": missing job spec");
  AMPD_ASSIGN_OR_RETURN(ck.meta.spec, parse_job_spec(spec->second, "json"));
  auto prec = md.find("ampd.precision");
  ck.meta.precision = prec == md.end() ? "" : prec->second;
  auto be = md.find("ampd.backend");
  ck.meta.backend = be == md.end() ? "" : be->second;
  auto st = md.find("ampd.standardization");
  ck.meta.standardization = st == md.end() ? "" : st->second;
  auto vocab = md.find("ampd.vocabulary");
  ck.meta.vocabulary = vocab == md.end() ? "" : vocab->second;
  return ck;
}

Status restore_weights(const LoadedCheckpoint& ckpt, Model& model) {
  Backend& be = model.backend();
  for (Param* p : model.params()) {
    AMPD_RETURN_IF_ERROR(take_tensor(ckpt.file, be, p->name, p->master_t()));
  }
  for (StateTensor* s : model.states()) {
    AMPD_RETURN_IF_ERROR(take_tensor(ckpt.file, be, s->name, s->t()));
  }
  // The working copies are a pure function of the masters (round to nearest even).
  return model.refresh_low_precision();
}

Status restore_checkpoint(const LoadedCheckpoint& ckpt, Model& model, Optimizer& optimizer) {
  for (const auto& [key, t] : optimizer.state_tensors()) {
    AMPD_RETURN_IF_ERROR(take_tensor(ckpt.file, model.backend(), key, t));
  }
  optimizer.set_applied_steps(ckpt.meta.applied_steps);
  return restore_weights(ckpt, model);
}

// ---- checkpoint files -------------------------------------------------------------------

namespace {
namespace fs = std::filesystem;
constexpr std::string_view kStepPrefix = "step-";
constexpr std::string_view kSuffix = ".safetensors";
constexpr std::string_view kTempMarker = ".safetensors.tmp-";
}  // namespace

std::string checkpoint_file_name(int64_t step) {
  return std::string(kStepPrefix) + std::to_string(step) + std::string(kSuffix);
}

std::string checkpoint_path(const std::string& dir, int64_t step) {
  return (fs::path(dir) / checkpoint_file_name(step)).string();
}

int64_t checkpoint_step(std::string_view path) {
  const size_t slash = path.rfind('/');
  const std::string_view name = slash == std::string_view::npos ? path : path.substr(slash + 1);
  if (name.size() <= kStepPrefix.size() + kSuffix.size() || !name.starts_with(kStepPrefix) ||
      !name.ends_with(kSuffix)) {
    return -1;
  }
  const std::string_view digits =
      name.substr(kStepPrefix.size(), name.size() - kStepPrefix.size() - kSuffix.size());
  if (digits.empty() || digits.size() > 18 ||
      digits.find_first_not_of("0123456789") != std::string_view::npos) {
    return -1;
  }
  return std::stoll(std::string(digits));
}

std::string checkpoint_temp_path(const std::string& path) {
  std::random_device rd;
  const uint64_t r = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  char buf[64];
  std::snprintf(buf, sizeof buf, ".tmp-%ld-%016llx", static_cast<long>(::getpid()),
                static_cast<unsigned long long>(r));
  return path + buf;
}

bool is_checkpoint_temp_name(std::string_view filename) {
  return filename.find(kTempMarker) != std::string_view::npos;
}

std::string CheckpointSearch::note() const {
  std::string out;
  for (const Skipped& s : skipped) {
    if (!out.empty()) out += "; ";
    out += "skipped " + s.path + ": " + s.reason;
  }
  return out;
}

CheckpointSearch find_latest_checkpoint(const std::string& dir, bool remove_partial_writes) {
  CheckpointSearch search;
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const int64_t step = checkpoint_step(name);
    if (step >= 0) {
      found.emplace_back(step, entry.path());
    } else if (remove_partial_writes && is_checkpoint_temp_name(name)) {
      std::error_code rm;
      if (fs::remove(entry.path(), rm)) search.removed.push_back(entry.path().string());
    }
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a > b; });
  for (const auto& [step, path] : found) {
    auto ckpt = read_checkpoint(path.string());
    if (ckpt.ok()) {
      search.path = path.string();
      search.step = step;
      break;
    }
    search.skipped.push_back({path.string(), ckpt.status().message()});
  }
  return search;
}

void prune_checkpoints(const std::string& dir, const std::vector<std::string>& keep) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string p = entry.path().string();
    if (checkpoint_step(entry.path().filename().string()) >= 0 &&
        std::find(keep.begin(), keep.end(), p) == keep.end()) {
      std::error_code rm;
      fs::remove(entry.path(), rm);
    }
  }
}

}  // namespace ampd::engine
