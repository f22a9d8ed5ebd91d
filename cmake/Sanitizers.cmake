# AMPD_SANITIZE: build every target (libraries, executables, tests; C and C++) with
# sanitizers. `make test-asan` / `make test-tsan` (Makefile) configure build-asan/ and
# build-tsan/ with it and run ctest.
#
#   address,undefined  ASan + LSan + UBSan
#   thread             TSan (cannot be combined with address)
#
# Flags: -fno-sanitize-recover=all makes every UBSan finding fatal (a failing test, not a
# line in a log); -fno-omit-frame-pointer keeps the fast unwinder's stacks whole.
# Optimization: -O1 -g unless AMPD_SANITIZE_FLAGS says otherwise (the sanitizers' own
# recommendation: fast enough, and stacks stay readable).
#
# ThreadSanitizer and third-party threads (tests/sanitize/README.md has the details):
# - libgomp is not instrumented, so TSan cannot see its barriers: the CPU backend's own
#   `omp parallel` loops are compiled serially (-fopenmp-simd, kernels/CMakeLists.txt);
#   oneDNN keeps its OpenMP threads (uninstrumented code, nothing for TSan to see).
# - GCC instruments target_clones' ifunc resolvers, which ld.so runs before the TSan
#   runtime is up: AMPD_CPU_CLONES is empty under __SANITIZE_THREAD__ (cpu_internal.h).
#
# Runtime options: every executable links sanitizer_defaults.cc (tests/sanitize/), which
# sets __asan/__ubsan/__lsan/__tsan_default_options (halt on the first error, leak checking,
# the checked-in suppression files), so ampd and ampctl get them too when tests start them
# from shell or Python scripts. ASAN_OPTIONS etc. in the environment still override them.
if(NOT AMPD_SANITIZE)
  return()
endif()

string(REPLACE " " "" AMPD_SANITIZE "${AMPD_SANITIZE}")
string(REPLACE "," ";" _ampd_san_list "${AMPD_SANITIZE}")
foreach(_s IN LISTS _ampd_san_list)
  if(NOT _s MATCHES "^(address|undefined|thread|leak)$")
    message(FATAL_ERROR "AMPD_SANITIZE: unknown sanitizer '${_s}' (use 'address,undefined' or 'thread')")
  endif()
endforeach()
if("thread" IN_LIST _ampd_san_list AND ("address" IN_LIST _ampd_san_list OR "leak" IN_LIST _ampd_san_list))
  message(FATAL_ERROR "AMPD_SANITIZE: 'thread' cannot be combined with 'address' or 'leak'")
endif()
if(AMPD_HAVE_CUDA)
  message(WARNING "AMPD_SANITIZE with the CUDA plugin: nvcc-compiled code is not instrumented "
                  "and the sanitizers' runtimes conflict with the CUDA driver; configure with "
                  "-DAMPD_WITH_CUDA=OFF")
endif()

set(AMPD_SANITIZE_FLAGS "-O1 -g" CACHE STRING
    "Optimization/debug flags of AMPD_SANITIZE builds (appended after the build type's)")
separate_arguments(_ampd_san_opt UNIX_COMMAND "${AMPD_SANITIZE_FLAGS}")
add_compile_options(-fsanitize=${AMPD_SANITIZE} -fno-sanitize-recover=all
                    -fno-omit-frame-pointer ${_ampd_san_opt})
add_link_options(-fsanitize=${AMPD_SANITIZE})
message(STATUS "ampd: sanitizers ${AMPD_SANITIZE} (${AMPD_SANITIZE_FLAGS})")

# Default runtime options, linked into every executable (see ampd_sanitize_executables).
set(AMPD_SANITIZE_DIR ${PROJECT_SOURCE_DIR}/tests/sanitize)
add_library(ampd_sanitizer_defaults OBJECT ${AMPD_SANITIZE_DIR}/sanitizer_defaults.cc)
target_compile_definitions(ampd_sanitizer_defaults PRIVATE
  AMPD_SANITIZE_SUPPRESSIONS_DIR="${AMPD_SANITIZE_DIR}")

# Called at the end of the top-level CMakeLists.txt: every executable target in the tree
# gets the default options object.
function(ampd_sanitize_executables dir)
  get_property(_targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
  foreach(_t IN LISTS _targets)
    get_target_property(_type ${_t} TYPE)
    if(_type STREQUAL "EXECUTABLE")
      target_link_libraries(${_t} PRIVATE ampd_sanitizer_defaults)
    endif()
  endforeach()
  get_property(_subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
  foreach(_d IN LISTS _subdirs)
    ampd_sanitize_executables(${_d})
  endforeach()
endfunction()
