#include "kernels/backend_factory.h"

#include "kernels/cpu/cpu_backend.h"
#include "kernels/reference/reference_backend.h"

namespace ampd {

StatusOr<BackendChoice> create_backend(const BackendRequest& request) {
  BackendChoice choice;
  if (request.kind == "cuda") {
    AMPD_ASSIGN_OR_RETURN(choice.backend, load_cuda_backend(request.plugin_dir));
    return choice;
  }
  if (request.kind == "auto") {
    auto cuda = load_cuda_backend(request.plugin_dir);
    if (cuda.ok()) {
      choice.backend = std::move(cuda).value();
      return choice;
    }
    choice.note = "CUDA backend not used (" + cuda.status().message() + "); using the CPU backend";
  } else if (request.kind == "reference") {
    choice.backend = make_reference_backend();
    return choice;
  } else if (request.kind != "cpu") {
    return invalid_argument("--backend: must be one of auto, cpu, cuda, reference; got '" +
                            request.kind + "'");
  }
  CpuBackendOptions opts;
  opts.threads = request.threads;
  AMPD_ASSIGN_OR_RETURN(choice.backend, make_cpu_backend(opts));
  return choice;
}

}  // namespace ampd
