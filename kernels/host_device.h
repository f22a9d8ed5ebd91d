// AMPD_HOST_DEVICE marks small inline functions that the CUDA plugin shares with the
// host code (conversions, the dropout hash), so both sides compute identical bits.
#pragma once

#if defined(__CUDACC__)
#define AMPD_HOST_DEVICE __host__ __device__
#else
#define AMPD_HOST_DEVICE
#endif
