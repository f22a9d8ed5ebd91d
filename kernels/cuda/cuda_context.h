// What every CUDA launcher needs from the backend: its stream, a few device facts and
// scratch memory. CudaBackend owns one and passes it to the launchers in the .cu files,
// which therefore need no knowledge of the Backend class. (No launcher reads a verdict
// back to the host: ops only enqueue; download() and synchronize() wait.)
//
// Errors: every CUDA call and every kernel launch is followed by a check that RETURNS a
// Status (never exit/abort: one bad job must not take the server down). Out of memory is
// ResourceExhausted; an error that poisons the CUDA context (illegal address, launch
// failure) is Internal and says that the context is unusable.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "base/status.h"

namespace ampd::cuda {

// "cast: cudaErrorLaunchFailure (unspecified launch failure)" with the right code.
Status cuda_status(cudaError_t err, const std::string& what);

// Whether `err` leaves the CUDA context unusable (every later call fails the same way).
bool is_sticky_error(cudaError_t err);

struct CudaContext {
  cudaStream_t stream = nullptr;
  int device = 0;
  int sm_count = 1;
  // Device memory of at least `bytes`, 256-byte aligned, valid in stream order until the
  // next call (grow-only; an op that needs several regions asks once and partitions).
  std::function<StatusOr<void*>(size_t bytes)> scratch;
};

}  // namespace ampd::cuda

// Returns a Status from the enclosing function when a CUDA runtime call fails.
#define AMPD_CUDA_RETURN_IF_ERROR(expr, what)                   \
  do {                                                          \
    const cudaError_t ampd_cuda_err_ = (expr);                  \
    if (ampd_cuda_err_ != cudaSuccess) {                        \
      return ::ampd::cuda::cuda_status(ampd_cuda_err_, (what)); \
    }                                                           \
  } while (0)

// After every kernel launch: configuration errors show up here at once; errors during the
// kernel's execution surface at the next synchronizing call (download, synchronize).
#define AMPD_CUDA_CHECK_LAUNCH(what) AMPD_CUDA_RETURN_IF_ERROR(cudaGetLastError(), (what))
