// The geometry of one Backend::batched_matmul call, normalized for the implementations
// (reference, CPU, CUDA) and for validation (backend.cc). Header-only.
//
//   unit_matrix_strides()  the (row, col) strides of a stored matrix with one unit stride,
//                          with canonical strides for dimensions of size <= 1, or nullopt
//   batched_geometry()     every operand as op(X): rows x cols, row/col strides (one of them
//                          1), and the batch as outer x inner products with a stride for
//                          each; batch dimensions that merge into one uniform stride are
//                          merged (outer == 1), so a 4-D call on contiguous tensors is one
//                          3-D strided batch.
//
// Element (o, i, r, c) of an operand is at data + o * outer_stride + i * inner_stride +
// r * row_stride + c * col_stride (elements).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>

#include "kernels/backend.h"
#include "kernels/tensor.h"

namespace ampd {

// The (row, col) strides of a stored rows x cols matrix if one of them is 1 and rows /
// columns do not overlap (the other stride >= the extent of the unit-stride dimension);
// nullopt otherwise. A dimension of size <= 1 gets a canonical stride first, so a column
// vector is row-major with any row stride >= 1, a row vector with a non-unit stride is
// column-major, and an empty or 1 x 1 matrix is dense row-major.
inline std::optional<std::array<int64_t, 2>> unit_matrix_strides(int64_t rows, int64_t cols,
                                                                 int64_t sr, int64_t sc) {
  if (rows <= 0 || cols <= 0) return std::array<int64_t, 2>{std::max<int64_t>(cols, 1), 1};
  if (cols == 1) sc = 1;
  if (rows == 1) sr = sc == 1 ? cols : 1;
  if (sc == 1 && sr >= cols) return std::array<int64_t, 2>{sr, sc};
  if (sr == 1 && sc >= rows) return std::array<int64_t, 2>{sr, sc};
  return std::nullopt;
}

struct BatchedOperand {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0, cols = 0;              // of op(X): M x K (A), K x N (B), M x N (C)
  int64_t row_stride = 0, col_stride = 0;  // elements; one is 1 (C: col_stride == 1)
  int64_t outer_stride = 0, inner_stride = 0;

  // Row-major (unit column stride) or column-major (unit row stride) with leading
  // dimension ld(), as BLAS sees a matrix.
  bool row_major() const { return col_stride == 1; }
  int64_t ld() const { return row_major() ? row_stride : col_stride; }
  // Elements from the first to one past the last element of one matrix.
  int64_t span() const {
    if (rows <= 0 || cols <= 0) return 0;
    return (rows - 1) * row_stride + (cols - 1) * col_stride + 1;
  }
  int64_t offset(int64_t o, int64_t i) const { return o * outer_stride + i * inner_stride; }
};

struct BatchedGeometry {
  int64_t outer = 1, inner = 1;  // outer * inner products; outer == 1 when uniform
  int64_t m = 0, n = 0, k = 0;
  BatchedOperand a, b, c;  // op(A) M x K, op(B) K x N, C M x N

  int64_t batch() const { return outer * inner; }

  // Merges the two batch levels when every operand's outer stride is inner * its inner
  // stride (or there is only one level), and gives a batch level of size 1 the stride of
  // a dense batch (libraries like dense-looking strides better than arbitrary ones).
  void merge_batches() {
    BatchedOperand* ops[] = {&a, &b, &c};
    if (inner == 1) {
      inner = outer;
      outer = 1;
      for (BatchedOperand* x : ops) x->inner_stride = x->outer_stride;
    }
    if (outer > 1) {
      bool uniform = true;
      for (BatchedOperand* x : ops) uniform &= x->outer_stride == x->inner_stride * inner;
      if (uniform) {
        inner *= outer;
        outer = 1;
      }
    }
    for (BatchedOperand* x : ops) {
      if (inner == 1) x->inner_stride = x->span();
      if (outer == 1) x->outer_stride = x->inner_stride * inner;
    }
  }
};

namespace batched_detail {

// The operand op(X) of a validated view t (3-D or 4-D), transposed if `trans`.
inline BatchedOperand operand(const Tensor& t, bool trans) {
  BatchedOperand x;
  x.data = t.data;
  x.dtype = t.dtype;
  const int64_t rows = t.size(-2), cols = t.size(-1);
  const auto st = unit_matrix_strides(rows, cols, t.stride(-2), t.stride(-1))
                      .value_or(std::array<int64_t, 2>{t.stride(-2), t.stride(-1)});
  x.rows = trans ? cols : rows;
  x.cols = trans ? rows : cols;
  x.row_stride = trans ? st[1] : st[0];
  x.col_stride = trans ? st[0] : st[1];
  if (t.ndim == 4) {
    x.outer_stride = t.size(0) == 1 ? 0 : t.stride(0);
    x.inner_stride = t.size(1) == 1 ? 0 : t.stride(1);
  } else {
    x.inner_stride = t.size(0) == 1 ? 0 : t.stride(0);
  }
  return x;
}

}  // namespace batched_detail

// For arguments that Backend::batched_matmul has validated.
inline BatchedGeometry batched_geometry(const BatchedMatmulArgs& args) {
  BatchedGeometry g;
  g.a = batched_detail::operand(args.a, args.trans_a);
  g.b = batched_detail::operand(args.b, args.trans_b);
  g.c = batched_detail::operand(args.c, false);
  g.m = g.c.rows;
  g.n = g.c.cols;
  g.k = g.a.cols;
  if (args.c.ndim == 4) {
    g.outer = args.c.size(0);
    g.inner = args.c.size(1);
  } else {
    g.inner = args.c.size(0);
  }
  g.merge_batches();
  return g;
}

}  // namespace ampd
