// Data sets in host memory: loading a job's `data` source (the built-in digits set, a
// CSV file under the data directory, or a synthetic generator), the train/validation
// split with optional standardization, the per-epoch order of examples and batch
// gathering.
//
// Everything random here is a pure function of the job seed (and the epoch), drawn from
// a small PRNG of our own (SplitMix64), never from <random>'s distributions, whose
// output differs between standard libraries: a job resumed from a checkpoint sees the
// same split and the same epoch orders without any stored RNG state.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "base/status.h"

namespace ampd::engine {

enum class TaskKind { kClassification, kRegression };

struct Dataset {
  std::string name;  // "digits", "csv:path", "synthetic:spirals"
  int64_t num_examples = 0;
  int64_t num_features = 0;
  std::vector<float> features;  // row-major num_examples x num_features
  TaskKind task = TaskKind::kClassification;
  // Classification: one per example, each in [0, num_classes). Every loader guarantees
  // the range (a CSV label outside it is rejected naming file, line and column) and
  // split_dataset checks it again for every source; the backends' softmax cross-entropy
  // relies on it and does not check labels itself (kernels/backend.h).
  std::vector<int32_t> labels;
  int32_t num_classes = 0;
  std::vector<float> targets;  // regression: num_examples x num_targets
  int32_t num_targets = 0;

  // "digits: 1797 examples x 64 features, 10 classes"
  std::string describe() const;
};

// Limits on what a data source may produce.
inline constexpr int64_t kMaxFeatures = 65536;
inline constexpr int32_t kMaxClasses = 100000;  // CSV labels; synthetic classes stop at 10000
inline constexpr int64_t kMaxSyntheticValues = int64_t{1} << 28;      // 1 GiB of floats
inline constexpr int64_t kMaxSyntheticParameters = int64_t{1} << 24;  // centers or W
inline constexpr int64_t kMaxSyntheticWork = int64_t{1} << 32;        // multiply-adds

// Loads the spec's source. `task` comes from the model's loss (cross_entropy ->
// classification, mse -> regression); a source that cannot serve it is InvalidArgument.
// `data_dir` roots CSV paths (see resolve_data_path); `seed` drives synthetic data.
//
// CSV columns: classification reads the labels from `label_column` (negative counts from
// the end) and the features from every other column; regression reads `target_columns`
// (default 1) targets starting at `label_column` and the features from the rest.
//
// Synthetic sources: "spirals" (`classes` interleaved arms in 2-D), "blobs" (`classes`
// Gaussian clusters in `features` dimensions), "linear_regression" (y = x W + b + noise,
// `classes` outputs). Unset (zero) fields take the defaults of job.proto: samples 1000,
// features 2 (spirals) or 16, classes 3 (1 for linear_regression), noise 0.1.
StatusOr<Dataset> load_dataset(const ampd::v1::DataSpec& spec, TaskKind task,
                               const std::string& data_dir, uint64_t seed);

// The file that `path` (relative, as written in a job spec) names under `data_dir`, with
// symbolic links resolved. InvalidArgument, naming `field`, when the path is absolute or
// leaves the directory lexically ("../x") or through a symbolic link; NotFound when it
// does not exist. The file itself is not opened.
StatusOr<std::filesystem::path> resolve_data_path(const std::string& data_dir,
                                                  const std::string& path,
                                                  const std::string& field = "data.csv.path");

// Per-feature statistics of the training split; a feature with stddev 0 is divided by 1
// (stddev holds 1 for it).
struct Standardization {
  std::vector<float> mean, stddev;
};

struct DataSplit {
  Dataset train;
  Dataset validation;
  std::optional<Standardization> standardization;  // set when standardize was asked for
};

// Splits by a seeded permutation: round(n * validation_fraction) examples (at least one
// when the fraction is positive, at most n - 1) go to validation, the rest to training;
// each split keeps the examples' original relative order. validation_fraction must be
// in [0, 0.9]. With `standardize`, features of both splits are standardized with the
// training split's mean and (population) standard deviation; regression targets are
// left as they are. Both splits keep the whole set's num_classes, so a class that falls
// entirely into one split is still in range for the other. InvalidArgument, naming the
// example, when a classification set holds a label outside [0, num_classes).
StatusOr<DataSplit> split_dataset(Dataset all, float validation_fraction, bool standardize,
                                  uint64_t seed);

// Applies statistics to a row-major examples x features matrix, in place.
void apply_standardization(const Standardization& s, int64_t num_features,
                           std::span<float> features);

// The order of the training examples in epoch `epoch` (0-based): the identity when
// !shuffle, else a permutation that depends only on (n, seed, epoch).
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);

// Copies examples order[begin], ..., order[begin + count - 1] into contiguous host
// buffers: `features` (count x num_features), `labels` (count; classification) and
// `targets` (count x num_targets; regression). A null buffer is skipped, as are labels of
// a regression set and targets of a classification set. The caller keeps the indices in
// range (checked with assert).
void gather_batch(const Dataset& d, std::span<const int64_t> order, int64_t begin, int64_t count,
                  float* features, int32_t* labels, float* targets);

}  // namespace ampd::engine
