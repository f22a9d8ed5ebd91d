// The counter-based dropout mask shared by every backend: element `counter` of a draw
// with `seed` is kept iff u >= p, where u in [0, 1) is the top 24 bits of a SplitMix64
// hash of (seed, counter). Being a pure function of its inputs, the mask is identical on
// CPU and GPU, independent of thread count, and needs no stored RNG state beyond
// (seed, offset) to be reproduced after a resume.
#pragma once

#include <cstdint>

#include "kernels/host_device.h"

namespace ampd {

AMPD_HOST_DEVICE constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

AMPD_HOST_DEVICE constexpr bool dropout_keep(uint64_t seed, uint64_t counter, float p) {
  const uint64_t h = splitmix64(splitmix64(seed) ^ counter);
  const float u = static_cast<float>(h >> 40) * 0x1p-24f;
  return u >= p;
}

}  // namespace ampd
