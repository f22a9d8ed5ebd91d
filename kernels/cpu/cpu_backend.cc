// CpuBackend: construction, device queries, memory, and the simple element-wise ops
// (fill, cast, add_bias, bias_grad, scale, accumulate, dropout).
//
// Memory layout: dense row-major tensors in 64-byte aligned host memory (aligned for
// AVX-512 loads and for oneDNN, which prefers 64-byte aligned buffers).
//
// Numerics: each element is widened to FP32, computed in FP32 and rounded once on store
// (cpu_internal.h). bias_grad sums FP32 partials of kRowChunk rows in FP64, in a fixed
// order, so its result does not depend on the thread count. Dropout draws its mask from
// the shared counter-based hash (dropout_hash.h), so it is identical on every backend.
//
// The other ops live beside this file: cpu_matmul.cc (oneDNN matmul), cpu_activation.cc
// (ReLU by hand, GELU and tanh on oneDNN eltwise), cpu_norm.cc (LayerNorm, BatchNorm),
// cpu_loss.cc (softmax cross-entropy, MSE, argmax), cpu_optim.cc (unscale and check,
// global norm, SGD, AdamW).
#include "kernels/cpu/cpu_backend.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string_view>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/dropout_hash.h"
#include "kernels/half.h"

namespace ampd {

using cpu_detail::CpuState;
using cpu_detail::guarded;
using cpu_detail::kBlock;
using cpu_detail::load_f32;
using cpu_detail::OpScope;
using cpu_detail::out_f32;
using cpu_detail::parallel_blocks;
using cpu_detail::store_f32;

namespace {

std::string read_cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        size_t begin = line.find_first_not_of(" \t", colon + 1);
        if (begin != std::string::npos) return line.substr(begin);
      }
    }
  }
  return "unknown CPU";
}

bool has_isa(dnnl::cpu_isa isa, dnnl::cpu_isa want) {
  const auto v = static_cast<unsigned>(isa);
  const auto w = static_cast<unsigned>(want);
  return (v & w) == w;
}

const char* isa_name(dnnl::cpu_isa isa) {
  using dnnl::cpu_isa;
  if (has_isa(isa, cpu_isa::avx512_core_amx)) return "avx512_core_amx";
  if (has_isa(isa, cpu_isa::avx512_core_bf16)) return "avx512_core_bf16";
  if (has_isa(isa, cpu_isa::avx512_core_vnni)) return "avx512_core_vnni";
  if (has_isa(isa, cpu_isa::avx512_core)) return "avx512_core";
  if (has_isa(isa, cpu_isa::avx2_vnni)) return "avx2_vnni";
  if (has_isa(isa, cpu_isa::avx2)) return "avx2";
  if (has_isa(isa, cpu_isa::avx)) return "avx";
  if (has_isa(isa, cpu_isa::sse41)) return "sse41";
  return "baseline";
}

}  // namespace

// ---- construction and queries ------------------------------------------------------------

CpuBackend::CpuBackend(const CpuBackendOptions& options) : state_(std::make_unique<CpuState>()) {
  if (options.threads > 0) omp_set_num_threads(options.threads);
  state_->threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  state_->cpu_model = read_cpu_model();
  state_->engine = dnnl::engine(dnnl::engine::kind::cpu, 0);  // throws dnnl::error
  state_->stream = dnnl::stream(state_->engine);
  // BF16 GEMMs: native (vdpbf16ps / AMX) where oneDNN 2.6 runs them faster than FP32 (AMX;
  // the AMD EPYC host of bench/RESULTS.md, 2026-11-29: 382 GFLOP/s bf16), widened to FP32
  // on Intel CPUs without AMX, where its avx512_bf16 brgemm ran at 0.56x the FP32 rate
  // (bench/RESULTS.md, 2026-12-08). A fixed rule, not a timing at
  // start-up: the choice changes the summation order, and a host must always compute the
  // same bits. AMPD_CPU_BF16_GEMM=native|widened overrides it.
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  bool widen = !has_isa(isa, dnnl::cpu_isa::avx512_core_amx) &&
               state_->cpu_model.find("Intel") != std::string::npos;
  if (const char* env = std::getenv("AMPD_CPU_BF16_GEMM")) {
    if (std::string_view(env) == "native") widen = false;
    if (std::string_view(env) == "widened") widen = true;
  }
  state_->widen_bf16 = widen;
}

CpuBackend::~CpuBackend() = default;

int CpuBackend::threads() const {
  return state_->threads;
}

std::string CpuBackend::device_description() const {
  const dnnl_version_t* v = dnnl_version();
  std::ostringstream os;
  os << state_->cpu_model << " (" << state_->threads << " threads, oneDNN " << v->major << "."
     << v->minor << "." << v->patch << ", " << isa_name(dnnl::get_effective_cpu_isa())
     << (state_->widen_bf16 ? ", bf16 GEMM widened to fp32" : "") << ")";
  return os.str();
}

bool CpuBackend::supports(DType dtype) const {
  // F16 by exact widening to F32 (oneDNN 2.6 has no CPU f16).
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}

bool CpuBackend::prefers_bf16() const {
  // avx512_core_bf16 (vdpbf16ps) or AMX: bf16 matmul runs at about twice the f32 rate.
  // get_effective_cpu_isa() honours DNNL_MAX_CPU_ISA.
  return has_isa(dnnl::get_effective_cpu_isa(), dnnl::cpu_isa::avx512_core_bf16);
}

size_t CpuBackend::cached_matmul_primitives() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->matmul_plans.size();
}

StatusOr<std::unique_ptr<Backend>> make_cpu_backend(const CpuBackendOptions& options) {
  if (options.threads < 0) {
    return invalid_argument("cpu backend: threads must be >= 0, got " +
                            std::to_string(options.threads));
  }
  try {
    return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(options));
  } catch (const dnnl::error& e) {
    return internal(std::string("cpu backend: oneDNN cannot create a CPU engine: ") + e.what());
  } catch (const std::bad_alloc&) {
    return resource_exhausted("cpu backend: out of memory");
  }
}

// ---- memory --------------------------------------------------------------------------------

StatusOr<void*> CpuBackend::allocate_impl(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;  // aligned_alloc wants a multiple
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr) {
    return resource_exhausted("cpu backend: cannot allocate " + std::to_string(bytes) +
                              " bytes of host memory");
  }
  return p;
}

void CpuBackend::free_impl(void* ptr, size_t /*bytes*/) noexcept {
  std::free(ptr);
}

size_t CpuBackend::device_total_bytes() const {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<size_t>(pages) * static_cast<size_t>(page_size);
}

Status CpuBackend::upload_impl(const Tensor& dst, const void* host_src) {
  std::memcpy(dst.data, host_src, dst.bytes());
  return Status::ok_status();
}

Status CpuBackend::download_impl(void* host_dst, const Tensor& src) {
  std::memcpy(host_dst, src.data, src.bytes());
  return Status::ok_status();
}

Status CpuBackend::copy_impl(const Tensor& dst, const Tensor& src) {
  if (dst.data != src.data) std::memmove(dst.data, src.data, src.bytes());
  return Status::ok_status();
}

Status CpuBackend::fill_impl(const Tensor& dst, float value) {
  OpScope scope(*state_);
  const int64_t n = dst.numel();
  switch (dst.dtype) {
    case DType::kF32: {
      float* p = dst.as<float>();
      parallel_blocks(n, [&](int64_t b, int64_t e) { std::fill(p + b, p + e, value); });
      return Status::ok_status();
    }
    case DType::kF16:
    case DType::kBF16: {
      const uint16_t bits =
          dst.dtype == DType::kF16 ? f32_to_f16_bits(value) : f32_to_bf16_bits(value);
      uint16_t* p = dst.as<uint16_t>();
      parallel_blocks(n, [&](int64_t b, int64_t e) { std::fill(p + b, p + e, bits); });
      return Status::ok_status();
    }
    case DType::kI32: {
      // Integers: the value rounded to nearest, saturated to the type's range.
      const double r = std::nearbyint(static_cast<double>(value));
      const int32_t v =
          std::isnan(r) ? 0 : static_cast<int32_t>(std::clamp(r, -2147483648.0, 2147483647.0));
      std::fill(dst.as<int32_t>(), dst.as<int32_t>() + n, v);
      return Status::ok_status();
    }
    case DType::kU8: {
      const double r = std::nearbyint(static_cast<double>(value));
      const uint8_t v = std::isnan(r) ? 0 : static_cast<uint8_t>(std::clamp(r, 0.0, 255.0));
      std::memset(dst.data, v, static_cast<size_t>(n));
      return Status::ok_status();
    }
  }
  return invalid_argument("fill: unknown dtype");
}

// ---- dense element-wise algebra --------------------------------------------------------------

Status CpuBackend::cast_impl(const Tensor& src, const Tensor& dst) {
  OpScope scope(*state_);
  if (src.dtype == dst.dtype) {
    if (src.data != dst.data) std::memmove(dst.data, src.data, src.bytes());
    return Status::ok_status();
  }
  // Widening is exact and narrowing rounds once (F16 <-> BF16 goes through FP32 exactly).
  parallel_blocks(src.numel(), [&](int64_t b, int64_t e) {
    convert(cpu_detail::byte_at(src.data, src.dtype, b), src.dtype,
            cpu_detail::byte_at(dst.data, dst.dtype, b), dst.dtype, static_cast<size_t>(e - b));
  });
  return Status::ok_status();
}

Status CpuBackend::add_bias_impl(const Tensor& x, const Tensor& bias) {
  OpScope scope(*state_);
  const int64_t rows = x.rows(), cols = x.cols();
  cpu_detail::parallel_rows(rows, cols, [&](int64_t r) {
    float xbuf[kBlock], bbuf[kBlock];
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      const int64_t n = std::min(kBlock, cols - c0);
      const int64_t i = r * cols + c0;
      const float* xv = load_f32(x, i, n, xbuf);
      const float* bv = load_f32(bias, c0, n, bbuf);
      float* out = out_f32(x, i, xbuf);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = xv[j] + bv[j];
      store_f32(out, x, i, n);
    }
  });
  return Status::ok_status();
}

Status CpuBackend::bias_grad_impl(const Tensor& dy, const Tensor& dbias, float beta) {
  OpScope scope(*state_);
  return guarded("bias_grad", [&]() -> Status {
    const int64_t cols = dy.cols();
    double* sums = state_->partials64.get(static_cast<size_t>(cols));
    cpu_detail::column_sums(*state_, dy.rows(), cols, 1, sums,
                            [&](int64_t r, int64_t c0, int64_t n, float* acc) {
                              float buf[cpu_detail::kColBlock];
                              const float* v = load_f32(dy, r * cols + c0, n, buf);
#pragma omp simd
                              for (int64_t j = 0; j < n; ++j) acc[j] += v[j];
                            });
    float* out = dbias.as<float>();
    for (int64_t j = 0; j < cols; ++j) {
      // beta == 0 overwrites (never reads dbias, which may hold anything).
      const double prior = beta == 0.0f ? 0.0 : static_cast<double>(beta) * out[j];
      out[j] = static_cast<float>(prior + sums[j]);
    }
    return Status::ok_status();
  });
}

Status CpuBackend::scale_impl(const Tensor& x, float alpha) {
  OpScope scope(*state_);
  parallel_blocks(x.numel(), [&](int64_t b, int64_t e) {
    float buf[kBlock];
    const int64_t n = e - b;
    const float* v = load_f32(x, b, n, buf);
    float* out = out_f32(x, b, buf);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = v[j] * alpha;
    store_f32(out, x, b, n);
  });
  return Status::ok_status();
}

Status CpuBackend::accumulate_impl(const Tensor& x, const Tensor& y) {
  OpScope scope(*state_);
  parallel_blocks(x.numel(), [&](int64_t b, int64_t e) {
    float xbuf[kBlock], ybuf[kBlock];
    const int64_t n = e - b;
    const float* xv = load_f32(x, b, n, xbuf);
    const float* yv = load_f32(y, b, n, ybuf);
    float* out = out_f32(y, b, ybuf);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = xv[j] + yv[j];
    store_f32(out, y, b, n);
  });
  return Status::ok_status();
}

// ---- dropout
// -------------------------------------------------------------------------------------

namespace {

// mask[i] = keep(first + i); y[i] = x[i] * mask[i] * scale. The hash (two SplitMix64
// rounds, 64-bit multiplies) bounds this loop; the AVX-512 clone runs it 8 lanes wide.
AMPD_CPU_CLONES void dropout_block(const float* x, float* y, uint8_t* mask, int64_t n,
                                   uint64_t seed, uint64_t first, float p, float scale) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = dropout_keep(seed, first + static_cast<uint64_t>(i), p);
    mask[i] = keep ? 1 : 0;
    y[i] = x[i] * (keep ? 1.0f : 0.0f) * scale;
  }
}

}  // namespace

// keep_i = dropout_keep(seed, offset + i, p) (the hash every backend shares);
// y = (x * keep) * (1 / (1 - p)), the scale rounded to FP32 once (as PyTorch does), so
// the result is within ~1.5 ulp of the reference's x * keep / (1 - p). Multiplying by the
// mask (not selecting) keeps a dropped inf / NaN visible as NaN, as in PyTorch.
Status CpuBackend::dropout_forward_impl(const Tensor& x, const Tensor& y, const Tensor& mask,
                                        float p, uint64_t seed, uint64_t offset) {
  OpScope scope(*state_);
  const float keep_scale = 1.0f / (1.0f - p);
  uint8_t* m = mask.as<uint8_t>();
  parallel_blocks(x.numel(), [&](int64_t b, int64_t e) {
    float buf[kBlock];
    const int64_t n = e - b;
    const float* xv = load_f32(x, b, n, buf);
    float* out = out_f32(y, b, buf);
    dropout_block(xv, out, m + b, n, seed, offset + static_cast<uint64_t>(b), p, keep_scale);
    store_f32(out, y, b, n);
  });
  return Status::ok_status();
}

Status CpuBackend::dropout_backward_impl(const Tensor& dy, const Tensor& mask, const Tensor& dx,
                                         float p) {
  OpScope scope(*state_);
  const float keep_scale = 1.0f / (1.0f - p);
  const uint8_t* m = mask.as<const uint8_t>();
  parallel_blocks(dy.numel(), [&](int64_t b, int64_t e) {
    float buf[kBlock];
    const int64_t n = e - b;
    const float* v = load_f32(dy, b, n, buf);
    float* out = out_f32(dx, b, buf);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = v[j] * static_cast<float>(m[b + j] != 0) * keep_scale;
    store_f32(out, dx, b, n);
  });
  return Status::ok_status();
}

}  // namespace ampd
