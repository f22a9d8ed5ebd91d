// Choosing and creating a backend: "cpu" (oneDNN, built in), "cuda" (the plugin
// libampd_backend_cuda.so, loaded with dlopen when present and a GPU answers), or
// "auto" (CUDA when usable, else CPU with a note saying why).
//
// The CUDA backend is a plugin rather than a linked library (docs/ARCHITECTURE.md, The
// CUDA plugin): cuBLASLt's ~94 KB of static TLS makes pthread_create fail for civetweb's
// small thread stacks in any binary that links it, and a plugin lets one ampd binary run
// without CUDA libraries.
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace ampd {

// The plugin's single entry point (extern "C", checked against kBackendPluginApiVersion):
// returns a new Backend, or nullptr with a reason written to `error` (e.g. no GPU).
// 2: Backend gained batched_matmul (a new virtual, so the vtable changed).
inline constexpr int kBackendPluginApiVersion = 2;
inline constexpr const char* kCudaPluginEntryPoint = "ampd_create_cuda_backend";
using BackendPluginEntry = Backend* (*)(int api_version, char* error, size_t error_len);

struct BackendRequest {
  std::string kind = "auto";  // auto | cpu | cuda | reference
  int threads = 0;            // CPU threads, 0 = all cores
  std::string plugin_dir;     // where to look for the CUDA plugin; "" = next to the executable
};

struct BackendChoice {
  std::unique_ptr<Backend> backend;
  // For "auto": one line saying why CUDA was not used ("" when it was).
  std::string note;
};

// Unavailable with the reason when "cuda" was asked for and cannot be had;
// InvalidArgument for an unknown kind.
StatusOr<BackendChoice> create_backend(const BackendRequest& request);

// Tries to load the CUDA plugin; Unavailable with a reason a user can act on.
StatusOr<std::unique_ptr<Backend>> load_cuda_backend(const std::string& plugin_dir);

}  // namespace ampd
