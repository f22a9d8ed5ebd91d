// The plugin's single exported symbol (backend_factory.h): ampd dlopens
// libampd_backend_cuda.so and calls this to get a CudaBackend, or nullptr with a reason.
// Everything else in the plugin is hidden (-fvisibility=hidden, --exclude-libs), so its
// copies of ampd_kernels and the CUDA runtime never clash with the executable's symbols.
// Nothing may throw across this C boundary, and nothing here may abort: a missing GPU is an
// ordinary answer ("no CUDA GPU: ..."), which `--backend auto` turns into one log line.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "kernels/backend_factory.h"
#include "kernels/cuda/cuda_backend.h"

namespace {

void write_error(char* error, size_t len, const std::string& message) {
  if (error == nullptr || len == 0) return;
  std::snprintf(error, len, "%s", message.c_str());
}

}  // namespace

extern "C" __attribute__((visibility("default"))) ampd::Backend* ampd_create_cuda_backend(
    int api_version, char* error, size_t error_len) {
  if (api_version != ampd::kBackendPluginApiVersion) {
    write_error(error, error_len,
                "the CUDA backend plugin speaks plugin API version " +
                    std::to_string(ampd::kBackendPluginApiVersion) + " but ampd asked for " +
                    std::to_string(api_version) + "; rebuild the plugin with this ampd");
    return nullptr;
  }
  try {
    auto made = ampd::make_cuda_backend();
    if (!made.ok()) {
      write_error(error, error_len, made.status().message());
      return nullptr;
    }
    return std::move(made).value().release();
  } catch (const std::exception& e) {
    write_error(error, error_len, std::string("the CUDA backend could not start: ") + e.what());
  } catch (...) {
    write_error(error, error_len, "the CUDA backend could not start: unknown exception");
  }
  return nullptr;
}
