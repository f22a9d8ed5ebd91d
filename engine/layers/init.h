// Initial parameter values from a counter-based hash: a pure function of (seed, layer,
// tensor, element), so initialization does not depend on the backend, the thread count
// or the order in which parameters are created.
#pragma once

#include <cstdint>

#include "kernels/dropout_hash.h"

namespace ampd::engine {

// Uniform in [-bound, bound).
inline float init_uniform(uint64_t seed, int64_t layer, int64_t tensor, int64_t i, float bound) {
  const uint64_t h = splitmix64(splitmix64(splitmix64(seed ^ 0x1a17ull) + layer) + tensor) ^
                     static_cast<uint64_t>(i);
  const double u = static_cast<double>(splitmix64(h) >> 11) * 0x1p-53;  // [0, 1)
  return static_cast<float>((2.0 * u - 1.0) * bound);
}

}  // namespace ampd::engine
