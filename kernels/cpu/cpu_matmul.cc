// CpuBackend::matmul_impl on oneDNN's matmul primitive.
//
//   C (M x N) = alpha * op(A) (M x K) @ op(B) (K x N) + beta * C + bias (1 x N, per column)
//
// Memory layout: all matrices are dense row-major. A transpose is not a copy but a
// different stride: op(A) = A^T (A stored K x M) is the M x K matrix with strides {1, M};
// the same for B. oneDNN's brgemm kernels read these layouts directly.
//
// Numerics: products accumulate in FP32 inside oneDNN (brgemm f32 FMA, or vdpbf16ps for
// BF16, which accumulates bf16 x bf16 products in FP32). A low-precision C is rounded once,
// to nearest even, after alpha, beta * C and the bias have been applied in FP32.
//   * alpha: oneDNN's output scale. oneDNN scales its bias argument too
//     (dst = alpha * (acc + bias)), so with alpha != 1 the bias becomes a binary-add
//     post-op applied after the scale: alpha * acc + beta * C + bias, as specified.
//   * beta: a sum post-op (dst = beta * dst_old + ...); with beta == 0, C is never read
//     (it may hold NaN).
//   * FP16: oneDNN 2.6 has no CPU f16. A and B (and an f16 bias, and C when beta != 0)
//     are widened to FP32 into grow-only scratch buffers (exact), the FP32 primitive
//     runs, and an f16 C is rounded once from an FP32 scratch C. A product of two FP16
//     values is exact in FP32, so this is the same arithmetic as a GPU's FP16 GEMM with
//     FP32 accumulation; and an FP16 matmul is bit-identical to an FP32 matmul of the
//     widened operands (the same primitive runs on the same values).
//   * BF16 on hosts where oneDNN 2.6's bf16 GEMM is slower than its fp32 one (Intel CPUs
//     without AMX: vdpbf16ps brgemm at ~0.56x the fp32 rate on the GPT's shapes) takes
//     the same widened path (CpuState::widen_bf16, cpu_backend.cc says how it is chosen):
//     a product of two BF16 values is exact in FP32 too, so the contract (FP32
//     accumulation, one rounding of C) holds either way; only the summation order differs.
//   * K == 0: C = beta * C + bias by hand (oneDNN rejects empty reductions).
//
// Performance: creating a primitive costs ~0.3 ms, so primitives are cached in an LRU map
// keyed by everything that changes them (shape, dtypes, transposes, bias, alpha, beta).
// oneDNN's scratchpad is user-managed (grow-only buffer) so that no call allocates.
#include <cstring>

#include "kernels/batched_geometry.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"

namespace ampd {

using cpu_detail::BatchedMatmulKey;
using cpu_detail::BatchedMatmulPlan;
using cpu_detail::CpuState;
using cpu_detail::MatmulKey;
using cpu_detail::MatmulPlan;

namespace {

using dnnl::memory;

memory::data_type dnnl_type(DType t) {
  switch (t) {
    case DType::kF32: return memory::data_type::f32;
    case DType::kBF16: return memory::data_type::bf16;
    case DType::kF16: return memory::data_type::f16;
    default: return memory::data_type::undef;
  }
}

// A logical rows x cols matrix stored row-major, or (transposed) stored as cols x rows.
memory::desc matrix_desc(int64_t rows, int64_t cols, DType t, bool transposed) {
  return memory::desc({rows, cols}, dnnl_type(t),
                      transposed ? memory::dims{1, rows} : memory::dims{cols, 1});
}

MatmulPlan make_plan(const CpuState& s, const MatmulKey& k, float alpha, float beta) {
  MatmulPlan p;
  p.a = matrix_desc(k.m, k.k, k.ab, k.trans_a);
  p.b = matrix_desc(k.k, k.n, k.ab, k.trans_b);
  p.c = matrix_desc(k.m, k.n, k.c, false);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  dnnl::post_ops ops;
  if (beta != 0.0f) ops.append_sum(beta);
  if (k.has_bias) {
    p.bias = matrix_desc(1, k.n, k.bias, false);
    if (alpha != 1.0f) {
      p.bias_as_post_op = true;
      p.bias_post_op_index = ops.len();
      ops.append_binary(dnnl::algorithm::binary_add, p.bias);
    }
  }
  attr.set_post_ops(ops);
  const bool native_bias = k.has_bias && !p.bias_as_post_op;
  const dnnl::matmul::desc desc =
      native_bias ? dnnl::matmul::desc(p.a, p.b, p.bias, p.c) : dnnl::matmul::desc(p.a, p.b, p.c);
  const dnnl::matmul::primitive_desc pd(desc, attr, s.engine);
  p.scratchpad = pd.scratchpad_desc();
  p.primitive = dnnl::matmul(pd);
  return p;
}

// C = beta * C + bias for an empty reduction (K == 0), in FP32, rounded once.
void empty_product(const MatmulArgs& m) {
  const Tensor& c = m.c;
  cpu_detail::parallel_rows(c.rows(), c.cols(), [&](int64_t r) {
    float cbuf[cpu_detail::kBlock], bbuf[cpu_detail::kBlock];
    for (int64_t c0 = 0; c0 < c.cols(); c0 += cpu_detail::kBlock) {
      const int64_t n = std::min(cpu_detail::kBlock, c.cols() - c0);
      const int64_t i = r * c.cols() + c0;
      float* out = cpu_detail::out_f32(c, i, cbuf);
      if (m.beta != 0.0f) {
        const float* cv = cpu_detail::load_f32(c, i, n, cbuf);
        for (int64_t j = 0; j < n; ++j) out[j] = m.beta * cv[j];
      } else {
        std::fill(out, out + n, 0.0f);
      }
      if (!m.bias.empty()) {
        const float* bv = cpu_detail::load_f32(m.bias, c0, n, bbuf);
        for (int64_t j = 0; j < n; ++j) out[j] += bv[j];
      }
      cpu_detail::store_f32(out, c, i, n);
    }
  });
}

// Whether matmuls of this dtype run as FP32 on exactly widened operands: always FP16
// (oneDNN 2.6 has no CPU f16); BF16 where the backend chose to (CpuState::widen_bf16).
bool widened(const CpuState& s, DType t) {
  return t == DType::kF16 || (t == DType::kBF16 && s.widen_bf16);
}

// dst[0, n) = widened src (exact), in parallel.
void widen(const void* src, DType t, float* dst, int64_t n) {
  cpu_detail::parallel_blocks(n, [&](int64_t b, int64_t e) {
    convert(cpu_detail::byte_at(src, t, b), t, dst + b, DType::kF32, static_cast<size_t>(e - b));
  });
}

// ---- batched_matmul ------------------------------------------------------------------------

// oneDNN's view of one operand: 3-D (inner batch, rows, cols) when the batch is uniform,
// else 4-D (outer, inner, rows, cols), with the operand's strides.
memory::desc batched_desc(const BatchedGeometry& g, const BatchedOperand& x, DType t) {
  if (g.outer == 1) {
    return memory::desc({g.inner, x.rows, x.cols}, dnnl_type(t),
                        memory::dims{x.inner_stride, x.row_stride, x.col_stride});
  }
  return memory::desc({g.outer, g.inner, x.rows, x.cols}, dnnl_type(t),
                      memory::dims{x.outer_stride, x.inner_stride, x.row_stride, x.col_stride});
}

BatchedMatmulPlan make_batched_plan(const CpuState& s, const BatchedGeometry& g,
                                    const BatchedMatmulKey& k, float alpha, float beta) {
  BatchedMatmulPlan p;
  p.a = batched_desc(g, g.a, k.ab);
  p.b = batched_desc(g, g.b, k.ab);
  p.c = batched_desc(g, g.c, k.c);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  dnnl::post_ops ops;
  if (beta != 0.0f) ops.append_sum(beta);
  attr.set_post_ops(ops);
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(p.a, p.b, p.c), attr, s.engine);
  p.scratchpad = pd.scratchpad_desc();
  p.primitive = dnnl::matmul(pd);
  return p;
}

// fn(o, i, line, src_offset, count) for every line of x (a row of a row-major operand, a
// column of a column-major one: `count` contiguous elements at element offset src_offset),
// in parallel; line indexes the lines of all batches in (o, i, line) order.
template <typename F>
void for_each_line(const BatchedGeometry& g, const BatchedOperand& x, F&& fn) {
  const bool rm = x.row_major();
  const int64_t lines = rm ? x.rows : x.cols;
  const int64_t len = rm ? x.cols : x.rows;
  cpu_detail::parallel_rows(g.batch() * lines, len, [&](int64_t t) {
    const int64_t b = t / lines, l = t % lines;
    const int64_t o = b / g.inner, i = b % g.inner;
    fn(t, x.offset(o, i) + l * x.ld(), len);
  });
}

// x widened (exactly) into dense FP32 at dst, keeping its orientation (row- or
// column-major); returns the packed operand. With copy == false only the layout changes
// (for an output that is not read).
BatchedOperand pack_f32(const BatchedGeometry& g, const BatchedOperand& x, float* dst, bool copy) {
  if (copy) {
    for_each_line(g, x, [&](int64_t t, int64_t src, int64_t len) {
      convert(cpu_detail::byte_at(x.data, x.dtype, src), x.dtype, dst + t * len, DType::kF32,
              static_cast<size_t>(len));
    });
  }
  BatchedOperand p = x;
  p.data = dst;
  p.dtype = DType::kF32;
  p.row_stride = x.row_major() ? x.cols : 1;
  p.col_stride = x.row_major() ? 1 : x.rows;
  p.inner_stride = x.rows * x.cols;
  p.outer_stride = p.inner_stride * g.inner;
  return p;
}

// C = beta * C for an empty reduction (K == 0), in FP32, rounded once.
void batched_empty_product(const BatchedGeometry& g, float beta) {
  const BatchedOperand& c = g.c;
  for_each_line(g, c, [&](int64_t, int64_t at, int64_t len) {
    float buf[cpu_detail::kBlock];
    for (int64_t j0 = 0; j0 < len; j0 += cpu_detail::kBlock) {
      const int64_t n = std::min(cpu_detail::kBlock, len - j0);
      char* p = cpu_detail::byte_at(c.data, c.dtype, at + j0);
      if (beta != 0.0f) {
        convert(p, c.dtype, buf, DType::kF32, static_cast<size_t>(n));
        for (int64_t j = 0; j < n; ++j) buf[j] *= beta;
      } else {
        std::fill(buf, buf + n, 0.0f);
      }
      convert(buf, DType::kF32, p, c.dtype, static_cast<size_t>(n));
    }
  });
}

}  // namespace

// CpuBackend::batched_matmul_impl: one oneDNN matmul primitive over the whole batch.
//
// Layout: the geometry of batched_geometry.h. A batch whose two levels merge into one
// uniform stride runs as a 3-D primitive (batch, rows, cols); otherwise (Q / K / V head
// views of a fused projection) as a 4-D one with both batch strides. op(A) and op(B) are
// described by their strides (a transpose is a stride, as in matmul_impl); oneDNN picks
// brgemm for dense-looking strides and its jit GEMM for interleaved ones.
// Numerics as matmul_impl: FP32 accumulation, alpha as the output scale, beta as a sum
// post-op (beta == 0 never reads C), one rounding of a low-precision C. FP16 (not native in
// oneDNN 2.6 on CPU): A and B, and an f16 C, are widened exactly into dense FP32 scratch
// (keeping each operand's orientation), the FP32 primitive runs, and the result is rounded
// once into the strided f16 C. K == 0: C = beta C by hand. Primitives are cached (LRU) by
// everything that changes them, including every stride.
Status CpuBackend::batched_matmul_impl(const BatchedMatmulArgs& m) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("batched_matmul", [&]() -> Status {
    CpuState& s = *state_;
    BatchedGeometry g = batched_geometry(m);
    if (g.k == 0) {
      batched_empty_product(g, m.beta);
      return Status::ok_status();
    }
    const BatchedGeometry user = g;  // the caller's C, for the final rounding of a widened C
    if (widened(s, m.a.dtype)) {
      const auto size = [&](const BatchedOperand& x) {
        return static_cast<size_t>(g.batch() * x.rows * x.cols);
      };
      g.a = pack_f32(user, user.a, s.a32.get(size(g.a)), true);
      g.b = pack_f32(user, user.b, s.b32.get(size(g.b)), true);
      if (m.c.dtype == m.a.dtype) {
        g.c = pack_f32(user, user.c, s.c32.get(size(g.c)), m.beta != 0.0f);
      }
      g.merge_batches();
    }

    BatchedMatmulKey key;
    key.outer = g.outer;
    key.inner = g.inner;
    key.m = g.m;
    key.n = g.n;
    key.k = g.k;
    key.ab = g.a.dtype;
    key.c = g.c.dtype;
    size_t at = 0;
    for (const BatchedOperand* x : {&g.a, &g.b, &g.c}) {
      for (int64_t v : {x->row_stride, x->col_stride, x->outer_stride, x->inner_stride}) {
        key.strides[at++] = v;
      }
    }
    key.alpha_bits = std::bit_cast<uint32_t>(m.alpha);
    key.beta_bits = std::bit_cast<uint32_t>(m.beta == 0.0f ? 0.0f : m.beta);  // -0 == 0

    BatchedMatmulPlan* plan = s.batched_plans.find(key);
    if (plan == nullptr) {
      plan = &s.batched_plans.insert(key, make_batched_plan(s, g, key, m.alpha, m.beta));
    }
    std::unordered_map<int, memory> args;
    args.reserve(4);
    args.emplace(DNNL_ARG_SRC, memory(plan->a, s.engine, g.a.data));
    args.emplace(DNNL_ARG_WEIGHTS, memory(plan->b, s.engine, g.b.data));
    args.emplace(DNNL_ARG_DST, memory(plan->c, s.engine, g.c.data));
    if (const size_t bytes = plan->scratchpad.get_size(); bytes > 0) {
      args.emplace(DNNL_ARG_SCRATCHPAD,
                   memory(plan->scratchpad, s.engine, s.scratchpad.get(bytes)));
    }
    plan->primitive.execute(s.stream, args);
    s.stream.wait();

    if (g.c.data != user.c.data) {  // round the dense FP32 result once into the f16/bf16 C
      const float* c32 = static_cast<const float*>(g.c.data);
      const DType ct = user.c.dtype;
      for_each_line(user, user.c, [&](int64_t t, int64_t dst, int64_t len) {
        convert(c32 + t * len, DType::kF32, cpu_detail::byte_at(user.c.data, ct, dst), ct,
                static_cast<size_t>(len));
      });
    }
    return Status::ok_status();
  });
}

Status CpuBackend::matmul_impl(const MatmulArgs& m) {
  cpu_detail::OpScope scope(*state_);
  return cpu_detail::guarded("matmul", [&]() -> Status {
    CpuState& s = *state_;
    MatmulKey key;
    key.m = m.trans_a ? m.a.cols() : m.a.rows();
    key.k = m.trans_a ? m.a.rows() : m.a.cols();
    key.n = m.trans_b ? m.b.rows() : m.b.cols();
    if (key.k == 0) {
      empty_product(m);
      return Status::ok_status();
    }
    key.ab = m.a.dtype;
    key.c = m.c.dtype;
    key.has_bias = !m.bias.empty();
    key.bias = key.has_bias ? m.bias.dtype : DType::kF32;
    key.trans_a = m.trans_a;
    key.trans_b = m.trans_b;
    key.alpha_bits = std::bit_cast<uint32_t>(m.alpha);
    key.beta_bits = std::bit_cast<uint32_t>(m.beta == 0.0f ? 0.0f : m.beta);  // -0 == 0

    const void* a = m.a.data;
    const void* b = m.b.data;
    void* c = m.c.data;
    const void* bias = m.bias.data;
    float* c32 = nullptr;  // FP32 stand-in for a widened (f16/bf16) C
    if (widened(s, m.a.dtype)) {
      const DType low = m.a.dtype;
      float* a32 = s.a32.get(static_cast<size_t>(m.a.numel()));
      float* b32 = s.b32.get(static_cast<size_t>(m.b.numel()));
      widen(m.a.data, low, a32, m.a.numel());
      widen(m.b.data, low, b32, m.b.numel());
      a = a32;
      b = b32;
      key.ab = DType::kF32;
      if (m.c.dtype == low) {
        c32 = s.c32.get(static_cast<size_t>(m.c.numel()));
        if (m.beta != 0.0f) widen(m.c.data, low, c32, m.c.numel());
        c = c32;
        key.c = DType::kF32;
      }
      if (key.has_bias && m.bias.dtype == low) {
        float* bias32 = s.bias32.get(static_cast<size_t>(m.bias.numel()));
        widen(m.bias.data, low, bias32, m.bias.numel());
        bias = bias32;
        key.bias = DType::kF32;
      }
    }

    MatmulPlan* plan = s.matmul_plans.find(key);
    if (plan == nullptr) plan = &s.matmul_plans.insert(key, make_plan(s, key, m.alpha, m.beta));

    std::unordered_map<int, memory> args;
    args.reserve(6);
    args.emplace(DNNL_ARG_SRC, memory(plan->a, s.engine, const_cast<void*>(a)));
    args.emplace(DNNL_ARG_WEIGHTS, memory(plan->b, s.engine, const_cast<void*>(b)));
    args.emplace(DNNL_ARG_DST, memory(plan->c, s.engine, c));
    if (key.has_bias) {
      const int slot =
          plan->bias_as_post_op
              ? (DNNL_ARG_ATTR_MULTIPLE_POST_OP(plan->bias_post_op_index) | DNNL_ARG_SRC_1)
              : DNNL_ARG_BIAS;
      args.emplace(slot, memory(plan->bias, s.engine, const_cast<void*>(bias)));
    }
    if (const size_t bytes = plan->scratchpad.get_size(); bytes > 0) {
      args.emplace(DNNL_ARG_SCRATCHPAD,
                   memory(plan->scratchpad, s.engine, s.scratchpad.get(bytes)));
    }
    plan->primitive.execute(s.stream, args);
    s.stream.wait();

    if (c32 != nullptr) {  // round the FP32 result once into the f16/bf16 C
      const int64_t n = m.c.numel();
      const DType ct = m.c.dtype;
      cpu_detail::parallel_blocks(n, [&](int64_t b0, int64_t e0) {
        convert(c32 + b0, DType::kF32, cpu_detail::byte_at(m.c.data, ct, b0), ct,
                static_cast<size_t>(e0 - b0));
      });
    }
    return Status::ok_status();
  });
}

}  // namespace ampd
