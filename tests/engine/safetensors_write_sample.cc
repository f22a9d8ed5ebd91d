// Writes a safetensors checkpoint with known tensors and metadata to argv[1], for
// tests/python/check_safetensors.py to read with numpy (and the safetensors package when
// present). The values here and there must agree.
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/safetensors.h"

namespace {

static_assert(std::endian::native == std::endian::little, "tensor bytes are little-endian");

template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> out(v.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  using ampd::DType;
  using ampd::engine::StFile;
  using ampd::engine::StTensor;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT.safetensors\n", argv[0]);
    return 2;
  }
  StFile f;
  f.tensors.push_back(StTensor{"fc1.weight",
                               DType::kF32,
                               {2, 3},
                               bytes_of<float>({0.f, 1.f, -2.5f, 3.25f, 1e-3f, -65504.f})});
  f.tensors.push_back(StTensor{"fc1.bias", DType::kF32, {3}, bytes_of<float>({0.5f, -0.5f, 7.f})});
  // 1.0, -2.0, 0.5, 65504 (max), 2^-24 (smallest subnormal), -0.0 as IEEE half bits.
  f.tensors.push_back(
      StTensor{"half",
               DType::kF16,
               {2, 3},
               bytes_of<uint16_t>({0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x8000})});
  // 1.0, -2.0, 3.140625, 0.5 as bfloat16 bits.
  f.tensors.push_back(StTensor{
      "brain", DType::kBF16, {2, 2}, bytes_of<uint16_t>({0x3F80, 0xC000, 0x4049, 0x3F00})});
  f.tensors.push_back(StTensor{
      "labels", DType::kI32, {4}, bytes_of<int32_t>({0, -1, 2147483647, -2147483647 - 1})});
  f.tensors.push_back(StTensor{"mask", DType::kU8, {5}, {0, 1, 127, 128, 255}});
  f.tensors.push_back(StTensor{"scale", DType::kF32, {}, bytes_of<float>({65536.f})});
  f.metadata["step"] = "1234";
  f.metadata["scaler"] = R"({"scale":65536.0,"growth_tracker":7})";
  f.metadata["note"] = "h\xc3\xa9llo \xe2\x9c\x93";
  const ampd::Status s = ampd::engine::write_safetensors(argv[1], f);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.to_string().c_str());
    return 1;
  }
  return 0;
}
