// conversion_dump OUT_DIR: writes FP32 inputs and ampd's conversions of them, for
// tests/python/check_conversions.py to compare with numpy.float16 and ml_dtypes.bfloat16.
//
// Files (raw little-endian arrays, no header):
//   inputs_f32.bin                 uint32  FP32 bit patterns: specials, every FP16 / BF16
//                                          value and midpoint +-3 ulps (both signs), and
//                                          1M seeded random patterns
//   impls.txt                      one implementation name a line
//   <impl>/f32_to_f16.bin          uint16  per input
//   <impl>/f32_to_bf16.bin         uint16  per input
//   <impl>/f16_to_f32.bin          uint32  for each 16-bit pattern 0..65535
//   <impl>/bf16_to_f32.bin         uint32  for each 16-bit pattern 0..65535
//   convert_f16_to_bf16.bin        uint16  generic convert(), each pattern 0..65535
//   convert_bf16_to_f16.bin        uint16  generic convert(), each pattern 0..65535

#include <bit>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "kernels/convert.h"
#include "kernels/half.h"

namespace {

template <typename T>
bool write_file(const std::filesystem::path& path, const std::vector<T>& data) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    std::perror(path.c_str());
    return false;
  }
  const bool ok = std::fwrite(data.data(), sizeof(T), data.size(), f) == data.size();
  return std::fclose(f) == 0 && ok;
}

std::vector<uint32_t> make_inputs() {
  std::vector<uint32_t> s = {0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000,
                             0xffc00000, 0x7f800001, 0xff800001, 0x7fa00000, 0x7fffffff,
                             0x00000001, 0x80000001, 0x007fffff, 0x807fffff, 0x00800000,
                             0x7f7fffff, 0x7f7f8000, 0x7f7f7fff, 0x477fefff, 0x477ff000};
  auto around = [&s](uint32_t b) {
    for (int d = -3; d <= 3; ++d) {
      s.push_back(b + static_cast<uint32_t>(d));
      s.push_back((b + static_cast<uint32_t>(d)) ^ 0x80000000u);
    }
  };
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const float v = ampd::f16_bits_to_f32(static_cast<uint16_t>(h));
    around(std::bit_cast<uint32_t>(v));
    if (h + 1 < 0x7c00) {  // midpoint to the next value, exact in FP32
      const float next = ampd::f16_bits_to_f32(static_cast<uint16_t>(h + 1));
      around(std::bit_cast<uint32_t>((v + next) / 2));
    }
  }
  around(0x477ff000);  // 65520: midpoint of 65504 and 2^16
  for (uint32_t b = 0; b < 0x7f80; ++b) {
    around(b << 16);
    around((b << 16) | 0x8000u);
  }
  std::mt19937 rng(1234567);
  for (int i = 0; i < 1'000'000; ++i) s.push_back(static_cast<uint32_t>(rng()));
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path out = argv[1];
  std::filesystem::create_directories(out);

  const std::vector<uint32_t> inputs = make_inputs();
  std::vector<float> f32(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) f32[i] = std::bit_cast<float>(inputs[i]);
  std::vector<uint16_t> patterns(65536);
  for (uint32_t i = 0; i < patterns.size(); ++i) patterns[i] = static_cast<uint16_t>(i);

  bool ok = write_file(out / "inputs_f32.bin", inputs);
  std::string names, listed;
  for (const ampd::ConversionImpl& impl : ampd::available_conversion_impls()) {
    const std::filesystem::path dir = out / impl.name;
    std::filesystem::create_directories(dir);
    std::vector<uint16_t> narrow(f32.size());
    impl.f32_to_f16(f32.data(), narrow.data(), f32.size());
    ok = ok && write_file(dir / "f32_to_f16.bin", narrow);
    impl.f32_to_bf16(f32.data(), narrow.data(), f32.size());
    ok = ok && write_file(dir / "f32_to_bf16.bin", narrow);
    std::vector<float> wide(patterns.size());
    impl.f16_to_f32(patterns.data(), wide.data(), patterns.size());
    ok = ok && write_file(dir / "f16_to_f32.bin", wide);
    impl.bf16_to_f32(patterns.data(), wide.data(), patterns.size());
    ok = ok && write_file(dir / "bf16_to_f32.bin", wide);
    names += std::string(impl.name) + "\n";
    listed += (listed.empty() ? "" : ", ") + std::string(impl.name);
  }
  std::vector<uint16_t> cross(patterns.size());
  ampd::convert(patterns.data(), ampd::DType::kF16, cross.data(), ampd::DType::kBF16,
                patterns.size());
  ok = ok && write_file(out / "convert_f16_to_bf16.bin", cross);
  ampd::convert(patterns.data(), ampd::DType::kBF16, cross.data(), ampd::DType::kF16,
                patterns.size());
  ok = ok && write_file(out / "convert_bf16_to_f16.bin", cross);
  ok = ok && write_file(out / "impls.txt", std::vector<char>(names.begin(), names.end()));
  if (!ok) return 1;
  std::printf("conversion_dump: %zu FP32 inputs, implementations: %s (dispatched: %s)\n",
              inputs.size(), listed.c_str(), ampd::conversion_isa());
  return 0;
}
