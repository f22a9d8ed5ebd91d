// The view arithmetic of kernels/tensor.h (contiguous, view, split, narrowed, transposed,
// is_contiguous, rows/cols, describe) and the batched_matmul geometry built on it
// (kernels/batched_geometry.h), with exact expectations. No backend: views never touch
// the memory they describe, so a fake base address is enough.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <vector>

#include "kernels/batched_geometry.h"
#include "kernels/tensor.h"

namespace ampd {
namespace {

using Dims = std::vector<int64_t>;

Dims shape_of(const Tensor& t) {
  return Dims(t.shape.begin(), t.shape.begin() + t.ndim);
}
Dims strides_of(const Tensor& t) {
  return Dims(t.strides.begin(), t.strides.begin() + t.ndim);
}
// Element offset of a view's start from `base`, in elements of the view's dtype.
int64_t offset_of(const Tensor& t, const void* base) {
  return (static_cast<const char*>(t.data) - static_cast<const char*>(base)) /
         static_cast<int64_t>(dtype_size(t.dtype));
}

alignas(64) char g_memory[1 << 16];  // never read: only addresses are computed

TEST(Tensor, MatrixConstructorIsContiguousRowMajor) {
  const Tensor t(g_memory, DType::kF16, 5, 7);
  EXPECT_EQ(t.ndim, 2);
  EXPECT_EQ(shape_of(t), (Dims{5, 7}));
  EXPECT_EQ(strides_of(t), (Dims{7, 1}));
  EXPECT_EQ(t.numel(), 35);
  EXPECT_EQ(t.bytes(), 70u);
  EXPECT_EQ(t.rows(), 5);
  EXPECT_EQ(t.cols(), 7);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_FALSE(t.empty());
  EXPECT_EQ(t.describe(), "f16[5x7]");
}

TEST(Tensor, DefaultIsEmpty) {
  const Tensor t;
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(t.ndim, 0);
  EXPECT_EQ(t.numel(), 0);
  EXPECT_EQ(t.rows(), 0);
  EXPECT_EQ(t.cols(), 0);
  EXPECT_EQ(t.bytes(), 0u);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.describe(), "f32[]");
}

TEST(Tensor, ContiguousShapesAndStrides) {
  const Tensor t = Tensor::contiguous(g_memory, DType::kF32, {2, 3, 4});
  EXPECT_EQ(t.ndim, 3);
  EXPECT_EQ(shape_of(t), (Dims{2, 3, 4}));
  EXPECT_EQ(strides_of(t), (Dims{12, 4, 1}));
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.bytes(), 96u);
  EXPECT_EQ(t.rows(), 6);  // every leading dimension flattened
  EXPECT_EQ(t.cols(), 4);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_EQ(t.size(0), 2);
  EXPECT_EQ(t.stride(-2), 4);
  EXPECT_EQ(t.stride(0), 12);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.describe(), "f32[2x3x4]");

  const Tensor v = Tensor::contiguous(g_memory, DType::kBF16, {7});
  EXPECT_EQ(v.ndim, 1);
  EXPECT_EQ(strides_of(v), (Dims{1}));
  EXPECT_EQ(v.rows(), 1);
  EXPECT_EQ(v.cols(), 7);

  const Tensor four = Tensor::contiguous(g_memory, DType::kF32, {2, 3, 4, 5});
  EXPECT_EQ(strides_of(four), (Dims{60, 20, 5, 1}));
  EXPECT_EQ(four.rows(), 24);
  EXPECT_EQ(four.cols(), 5);
}

// The bug fixed with these tests: a fifth dimension was silently dropped, giving a tensor
// of another shape and size. Now it fails like split() does: an empty tensor.
TEST(Tensor, ContiguousPastFourDimensionsFails) {
  const Tensor t = Tensor::contiguous(g_memory, DType::kF32, {2, 3, 4, 5, 6});
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(t.ndim, 0);
  EXPECT_EQ(t.numel(), 0);
  const Tensor m(g_memory, DType::kF32, 6, 20);
  EXPECT_TRUE(m.view({1, 2, 3, 4, 5}).empty());
}

TEST(Tensor, SizeOneDimensionsMayHaveAnyStride) {
  Tensor t = Tensor::contiguous(g_memory, DType::kF32, {1, 5, 1});
  t.strides[0] = 999;
  t.strides[2] = 7;
  EXPECT_TRUE(t.is_contiguous());
  t.strides[1] = 2;
  EXPECT_FALSE(t.is_contiguous());
}

TEST(Tensor, ViewReshapesTheSameMemory) {
  const Tensor m(g_memory, DType::kF32, 6, 20);
  const Tensor v = m.view({2, 3, 20});
  EXPECT_EQ(v.data, m.data);
  EXPECT_EQ(v.dtype, DType::kF32);
  EXPECT_EQ(shape_of(v), (Dims{2, 3, 20}));
  EXPECT_EQ(strides_of(v), (Dims{60, 20, 1}));
  const Tensor r = v.reshaped(12, 10);
  EXPECT_EQ(r.data, m.data);
  EXPECT_EQ(shape_of(r), (Dims{12, 10}));
  EXPECT_EQ(strides_of(r), (Dims{10, 1}));
}

TEST(Tensor, RowSliceOfAMatrixView) {
  const Tensor t = Tensor::contiguous(g_memory, DType::kBF16, {4, 3, 8});  // 12 x 8 matrix
  const Tensor s = t.row_slice(5, 4);
  EXPECT_EQ(offset_of(s, g_memory), 40);
  EXPECT_EQ(shape_of(s), (Dims{4, 8}));
  EXPECT_EQ(strides_of(s), (Dims{8, 1}));
  EXPECT_TRUE(s.is_contiguous());
}

TEST(Tensor, NarrowedMovesTheStartKeepsTheStrides) {
  const Tensor t = Tensor::contiguous(g_memory, DType::kF16, {4, 6});
  const Tensor rows = t.narrowed(0, 1, 2);  // rows 1..2: still contiguous
  EXPECT_EQ(offset_of(rows, g_memory), 6);
  EXPECT_EQ(shape_of(rows), (Dims{2, 6}));
  EXPECT_EQ(strides_of(rows), (Dims{6, 1}));
  EXPECT_TRUE(rows.is_contiguous());

  const Tensor cols = t.narrowed(-1, 2, 3);  // columns 2..4: gaps between rows
  EXPECT_EQ(offset_of(cols, g_memory), 2);
  EXPECT_EQ(shape_of(cols), (Dims{4, 3}));
  EXPECT_EQ(strides_of(cols), (Dims{6, 1}));
  EXPECT_FALSE(cols.is_contiguous());
  EXPECT_EQ(cols.describe(), "f16[4x3] strides 6,1");
  EXPECT_EQ(cols.numel(), 12);
  EXPECT_EQ(cols.bytes(), 24u);  // the elements, not the span

  EXPECT_TRUE(t.narrowed(-1, 0, 6).is_contiguous());  // the whole dimension
}

TEST(Tensor, SplitDividesADimension) {
  const Tensor t = Tensor::contiguous(g_memory, DType::kF32, {2, 5, 12});
  const Tensor last = t.split(-1, 3, 4);
  EXPECT_EQ(last.ndim, 4);
  EXPECT_EQ(shape_of(last), (Dims{2, 5, 3, 4}));
  EXPECT_EQ(strides_of(last), (Dims{60, 12, 4, 1}));
  EXPECT_TRUE(last.is_contiguous());
  EXPECT_EQ(last.data, t.data);

  const Tensor first = t.split(0, 1, 2);
  EXPECT_EQ(shape_of(first), (Dims{1, 2, 5, 12}));
  EXPECT_EQ(strides_of(first), (Dims{120, 60, 12, 1}));

  const Tensor middle = Tensor::contiguous(g_memory, DType::kF32, {6, 7}).split(0, 2, 3);
  EXPECT_EQ(shape_of(middle), (Dims{2, 3, 7}));
  EXPECT_EQ(strides_of(middle), (Dims{21, 7, 1}));

  // A fifth dimension is refused.
  EXPECT_TRUE(last.split(-1, 2, 2).empty());
  EXPECT_EQ(last.split(-1, 2, 2).ndim, 0);
}

TEST(Tensor, TransposedSwapsShapeAndStrides) {
  const Tensor t = Tensor::contiguous(g_memory, DType::kF32, {2, 3, 4});
  const Tensor tt = t.transposed(-2, -1);
  EXPECT_EQ(shape_of(tt), (Dims{2, 4, 3}));
  EXPECT_EQ(strides_of(tt), (Dims{12, 1, 4}));
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.describe(), "f32[2x4x3] strides 12,1,4");
  EXPECT_EQ(tt.rows(), 8);
  EXPECT_EQ(tt.cols(), 3);
  const Tensor back = tt.transposed(1, 2);
  EXPECT_EQ(shape_of(back), shape_of(t));
  EXPECT_EQ(strides_of(back), strides_of(t));
  EXPECT_TRUE(back.is_contiguous());
  const Tensor outer = t.transposed(0, 2);
  EXPECT_EQ(shape_of(outer), (Dims{4, 3, 2}));
  EXPECT_EQ(strides_of(outer), (Dims{1, 4, 12}));
}

// The views of causal self-attention: Q, K and V as (B, H, T, D) heads of one fused
// (B, T, 3C) projection (C = H D), as tensor.h's header describes.
TEST(Tensor, AttentionHeadViewsOfAFusedProjection) {
  constexpr int64_t B = 2, T = 5, H = 3, D = 4, C = H * D;
  const Tensor qkv(g_memory, DType::kBF16, B * T, 3 * C);
  const Tensor x = qkv.view({B, T, 3 * C});
  for (int64_t part = 0; part < 3; ++part) {
    const Tensor h = x.narrowed(-1, part * C, C).split(-1, H, D).transposed(1, 2);
    EXPECT_EQ(offset_of(h, g_memory), part * C);
    EXPECT_EQ(shape_of(h), (Dims{B, H, T, D}));
    EXPECT_EQ(strides_of(h), (Dims{T * 3 * C, D, 3 * C, 1}));
    EXPECT_FALSE(h.is_contiguous());
    EXPECT_EQ(h.numel(), B * H * T * D);
    EXPECT_EQ(h.describe(), "bf16[2x3x5x4] strides 180,4,36,1");
  }
  // K^T per head: the last two dimensions swapped.
  const Tensor kt = x.narrowed(-1, C, C).split(-1, H, D).transposed(1, 2).transposed(-2, -1);
  EXPECT_EQ(shape_of(kt), (Dims{B, H, D, T}));
  EXPECT_EQ(strides_of(kt), (Dims{T * 3 * C, D, 1, 3 * C}));
  // The attention output y (B, T, C) seen per head.
  const Tensor y = Tensor::contiguous(g_memory, DType::kF32, {B, T, C}).split(-1, H, D);
  EXPECT_TRUE(y.is_contiguous());
  const Tensor yh = y.transposed(1, 2);
  EXPECT_EQ(strides_of(yh), (Dims{T * C, D, C, 1}));
  EXPECT_FALSE(yh.is_contiguous());
}

// ---- kernels/batched_geometry.h ------------------------------------------------------------

using Strides2 = std::array<int64_t, 2>;

TEST(BatchedGeometry, UnitMatrixStrides) {
  EXPECT_EQ(unit_matrix_strides(3, 4, 4, 1), (Strides2{4, 1}));    // dense row-major
  EXPECT_EQ(unit_matrix_strides(3, 4, 10, 1), (Strides2{10, 1}));  // padded rows
  EXPECT_EQ(unit_matrix_strides(3, 4, 1, 3), (Strides2{1, 3}));    // column-major
  EXPECT_EQ(unit_matrix_strides(3, 4, 1, 8), (Strides2{1, 8}));
  EXPECT_FALSE(unit_matrix_strides(3, 4, 2, 1).has_value());  // rows overlap
  EXPECT_FALSE(unit_matrix_strides(3, 4, 1, 2).has_value());  // columns overlap
  EXPECT_FALSE(unit_matrix_strides(3, 4, 8, 2).has_value());  // no unit stride
  EXPECT_FALSE(unit_matrix_strides(3, 4, 1, 1).has_value());
  // Size-1 dimensions get canonical strides.
  EXPECT_EQ(unit_matrix_strides(3, 1, 5, 77), (Strides2{5, 1}));  // a column, row-major
  EXPECT_EQ(unit_matrix_strides(1, 4, 0, 1), (Strides2{4, 1}));   // a dense row
  EXPECT_EQ(unit_matrix_strides(1, 4, 9, 6), (Strides2{1, 6}));   // a strided row
  EXPECT_EQ(unit_matrix_strides(1, 1, 0, 0), (Strides2{1, 1}));
  EXPECT_EQ(unit_matrix_strides(5, 0, 0, 1), (Strides2{1, 1}));  // empty
}

TEST(BatchedGeometry, ContiguousFourDMergesIntoOneBatch) {
  const Tensor a = Tensor::contiguous(g_memory, DType::kF32, {2, 3, 5, 7});
  const Tensor b = Tensor::contiguous(g_memory, DType::kF32, {2, 3, 7, 4});
  const Tensor c = Tensor::contiguous(g_memory, DType::kF32, {2, 3, 5, 4});
  const BatchedGeometry g = batched_geometry({.a = a, .b = b, .c = c});
  EXPECT_EQ(g.outer, 1);
  EXPECT_EQ(g.inner, 6);
  EXPECT_EQ(g.m, 5);
  EXPECT_EQ(g.n, 4);
  EXPECT_EQ(g.k, 7);
  EXPECT_EQ(g.a.inner_stride, 35);
  EXPECT_EQ(g.b.inner_stride, 28);
  EXPECT_EQ(g.c.inner_stride, 20);
  EXPECT_TRUE(g.a.row_major());
  EXPECT_EQ(g.a.ld(), 7);
}

TEST(BatchedGeometry, HeadViewsKeepTwoBatchLevels) {
  constexpr int64_t B = 2, T = 5, H = 3, D = 4, C = H * D;
  const Tensor x = Tensor::contiguous(g_memory, DType::kF16, {B, T, 3 * C});
  const auto head = [&](int64_t part) {
    return x.narrowed(-1, part * C, C).split(-1, H, D).transposed(1, 2);
  };
  const Tensor s = Tensor::contiguous(g_memory, DType::kF32, {B, H, T, T});
  // S = Q K^T with K^T as a transposed view (no flag).
  const BatchedGeometry g =
      batched_geometry({.a = head(0), .b = head(1).transposed(-2, -1), .c = s});
  EXPECT_EQ(g.outer, B);
  EXPECT_EQ(g.inner, H);
  EXPECT_EQ(g.m, T);
  EXPECT_EQ(g.n, T);
  EXPECT_EQ(g.k, D);
  EXPECT_EQ(g.a.outer_stride, T * 3 * C);
  EXPECT_EQ(g.a.inner_stride, D);
  EXPECT_TRUE(g.a.row_major());
  EXPECT_EQ(g.a.ld(), 3 * C);
  EXPECT_FALSE(g.b.row_major());  // op(B) = K^T: unit row stride
  EXPECT_EQ(g.b.ld(), 3 * C);
  EXPECT_EQ(g.b.rows, D);
  EXPECT_EQ(g.b.cols, T);
  EXPECT_EQ(g.c.outer_stride, H * T * T);
  EXPECT_EQ(g.c.inner_stride, T * T);
  // The same with the trans_b flag on K itself.
  const BatchedGeometry f = batched_geometry({.a = head(0), .b = head(1), .c = s, .trans_b = true});
  EXPECT_EQ(f.b.row_stride, g.b.row_stride);
  EXPECT_EQ(f.b.col_stride, g.b.col_stride);
  // B == 1: one batch level of H heads with stride D.
  const Tensor x1 = Tensor::contiguous(g_memory, DType::kF16, {1, T, 3 * C});
  const Tensor q1 = x1.narrowed(-1, 0, C).split(-1, H, D).transposed(1, 2);
  const Tensor s1 = Tensor::contiguous(g_memory, DType::kF32, {1, H, T, T});
  const BatchedGeometry g1 = batched_geometry({.a = q1, .b = q1, .c = s1, .trans_b = true});
  EXPECT_EQ(g1.outer, 1);
  EXPECT_EQ(g1.inner, H);
  EXPECT_EQ(g1.a.inner_stride, D);
}

}  // namespace
}  // namespace ampd
