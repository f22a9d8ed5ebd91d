// Element types of tensors. Floating types are the three precisions of the numerics
// contract; I32 holds class labels, U8 dropout masks and per-tensor flags.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ampd {

enum class DType : uint8_t { kF32, kF16, kBF16, kI32, kU8 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI32: return 4;
    case DType::kU8: return 1;
  }
  return 0;
}

constexpr bool is_floating(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kI32: return "i32";
    case DType::kU8: return "u8";
  }
  return "?";
}

// "f32" / "fp32", "f16" / "fp16", "bf16", "i32", "u8".
constexpr std::optional<DType> parse_dtype(std::string_view s) {
  if (s == "f32" || s == "fp32") return DType::kF32;
  if (s == "f16" || s == "fp16") return DType::kF16;
  if (s == "bf16") return DType::kBF16;
  if (s == "i32") return DType::kI32;
  if (s == "u8") return DType::kU8;
  return std::nullopt;
}

}  // namespace ampd
