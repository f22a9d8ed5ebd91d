#include "engine/checkpoint.h"

#include <google/protobuf/util/json_util.h>

#include <cstring>
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
  return Status::Ok();
}

Status take_tensor(const StFile& file, Backend& be, const std::string& name, const Tensor& t) {
  const StTensor* st = file.find(name);
  if (st == nullptr) return DataLoss("checkpoint has no tensor '" + name + "'");
  int64_t numel = 1;
  for (int64_t d : st->shape) numel *= d;
  if (st->dtype != DType::kF32 || numel != t.numel() || st->data.size() != t.bytes()) {
    return FailedPrecondition("checkpoint tensor '" + name + "' does not match the model (" +
                              t.describe() + "): was it written for another spec?");
  }
  return be.upload(t, st->data.data());
}

StatusOr<int64_t> parse_int(const StFile& f, const std::string& key) {
  auto it = f.metadata.find(key);
  if (it == f.metadata.end()) return DataLoss("checkpoint metadata lacks '" + key + "'");
  try {
    size_t used = 0;
    const long long v = std::stoll(it->second, &used);
    if (used != it->second.size()) throw std::invalid_argument(key);
    return static_cast<int64_t>(v);
  } catch (const std::exception&) {
    return DataLoss("checkpoint metadata '" + key + "' is not an integer: " + it->second);
  }
}

}  // namespace

StatusOr<int64_t> save_checkpoint(const std::string& path, Model& model, const Optimizer& optimizer,
                                  const CheckpointMeta& meta) {
  Backend& be = model.backend();
  StFile file;
  const auto state_names = optimizer.state_names();
  for (Param* p : model.params()) {
    AMPD_RETURN_IF_ERROR(add_tensor(file, be, p->name, p->master_t()));
  }
  for (StateTensor* s : model.states()) {
    AMPD_RETURN_IF_ERROR(add_tensor(file, be, s->name, s->t()));
  }
  for (Param* p : model.params()) {
    for (size_t k = 0; k < state_names.size(); ++k) {
      const Tensor t = k == 0 ? p->state1_t() : p->state2_t();
      AMPD_RETURN_IF_ERROR(add_tensor(file, be, "optimizer." + p->name + "." + state_names[k], t));
    }
  }
  std::string scaler_json;
  google::protobuf::util::JsonPrintOptions jopt;
  jopt.preserve_proto_field_names = true;
  jopt.always_print_primitive_fields = true;
  if (!google::protobuf::util::MessageToJsonString(meta.scaler, &scaler_json, jopt).ok()) {
    return Internal("cannot serialize the loss-scaler state");
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
  AMPD_RETURN_IF_ERROR(write_safetensors(path, file));
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
    return FailedPrecondition(path + " is not an ampd checkpoint (metadata ampd.format is not " +
                              kFormat + ")");
  }
  for (const char* key : {kStChecksumKey, kStHeaderChecksumKey}) {
    if (key == std::string_view(kStHeaderChecksumKey) && fmt->second == kFormatV1) continue;
    if (md.count(key) == 0) {
      return DataLoss("checkpoint " + path + " is corrupt: its metadata lacks " + key);
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
    return DataLoss(path + ": missing or malformed loss-scaler state");
  }
  auto spec = md.find("ampd.spec");
  if (spec == md.end()) return DataLoss(path + ": missing job spec");
  AMPD_ASSIGN_OR_RETURN(ck.meta.spec, parse_job_spec(spec->second, "json"));
  auto prec = md.find("ampd.precision");
  ck.meta.precision = prec == md.end() ? "" : prec->second;
  auto be = md.find("ampd.backend");
  ck.meta.backend = be == md.end() ? "" : be->second;
  auto st = md.find("ampd.standardization");
  ck.meta.standardization = st == md.end() ? "" : st->second;
  return ck;
}

Status restore_checkpoint(const LoadedCheckpoint& ckpt, Model& model, Optimizer& optimizer) {
  Backend& be = model.backend();
  const auto state_names = optimizer.state_names();
  for (Param* p : model.params()) {
    AMPD_RETURN_IF_ERROR(take_tensor(ckpt.file, be, p->name, p->master_t()));
    for (size_t k = 0; k < state_names.size(); ++k) {
      const Tensor t = k == 0 ? p->state1_t() : p->state2_t();
      AMPD_RETURN_IF_ERROR(
          take_tensor(ckpt.file, be, "optimizer." + p->name + "." + state_names[k], t));
    }
  }
  for (StateTensor* s : model.states()) {
    AMPD_RETURN_IF_ERROR(take_tensor(ckpt.file, be, s->name, s->t()));
  }
  optimizer.set_applied_steps(ckpt.meta.applied_steps);
  // The working copies are a pure function of the masters (round to nearest even).
  return model.refresh_low_precision();
}

}  // namespace ampd::engine
