// Loading the CUDA backend plugin with dlopen. Lives in ampd_kernels (no oneDNN) so that
// the CUDA tests and benchmarks build with the CUDA toolkit alone.
#include <dlfcn.h>

#include <filesystem>
#include <vector>

#include "kernels/backend_factory.h"

namespace ampd {

namespace {

std::string executable_dir() {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return ".";
  return exe.parent_path().string();
}

}  // namespace

StatusOr<std::unique_ptr<Backend>> load_cuda_backend(const std::string& plugin_dir) {
  const std::string dir = plugin_dir.empty() ? executable_dir() : plugin_dir;
  std::vector<std::string> candidates = {dir + "/libampd_backend_cuda.so",
                                         dir + "/../lib/libampd_backend_cuda.so"};
  std::string tried;
  void* handle = nullptr;
  for (const auto& path : candidates) {
    if (!std::filesystem::exists(path)) {
      tried += (tried.empty() ? "" : ", ") + path;
      continue;
    }
    // RTLD_LOCAL keeps cuBLASLt's symbols (and its static TLS) to the plugin.
    handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* err = dlerror();
      return unavailable("cannot load the CUDA backend plugin " + path + ": " +
                         (err != nullptr ? err : "unknown error") +
                         " (are the CUDA 13 runtime and cuBLAS libraries installed?)");
    }
    break;
  }
  if (handle == nullptr) {
    return unavailable("the CUDA backend plugin was not built (looked for " + tried +
                       "; build on a machine with nvcc to get it)");
  }
  auto entry = reinterpret_cast<BackendPluginEntry>(dlsym(handle, kCudaPluginEntryPoint));
  if (entry == nullptr) {
    return unavailable(std::string("the CUDA plugin has no entry point ") + kCudaPluginEntryPoint);
  }
  char error[512] = {0};
  Backend* backend = entry(kBackendPluginApiVersion, error, sizeof error);
  if (backend == nullptr) {
    return unavailable(error[0] != 0 ? std::string(error) : "the CUDA backend could not start");
  }
  // The handle stays open for the life of the process: the backend's code lives there.
  return std::unique_ptr<Backend>(backend);
}

}  // namespace ampd
