// A non-owning, strided view of up to four dimensions in a backend's memory.
//
// Shapes and strides are in elements, outermost dimension first, as in PyTorch. A view
// never copies: reshaping a contiguous tensor, splitting heads ((B, T, C) ->
// (B, T, H, D) -> (B, H, T, D)), narrowing to the Q/K/V thirds of a fused projection, or
// swapping the last two dimensions only change the shape, the strides and the start.
//
// Which ops take which views (kernels/backend.h):
//   * batched_matmul takes strided 3-D/4-D views (batch dimensions, then the matrix).
//   * Every other op takes *contiguous* tensors and sees them as a row-major matrix:
//     rows() = the product of all but the last dimension, cols() = the last dimension.
//     So a (B, T, C) activation is a (B*T, C) matrix to Linear, LayerNorm, GELU and
//     Dropout, which all act on the last dimension. Backend validation rejects a
//     non-contiguous tensor there with a message naming the argument.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "kernels/dtype.h"

namespace ampd {

struct Tensor {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  DType dtype = DType::kF32;
  int ndim = 0;                             // 0 for an empty tensor
  std::array<int64_t, kMaxDims> shape{};    // shape[0..ndim)
  std::array<int64_t, kMaxDims> strides{};  // elements; strides[ndim-1] is the innermost

  Tensor() = default;
  // A contiguous row-major (rows, cols) matrix; a vector is 1 x n.
  Tensor(void* d, DType t, int64_t rows, int64_t cols) : data(d), dtype(t), ndim(2) {
    shape = {rows, cols, 0, 0};
    strides = {cols, 1, 0, 0};
  }
  // A contiguous tensor of the given shape (1 to kMaxDims dimensions). Fails (returns an
  // empty tensor) past kMaxDims dimensions, rather than dropping the extra ones.
  static Tensor contiguous(void* d, DType t, std::initializer_list<int64_t> dims) {
    if (dims.size() > static_cast<size_t>(kMaxDims)) return Tensor{};
    Tensor x;
    x.data = d;
    x.dtype = t;
    for (int64_t s : dims) x.shape[static_cast<size_t>(x.ndim++)] = s;
    x.set_contiguous_strides();
    return x;
  }

  // Size of dimension d; negative d counts from the end (-1 is the last).
  int64_t size(int d) const { return shape[static_cast<size_t>(d < 0 ? d + ndim : d)]; }
  int64_t stride(int d) const { return strides[static_cast<size_t>(d < 0 ? d + ndim : d)]; }
  int64_t numel() const {
    if (ndim == 0) return 0;
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[static_cast<size_t>(i)];
    return n;
  }
  // Bytes of the elements (numel * element size); for a strided view, not its span.
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool empty() const { return data == nullptr; }
  // Row-major with no gaps (size-1 dimensions may have any stride).
  bool is_contiguous() const {
    int64_t expect = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      const auto k = static_cast<size_t>(i);
      if (shape[k] != 1 && strides[k] != expect) return false;
      expect *= shape[k];
    }
    return true;
  }
  // The matrix an op sees: all leading dimensions flattened into rows.
  int64_t rows() const {
    if (ndim == 0) return 0;
    int64_t r = 1;
    for (int i = 0; i + 1 < ndim; ++i) r *= shape[static_cast<size_t>(i)];
    return r;
  }
  int64_t cols() const { return ndim == 0 ? 0 : shape[static_cast<size_t>(ndim - 1)]; }

  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }

  // ---- views (no copies) ----

  // Rows [begin, begin + count) of the matrix view of a contiguous tensor, as a matrix.
  Tensor row_slice(int64_t begin, int64_t count) const {
    return Tensor(element_address(begin * cols()), dtype, count, cols());
  }
  // The same contiguous memory as a (r, c) matrix.
  Tensor reshaped(int64_t r, int64_t c) const { return Tensor(data, dtype, r, c); }
  // The same contiguous memory with another shape of the same element count.
  Tensor view(std::initializer_list<int64_t> dims) const { return contiguous(data, dtype, dims); }
  // Dimensions d0 and d1 swapped (negative counts from the end): transposed(-2, -1) is
  // the transpose of every matrix of a batch; transposed(1, 2) turns (B, T, H, D) into
  // (B, H, T, D).
  Tensor transposed(int d0, int d1) const {
    Tensor t = *this;
    const auto a = static_cast<size_t>(d0 < 0 ? d0 + ndim : d0);
    const auto b = static_cast<size_t>(d1 < 0 ? d1 + ndim : d1);
    std::swap(t.shape[a], t.shape[b]);
    std::swap(t.strides[a], t.strides[b]);
    return t;
  }
  // Elements [start, start + length) along dimension d (negative counts from the end):
  // narrowed(-1, C, C) of a (B, T, 3C) projection is its K third, strides unchanged.
  Tensor narrowed(int d, int64_t start, int64_t length) const {
    Tensor t = *this;
    const auto k = static_cast<size_t>(d < 0 ? d + ndim : d);
    t.data = element_address(start * strides[k]);
    t.shape[k] = length;
    return t;
  }
  // Dimension d split into (outer, inner) with outer * inner == size(d): (B, T, C) ->
  // (B, T, H, C/H) with split(-1, H, C/H). Fails (returns an empty tensor) past 4 dims.
  Tensor split(int d, int64_t outer, int64_t inner) const {
    if (ndim >= kMaxDims) return Tensor{};
    Tensor t = *this;
    const auto k = static_cast<size_t>(d < 0 ? d + ndim : d);
    for (size_t i = static_cast<size_t>(ndim); i > k + 1; --i) {
      t.shape[i] = shape[i - 1];
      t.strides[i] = strides[i - 1];
    }
    t.shape[k] = outer;
    t.strides[k] = strides[k] * inner;
    t.shape[k + 1] = inner;
    t.strides[k + 1] = strides[k];
    ++t.ndim;
    return t;
  }

  // "f16[256x64]", "bf16[2x4x64x16] strides 8192,16,128,1" for non-contiguous views.
  std::string describe() const {
    std::string s = std::string(dtype_name(dtype)) + "[";
    for (int i = 0; i < ndim; ++i) {
      s += (i ? "x" : "") + std::to_string(shape[static_cast<size_t>(i)]);
    }
    s += "]";
    if (!is_contiguous()) {
      s += " strides ";
      for (int i = 0; i < ndim; ++i) {
        s += (i ? "," : "") + std::to_string(strides[static_cast<size_t>(i)]);
      }
    }
    return s;
  }

 private:
  void* element_address(int64_t offset) const {
    return static_cast<char*>(data) + offset * static_cast<int64_t>(dtype_size(dtype));
  }
  void set_contiguous_strides() {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      strides[static_cast<size_t>(i)] = s;
      s *= shape[static_cast<size_t>(i)];
    }
  }
};

}  // namespace ampd
