# ampd top-level entry points. Everything builds into build/ (binaries in build/bin/).
#   make demo           the main job: build, run the example digits job, stream progress
#   make test           install deps if missing, build, run the whole suite (ctest summary)
#   make build          configure + build
#   make format         clang-format every C++ source
#   make bench          CPU benchmarks vs PyTorch and oneDNN (bench/RESULTS.md)
#   make fuzz           run the libFuzzer targets longer (FUZZ_SECONDS each, default 600)
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CTEST_FLAGS ?=

.PHONY: all deps build test demo format clean bench fuzz

all: build

deps:
	@scripts/install-deps.sh --check >/dev/null 2>&1 || scripts/install-deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja $(CMAKE_FLAGS)

build: deps $(BUILD_DIR)/build.ninja
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) $(CTEST_FLAGS)

demo: build
	scripts/demo.sh $(BUILD_DIR)

format:
	git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR)

# make bench: ampd's CPU training step beside PyTorch, oneDNN's raw matmul and the service
# (bench/cpu/run.sh; ~10 minutes; results in $(BUILD_DIR)/bench-cpu/). Not part of `make test`.
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
