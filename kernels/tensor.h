// A non-owning view of a dense, row-major 2-D tensor in a backend's memory.
// Vectors are 1 x n. The engine's models are sequences of (batch, features) matrices,
// so two dimensions cover every op; `ld` is not exposed: rows are contiguous.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/dtype.h"

namespace ampd {

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;

  int64_t numel() const { return rows * cols; }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool empty() const { return data == nullptr; }
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
  // A view of rows [begin, begin + count).
  Tensor row_slice(int64_t begin, int64_t count) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + static_cast<size_t>(begin * cols) * dtype_size(dtype);
    t.rows = count;
    return t;
  }
  // The same memory seen with another shape of the same element count.
  Tensor reshaped(int64_t r, int64_t c) const {
    Tensor t = *this;
    t.rows = r;
    t.cols = c;
    return t;
  }
  // "f16[256x64]"
  std::string describe() const {
    return std::string(dtype_name(dtype)) + "[" + std::to_string(rows) + "x" +
           std::to_string(cols) + "]";
  }
};

}  // namespace ampd
