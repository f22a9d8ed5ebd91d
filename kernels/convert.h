// Bulk FP32 <-> FP16 / BF16 conversions, vectorized with runtime CPU dispatch.
//
// Every implementation is bit-identical to the scalar definitions in kernels/half.h for
// every input, including NaN payloads, FP32 subnormals and the overflow edges: round to
// nearest even on the full FP32 value, exact widening, NaN always comes out quiet. The
// results do not depend on MXCSR (rounding mode, DAZ, FTZ).
//
// The implementation is chosen once per process, on first use, from the CPU's features:
//   "avx512bf16+f16c"  AVX-512 F/BW/VL + AVX512_BF16 + F16C: 16 lanes per instruction
//   "f16c+avx2"        F16C + AVX2: 8 lanes, FP32->BF16 rounded with integer arithmetic
//   "scalar"           kernels/half.h, element by element
// AMPD_CONVERT_ISA=<name> in the environment forces a supported implementation (e.g.
// "scalar" to rule the SIMD paths out while debugging numerics).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/dtype.h"

namespace ampd {

// src and dst must not overlap. n is a count of elements; any alignment is accepted.
void convert_f32_to_f16(const float* src, uint16_t* dst, size_t n);
void convert_f16_to_f32(const uint16_t* src, float* dst, size_t n);
void convert_f32_to_bf16(const float* src, uint16_t* dst, size_t n);
void convert_bf16_to_f32(const uint16_t* src, float* dst, size_t n);

// Converts n elements between any two of F32, F16 and BF16. F16 <-> BF16 goes through
// FP32: widening is exact, so the result is rounded once (as if converted directly).
// The same dtype on both sides is a copy (for any dtype, as memmove). Any other pair
// (an integer dtype on one side only) is a programming error and aborts.
void convert(const void* src, DType src_type, void* dst, DType dst_type, size_t n);

// Name of the implementation picked for this process (see above).
const char* conversion_isa();

// One implementation of the four bulk conversions.
struct ConversionImpl {
  const char* name;
  void (*f32_to_f16)(const float*, uint16_t*, size_t);
  void (*f16_to_f32)(const uint16_t*, float*, size_t);
  void (*f32_to_bf16)(const float*, uint16_t*, size_t);
  void (*bf16_to_f32)(const uint16_t*, float*, size_t);
};

// Every implementation this CPU can run, fastest first; "scalar" is always last. For
// tests and benchmarks, which check each against the scalar one.
std::vector<ConversionImpl> available_conversion_impls();

}  // namespace ampd
