#include "engine/dataset.h"

#include <algorithm>
#include <cassert>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <system_error>
#include <utility>

#include "engine/csv.h"

namespace ampd::engine {

// The gzip-compressed digits CSV, compiled in by scripts/embed_file.cmake.
extern const unsigned char kDigitsCsvGz[];
extern const size_t kDigitsCsvGzSize;

namespace {

namespace fs = std::filesystem;

constexpr double kPi = 3.14159265358979323846;

// ---------------------------------------------------------------------------------
// Randomness: SplitMix64 (Steele, Lea, Flood 2014) as both the seed mixer and the
// generator. Its output is fully specified, so data, splits and epoch orders are the
// same on every platform and standard library (the floating-point transforms use only
// std::log/sqrt/cos/sin, correctly rounded or nearly so everywhere).
// ---------------------------------------------------------------------------------

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Independent streams for independent uses of the one job seed.
constexpr uint64_t kStreamSynthetic = 0x5eed'da7a'0000'0001ULL;
constexpr uint64_t kStreamSplit = 0x5eed'da7a'0000'0002ULL;
constexpr uint64_t kStreamEpoch = 0x5eed'da7a'0000'0003ULL;

uint64_t derive(uint64_t seed, uint64_t stream) {
  return mix64(seed ^ mix64(stream));
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix64(state_);
  }
  // Uniform in [0, 1), 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Uniform in [0, n), unbiased (Lemire's multiply-and-reject). n > 0.
  uint64_t below(uint64_t n) {
    unsigned __int128 m = static_cast<unsigned __int128>(next()) * n;
    auto low = static_cast<uint64_t>(m);
    if (low < n) {
      const uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<unsigned __int128>(next()) * n;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }
  // Standard normal (Box-Muller; the second value of each pair is kept for the next call).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = 1.0 - uniform();  // (0, 1]: log(u1) is finite
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * kPi * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * kPi * u2);
  }

 private:
  uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

template <typename T>
void fisher_yates(std::vector<T>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) {
    const auto j = static_cast<size_t>(rng.below(i));
    std::swap(v[i - 1], v[j]);
  }
}

// ---------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------

// The shortest text that reads back as `v`, without exponent for ordinary magnitudes
// ("100000", "10.5", "-0.5").
std::string fmt(float v) {
  char buf[64];
  const auto format = std::fabs(v) < 1e15f ? std::chars_format::fixed : std::chars_format::general;
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof(buf), v, format);
  return ec == std::errc() ? std::string(buf, ptr) : std::to_string(v);
}

std::string plural(int64_t n, const char* singular, const char* plural) {
  return std::to_string(n) + " " + (n == 1 ? singular : plural);
}

const char* loss_name(TaskKind task) {
  return task == TaskKind::kClassification ? "cross_entropy" : "mse";
}

// ---------------------------------------------------------------------------------
// CSV tables -> data sets
// ---------------------------------------------------------------------------------

// Turns a parsed table into a data set, reusing the table's storage for the features.
// `field` prefixes messages about the spec ("data.csv").
StatusOr<Dataset> from_table(CsvTable table, int32_t label_column, int32_t target_columns,
                             TaskKind task, std::string name, const std::string& field) {
  const int64_t cols = table.num_columns;
  const int64_t rows = table.num_rows;
  const int64_t first = label_column < 0 ? cols + label_column : label_column;
  if (first < 0 || first >= cols) {
    return invalid_argument(field + ".label_column: " + std::to_string(label_column) +
                            " is out of range for " + plural(cols, "column", "columns"));
  }
  int64_t width = 1;  // label or target columns, [first, first + width)
  if (task == TaskKind::kRegression) {
    if (target_columns < 0) {
      return invalid_argument(field + ".target_columns: must be >= 1, got " +
                              std::to_string(target_columns));
    }
    width = target_columns == 0 ? 1 : target_columns;
    if (first + width > cols) {
      return invalid_argument(field + ".target_columns: " + std::to_string(width) +
                              " target columns starting at column " + std::to_string(first) +
                              " (zero-based) do not fit in " + plural(cols, "column", "columns"));
    }
  }
  const int64_t num_features = cols - width;
  if (num_features < 1) {
    return invalid_argument(table.source + ": no feature columns left after the " +
                            (task == TaskKind::kClassification ? "label" : "target") + " columns");
  }
  if (num_features > kMaxFeatures) {
    return invalid_argument(table.source + ": " + std::to_string(num_features) +
                            " feature columns exceed the limit of " + std::to_string(kMaxFeatures));
  }

  Dataset d;
  d.name = std::move(name);
  d.task = task;
  d.num_examples = rows;
  d.num_features = num_features;
  if (task == TaskKind::kClassification) {
    d.labels.resize(static_cast<size_t>(rows));
    int32_t max_label = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const float v = table.at(r, first);
      if (!(v >= 0) || std::floor(v) != v) {
        return invalid_argument(table.location(r, first) + ": label " + fmt(v) +
                                " is not a non-negative integer");
      }
      if (v >= static_cast<float>(kMaxClasses)) {
        return invalid_argument(table.location(r, first) + ": label " + fmt(v) +
                                " exceeds the limit of " + std::to_string(kMaxClasses - 1));
      }
      const auto label = static_cast<int32_t>(v);
      d.labels[r] = label;
      max_label = std::max(max_label, label);
    }
    if (max_label == 0) {
      return invalid_argument(table.source +
                              ": every label is 0; classification needs at least 2 classes");
    }
    d.num_classes = max_label + 1;
  } else {
    d.num_targets = static_cast<int32_t>(width);
    d.targets.resize(static_cast<size_t>(rows * width));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = 0; t < width; ++t) d.targets[r * width + t] = table.at(r, first + t);
    }
  }
  // Compact the feature columns in place: row r's features land at r * num_features,
  // never past a value not yet read.
  std::vector<float>& v = table.values;
  int64_t out = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      if (c >= first && c < first + width) continue;
      v[out++] = v[base + c];
    }
  }
  v.resize(static_cast<size_t>(out));
  v.shrink_to_fit();
  d.features = std::move(v);
  return d;
}

StatusOr<Dataset> load_digits(TaskKind task) {
  if (task != TaskKind::kClassification) {
    return invalid_argument(
        "data.digits: the digits set has class labels; it needs loss cross_entropy, not mse");
  }
  auto table =
      read_csv_buffer(std::span<const unsigned char>(kDigitsCsvGz, kDigitsCsvGzSize), "digits.csv");
  if (!table.ok()) return internal("built-in digits data: " + table.status().message());
  if (table->num_columns != 65) {
    return internal("built-in digits data: expected 65 columns, got " +
                    std::to_string(table->num_columns));
  }
  auto d = from_table(std::move(table.value()), -1, 0, task, "digits", "data.digits");
  if (!d.ok()) return internal("built-in digits data: " + d.status().message());
  return d;
}

StatusOr<Dataset> load_csv(const ampd::v1::CsvSource& csv, TaskKind task,
                           const std::string& data_dir) {
  AMPD_ASSIGN_OR_RETURN(fs::path file, resolve_data_path(data_dir, csv.path(), "data.csv.path"));
  CsvOptions options;
  options.header = csv.header();
  AMPD_ASSIGN_OR_RETURN(CsvTable table, read_csv_file(file.string(), csv.path(), options));
  return from_table(std::move(table), csv.label_column(), csv.target_columns(), task,
                    "csv:" + csv.path(), "data.csv");
}

// ---------------------------------------------------------------------------------
// Synthetic data
// ---------------------------------------------------------------------------------

enum class SyntheticKind { kSpirals, kBlobs, kLinearRegression };

struct SyntheticParams {
  SyntheticKind kind;
  int64_t samples;
  int64_t features;
  int64_t classes;  // outputs for linear_regression
  double noise;
};

Status check_range(const char* field, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    return invalid_argument(std::string(field) + ": must be in [" + std::to_string(lo) + ", " +
                            std::to_string(hi) + "], got " + std::to_string(value));
  }
  return Status::ok_status();
}

StatusOr<SyntheticParams> resolve_synthetic(const ampd::v1::SyntheticSource& s, TaskKind task) {
  SyntheticParams p{};
  const std::string& kind = s.kind();
  if (kind == "spirals") {
    p.kind = SyntheticKind::kSpirals;
  } else if (kind == "blobs") {
    p.kind = SyntheticKind::kBlobs;
  } else if (kind == "linear_regression") {
    p.kind = SyntheticKind::kLinearRegression;
  } else {
    return invalid_argument(
        "data.synthetic.kind: must be one of spirals, blobs, linear_regression; got '" + kind +
        "'");
  }
  const bool regression = p.kind == SyntheticKind::kLinearRegression;
  if (regression && task != TaskKind::kRegression) {
    return invalid_argument(
        "data.synthetic.kind: linear_regression generates real-valued targets; it needs loss "
        "mse, not " +
        std::string(loss_name(task)));
  }
  if (!regression && task != TaskKind::kClassification) {
    return invalid_argument("data.synthetic.kind: " + kind +
                            " generates class labels; it needs loss cross_entropy, not " +
                            loss_name(task));
  }

  p.samples = s.samples() == 0 ? 1000 : s.samples();
  AMPD_RETURN_IF_ERROR(check_range("data.synthetic.samples", p.samples, 2, 10'000'000));

  if (p.kind == SyntheticKind::kSpirals) {
    if (s.features() != 0 && s.features() != 2) {
      return invalid_argument(
          "data.synthetic.features: spirals are 2-D; leave it unset or 2, got " +
          std::to_string(s.features()));
    }
    p.features = 2;
  } else {
    p.features = s.features() == 0 ? 16 : s.features();
    AMPD_RETURN_IF_ERROR(check_range("data.synthetic.features", p.features, 1, kMaxFeatures));
  }

  p.classes = s.classes() != 0 ? s.classes() : (regression ? 1 : 3);
  AMPD_RETURN_IF_ERROR(check_range("data.synthetic.classes", p.classes, regression ? 1 : 2, 10000));

  p.noise = s.has_noise() ? s.noise() : 0.1;
  if (!std::isfinite(p.noise) || p.noise < 0) {
    return invalid_argument("data.synthetic.noise: must be finite and >= 0, got " +
                            fmt(static_cast<float>(p.noise)));
  }

  if (!regression && p.samples < p.classes) {
    return invalid_argument("data.synthetic.samples: must be at least classes (" +
                            std::to_string(p.classes) + "), got " + std::to_string(p.samples));
  }
  // Sizes: the data, the parameters it is drawn from (centers, W) and the work.
  const auto too_big = [](const std::string& what, int64_t value, int64_t limit) {
    return invalid_argument("data.synthetic: " + what + " = " + std::to_string(value) +
                            " exceeds the limit of " + std::to_string(limit));
  };
  if (p.samples * p.features > kMaxSyntheticValues) {
    return too_big("samples x features", p.samples * p.features, kMaxSyntheticValues);
  }
  if (regression && p.samples * p.classes > kMaxSyntheticValues) {
    return too_big("samples x classes", p.samples * p.classes, kMaxSyntheticValues);
  }
  if (p.kind != SyntheticKind::kSpirals && p.classes * p.features > kMaxSyntheticParameters) {
    return too_big("classes x features", p.classes * p.features, kMaxSyntheticParameters);
  }
  if (regression && p.samples * p.features * p.classes > kMaxSyntheticWork) {
    return too_big("samples x features x classes", p.samples * p.features * p.classes,
                   kMaxSyntheticWork);
  }
  return p;
}

// `classes` interleaved Archimedean arms, one turn each: class k at parameter t in [0, 1)
// sits at radius t and angle 2 pi (k / classes + t); the arms are 1 / classes apart along
// any ray, and `noise` is the standard deviation of Gaussian jitter on each coordinate.
void generate_spirals(const SyntheticParams& p, Rng& rng, Dataset& d) {
  for (int64_t i = 0; i < p.samples; ++i) {
    const auto k = static_cast<int32_t>(i % p.classes);
    const double t = rng.uniform();
    const double angle = 2.0 * kPi * (static_cast<double>(k) / static_cast<double>(p.classes) + t);
    const double x = t * std::cos(angle) + p.noise * rng.normal();
    const double y = t * std::sin(angle) + p.noise * rng.normal();
    d.features[2 * i] = static_cast<float>(x);
    d.features[2 * i + 1] = static_cast<float>(y);
    d.labels[i] = k;
  }
}

// `classes` isotropic Gaussian clusters (standard deviation `noise`) around centers drawn
// uniformly from a box [-b, b]^features, b = max(1, classes^(1/features) / 2), so that
// each center has about a unit cube of room. Where it is cheap, each center is the best
// of 16 candidates (farthest from those already placed), which keeps small, low-dimensional
// sets from drawing two centers on top of each other.
void generate_blobs(const SyntheticParams& p, Rng& rng, Dataset& d) {
  const int64_t k_count = p.classes;
  const int64_t dim = p.features;
  const double box =
      std::max(1.0, 0.5 * std::pow(static_cast<double>(k_count), 1.0 / static_cast<double>(dim)));
  const int candidates = k_count * k_count * dim * 16 <= 100'000'000 ? 16 : 1;
  // (With one candidate there is nothing to choose: the distances are skipped.)
  std::vector<double> centers(static_cast<size_t>(k_count * dim));
  std::vector<double> candidate(static_cast<size_t>(dim));
  for (int64_t k = 0; k < k_count; ++k) {
    double best_distance = -1;
    for (int c = 0; c < candidates; ++c) {
      for (int64_t j = 0; j < dim; ++j) candidate[j] = box * (2.0 * rng.uniform() - 1.0);
      double nearest = std::numeric_limits<double>::infinity();
      for (int64_t other = 0; candidates > 1 && other < k; ++other) {
        double sq = 0;
        for (int64_t j = 0; j < dim; ++j) {
          const double diff = candidate[j] - centers[other * dim + j];
          sq += diff * diff;
        }
        nearest = std::min(nearest, sq);
      }
      if (nearest > best_distance) {
        best_distance = nearest;
        std::copy(candidate.begin(), candidate.end(), centers.begin() + k * dim);
      }
    }
  }
  for (int64_t i = 0; i < p.samples; ++i) {
    const int64_t k = i % k_count;
    for (int64_t j = 0; j < dim; ++j) {
      d.features[i * dim + j] = static_cast<float>(centers[k * dim + j] + p.noise * rng.normal());
    }
    d.labels[i] = static_cast<int32_t>(k);
  }
}

// y = x W + b + noise: x ~ N(0, I), W ~ N(0, 1/features) (so that x W has unit variance
// per output), b ~ N(0, 1), noise ~ N(0, noise^2).
void generate_linear_regression(const SyntheticParams& p, Rng& rng, Dataset& d) {
  const int64_t dim = p.features;
  const int64_t outputs = p.classes;
  std::vector<double> w(static_cast<size_t>(dim * outputs));
  std::vector<double> b(static_cast<size_t>(outputs));
  const double w_scale = 1.0 / std::sqrt(static_cast<double>(dim));
  for (double& v : w) v = w_scale * rng.normal();
  for (double& v : b) v = rng.normal();
  std::vector<double> y(static_cast<size_t>(outputs));
  for (int64_t i = 0; i < p.samples; ++i) {
    float* x = &d.features[i * dim];
    for (int64_t j = 0; j < dim; ++j) x[j] = static_cast<float>(rng.normal());
    std::copy(b.begin(), b.end(), y.begin());
    for (int64_t j = 0; j < dim; ++j) {
      const double xj = x[j];
      const double* wj = &w[j * outputs];
      for (int64_t o = 0; o < outputs; ++o) y[o] += xj * wj[o];
    }
    for (int64_t o = 0; o < outputs; ++o) {
      d.targets[i * outputs + o] = static_cast<float>(y[o] + p.noise * rng.normal());
    }
  }
}

StatusOr<Dataset> load_synthetic(const ampd::v1::SyntheticSource& s, TaskKind task, uint64_t seed) {
  AMPD_ASSIGN_OR_RETURN(SyntheticParams p, resolve_synthetic(s, task));
  Dataset d;
  d.name = "synthetic:" + s.kind();
  d.task = task;
  d.num_examples = p.samples;
  d.num_features = p.features;
  d.features.resize(static_cast<size_t>(p.samples * p.features));
  if (task == TaskKind::kClassification) {
    d.labels.resize(static_cast<size_t>(p.samples));
    d.num_classes = static_cast<int32_t>(p.classes);
  } else {
    d.targets.resize(static_cast<size_t>(p.samples * p.classes));
    d.num_targets = static_cast<int32_t>(p.classes);
  }
  Rng rng(derive(seed, kStreamSynthetic));
  switch (p.kind) {
    case SyntheticKind::kSpirals: generate_spirals(p, rng, d); break;
    case SyntheticKind::kBlobs: generate_blobs(p, rng, d); break;
    case SyntheticKind::kLinearRegression: generate_linear_regression(p, rng, d); break;
  }
  return d;
}

// ---------------------------------------------------------------------------------
// Splitting
// ---------------------------------------------------------------------------------

Dataset subset(const Dataset& all, const std::vector<int64_t>& rows) {
  Dataset d;
  d.name = all.name;
  d.task = all.task;
  d.num_examples = static_cast<int64_t>(rows.size());
  d.num_features = all.num_features;
  d.num_classes = all.num_classes;
  d.num_targets = all.num_targets;
  d.features.resize(rows.size() * static_cast<size_t>(all.num_features));
  if (all.task == TaskKind::kClassification) {
    d.labels.resize(rows.size());
  } else {
    d.targets.resize(rows.size() * static_cast<size_t>(all.num_targets));
  }
  gather_batch(all, rows, 0, static_cast<int64_t>(rows.size()), d.features.data(),
               d.labels.empty() ? nullptr : d.labels.data(),
               d.targets.empty() ? nullptr : d.targets.data());
  return d;
}

// Mean and population standard deviation of each feature (two passes, in double).
Standardization compute_standardization(const Dataset& d) {
  const int64_t n = d.num_examples;
  const int64_t f = d.num_features;
  std::vector<double> sum(static_cast<size_t>(f), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < f; ++j) sum[j] += d.features[i * f + j];
  }
  std::vector<double> mean(static_cast<size_t>(f), 0.0);
  for (int64_t j = 0; j < f; ++j) mean[j] = n > 0 ? sum[j] / static_cast<double>(n) : 0.0;
  std::vector<double> sq(static_cast<size_t>(f), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < f; ++j) {
      const double diff = d.features[i * f + j] - mean[j];
      sq[j] += diff * diff;
    }
  }
  Standardization s;
  s.mean.resize(static_cast<size_t>(f));
  s.stddev.resize(static_cast<size_t>(f));
  constexpr double kEps = std::numeric_limits<double>::epsilon();
  for (int64_t j = 0; j < f; ++j) {
    const double var = n > 0 ? sq[j] / static_cast<double>(n) : 0.0;
    // A constant feature, up to the rounding of the sums (scikit-learn's bound), is only
    // centered: dividing rounding noise by itself would blow it up to unit variance.
    const double rounding = static_cast<double>(n) * kEps * std::fabs(mean[j]);
    const bool constant = var <= static_cast<double>(n) * kEps * var + rounding * rounding;
    s.mean[j] = static_cast<float>(mean[j]);
    const auto sd = static_cast<float>(std::sqrt(var));
    s.stddev[j] = constant || !(sd > 0) ? 1.0f : sd;
  }
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------

std::string Dataset::describe() const {
  std::string s = name + ": " + plural(num_examples, "example", "examples") + " x " +
                  plural(num_features, "feature", "features") + ", ";
  if (task == TaskKind::kClassification) {
    s += plural(num_classes, "class", "classes");
  } else {
    s += plural(num_targets, "target", "targets");
  }
  return s;
}

StatusOr<fs::path> resolve_data_path(const std::string& data_dir, const std::string& path,
                                     const std::string& field) {
  if (path.empty()) return invalid_argument(field + ": must be set");
  if (path.find('\0') != std::string::npos) {
    return invalid_argument(field + ": contains a NUL character");
  }
  if (data_dir.empty()) {
    return failed_precondition(field + ": '" + path +
                               "' cannot be read: no data directory is configured");
  }
  const auto outside = [&] {
    return invalid_argument(field + ": '" + path + "' is outside the data directory");
  };
  const fs::path rel(path);
  if (rel.is_absolute() || rel.has_root_name() || rel.has_root_directory()) return outside();
  const fs::path normal = rel.lexically_normal();
  if (normal.empty() || *normal.begin() == "..") return outside();

  std::error_code ec;
  const fs::path root = fs::canonical(data_dir, ec);
  if (ec) {
    return failed_precondition("the data directory '" + data_dir +
                               "' is not accessible: " + ec.message());
  }
  // Resolve symbolic links: the file must still be inside once they are followed.
  const fs::path full = fs::canonical(root / normal, ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory) {
      return not_found(field + ": '" + path + "' does not exist in the data directory");
    }
    return failed_precondition(field + ": '" + path + "' cannot be resolved: " + ec.message());
  }
  const fs::path inside = full.lexically_relative(root);
  if (inside.empty() || *inside.begin() == "..") return outside();
  return full;
}

StatusOr<Dataset> load_dataset(const ampd::v1::DataSpec& spec, TaskKind task,
                               const std::string& data_dir, uint64_t seed) {
  switch (spec.source_case()) {
    case ampd::v1::DataSpec::kDigits: return load_digits(task);
    case ampd::v1::DataSpec::kCsv: return load_csv(spec.csv(), task, data_dir);
    case ampd::v1::DataSpec::kSynthetic: return load_synthetic(spec.synthetic(), task, seed);
    case ampd::v1::DataSpec::kText:
      return invalid_argument(
          "data.text: text is read by load_text (engine/text_data.h), for "
          "language models");
    case ampd::v1::DataSpec::SOURCE_NOT_SET: break;
  }
  return invalid_argument("data: set one of digits, csv, synthetic or text");
}

StatusOr<DataSplit> split_dataset(Dataset all, float validation_fraction, bool standardize,
                                  uint64_t seed) {
  if (!(validation_fraction >= 0.0f && validation_fraction <= 0.9f)) {
    return invalid_argument("data.validation_fraction: must be in [0, 0.9], got " +
                            fmt(validation_fraction));
  }
  const int64_t n = all.num_examples;
  if (n < 1) return invalid_argument("data: " + all.name + " has no examples");
  // The labels' range is the data set's guarantee (dataset.h): the loaders above produce
  // only labels in [0, num_classes) (CSV rejects others naming the file, line and column,
  // and num_classes is the largest label + 1), and both splits keep the whole set's
  // num_classes. Checked once here, for every source, so no later step has to.
  if (all.task == TaskKind::kClassification) {
    if (static_cast<int64_t>(all.labels.size()) != n) {
      return internal("data: " + all.name + " has " + std::to_string(all.labels.size()) +
                      " labels for " + plural(n, "example", "examples"));
    }
    for (int64_t i = 0; i < n; ++i) {
      const int32_t label = all.labels[static_cast<size_t>(i)];
      if (label < 0 || label >= all.num_classes) {
        return invalid_argument("data: " + all.name + ": example " + std::to_string(i) +
                                " has label " + std::to_string(label) + ", outside [0, " +
                                std::to_string(all.num_classes) + ")");
      }
    }
  }

  int64_t n_val = std::llround(static_cast<double>(n) * validation_fraction);
  if (validation_fraction > 0 && n_val == 0) n_val = 1;
  n_val = std::min(n_val, n - 1);

  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  Rng rng(derive(seed, kStreamSplit));
  fisher_yates(perm, rng);
  std::vector<int64_t> val_rows(perm.begin(), perm.begin() + n_val);
  std::vector<int64_t> train_rows(perm.begin() + n_val, perm.end());
  std::sort(val_rows.begin(), val_rows.end());
  std::sort(train_rows.begin(), train_rows.end());

  DataSplit split;
  split.train = subset(all, train_rows);
  split.validation = subset(all, val_rows);
  all = Dataset();  // release the full copy before standardizing
  if (standardize) {
    Standardization s = compute_standardization(split.train);
    apply_standardization(s, split.train.num_features, split.train.features);
    apply_standardization(s, split.validation.num_features, split.validation.features);
    split.standardization = std::move(s);
  }
  return split;
}

void apply_standardization(const Standardization& s, int64_t num_features,
                           std::span<float> features) {
  if (num_features <= 0) return;
  assert(static_cast<int64_t>(s.mean.size()) == num_features);
  assert(static_cast<int64_t>(s.stddev.size()) == num_features);
  const auto f = static_cast<size_t>(num_features);
  std::vector<float> inv(f);
  for (size_t j = 0; j < f; ++j) inv[j] = s.stddev[j] > 0 ? 1.0f / s.stddev[j] : 1.0f;
  for (size_t i = 0; i + f <= features.size(); i += f) {
    for (size_t j = 0; j < f; ++j) features[i + j] = (features[i + j] - s.mean[j]) * inv[j];
  }
}

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  if (n <= 0) return {};
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  if (shuffle) {
    Rng rng(derive(derive(seed, kStreamEpoch), static_cast<uint64_t>(epoch)));
    fisher_yates(order, rng);
  }
  return order;
}

void gather_batch(const Dataset& d, std::span<const int64_t> order, int64_t begin, int64_t count,
                  float* features, int32_t* labels, float* targets) {
  assert(begin >= 0 && count >= 0 && begin + count <= static_cast<int64_t>(order.size()));
  const int64_t f = d.num_features;
  const bool want_labels = labels != nullptr && d.task == TaskKind::kClassification;
  const bool want_targets = targets != nullptr && d.task == TaskKind::kRegression;
  const int64_t t = d.num_targets;
  for (int64_t b = 0; b < count; ++b) {
    const int64_t row = order[begin + b];
    assert(row >= 0 && row < d.num_examples);
    if (features != nullptr && f > 0) {
      std::memcpy(features + b * f, d.features.data() + row * f, sizeof(float) * f);
    }
    if (want_labels) labels[b] = d.labels[row];
    if (want_targets && t > 0) {
      std::memcpy(targets + b * t, d.targets.data() + row * t, sizeof(float) * t);
    }
  }
}

}  // namespace ampd::engine
