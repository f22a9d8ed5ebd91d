// Default sanitizer runtime options for every executable of an AMPD_SANITIZE build
// (cmake/Sanitizers.cmake links this object into each one). The runtimes call these hooks
// at startup; ASAN_OPTIONS, UBSAN_OPTIONS, LSAN_OPTIONS and TSAN_OPTIONS in the environment
// are applied after them, so a developer can still override any option.
//
// Every finding must fail the process: ASan and UBSan halt on the first error (UBSan is
// also built with -fno-sanitize-recover=all), TSan halts on the first race, LSan checks at
// exit. The suppression files next to this one only name third-party libraries (see their
// headers); our own code is never suppressed.

#ifndef AMPD_SANITIZE_SUPPRESSIONS_DIR
#error "AMPD_SANITIZE_SUPPRESSIONS_DIR must name tests/sanitize"
#endif

#define AMPD_SANITIZER_HOOK extern "C" __attribute__((visibility("default"), used)) const char*

AMPD_SANITIZER_HOOK __asan_default_options() {
  return "halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1"
         ":check_initialization_order=1:strict_init_order=1:strict_string_checks=1"
         ":print_suppressions=0";
}

AMPD_SANITIZER_HOOK __lsan_default_options() {
  return "print_suppressions=0:suppressions=" AMPD_SANITIZE_SUPPRESSIONS_DIR "/lsan.supp";
}

AMPD_SANITIZER_HOOK __ubsan_default_options() {
  return "halt_on_error=1:print_stacktrace=1:print_suppressions=0";
}

// ignore_noninstrumented_modules: the memory accesses that interceptors (memcpy, new/delete,
// epoll, pthread_mutex_lock's own) perform for uninstrumented libraries (Debian's gRPC,
// abseil, protobuf, libgomp, oneDNN) are not checked. Those libraries hand memory between
// their threads through synchronization TSan cannot see (their own atomics, absl::Mutex,
// call_once), so each such access read as a race. Lock and thread-creation edges from those
// libraries still count, and all accesses in our (instrumented) code are still checked.
AMPD_SANITIZER_HOOK __tsan_default_options() {
  return "halt_on_error=1:second_deadlock_stack=1:print_suppressions=0"
         ":ignore_noninstrumented_modules=1"
         ":suppressions=" AMPD_SANITIZE_SUPPRESSIONS_DIR "/tsan.supp";
}
