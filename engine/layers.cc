#include "engine/layers.h"

#include <limits>

namespace ampd::engine {

int64_t MemoryTally::sat_add(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_add_overflow(a, b, &r) ? std::numeric_limits<int64_t>::max() : r;
}

int64_t MemoryTally::sat_mul(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_mul_overflow(a, b, &r) ? std::numeric_limits<int64_t>::max() : r;
}

namespace {

// Bytes of n elements of `dtype`, saturating.
int64_t bytes_of(int64_t n, DType dtype) {
  return MemoryTally::sat_mul(n, static_cast<int64_t>(dtype_size(dtype)));
}

}  // namespace

StatusOr<Param> BuildContext::make_param(const std::string& kind, const std::string& suffix,
                                         int64_t rows, int64_t cols, bool low_copy, bool decay,
                                         const std::function<float(int64_t)>& init) const {
  Param p;
  p.name = name + "." + suffix;
  p.display = named ? p.name : "layer " + name + " (" + kind + ")." + suffix;
  p.rows = rows;
  p.cols = cols;
  p.decay = decay;
  const bool low = low_copy && act_dtype != DType::kF32;
  if (low) p.low_dtype = act_dtype;
  const int64_t n = MemoryTally::sat_mul(rows, cols);
  if (tally != nullptr) {
    tally->add_param(bytes_of(n, DType::kF32));  // master
    tally->add_param(bytes_of(n, DType::kF32));  // gradient
    if (low) tally->add_param(bytes_of(n, act_dtype));
    tally->parameter_count = MemoryTally::sat_add(tally->parameter_count, n);
  }
  if (dry_run()) return p;
  Backend& be = *backend;
  const auto count = static_cast<size_t>(n);
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) values[i] = init(static_cast<int64_t>(i));
  AMPD_ASSIGN_OR_RETURN(p.master, be.allocate(count * sizeof(float)));
  AMPD_ASSIGN_OR_RETURN(p.grad, be.allocate(count * sizeof(float)));
  AMPD_RETURN_IF_ERROR(be.upload(p.master_t(), values.data()));
  AMPD_RETURN_IF_ERROR(be.fill(p.grad_t(), 0.0f));
  if (low) {
    AMPD_ASSIGN_OR_RETURN(p.low, be.allocate(count * dtype_size(act_dtype)));
    AMPD_RETURN_IF_ERROR(be.cast(p.master_t(), p.low_t()));
  }
  return p;
}

Status BuildContext::make_norm_affine(const std::string& kind, int64_t features,
                                      std::vector<Param>& params) const {
  AMPD_ASSIGN_OR_RETURN(
      Param w, make_param(kind, "weight", 1, features, false, false, [](int64_t) { return 1.0f; }));
  AMPD_ASSIGN_OR_RETURN(
      Param b, make_param(kind, "bias", 1, features, false, false, [](int64_t) { return 0.0f; }));
  params.push_back(std::move(w));
  params.push_back(std::move(b));
  return Status::ok_status();
}

StatusOr<StateTensor> BuildContext::make_state(const std::string& suffix, int64_t cols,
                                               float value) const {
  StateTensor s;
  s.name = name + "." + suffix;
  s.rows = 1;
  s.cols = cols;
  if (tally != nullptr) tally->add_param(bytes_of(cols, DType::kF32));
  if (dry_run()) return s;
  AMPD_ASSIGN_OR_RETURN(s.data, backend->allocate(static_cast<size_t>(cols) * sizeof(float)));
  AMPD_RETURN_IF_ERROR(backend->fill(s.t(), value));
  return s;
}

StatusOr<Buffer> BuildContext::make_aux(int64_t bytes) const {
  if (tally != nullptr) tally->add_activation(bytes);
  if (dry_run()) return Buffer{};
  return backend->allocate(static_cast<size_t>(bytes));
}

StatusOr<Buffer> BuildContext::make_activation(DType dtype, int64_t rows, int64_t cols) const {
  return make_aux(bytes_of(MemoryTally::sat_mul(rows, cols), dtype));
}

void Layer::collect_params(std::vector<Param*>& out) {
  for (Param& p : params_) out.push_back(&p);
}

void Layer::collect_states(std::vector<StateTensor*>& out) {
  for (StateTensor& s : states_) out.push_back(&s);
}

}  // namespace ampd::engine
