# ampd top-level entry points. Everything builds into build/ (binaries in build/bin/).
#   make demo           the main job: build, run the example digits job, stream progress
#   make test           install deps if missing, build, run the whole suite (ctest summary),
#                       then again under ASan + UBSan (SANITIZE=0 skips that pass)
#   make build          configure + build
#   make format         clang-format every C++ source
#   make bench          CPU benchmarks vs PyTorch and oneDNN (bench/RESULTS.md)
#   make fuzz           run the libFuzzer targets longer (FUZZ_SECONDS each, default 600)
#   make test-asan      the suite under AddressSanitizer + UBSan (build-asan/)
#   make test-tsan      the suite under ThreadSanitizer (build-tsan/)
#   make test-sanitize  both
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CTEST_FLAGS ?=

.PHONY: all deps build test demo format clean bench fuzz test-asan test-tsan test-sanitize

all: build

deps:
	@scripts/install-deps.sh --check >/dev/null 2>&1 || scripts/install-deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja $(CMAKE_FLAGS)

build: deps $(BUILD_DIR)/build.ninja
	cmake --build $(BUILD_DIR) -j $(JOBS)

# make test: the suite, then the suite again under AddressSanitizer + UBSan (build-asan/;
# CI runs exactly this). SANITIZE=0 skips the second pass for a quicker local loop.
SANITIZE ?= 1
test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) $(CTEST_FLAGS)
ifneq ($(SANITIZE),0)
	$(MAKE) --no-print-directory test-asan
endif

demo: build
	scripts/demo.sh $(BUILD_DIR)

format:
	git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR)

# make bench: ampd's CPU training step beside PyTorch, oneDNN's raw matmul and the service,
# then the character-level GPT (step, per-op breakdown, and 2000-iteration convergence on
# both sides; BENCH_GPT_CONVERGENCE=0 skips the latter) (bench/cpu/run.sh; ~15 minutes;
# results in $(BUILD_DIR)/bench-cpu/). Not part of `make test`.
bench: deps $(BUILD_DIR)/build.ninja
	cmake --build $(BUILD_DIR) -j $(JOBS) --target ampd_bench ampd ampctl watch_many
	bench/cpu/run.sh $(BUILD_DIR)

# make fuzz FUZZ_SECONDS=600: each libFuzzer target (tests/fuzz/: the job-spec parser, the
# CSV reader; clang, ASan, UBSan) runs FUZZ_SECONDS over its seeds plus the working corpus
# in $(BUILD_DIR)/fuzz/work/, which keeps what earlier runs found. A finding fails the run
# and leaves the input in $(BUILD_DIR)/fuzz/work/<target>/artifacts/. Not part of `make test`
# (ctest runs each target for 20 s).
FUZZ_SECONDS ?= 600
fuzz: deps $(BUILD_DIR)/build.ninja
	cmake --build $(BUILD_DIR) -j $(JOBS) --target ampd_fuzz
	tests/fuzz/run.sh $(BUILD_DIR)/fuzz/build/bin/fuzz_job_spec $(FUZZ_SECONDS) \
	  tests/fuzz/corpus/job_spec $(BUILD_DIR)/fuzz/work/job_spec tests/fuzz/job_spec.dict
	tests/fuzz/run.sh $(BUILD_DIR)/fuzz/build/bin/fuzz_csv $(FUZZ_SECONDS) \
	  tests/fuzz/corpus/csv $(BUILD_DIR)/fuzz/work/csv tests/fuzz/csv.dict

# --- sanitizers: make test-asan, make test-tsan, make test-sanitize -------------------------
# Separate build trees, every target instrumented (cmake/Sanitizers.cmake; -O1 -g), no CUDA
# plugin (nvcc code is not instrumented) and no benchmarks. Runtime options and the
# third-party suppressions are baked into each binary (tests/sanitize/); tests labelled
# no-asan / no-tsan cannot run under that sanitizer (tests/sanitize/README.md says why).
# tests/sanitize/run.sh runs ctest (under `setarch -R` when the kernel's ASLR is too wide
# for TSan).
ASAN_BUILD_DIR ?= build-asan
TSAN_BUILD_DIR ?= build-tsan
SANITIZE_CMAKE_FLAGS = -DAMPD_WITH_CUDA=OFF -DAMPD_BUILD_BENCH=OFF -DAMPD_FUZZ=OFF

$(ASAN_BUILD_DIR)/build.ninja:
	cmake -S . -B $(ASAN_BUILD_DIR) -G Ninja -DAMPD_SANITIZE=address,undefined \
	  $(SANITIZE_CMAKE_FLAGS) $(CMAKE_FLAGS)

$(TSAN_BUILD_DIR)/build.ninja:
	cmake -S . -B $(TSAN_BUILD_DIR) -G Ninja -DAMPD_SANITIZE=thread $(SANITIZE_CMAKE_FLAGS) $(CMAKE_FLAGS)

test-asan: deps $(ASAN_BUILD_DIR)/build.ninja
	cmake --build $(ASAN_BUILD_DIR) -j $(JOBS)
	tests/sanitize/run.sh $(ASAN_BUILD_DIR) asan -j $(JOBS) $(CTEST_FLAGS)

test-tsan: deps $(TSAN_BUILD_DIR)/build.ninja
	cmake --build $(TSAN_BUILD_DIR) -j $(JOBS)
	tests/sanitize/run.sh $(TSAN_BUILD_DIR) tsan -j $(JOBS) $(CTEST_FLAGS)

test-sanitize: test-asan test-tsan
