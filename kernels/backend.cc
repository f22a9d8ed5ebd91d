// The public, validating half of the Backend interface. Every check here turns what
// would be an out-of-bounds access in a kernel into an InvalidArgument naming the
// argument, so a malformed call fails one job instead of the process.
#include "kernels/backend.h"

#include <cmath>
#include <string>

#include "kernels/batched_geometry.h"

namespace ampd {

namespace {

std::string dims(const Tensor& t) {
  return t.describe();
}

Status need(bool ok, const char* op, const std::string& what) {
  if (ok) return Status::ok_status();
  return invalid_argument(std::string(op) + ": " + what);
}

Status need_data(const char* op, const char* name, const Tensor& t) {
  if (t.data == nullptr && t.numel() > 0) {
    return invalid_argument(std::string(op) + ": " + name + " has no data");
  }
  for (int i = 0; i < t.ndim; ++i) {
    if (t.size(i) < 0) {
      return invalid_argument(std::string(op) + ": " + name + " has a negative dimension " +
                              dims(t));
    }
  }
  // Every op but batched_matmul sees its tensors as contiguous row-major matrices.
  if (!t.is_contiguous()) {
    return invalid_argument(std::string(op) + ": " + name + " must be contiguous, got " + dims(t));
  }
  return Status::ok_status();
}

Status need_float(const char* op, const char* name, const Tensor& t) {
  AMPD_RETURN_IF_ERROR(need_data(op, name, t));
  return need(is_floating(t.dtype), op,
              std::string(name) + " must be f32, f16 or bf16, got " + dims(t));
}

Status need_f32(const char* op, const char* name, const Tensor& t) {
  AMPD_RETURN_IF_ERROR(need_data(op, name, t));
  return need(t.dtype == DType::kF32, op, std::string(name) + " must be f32, got " + dims(t));
}

Status need_shape(const char* op, const char* name, const Tensor& t, int64_t rows, int64_t cols) {
  return need(t.rows() == rows && t.cols() == cols, op,
              std::string(name) + " must be " + std::to_string(rows) + "x" + std::to_string(cols) +
                  ", got " + dims(t));
}

Status need_vector(const char* op, const char* name, const Tensor& t, int64_t n) {
  return need(t.numel() == n && (t.rows() == 1 || t.cols() == 1), op,
              std::string(name) + " must be a vector of " + std::to_string(n) + ", got " + dims(t));
}

Status need_same_shape(const char* op, const char* a_name, const Tensor& a, const char* b_name,
                       const Tensor& b) {
  return need(
      a.rows() == b.rows() && a.cols() == b.cols(), op,
      std::string(b_name) + " " + dims(b) + " must have the shape of " + a_name + " " + dims(a));
}

Status need_same_dtype(const char* op, const char* a_name, const Tensor& a, const char* b_name,
                       const Tensor& b) {
  return need(
      a.dtype == b.dtype, op,
      std::string(b_name) + " " + dims(b) + " must have the dtype of " + a_name + " " + dims(a));
}

Status need_dtype_supported(const Backend& be, const char* op, const Tensor& t) {
  return need(be.supports(t.dtype), op,
              "backend '" + be.name() + "' does not support " + std::string(dtype_name(t.dtype)));
}

Status need_param_f32(const char* op, const char* name, const Tensor& t, int64_t n) {
  AMPD_RETURN_IF_ERROR(need_f32(op, name, t));
  return need_vector(op, name, t, n);
}

// The views of batched_matmul: 3-D or 4-D, no negative sizes, positive strides in the
// dimensions of size > 1 (an empty view is not read and may have any strides).
Status need_batched_view(const char* op, const char* name, const Tensor& t) {
  AMPD_RETURN_IF_ERROR(need(t.ndim == 3 || t.ndim == 4, op,
                            std::string(name) + " must be 3-D or 4-D (batch dimensions, then the " +
                                "matrix), got " + std::to_string(t.ndim) + "-D " + dims(t)));
  for (int i = 0; i < t.ndim; ++i) {
    AMPD_RETURN_IF_ERROR(
        need(t.size(i) >= 0, op, std::string(name) + " has a negative dimension " + dims(t)));
  }
  if (t.numel() == 0) return Status::ok_status();
  AMPD_RETURN_IF_ERROR(need(t.data != nullptr, op, std::string(name) + " has no data"));
  for (int i = 0; i < t.ndim; ++i) {
    AMPD_RETURN_IF_ERROR(need(t.size(i) == 1 || t.stride(i) > 0, op,
                              std::string(name) + " must have positive strides, got " + dims(t)));
  }
  return Status::ok_status();
}

std::string batch_dims(const Tensor& t) {
  std::string s;
  for (int i = 0; i + 2 < t.ndim; ++i) s += (i ? "x" : "") + std::to_string(t.size(i));
  return s;
}

}  // namespace

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::kReLU: return "relu";
    case Activation::kGELU: return "gelu";
    case Activation::kTanh: return "tanh";
  }
  return "?";
}

// ---- Buffer ------------------------------------------------------------------------

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    reset();
    owner_ = other.owner_;
    data_ = other.data_;
    bytes_ = other.bytes_;
    other.owner_ = nullptr;
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

void Buffer::reset() noexcept {
  if (owner_ != nullptr && data_ != nullptr) {
    owner_->free_impl(data_, bytes_);
    owner_->in_use_bytes_ -= bytes_;
  }
  owner_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

// ---- memory -------------------------------------------------------------------------

StatusOr<Buffer> Backend::allocate(size_t bytes) {
  if (bytes == 0) return Buffer(this, nullptr, 0);
  AMPD_ASSIGN_OR_RETURN(void* ptr, allocate_impl(bytes));
  in_use_bytes_ += bytes;
  if (in_use_bytes_ > peak_bytes_) peak_bytes_ = in_use_bytes_;
  return Buffer(this, ptr, bytes);
}

MemoryStats Backend::memory_stats() const {
  return MemoryStats{in_use_bytes_, peak_bytes_, device_total_bytes()};
}

void Backend::reset_peak_memory() {
  peak_bytes_ = in_use_bytes_;
}

Status Backend::upload(const Tensor& dst, const void* host_src) {
  AMPD_RETURN_IF_ERROR(need_data("upload", "dst", dst));
  if (dst.numel() > 0 && host_src == nullptr) return invalid_argument("upload: null host source");
  if (dst.numel() == 0) return Status::ok_status();
  return upload_impl(dst, host_src);
}

Status Backend::download(void* host_dst, const Tensor& src) {
  AMPD_RETURN_IF_ERROR(need_data("download", "src", src));
  if (src.numel() > 0 && host_dst == nullptr)
    return invalid_argument("download: null host destination");
  if (src.numel() == 0) return synchronize_impl();
  return download_impl(host_dst, src);
}

Status Backend::copy(const Tensor& dst, const Tensor& src) {
  AMPD_RETURN_IF_ERROR(need_data("copy", "src", src));
  AMPD_RETURN_IF_ERROR(need_data("copy", "dst", dst));
  AMPD_RETURN_IF_ERROR(need_same_dtype("copy", "src", src, "dst", dst));
  AMPD_RETURN_IF_ERROR(need(src.numel() == dst.numel(), "copy",
                            "dst " + dims(dst) + " and src " + dims(src) + " differ in size"));
  if (src.numel() == 0) return Status::ok_status();
  return copy_impl(dst, src);
}

Status Backend::fill(const Tensor& dst, float value) {
  AMPD_RETURN_IF_ERROR(need_data("fill", "dst", dst));
  if (dst.numel() == 0) return Status::ok_status();
  return fill_impl(dst, value);
}

Status Backend::synchronize() {
  return synchronize_impl();
}

// ---- dense algebra ----------------------------------------------------------------

Status Backend::matmul(const MatmulArgs& m) {
  constexpr const char* op = "matmul";
  AMPD_RETURN_IF_ERROR(need_float(op, "a", m.a));
  AMPD_RETURN_IF_ERROR(need_float(op, "b", m.b));
  AMPD_RETURN_IF_ERROR(need_float(op, "c", m.c));
  AMPD_RETURN_IF_ERROR(need_same_dtype(op, "a", m.a, "b", m.b));
  AMPD_RETURN_IF_ERROR(need_dtype_supported(*this, op, m.a));
  AMPD_RETURN_IF_ERROR(need(m.c.dtype == DType::kF32 || m.c.dtype == m.a.dtype, op,
                            "c must be f32 or a's dtype, got c " + dims(m.c) + " a " + dims(m.a)));
  const int64_t M = m.trans_a ? m.a.cols() : m.a.rows();
  const int64_t K = m.trans_a ? m.a.rows() : m.a.cols();
  const int64_t Kb = m.trans_b ? m.b.cols() : m.b.rows();
  const int64_t N = m.trans_b ? m.b.rows() : m.b.cols();
  AMPD_RETURN_IF_ERROR(need(K == Kb, op,
                            "inner dimensions differ: op(a) is " + std::to_string(M) + "x" +
                                std::to_string(K) + ", op(b) is " + std::to_string(Kb) + "x" +
                                std::to_string(N)));
  AMPD_RETURN_IF_ERROR(need_shape(op, "c", m.c, M, N));
  if (!m.bias.empty()) {
    AMPD_RETURN_IF_ERROR(need_float(op, "bias", m.bias));
    AMPD_RETURN_IF_ERROR(need(m.bias.dtype == DType::kF32 || m.bias.dtype == m.c.dtype, op,
                              "bias must be f32 or c's dtype, got " + dims(m.bias)));
    AMPD_RETURN_IF_ERROR(need_vector(op, "bias", m.bias, N));
  }
  AMPD_RETURN_IF_ERROR(
      need(std::isfinite(m.alpha) && std::isfinite(m.beta), op, "alpha and beta must be finite"));
  if (M == 0 || N == 0) return Status::ok_status();
  return matmul_impl(m);
}

Status Backend::batched_matmul(const BatchedMatmulArgs& m) {
  constexpr const char* op = "batched_matmul";
  AMPD_RETURN_IF_ERROR(need_batched_view(op, "a", m.a));
  AMPD_RETURN_IF_ERROR(need_batched_view(op, "b", m.b));
  AMPD_RETURN_IF_ERROR(need_batched_view(op, "c", m.c));
  for (auto [name, t] : {std::pair{"a", &m.a}, {"b", &m.b}, {"c", &m.c}}) {
    AMPD_RETURN_IF_ERROR(need(is_floating(t->dtype), op,
                              std::string(name) + " must be f32, f16 or bf16, got " + dims(*t)));
  }
  AMPD_RETURN_IF_ERROR(need_same_dtype(op, "a", m.a, "b", m.b));
  AMPD_RETURN_IF_ERROR(need_dtype_supported(*this, op, m.a));
  AMPD_RETURN_IF_ERROR(need(m.c.dtype == DType::kF32 || m.c.dtype == m.a.dtype, op,
                            "c must be f32 or a's dtype, got c " + dims(m.c) + " a " + dims(m.a)));
  for (auto [name, t] : {std::pair{"b", &m.b}, {"c", &m.c}}) {
    AMPD_RETURN_IF_ERROR(need(t->ndim == m.a.ndim, op,
                              std::string(name) + " " + dims(*t) +
                                  " must have as many dimensions " + "as a " + dims(m.a)));
    AMPD_RETURN_IF_ERROR(need(batch_dims(*t) == batch_dims(m.a), op,
                              std::string(name) + "'s batch dimensions " + batch_dims(*t) +
                                  " differ from a's " + batch_dims(m.a) + " (" + dims(*t) + ", a " +
                                  dims(m.a) + ")"));
  }
  const int64_t M = m.trans_a ? m.a.size(-1) : m.a.size(-2);
  const int64_t K = m.trans_a ? m.a.size(-2) : m.a.size(-1);
  const int64_t Kb = m.trans_b ? m.b.size(-1) : m.b.size(-2);
  const int64_t N = m.trans_b ? m.b.size(-2) : m.b.size(-1);
  AMPD_RETURN_IF_ERROR(need(K == Kb, op,
                            "inner dimensions differ: op(a) is " + std::to_string(M) + "x" +
                                std::to_string(K) + ", op(b) is " + std::to_string(Kb) + "x" +
                                std::to_string(N)));
  AMPD_RETURN_IF_ERROR(need(m.c.size(-2) == M && m.c.size(-1) == N, op,
                            "c must be " + batch_dims(m.a) + "x" + std::to_string(M) + "x" +
                                std::to_string(N) + ", got " + dims(m.c)));
  // Within each matrix: a unit stride (any dimension for a and b, the last one for c).
  for (auto [name, t] : {std::pair{"a", &m.a}, {"b", &m.b}, {"c", &m.c}}) {
    if (t->numel() == 0) continue;
    const auto st = unit_matrix_strides(t->size(-2), t->size(-1), t->stride(-2), t->stride(-1));
    const bool is_c = t == &m.c;
    AMPD_RETURN_IF_ERROR(
        need(st.has_value() && (!is_c || (*st)[1] == 1), op,
             std::string(name) +
                 (is_c ? " needs a unit stride in its last dimension and stride(-2) >= its columns"
                       : " needs a unit stride in one of its last two dimensions and the other "
                         "stride >= that dimension's size") +
                 ", got " + dims(*t) + " strides " + std::to_string(t->stride(-2)) + "," +
                 std::to_string(t->stride(-1))));
  }
  AMPD_RETURN_IF_ERROR(
      need(std::isfinite(m.alpha) && std::isfinite(m.beta), op, "alpha and beta must be finite"));
  if (m.c.numel() == 0) return Status::ok_status();
  return batched_matmul_impl(m);
}

Status Backend::cast(const Tensor& src, const Tensor& dst) {
  AMPD_RETURN_IF_ERROR(need_float("cast", "src", src));
  AMPD_RETURN_IF_ERROR(need_float("cast", "dst", dst));
  AMPD_RETURN_IF_ERROR(need(src.numel() == dst.numel(), "cast",
                            "dst " + dims(dst) + " and src " + dims(src) + " differ in size"));
  if (src.numel() == 0) return Status::ok_status();
  return cast_impl(src, dst);
}

Status Backend::add_bias(const Tensor& x, const Tensor& bias) {
  AMPD_RETURN_IF_ERROR(need_float("add_bias", "x", x));
  AMPD_RETURN_IF_ERROR(need_float("add_bias", "bias", bias));
  AMPD_RETURN_IF_ERROR(need(bias.dtype == DType::kF32 || bias.dtype == x.dtype, "add_bias",
                            "bias must be f32 or x's dtype, got " + dims(bias)));
  AMPD_RETURN_IF_ERROR(need_vector("add_bias", "bias", bias, x.cols()));
  if (x.numel() == 0) return Status::ok_status();
  return add_bias_impl(x, bias);
}

Status Backend::bias_grad(const Tensor& dy, const Tensor& dbias, float beta) {
  AMPD_RETURN_IF_ERROR(need_float("bias_grad", "dy", dy));
  AMPD_RETURN_IF_ERROR(need_param_f32("bias_grad", "dbias", dbias, dy.cols()));
  if (dy.cols() == 0) return Status::ok_status();
  return bias_grad_impl(dy, dbias, beta);
}

Status Backend::scale(const Tensor& x, float alpha) {
  AMPD_RETURN_IF_ERROR(need_float("scale", "x", x));
  if (x.numel() == 0) return Status::ok_status();
  return scale_impl(x, alpha);
}

Status Backend::accumulate(const Tensor& x, const Tensor& y) {
  AMPD_RETURN_IF_ERROR(need_float("accumulate", "x", x));
  AMPD_RETURN_IF_ERROR(need_float("accumulate", "y", y));
  AMPD_RETURN_IF_ERROR(need_same_shape("accumulate", "x", x, "y", y));
  if (x.numel() == 0) return Status::ok_status();
  return accumulate_impl(x, y);
}

// ---- activations ------------------------------------------------------------------

Status Backend::activation_forward(Activation act, const Tensor& x, const Tensor& y) {
  constexpr const char* op = "activation_forward";
  AMPD_RETURN_IF_ERROR(need_float(op, "x", x));
  AMPD_RETURN_IF_ERROR(need_float(op, "y", y));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "y", y));
  AMPD_RETURN_IF_ERROR(need_same_dtype(op, "x", x, "y", y));
  if (x.numel() == 0) return Status::ok_status();
  return activation_forward_impl(act, x, y);
}

Status Backend::activation_backward(Activation act, const Tensor& x, const Tensor& dy,
                                    const Tensor& dx) {
  constexpr const char* op = "activation_backward";
  AMPD_RETURN_IF_ERROR(need_float(op, "x", x));
  AMPD_RETURN_IF_ERROR(need_float(op, "dy", dy));
  AMPD_RETURN_IF_ERROR(need_float(op, "dx", dx));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "dy", dy));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "dx", dx));
  AMPD_RETURN_IF_ERROR(need_same_dtype(op, "dy", dy, "dx", dx));
  if (x.numel() == 0) return Status::ok_status();
  return activation_backward_impl(act, x, dy, dx);
}

// ---- normalization ------------------------------------------------------------------

Status Backend::layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                  const Tensor& y, const Tensor& mean, const Tensor& rstd,
                                  float eps) {
  constexpr const char* op = "layernorm_forward";
  AMPD_RETURN_IF_ERROR(need_float(op, "x", x));
  AMPD_RETURN_IF_ERROR(need_float(op, "y", y));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "y", y));
  AMPD_RETURN_IF_ERROR(need_same_dtype(op, "x", x, "y", y));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "gamma", gamma, x.cols()));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "beta", beta, x.cols()));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "mean", mean, x.rows()));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "rstd", rstd, x.rows()));
  AMPD_RETURN_IF_ERROR(need(eps > 0 && std::isfinite(eps), op, "eps must be > 0"));
  if (x.numel() == 0) return Status::ok_status();
  return layernorm_forward_impl(x, gamma, beta, y, mean, rstd, eps);
}

Status Backend::layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                   const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                   const Tensor& dgamma, const Tensor& dbeta) {
  constexpr const char* op = "layernorm_backward";
  AMPD_RETURN_IF_ERROR(need_float(op, "x", x));
  AMPD_RETURN_IF_ERROR(need_float(op, "dy", dy));
  AMPD_RETURN_IF_ERROR(need_float(op, "dx", dx));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "dy", dy));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "dx", dx));
  AMPD_RETURN_IF_ERROR(need_same_dtype(op, "dy", dy, "dx", dx));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "gamma", gamma, x.cols()));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "mean", mean, x.rows()));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "rstd", rstd, x.rows()));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "dgamma", dgamma, x.cols()));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "dbeta", dbeta, x.cols()));
  if (x.numel() == 0) return Status::ok_status();
  return layernorm_backward_impl(dy, x, gamma, mean, rstd, dx, dgamma, dbeta);
}

Status Backend::batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                        const Tensor& y, const Tensor& mean, const Tensor& rstd,
                                        const Tensor& running_mean, const Tensor& running_var,
                                        float momentum, float eps) {
  constexpr const char* op = "batchnorm_forward_train";
  AMPD_RETURN_IF_ERROR(need_float(op, "x", x));
  AMPD_RETURN_IF_ERROR(need_float(op, "y", y));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "y", y));
  AMPD_RETURN_IF_ERROR(need_same_dtype(op, "x", x, "y", y));
  for (auto [name, t] : {std::pair{"gamma", &gamma},
                         {"beta", &beta},
                         {"mean", &mean},
                         {"rstd", &rstd},
                         {"running_mean", &running_mean},
                         {"running_var", &running_var}}) {
    AMPD_RETURN_IF_ERROR(need_param_f32(op, name, *t, x.cols()));
  }
  AMPD_RETURN_IF_ERROR(need(x.rows() >= 2, op,
                            "needs at least 2 rows to estimate batch statistics, got " + dims(x)));
  AMPD_RETURN_IF_ERROR(need(eps > 0 && momentum >= 0 && momentum <= 1, op,
                            "eps must be > 0 and momentum in [0, 1]"));
  return batchnorm_forward_train_impl(x, gamma, beta, y, mean, rstd, running_mean, running_var,
                                      momentum, eps);
}

Status Backend::batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                       const Tensor& running_mean, const Tensor& running_var,
                                       const Tensor& y, float eps) {
  constexpr const char* op = "batchnorm_forward_eval";
  AMPD_RETURN_IF_ERROR(need_float(op, "x", x));
  AMPD_RETURN_IF_ERROR(need_float(op, "y", y));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "y", y));
  AMPD_RETURN_IF_ERROR(need_same_dtype(op, "x", x, "y", y));
  for (auto [name, t] : {std::pair{"gamma", &gamma},
                         {"beta", &beta},
                         {"running_mean", &running_mean},
                         {"running_var", &running_var}}) {
    AMPD_RETURN_IF_ERROR(need_param_f32(op, name, *t, x.cols()));
  }
  AMPD_RETURN_IF_ERROR(need(eps > 0, op, "eps must be > 0"));
  if (x.numel() == 0) return Status::ok_status();
  return batchnorm_forward_eval_impl(x, gamma, beta, running_mean, running_var, y, eps);
}

Status Backend::batchnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                   const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                   const Tensor& dgamma, const Tensor& dbeta) {
  constexpr const char* op = "batchnorm_backward";
  AMPD_RETURN_IF_ERROR(need_float(op, "x", x));
  AMPD_RETURN_IF_ERROR(need_float(op, "dy", dy));
  AMPD_RETURN_IF_ERROR(need_float(op, "dx", dx));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "dy", dy));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "dx", dx));
  AMPD_RETURN_IF_ERROR(need_same_dtype(op, "dy", dy, "dx", dx));
  for (auto [name, t] : {std::pair{"gamma", &gamma},
                         {"mean", &mean},
                         {"rstd", &rstd},
                         {"dgamma", &dgamma},
                         {"dbeta", &dbeta}}) {
    AMPD_RETURN_IF_ERROR(need_param_f32(op, name, *t, x.cols()));
  }
  if (x.numel() == 0) return Status::ok_status();
  return batchnorm_backward_impl(dy, x, gamma, mean, rstd, dx, dgamma, dbeta);
}

// ---- dropout --------------------------------------------------------------------------

Status Backend::dropout_forward(const Tensor& x, const Tensor& y, const Tensor& mask, float p,
                                uint64_t seed, uint64_t offset) {
  constexpr const char* op = "dropout_forward";
  AMPD_RETURN_IF_ERROR(need_float(op, "x", x));
  AMPD_RETURN_IF_ERROR(need_float(op, "y", y));
  AMPD_RETURN_IF_ERROR(need_data(op, "mask", mask));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "y", y));
  AMPD_RETURN_IF_ERROR(need_same_dtype(op, "x", x, "y", y));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "x", x, "mask", mask));
  AMPD_RETURN_IF_ERROR(need(mask.dtype == DType::kU8, op, "mask must be u8, got " + dims(mask)));
  AMPD_RETURN_IF_ERROR(need(p >= 0.0f && p < 1.0f, op, "p must be in [0, 1)"));
  if (x.numel() == 0) return Status::ok_status();
  return dropout_forward_impl(x, y, mask, p, seed, offset);
}

Status Backend::dropout_backward(const Tensor& dy, const Tensor& mask, const Tensor& dx, float p) {
  constexpr const char* op = "dropout_backward";
  AMPD_RETURN_IF_ERROR(need_float(op, "dy", dy));
  AMPD_RETURN_IF_ERROR(need_float(op, "dx", dx));
  AMPD_RETURN_IF_ERROR(need_data(op, "mask", mask));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "dy", dy, "dx", dx));
  AMPD_RETURN_IF_ERROR(need_same_dtype(op, "dy", dy, "dx", dx));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "dy", dy, "mask", mask));
  AMPD_RETURN_IF_ERROR(need(mask.dtype == DType::kU8, op, "mask must be u8, got " + dims(mask)));
  AMPD_RETURN_IF_ERROR(need(p >= 0.0f && p < 1.0f, op, "p must be in [0, 1)"));
  if (dy.numel() == 0) return Status::ok_status();
  return dropout_backward_impl(dy, mask, dx, p);
}

// ---- losses ----------------------------------------------------------------------------

Status Backend::softmax_xent_forward(const Tensor& logits, const Tensor& labels, const Tensor& loss,
                                     const Tensor& lse) {
  constexpr const char* op = "softmax_xent_forward";
  // Label values are the caller's to keep in [0, C) (backend.h); their dtype and shape
  // are checked here, their values by no one (a bad one gives a NaN row).
  AMPD_RETURN_IF_ERROR(need_float(op, "logits", logits));
  AMPD_RETURN_IF_ERROR(need_data(op, "labels", labels));
  AMPD_RETURN_IF_ERROR(need(labels.dtype == DType::kI32, op, "labels must be i32"));
  AMPD_RETURN_IF_ERROR(need_vector(op, "labels", labels, logits.rows()));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "loss", loss, logits.rows()));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "lse", lse, logits.rows()));
  AMPD_RETURN_IF_ERROR(need(logits.cols() > 0 || logits.rows() == 0, op, "logits has no classes"));
  if (logits.rows() == 0) return Status::ok_status();
  return softmax_xent_forward_impl(logits, labels, loss, lse);
}

Status Backend::softmax_xent_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                                      const Tensor& dlogits, float grad_scale) {
  constexpr const char* op = "softmax_xent_backward";
  AMPD_RETURN_IF_ERROR(need_float(op, "logits", logits));
  AMPD_RETURN_IF_ERROR(need_float(op, "dlogits", dlogits));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "logits", logits, "dlogits", dlogits));
  AMPD_RETURN_IF_ERROR(need_data(op, "labels", labels));
  AMPD_RETURN_IF_ERROR(need(labels.dtype == DType::kI32, op, "labels must be i32"));
  AMPD_RETURN_IF_ERROR(need_vector(op, "labels", labels, logits.rows()));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "lse", lse, logits.rows()));
  if (logits.rows() == 0) return Status::ok_status();
  return softmax_xent_backward_impl(logits, labels, lse, dlogits, grad_scale);
}

Status Backend::mse_forward(const Tensor& pred, const Tensor& target, const Tensor& loss) {
  constexpr const char* op = "mse_forward";
  AMPD_RETURN_IF_ERROR(need_float(op, "pred", pred));
  AMPD_RETURN_IF_ERROR(need_f32(op, "target", target));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "pred", pred, "target", target));
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "loss", loss, pred.rows()));
  if (pred.rows() == 0) return Status::ok_status();
  AMPD_RETURN_IF_ERROR(need(pred.cols() > 0, op, "pred has no columns"));
  return mse_forward_impl(pred, target, loss);
}

Status Backend::mse_backward(const Tensor& pred, const Tensor& target, const Tensor& dpred,
                             float grad_scale) {
  constexpr const char* op = "mse_backward";
  AMPD_RETURN_IF_ERROR(need_float(op, "pred", pred));
  AMPD_RETURN_IF_ERROR(need_f32(op, "target", target));
  AMPD_RETURN_IF_ERROR(need_float(op, "dpred", dpred));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "pred", pred, "target", target));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "pred", pred, "dpred", dpred));
  if (pred.numel() == 0) return Status::ok_status();
  return mse_backward_impl(pred, target, dpred, grad_scale);
}

Status Backend::argmax_rows(const Tensor& x, const Tensor& out) {
  AMPD_RETURN_IF_ERROR(need_float("argmax_rows", "x", x));
  AMPD_RETURN_IF_ERROR(need_data("argmax_rows", "out", out));
  AMPD_RETURN_IF_ERROR(need(out.dtype == DType::kI32, "argmax_rows", "out must be i32"));
  AMPD_RETURN_IF_ERROR(need_vector("argmax_rows", "out", out, x.rows()));
  AMPD_RETURN_IF_ERROR(need(x.cols() > 0 || x.rows() == 0, "argmax_rows", "x has no columns"));
  if (x.rows() == 0) return Status::ok_status();
  return argmax_rows_impl(x, out);
}

// ---- mixed-precision bookkeeping ----------------------------------------------------------

Status Backend::embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out) {
  constexpr const char* op = "embedding_forward";
  AMPD_RETURN_IF_ERROR(need_data(op, "ids", ids));
  AMPD_RETURN_IF_ERROR(need(ids.dtype == DType::kI32, op, "ids must be i32, got " + dims(ids)));
  AMPD_RETURN_IF_ERROR(need_float(op, "table", table));
  AMPD_RETURN_IF_ERROR(need_float(op, "out", out));
  AMPD_RETURN_IF_ERROR(need_dtype_supported(*this, op, table));
  AMPD_RETURN_IF_ERROR(need_dtype_supported(*this, op, out));
  AMPD_RETURN_IF_ERROR(need_vector(op, "ids", ids, out.rows()));
  AMPD_RETURN_IF_ERROR(
      need(table.cols() == out.cols(), op,
           "out " + dims(out) + " must have table's " + std::to_string(table.cols()) + " columns"));
  AMPD_RETURN_IF_ERROR(need(table.rows() > 0 || out.rows() == 0, op, "table has no rows"));
  if (out.numel() == 0) return Status::ok_status();
  return embedding_forward_impl(ids, table, out);
}

Status Backend::embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dtable,
                                   float beta) {
  constexpr const char* op = "embedding_backward";
  AMPD_RETURN_IF_ERROR(need_data(op, "ids", ids));
  AMPD_RETURN_IF_ERROR(need(ids.dtype == DType::kI32, op, "ids must be i32, got " + dims(ids)));
  AMPD_RETURN_IF_ERROR(need_float(op, "dy", dy));
  AMPD_RETURN_IF_ERROR(need_dtype_supported(*this, op, dy));
  AMPD_RETURN_IF_ERROR(need_f32(op, "dtable", dtable));
  AMPD_RETURN_IF_ERROR(need_vector(op, "ids", ids, dy.rows()));
  AMPD_RETURN_IF_ERROR(
      need(dtable.cols() == dy.cols(), op,
           "dtable " + dims(dtable) + " must have dy's " + std::to_string(dy.cols()) + " columns"));
  if (dtable.numel() == 0) return Status::ok_status();
  return embedding_backward_impl(ids, dy, dtable, beta);
}

namespace {

Status need_causal_square(const char* op, const char* name, const Tensor& t) {
  return need(t.cols() > 0 && t.rows() % t.cols() == 0, op,
              std::string(name) + " must hold square (T x T) matrices, got " + dims(t));
}

}  // namespace

Status Backend::causal_softmax_forward(const Tensor& scores, const Tensor& probs) {
  constexpr const char* op = "causal_softmax_forward";
  AMPD_RETURN_IF_ERROR(need_float(op, "scores", scores));
  AMPD_RETURN_IF_ERROR(need_float(op, "probs", probs));
  AMPD_RETURN_IF_ERROR(need_dtype_supported(*this, op, scores));
  AMPD_RETURN_IF_ERROR(need_dtype_supported(*this, op, probs));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "scores", scores, "probs", probs));
  if (scores.numel() == 0) return Status::ok_status();
  AMPD_RETURN_IF_ERROR(need_causal_square(op, "scores", scores));
  AMPD_RETURN_IF_ERROR(need(probs.data != scores.data || probs.dtype == scores.dtype, op,
                            "probs may alias scores only with the same dtype"));
  return causal_softmax_forward_impl(scores, probs);
}

Status Backend::causal_softmax_backward(const Tensor& probs, const Tensor& dprobs,
                                        const Tensor& dscores) {
  constexpr const char* op = "causal_softmax_backward";
  AMPD_RETURN_IF_ERROR(need_float(op, "probs", probs));
  AMPD_RETURN_IF_ERROR(need_float(op, "dprobs", dprobs));
  AMPD_RETURN_IF_ERROR(need_float(op, "dscores", dscores));
  AMPD_RETURN_IF_ERROR(need_dtype_supported(*this, op, probs));
  AMPD_RETURN_IF_ERROR(need_dtype_supported(*this, op, dprobs));
  AMPD_RETURN_IF_ERROR(need_dtype_supported(*this, op, dscores));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "probs", probs, "dprobs", dprobs));
  AMPD_RETURN_IF_ERROR(need_same_shape(op, "probs", probs, "dscores", dscores));
  if (probs.numel() == 0) return Status::ok_status();
  AMPD_RETURN_IF_ERROR(need_causal_square(op, "probs", probs));
  AMPD_RETURN_IF_ERROR(need(dscores.data != dprobs.data || dscores.dtype == dprobs.dtype, op,
                            "dscores may alias dprobs only with the same dtype"));
  return causal_softmax_backward_impl(probs, dprobs, dscores);
}

Status Backend::unscale_and_check(std::span<const Tensor> grads, float inv_scale,
                                  const Tensor& found_nonfinite) {
  constexpr const char* op = "unscale_and_check";
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::string name = "grads[" + std::to_string(i) + "]";
    AMPD_RETURN_IF_ERROR(need_f32(op, name.c_str(), grads[i]));
  }
  AMPD_RETURN_IF_ERROR(need_data(op, "found_nonfinite", found_nonfinite));
  AMPD_RETURN_IF_ERROR(
      need(found_nonfinite.dtype == DType::kI32, op, "found_nonfinite must be i32"));
  AMPD_RETURN_IF_ERROR(
      need_vector(op, "found_nonfinite", found_nonfinite, static_cast<int64_t>(grads.size())));
  AMPD_RETURN_IF_ERROR(need(std::isfinite(inv_scale), op, "inv_scale must be finite"));
  if (grads.empty()) return Status::ok_status();
  return unscale_and_check_impl(grads, inv_scale, found_nonfinite);
}

Status Backend::global_norm(std::span<const Tensor> grads, const Tensor& out) {
  constexpr const char* op = "global_norm";
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::string name = "grads[" + std::to_string(i) + "]";
    AMPD_RETURN_IF_ERROR(need_f32(op, name.c_str(), grads[i]));
  }
  AMPD_RETURN_IF_ERROR(need_param_f32(op, "out", out, 1));
  return global_norm_impl(grads, out);
}

// ---- optimizers ----------------------------------------------------------------------------

namespace {

Status check_slots(const char* op, std::span<const ParamSlot> params, bool needs_state1,
                   bool needs_state2) {
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSlot& p = params[i];
    const std::string at = "params[" + std::to_string(i) + "].";
    AMPD_RETURN_IF_ERROR(need_f32(op, (at + "master").c_str(), p.master));
    AMPD_RETURN_IF_ERROR(need_f32(op, (at + "grad").c_str(), p.grad));
    AMPD_RETURN_IF_ERROR(need_same_shape(op, "master", p.master, (at + "grad").c_str(), p.grad));
    if (needs_state1) {
      AMPD_RETURN_IF_ERROR(need_f32(op, (at + "state1").c_str(), p.state1));
      AMPD_RETURN_IF_ERROR(
          need_same_shape(op, "master", p.master, (at + "state1").c_str(), p.state1));
    }
    if (needs_state2) {
      AMPD_RETURN_IF_ERROR(need_f32(op, (at + "state2").c_str(), p.state2));
      AMPD_RETURN_IF_ERROR(
          need_same_shape(op, "master", p.master, (at + "state2").c_str(), p.state2));
    }
    if (!p.low_precision.empty()) {
      AMPD_RETURN_IF_ERROR(need_float(op, (at + "low_precision").c_str(), p.low_precision));
      AMPD_RETURN_IF_ERROR(
          need(p.low_precision.dtype != DType::kF32, op, at + "low_precision must be f16 or bf16"));
      AMPD_RETURN_IF_ERROR(need(p.low_precision.numel() == p.master.numel(), op,
                                at + "low_precision must have master's size"));
    }
  }
  return Status::ok_status();
}

bool finite_nonneg(float v) {
  return std::isfinite(v) && v >= 0.0f;
}

}  // namespace

Status Backend::sgd_step(std::span<const ParamSlot> params, const SgdParams& hp) {
  AMPD_RETURN_IF_ERROR(check_slots("sgd_step", params, hp.momentum != 0.0f, false));
  AMPD_RETURN_IF_ERROR(need(finite_nonneg(hp.lr) && finite_nonneg(hp.momentum) &&
                                finite_nonneg(hp.weight_decay) && std::isfinite(hp.dampening) &&
                                std::isfinite(hp.grad_scale),
                            "sgd_step", "hyper-parameters must be finite and non-negative"));
  AMPD_RETURN_IF_ERROR(need(!hp.nesterov || (hp.momentum > 0 && hp.dampening == 0), "sgd_step",
                            "nesterov needs momentum > 0 and dampening 0"));
  if (params.empty()) return Status::ok_status();
  return sgd_step_impl(params, hp);
}

Status Backend::adamw_step(std::span<const ParamSlot> params, const AdamWParams& hp) {
  AMPD_RETURN_IF_ERROR(check_slots("adamw_step", params, true, true));
  AMPD_RETURN_IF_ERROR(need(
      finite_nonneg(hp.lr) && finite_nonneg(hp.weight_decay) && hp.beta1 >= 0 && hp.beta1 < 1 &&
          hp.beta2 >= 0 && hp.beta2 < 1 && hp.eps > 0 && std::isfinite(hp.grad_scale),
      "adamw_step", "lr, weight_decay >= 0, betas in [0, 1), eps > 0 required"));
  AMPD_RETURN_IF_ERROR(need(hp.step >= 1, "adamw_step", "step must be >= 1"));
  if (params.empty()) return Status::ok_status();
  return adamw_step_impl(params, hp);
}

}  // namespace ampd
