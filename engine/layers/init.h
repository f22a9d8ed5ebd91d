// Initial parameter values from a counter-based hash: a pure function of (seed, layer,
// tensor, element), so initialization does not depend on the backend, the thread count
// or the order in which parameters are created.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

#include "kernels/dropout_hash.h"

namespace ampd::engine {

// Uniform in [-bound, bound).
inline float init_uniform(uint64_t seed, int64_t layer, int64_t tensor, int64_t i, float bound) {
  const uint64_t h = splitmix64(splitmix64(splitmix64(seed ^ 0x1a17ull) + layer) + tensor) ^
                     static_cast<uint64_t>(i);
  const double u = static_cast<double>(splitmix64(h) >> 11) * 0x1p-53;  // [0, 1)
  return static_cast<float>((2.0 * u - 1.0) * bound);
}

// Normal N(0, std^2) by Box-Muller on two hashed uniforms (GPT-2 / nanoGPT initialization).
inline float init_normal(uint64_t seed, int64_t layer, int64_t tensor, int64_t i, float std) {
  const uint64_t h = splitmix64(splitmix64(splitmix64(seed ^ 0x6e6full) + layer) + tensor) ^
                     static_cast<uint64_t>(i);
  const uint64_t a = splitmix64(h), b = splitmix64(a ^ 0x9e3779b97f4a7c15ull);
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1p-53;  // (0, 1]
  const double u2 = static_cast<double>(b >> 11) * 0x1p-53;          // [0, 1)
  const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  return static_cast<float>(z * std);
}

}  // namespace ampd::engine
