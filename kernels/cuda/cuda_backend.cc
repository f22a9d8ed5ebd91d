// CudaBackend: device setup, memory, copies, and the dispatch of every op to its launcher
// (cuda_*.cu) or to cuBLASLt (cuda_matmul.cc). See cuda_backend.h for the execution and
// memory model.
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>

#include "kernels/cuda/cuda_kernels.h"

namespace ampd {

// ---- CUDA errors --------------------------------------------------------------------------

namespace cuda {

bool is_sticky_error(cudaError_t err) {
  switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
    case cudaErrorIllegalInstruction:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable: return true;
    default: return false;
  }
}

Status cuda_status(cudaError_t err, const std::string& what) {
  std::string msg = what + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  if (err == cudaErrorMemoryAllocation) return resource_exhausted(msg);
  if (is_sticky_error(err)) {
    return internal(msg + "; the CUDA context is now unusable: restart ampd");
  }
  return internal(msg);
}

}  // namespace cuda

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (end == v || *end != '\0') return fallback;
  return static_cast<int>(x);
}

struct Named {
  const char* name;
  const Tensor* tensor;
};

// Every non-empty tensor must sit at an address aligned to its element size: a misaligned
// access would be a sticky error that kills the CUDA context for every later job.
Status check_aligned(const char* op, std::initializer_list<Named> tensors) {
  for (const Named& n : tensors) {
    const Tensor& t = *n.tensor;
    if (t.data == nullptr) continue;
    const size_t size = dtype_size(t.dtype);
    if (reinterpret_cast<uintptr_t>(t.data) % size != 0) {
      char addr[32];
      std::snprintf(addr, sizeof addr, "%p", t.data);
      return invalid_argument(std::string(op) + ": " + n.name + " " + t.describe() + " at " + addr +
                              " is not aligned to its " + std::to_string(size) + "-byte elements");
    }
  }
  return Status::ok_status();
}

Status check_aligned_list(const char* op, const char* name, std::span<const Tensor> list) {
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string n = std::string(name) + "[" + std::to_string(i) + "]";
    AMPD_RETURN_IF_ERROR(check_aligned(op, {{n.c_str(), &list[i]}}));
  }
  return Status::ok_status();
}

constexpr size_t kAllocGranularity = 256;

}  // namespace

// Every op: serialize, make the device current, check pointer alignment.
#define AMPD_CUDA_OP(op, ...)                     \
  std::lock_guard<std::mutex> ampd_op_lock_(mu_); \
  AMPD_RETURN_IF_ERROR(enter());                  \
  AMPD_RETURN_IF_ERROR(check_aligned(op, {__VA_ARGS__}))

// ---- creation -------------------------------------------------------------------------------

StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::create(const CudaBackendOptions& options) {
  std::unique_ptr<CudaBackend> be(new CudaBackend());
  AMPD_RETURN_IF_ERROR(be->init(options));
  return be;
}

Status CudaBackend::init(const CudaBackendOptions& options) {
  const int device = options.device >= 0 ? options.device : env_int("AMPD_CUDA_DEVICE", 0);
  allow_tf32_ =
      options.allow_tf32 >= 0 ? options.allow_tf32 != 0 : env_int("AMPD_CUDA_ALLOW_TF32", 0) != 0;
  ctx_.device = device;
  AMPD_CUDA_RETURN_IF_ERROR(cudaSetDevice(device),
                            "cuda: cudaSetDevice(" + std::to_string(device) + ")");
  cudaDeviceProp prop{};
  AMPD_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device), "cuda: device properties");
  sm_major_ = prop.major;
  if (prop.major < 8) {
    return unavailable(std::string("the CUDA backend needs compute capability 8.0 or newer "
                                   "(it is built for sm_80 and sm_90); device ") +
                       std::to_string(device) + " (" + prop.name + ") is sm_" +
                       std::to_string(prop.major) + std::to_string(prop.minor));
  }
  ctx_.sm_count = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
  int runtime = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  char facts[96];
  std::snprintf(facts, sizeof facts, " (%.0f GiB, sm_%d%d, CUDA %d.%d)",
                static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0), prop.major,
                prop.minor, runtime / 1000, (runtime % 1000) / 10);
  description_ = std::string(prop.name) + facts;

  AMPD_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&ctx_.stream, cudaStreamNonBlocking),
                            "cuda: create stream");
  owns_stream_ = true;

  // A private stream-ordered pool that keeps freed memory (release threshold: never), where
  // the device supports pools; plain cudaMalloc / cudaFree otherwise.
  int pools = 0;
  (void)cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device);
  if (pools != 0) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    if (cudaMemPoolCreate(&pool_, &props) == cudaSuccess) {
      uint64_t threshold = std::numeric_limits<uint64_t>::max();
      (void)cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &threshold);
    } else {
      (void)cudaGetLastError();
      pool_ = nullptr;
    }
  }
  size_t free_bytes = 0;
  AMPD_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes_), "cuda: cudaMemGetInfo");

  ctx_.scratch = [this](size_t bytes) { return scratch(bytes); };

  AMPD_ASSIGN_OR_RETURN(workspace_, allocate(options.workspace_bytes));
  cuda::MatmulOptions mo;
  mo.allow_tf32 = allow_tf32_;
  mo.fallback_gemm_only = options.fallback_gemm_only;
  mo.workspace = workspace_.data();
  mo.workspace_bytes = workspace_.bytes();
  AMPD_ASSIGN_OR_RETURN(matmul_, cuda::create_matmul_cache(mo));
  AMPD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream), "cuda: initial synchronize");
  return Status::ok_status();
}

CudaBackend::~CudaBackend() {
  std::lock_guard<std::mutex> lock(mu_);
  (void)cudaSetDevice(ctx_.device);
  if (ctx_.stream != nullptr) (void)cudaStreamSynchronize(ctx_.stream);
  matmul_.reset();
  workspace_.reset();
  scratch_.reset();
  if (ctx_.stream != nullptr) (void)cudaStreamSynchronize(ctx_.stream);
  if (pool_ != nullptr) (void)cudaMemPoolDestroy(pool_);
  if (owns_stream_) (void)cudaStreamDestroy(ctx_.stream);
}

Status CudaBackend::enter() {
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess || current != ctx_.device) {
    AMPD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ctx_.device), "cuda: cudaSetDevice");
  }
  return Status::ok_status();
}

cuda::MatmulCacheStats CudaBackend::matmul_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return matmul_ ? cuda::matmul_cache_stats(*matmul_) : cuda::MatmulCacheStats{};
}

// ---- memory ---------------------------------------------------------------------------------

StatusOr<void*> CudaBackend::allocate_impl(size_t bytes) {
  if (bytes > std::numeric_limits<size_t>::max() - kAllocGranularity) {
    return resource_exhausted("cuda: allocation of " + std::to_string(bytes) + " bytes");
  }
  const size_t size = (bytes + kAllocGranularity - 1) / kAllocGranularity * kAllocGranularity;
  AMPD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ctx_.device), "cuda: cudaSetDevice");
  void* p = nullptr;
  cudaError_t err = pool_ != nullptr ? cudaMallocFromPoolAsync(&p, size, pool_, ctx_.stream)
                                     : cudaMalloc(&p, size);
  if (err == cudaErrorMemoryAllocation && pool_ != nullptr) {
    // Blocks freed but cached by the pool may be fragmented: give them back and retry once.
    (void)cudaGetLastError();
    (void)cudaStreamSynchronize(ctx_.stream);
    (void)cudaMemPoolTrimTo(pool_, 0);
    err = cudaMallocFromPoolAsync(&p, size, pool_, ctx_.stream);
  }
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_bytes = 0, total = 0;
    (void)cudaMemGetInfo(&free_bytes, &total);
    const MemoryStats ms = memory_stats();
    return cuda::cuda_status(err, "cuda: allocating " + std::to_string(bytes) +
                                      " bytes (ampd holds " + std::to_string(ms.in_use_bytes) +
                                      ", the device has " + std::to_string(free_bytes) +
                                      " free of " + std::to_string(total) + ")");
  }
  return p;
}

void CudaBackend::free_impl(void* ptr, size_t /*bytes*/) noexcept {
  if (ptr == nullptr) return;
  (void)cudaSetDevice(ctx_.device);
  if (pool_ != nullptr) {
    (void)cudaFreeAsync(ptr, ctx_.stream);  // stream-ordered: after every op already enqueued
  } else {
    (void)cudaFree(ptr);  // synchronizes the device
  }
}

StatusOr<void*> CudaBackend::scratch(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (scratch_.bytes() < bytes) {
    size_t grow = std::max(bytes, scratch_.bytes() * 2);
    grow = (grow + (size_t{1} << 20) - 1) & ~((size_t{1} << 20) - 1);
    scratch_.reset();  // stream-ordered free: earlier kernels using it are done first
    AMPD_ASSIGN_OR_RETURN(scratch_, allocate(grow));
  }
  return scratch_.data();
}

Status CudaBackend::upload_impl(const Tensor& dst, const void* host_src) {
  std::lock_guard<std::mutex> lock(mu_);
  AMPD_RETURN_IF_ERROR(enter());
  // From pageable memory this returns once the source has been staged, so the caller may
  // reuse its buffer at once.
  AMPD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst.data, host_src, dst.bytes(), cudaMemcpyHostToDevice, ctx_.stream),
      "upload " + dst.describe());
  return Status::ok_status();
}

Status CudaBackend::download_impl(void* host_dst, const Tensor& src) {
  std::lock_guard<std::mutex> lock(mu_);
  AMPD_RETURN_IF_ERROR(enter());
  AMPD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host_dst, src.data, src.bytes(), cudaMemcpyDeviceToHost, ctx_.stream),
      "download " + src.describe());
  AMPD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream), "download " + src.describe());
  return Status::ok_status();
}

Status CudaBackend::copy_impl(const Tensor& dst, const Tensor& src) {
  std::lock_guard<std::mutex> lock(mu_);
  AMPD_RETURN_IF_ERROR(enter());
  const size_t bytes = src.bytes();
  if (dst.data == src.data) return Status::ok_status();
  const auto d = reinterpret_cast<uintptr_t>(dst.data);
  const auto s = reinterpret_cast<uintptr_t>(src.data);
  if (d < s + bytes && s < d + bytes) {
    // Overlapping views: cudaMemcpy's result would be undefined; go through scratch.
    AMPD_ASSIGN_OR_RETURN(void* tmp, scratch(bytes));
    AMPD_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(tmp, src.data, bytes, cudaMemcpyDeviceToDevice, ctx_.stream), "copy");
    AMPD_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst.data, tmp, bytes, cudaMemcpyDeviceToDevice, ctx_.stream), "copy");
    return Status::ok_status();
  }
  AMPD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst.data, src.data, bytes, cudaMemcpyDeviceToDevice, ctx_.stream), "copy");
  return Status::ok_status();
}

Status CudaBackend::fill_impl(const Tensor& dst, float value) {
  AMPD_CUDA_OP("fill", {"dst", &dst});
  return cuda::fill(ctx_, dst, value);
}

Status CudaBackend::synchronize_impl() {
  AMPD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ctx_.device), "synchronize");
  AMPD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream), "synchronize");
  return Status::ok_status();
}

// ---- ops ------------------------------------------------------------------------------------

Status CudaBackend::matmul_impl(const MatmulArgs& m) {
  AMPD_CUDA_OP("matmul", {"a", &m.a}, {"b", &m.b}, {"c", &m.c}, {"bias", &m.bias});
  return cuda::matmul(*matmul_, ctx_, m);
}

Status CudaBackend::batched_matmul_impl(const BatchedMatmulArgs& m) {
  AMPD_CUDA_OP("batched_matmul", {"a", &m.a}, {"b", &m.b}, {"c", &m.c});
  return cuda::batched_matmul(*matmul_, ctx_, m);
}

Status CudaBackend::cast_impl(const Tensor& src, const Tensor& dst) {
  AMPD_CUDA_OP("cast", {"src", &src}, {"dst", &dst});
  return cuda::cast(ctx_, src, dst);
}

Status CudaBackend::add_bias_impl(const Tensor& x, const Tensor& bias) {
  AMPD_CUDA_OP("add_bias", {"x", &x}, {"bias", &bias});
  return cuda::affine_bias(ctx_, x, 1.0f, bias, x);
}

Status CudaBackend::bias_grad_impl(const Tensor& dy, const Tensor& dbias, float beta) {
  AMPD_CUDA_OP("bias_grad", {"dy", &dy}, {"dbias", &dbias});
  return cuda::bias_grad(ctx_, dy, dbias, beta);
}

Status CudaBackend::scale_impl(const Tensor& x, float alpha) {
  AMPD_CUDA_OP("scale", {"x", &x});
  return cuda::scale(ctx_, x, alpha);
}

Status CudaBackend::accumulate_impl(const Tensor& x, const Tensor& y) {
  AMPD_CUDA_OP("accumulate", {"x", &x}, {"y", &y});
  return cuda::accumulate(ctx_, x, y);
}

Status CudaBackend::activation_forward_impl(Activation act, const Tensor& x, const Tensor& y) {
  AMPD_CUDA_OP("activation_forward", {"x", &x}, {"y", &y});
  return cuda::activation_forward(ctx_, act, x, y);
}

Status CudaBackend::activation_backward_impl(Activation act, const Tensor& x, const Tensor& dy,
                                             const Tensor& dx) {
  AMPD_CUDA_OP("activation_backward", {"x", &x}, {"dy", &dy}, {"dx", &dx});
  return cuda::activation_backward(ctx_, act, x, dy, dx);
}

Status CudaBackend::layernorm_forward_impl(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                           const Tensor& y, const Tensor& mean, const Tensor& rstd,
                                           float eps) {
  AMPD_CUDA_OP("layernorm_forward", {"x", &x}, {"gamma", &gamma}, {"beta", &beta}, {"y", &y},
               {"mean", &mean}, {"rstd", &rstd});
  return cuda::layernorm_forward(ctx_, x, gamma, beta, y, mean, rstd, eps);
}

Status CudaBackend::layernorm_backward_impl(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                            const Tensor& mean, const Tensor& rstd,
                                            const Tensor& dx, const Tensor& dgamma,
                                            const Tensor& dbeta) {
  AMPD_CUDA_OP("layernorm_backward", {"dy", &dy}, {"x", &x}, {"gamma", &gamma}, {"mean", &mean},
               {"rstd", &rstd}, {"dx", &dx}, {"dgamma", &dgamma}, {"dbeta", &dbeta});
  return cuda::layernorm_backward(ctx_, dy, x, gamma, mean, rstd, dx, dgamma, dbeta);
}

Status CudaBackend::batchnorm_forward_train_impl(const Tensor& x, const Tensor& gamma,
                                                 const Tensor& beta, const Tensor& y,
                                                 const Tensor& mean, const Tensor& rstd,
                                                 const Tensor& running_mean,
                                                 const Tensor& running_var, float momentum,
                                                 float eps) {
  AMPD_CUDA_OP("batchnorm_forward_train", {"x", &x}, {"gamma", &gamma}, {"beta", &beta}, {"y", &y},
               {"mean", &mean}, {"rstd", &rstd}, {"running_mean", &running_mean},
               {"running_var", &running_var});
  return cuda::batchnorm_forward_train(ctx_, x, gamma, beta, y, mean, rstd, running_mean,
                                       running_var, momentum, eps);
}

Status CudaBackend::batchnorm_forward_eval_impl(const Tensor& x, const Tensor& gamma,
                                                const Tensor& beta, const Tensor& running_mean,
                                                const Tensor& running_var, const Tensor& y,
                                                float eps) {
  AMPD_CUDA_OP("batchnorm_forward_eval", {"x", &x}, {"gamma", &gamma}, {"beta", &beta},
               {"running_mean", &running_mean}, {"running_var", &running_var}, {"y", &y});
  return cuda::batchnorm_forward_eval(ctx_, x, gamma, beta, running_mean, running_var, y, eps);
}

Status CudaBackend::batchnorm_backward_impl(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                            const Tensor& mean, const Tensor& rstd,
                                            const Tensor& dx, const Tensor& dgamma,
                                            const Tensor& dbeta) {
  AMPD_CUDA_OP("batchnorm_backward", {"dy", &dy}, {"x", &x}, {"gamma", &gamma}, {"mean", &mean},
               {"rstd", &rstd}, {"dx", &dx}, {"dgamma", &dgamma}, {"dbeta", &dbeta});
  return cuda::batchnorm_backward(ctx_, dy, x, gamma, mean, rstd, dx, dgamma, dbeta);
}

Status CudaBackend::dropout_forward_impl(const Tensor& x, const Tensor& y, const Tensor& mask,
                                         float p, uint64_t seed, uint64_t offset) {
  AMPD_CUDA_OP("dropout_forward", {"x", &x}, {"y", &y}, {"mask", &mask});
  return cuda::dropout_forward(ctx_, x, y, mask, p, seed, offset);
}

Status CudaBackend::dropout_backward_impl(const Tensor& dy, const Tensor& mask, const Tensor& dx,
                                          float p) {
  AMPD_CUDA_OP("dropout_backward", {"dy", &dy}, {"mask", &mask}, {"dx", &dx});
  return cuda::dropout_backward(ctx_, dy, mask, dx, p);
}

Status CudaBackend::softmax_xent_forward_impl(const Tensor& logits, const Tensor& labels,
                                              const Tensor& loss, const Tensor& lse) {
  AMPD_CUDA_OP("softmax_xent_forward", {"logits", &logits}, {"labels", &labels}, {"loss", &loss},
               {"lse", &lse});
  return cuda::softmax_xent_forward(ctx_, logits, labels, loss, lse);
}

Status CudaBackend::softmax_xent_backward_impl(const Tensor& logits, const Tensor& labels,
                                               const Tensor& lse, const Tensor& dlogits,
                                               float grad_scale) {
  AMPD_CUDA_OP("softmax_xent_backward", {"logits", &logits}, {"labels", &labels}, {"lse", &lse},
               {"dlogits", &dlogits});
  return cuda::softmax_xent_backward(ctx_, logits, labels, lse, dlogits, grad_scale);
}

Status CudaBackend::mse_forward_impl(const Tensor& pred, const Tensor& target, const Tensor& loss) {
  AMPD_CUDA_OP("mse_forward", {"pred", &pred}, {"target", &target}, {"loss", &loss});
  return cuda::mse_forward(ctx_, pred, target, loss);
}

Status CudaBackend::mse_backward_impl(const Tensor& pred, const Tensor& target, const Tensor& dpred,
                                      float grad_scale) {
  AMPD_CUDA_OP("mse_backward", {"pred", &pred}, {"target", &target}, {"dpred", &dpred});
  return cuda::mse_backward(ctx_, pred, target, dpred, grad_scale);
}

Status CudaBackend::argmax_rows_impl(const Tensor& x, const Tensor& out) {
  AMPD_CUDA_OP("argmax_rows", {"x", &x}, {"out", &out});
  return cuda::argmax_rows(ctx_, x, out);
}

Status CudaBackend::embedding_forward_impl(const Tensor& ids, const Tensor& table,
                                           const Tensor& out) {
  AMPD_CUDA_OP("embedding_forward", {"ids", &ids}, {"table", &table}, {"out", &out});
  return cuda::embedding_forward(ctx_, ids, table, out);
}

Status CudaBackend::embedding_backward_impl(const Tensor& ids, const Tensor& dy,
                                            const Tensor& dtable, float beta) {
  AMPD_CUDA_OP("embedding_backward", {"ids", &ids}, {"dy", &dy}, {"dtable", &dtable});
  return cuda::embedding_backward(ctx_, ids, dy, dtable, beta);
}

Status CudaBackend::causal_softmax_forward_impl(const Tensor& scores, const Tensor& probs) {
  AMPD_CUDA_OP("causal_softmax_forward", {"scores", &scores}, {"probs", &probs});
  return cuda::causal_softmax_forward(ctx_, scores, probs);
}

Status CudaBackend::causal_softmax_backward_impl(const Tensor& probs, const Tensor& dprobs,
                                                 const Tensor& dscores) {
  AMPD_CUDA_OP("causal_softmax_backward", {"probs", &probs}, {"dprobs", &dprobs},
               {"dscores", &dscores});
  return cuda::causal_softmax_backward(ctx_, probs, dprobs, dscores);
}

Status CudaBackend::unscale_and_check_impl(std::span<const Tensor> grads, float inv_scale,
                                           const Tensor& found_nonfinite) {
  AMPD_CUDA_OP("unscale_and_check", {"found_nonfinite", &found_nonfinite});
  AMPD_RETURN_IF_ERROR(check_aligned_list("unscale_and_check", "grads", grads));
  return cuda::unscale_and_check(ctx_, grads, inv_scale, found_nonfinite);
}

Status CudaBackend::global_norm_impl(std::span<const Tensor> grads, const Tensor& out) {
  AMPD_CUDA_OP("global_norm", {"out", &out});
  AMPD_RETURN_IF_ERROR(check_aligned_list("global_norm", "grads", grads));
  return cuda::global_norm(ctx_, grads, out);
}

namespace {

Status check_slots_aligned(const char* op, std::span<const ParamSlot> params) {
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSlot& p = params[i];
    const std::string at = "params[" + std::to_string(i) + "].";
    const std::string m = at + "master", g = at + "grad", s1 = at + "state1", s2 = at + "state2",
                      lp = at + "low_precision";
    AMPD_RETURN_IF_ERROR(check_aligned(op, {{m.c_str(), &p.master},
                                            {g.c_str(), &p.grad},
                                            {s1.c_str(), &p.state1},
                                            {s2.c_str(), &p.state2},
                                            {lp.c_str(), &p.low_precision}}));
  }
  return Status::ok_status();
}

}  // namespace

Status CudaBackend::sgd_step_impl(std::span<const ParamSlot> params, const SgdParams& hp) {
  AMPD_CUDA_OP("sgd_step");
  AMPD_RETURN_IF_ERROR(check_slots_aligned("sgd_step", params));
  return cuda::sgd_step(ctx_, params, hp);
}

Status CudaBackend::adamw_step_impl(std::span<const ParamSlot> params, const AdamWParams& hp) {
  AMPD_CUDA_OP("adamw_step");
  AMPD_RETURN_IF_ERROR(check_slots_aligned("adamw_step", params));
  return cuda::adamw_step(ctx_, params, hp);
}

// ---- creation with the device checks -------------------------------------------------------

StatusOr<std::unique_ptr<Backend>> make_cuda_backend(const CudaBackendOptions& options) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    std::string why;
    switch (err) {
      case cudaErrorInsufficientDriver: why = "CUDA driver is not installed or too old"; break;
      case cudaErrorNoDevice:
        why = "no CUDA-capable device is visible; check CUDA_VISIBLE_DEVICES";
        break;
      default: why = cudaGetErrorString(err); break;
    }
    return unavailable(std::string("no CUDA GPU: cudaGetDeviceCount returned ") +
                       cudaGetErrorName(err) + " (" + why + ")");
  }
  if (count == 0) return unavailable("no CUDA GPU: cudaGetDeviceCount found no device");
  CudaBackendOptions opts = options;
  if (opts.device < 0) opts.device = env_int("AMPD_CUDA_DEVICE", 0);
  if (opts.device >= count) {
    return unavailable("CUDA device " + std::to_string(opts.device) +
                       " requested (AMPD_CUDA_DEVICE)" + " but only " + std::to_string(count) +
                       " visible");
  }
  auto be = CudaBackend::create(opts);
  if (!be.ok()) {
    // A failure while creating (no memory, cuBLASLt) means the GPU is not usable for ampd.
    const Status& s = be.status();
    if (s.code() == StatusCode::kUnavailable) return s;
    return unavailable("the CUDA backend could not start: " + s.message());
  }
  return std::unique_ptr<Backend>(std::move(be).value());
}

}  // namespace ampd
