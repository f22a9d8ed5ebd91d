// Data sets: the built-in digits, CSV sources under a data directory (and the paths
// they may not reach), synthetic generators, the split, epoch orders and batches.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "engine/csv.h"
#include "engine/dataset.h"

namespace ampd::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::StartsWith;

ampd::v1::DataSpec digits_spec() {
  ampd::v1::DataSpec spec;
  spec.mutable_digits();
  return spec;
}

ampd::v1::DataSpec csv_spec(const std::string& path, int label_column = -1, bool header = false) {
  ampd::v1::DataSpec spec;
  spec.mutable_csv()->set_path(path);
  spec.mutable_csv()->set_label_column(label_column);
  spec.mutable_csv()->set_header(header);
  return spec;
}

ampd::v1::DataSpec synthetic_spec(const std::string& kind, int samples = 0, int features = 0,
                                  int classes = 0) {
  ampd::v1::DataSpec spec;
  auto* s = spec.mutable_synthetic();
  s->set_kind(kind);
  s->set_samples(samples);
  s->set_features(features);
  s->set_classes(classes);
  return spec;
}

// ---------------------------------------------------------------------------------
// Digits
// ---------------------------------------------------------------------------------

TEST(Digits, LoadsTheEmbeddedSet) {
  auto d = load_dataset(digits_spec(), TaskKind::kClassification, "", 0);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->name, "digits");
  EXPECT_EQ(d->num_examples, 1797);
  EXPECT_EQ(d->num_features, 64);
  EXPECT_EQ(d->num_classes, 10);
  EXPECT_EQ(d->task, TaskKind::kClassification);
  EXPECT_EQ(d->features.size(), 1797u * 64u);
  EXPECT_EQ(d->labels.size(), 1797u);
  EXPECT_TRUE(d->targets.empty());
  EXPECT_EQ(d->describe(), "digits: 1797 examples x 64 features, 10 classes");

  std::vector<int> histogram(10, 0);
  for (int32_t label : d->labels) {
    ASSERT_GE(label, 0);
    ASSERT_LT(label, 10);
    ++histogram[label];
  }
  for (int c = 0; c < 10; ++c) {
    EXPECT_GE(histogram[c], 170) << "class " << c;
    EXPECT_LE(histogram[c], 190) << "class " << c;
  }
  for (float v : d->features) {
    ASSERT_GE(v, 0.0f);
    ASSERT_LE(v, 16.0f);
    ASSERT_EQ(v, std::floor(v));
  }
  // The first line of examples/data/digits.csv.gz.
  const std::vector<float> first_row = {0, 0, 5,  13, 9,  1,  0, 0, 0, 0, 13, 15, 10, 15, 5, 0,
                                        0, 3, 15, 2,  0,  11, 8, 0, 0, 4, 12, 0,  0,  8,  8, 0,
                                        0, 5, 8,  0,  0,  9,  8, 0, 0, 4, 11, 0,  1,  12, 7, 0,
                                        0, 2, 14, 5,  10, 12, 0, 0, 0, 0, 6,  13, 10, 0,  0, 0};
  EXPECT_EQ(std::vector<float>(d->features.begin(), d->features.begin() + 64), first_row);
  EXPECT_EQ(d->labels[0], 0);
  EXPECT_EQ(d->labels[1], 1);
  EXPECT_EQ(d->labels[2], 2);
}

#ifdef AMPD_SOURCE_DIR
TEST(Digits, MatchesTheFileItWasEmbeddedFrom) {
  auto file = read_csv_file(AMPD_SOURCE_DIR "/examples/data/digits.csv.gz", "digits.csv.gz");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  auto d = load_dataset(digits_spec(), TaskKind::kClassification, "", 0);
  ASSERT_TRUE(d.ok());
  ASSERT_EQ(file->num_rows, 1797);
  ASSERT_EQ(file->num_columns, 65);
  for (int64_t r = 0; r < 1797; ++r) {
    for (int64_t c = 0; c < 64; ++c) ASSERT_EQ(d->features[r * 64 + c], file->at(r, c));
    ASSERT_EQ(d->labels[r], static_cast<int32_t>(file->at(r, 64)));
  }
}
#endif

TEST(Digits, RefusesRegression) {
  auto d = load_dataset(digits_spec(), TaskKind::kRegression, "", 0);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(d.status().message(), StartsWith("data.digits: "));
  EXPECT_THAT(d.status().message(), HasSubstr("cross_entropy"));
}

TEST(LoadDataset, NoSource) {
  auto d = load_dataset(ampd::v1::DataSpec(), TaskKind::kClassification, "", 0);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(d.status().message(), "data: set one of digits, csv, synthetic or text");
}

// ---------------------------------------------------------------------------------
// CSV sources under a data directory
// ---------------------------------------------------------------------------------

std::string gzip(const std::string& text) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, text.size()) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  zs.avail_in = static_cast<uInt>(text.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// A scratch directory <tmp>/ampd_data_XXXXXX holding data/ (the data directory) and
// outside.csv beside it.
class CsvSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "ampd_data_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    data_ = root_ / "data";
    fs::create_directories(data_ / "sub");
    write_file(root_ / "outside.csv", "1,2,0\n3,4,1\n");
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  static void write_file(const fs::path& path, const std::string& content) {
    std::ofstream(path, std::ios::binary) << content;
  }
  void write(const std::string& name, const std::string& content) {
    write_file(data_ / name, content);
  }
  StatusOr<Dataset> load(const ampd::v1::DataSpec& spec,
                         TaskKind task = TaskKind::kClassification) {
    return load_dataset(spec, task, data_.string(), 0);
  }
  // Loads `content` as a classification CSV whose label is the last column and returns
  // the error.
  Status error_for(const std::string& content, const std::string& name = "bad.csv") {
    write(name, content);
    auto d = load(csv_spec(name));
    EXPECT_FALSE(d.ok()) << content;
    return d.status();
  }

  fs::path root_;
  fs::path data_;
};

TEST_F(CsvSourceTest, ClassificationWithHeaderAndCrlf) {
  write("sub/good.csv", "a,b,label\r\n1,2,0\r\n3,4,2\r\n5,6,1\r\n\r\n");
  auto d = load(csv_spec("sub/good.csv", -1, /*header=*/true));
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->name, "csv:sub/good.csv");
  EXPECT_EQ(d->num_examples, 3);
  EXPECT_EQ(d->num_features, 2);
  EXPECT_EQ(d->num_classes, 3);
  EXPECT_EQ(d->features, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(d->labels, (std::vector<int32_t>{0, 2, 1}));
  EXPECT_EQ(d->describe(), "csv:sub/good.csv: 3 examples x 2 features, 3 classes");
}

TEST_F(CsvSourceTest, LabelColumnFirstOrMiddle) {
  write("first.csv", "1,10,20\n0,30,40\n");
  auto d = load(csv_spec("first.csv", 0));
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->labels, (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(d->features, (std::vector<float>{10, 20, 30, 40}));
  auto mid = load(csv_spec("first.csv", 1));  // labels 10 and 30: 31 classes
  ASSERT_TRUE(mid.ok()) << mid.status().to_string();
  EXPECT_EQ(mid->num_classes, 31);
  EXPECT_EQ(mid->features, (std::vector<float>{1, 20, 0, 40}));
  auto out_of_range = load(csv_spec("first.csv", -4));
  ASSERT_FALSE(out_of_range.ok());
  EXPECT_EQ(out_of_range.status().message(),
            "data.csv.label_column: -4 is out of range for 3 columns");
}

TEST_F(CsvSourceTest, GzipFile) {
  write("d.csv.gz", gzip("1,2,1\n3,4,0\n"));
  auto d = load(csv_spec("d.csv.gz"));
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->num_examples, 2);
  EXPECT_EQ(d->labels, (std::vector<int32_t>{1, 0}));
}

TEST_F(CsvSourceTest, RegressionTargets) {
  write("r.csv", "1,2,3,4\n5,6,7,8\n");
  auto spec = csv_spec("r.csv", -2);
  spec.mutable_csv()->set_target_columns(2);
  auto d = load(spec, TaskKind::kRegression);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->task, TaskKind::kRegression);
  EXPECT_EQ(d->num_features, 2);
  EXPECT_EQ(d->num_targets, 2);
  EXPECT_EQ(d->features, (std::vector<float>{1, 2, 5, 6}));
  EXPECT_EQ(d->targets, (std::vector<float>{3, 4, 7, 8}));
  EXPECT_TRUE(d->labels.empty());
  EXPECT_EQ(d->describe(), "csv:r.csv: 2 examples x 2 features, 2 targets");
  // Default: one target column at label_column; non-integer targets are fine.
  write("r1.csv", "0.5,1,2\n-1.25,3,4\n");
  auto one = load(csv_spec("r1.csv", 0), TaskKind::kRegression);
  ASSERT_TRUE(one.ok()) << one.status().to_string();
  EXPECT_EQ(one->targets, (std::vector<float>{0.5f, -1.25f}));
  EXPECT_EQ(one->features, (std::vector<float>{1, 2, 3, 4}));
  // Targets that run off the end, or leave no features.
  spec = csv_spec("r.csv", -1);
  spec.mutable_csv()->set_target_columns(2);
  auto off = load(spec, TaskKind::kRegression);
  ASSERT_FALSE(off.ok());
  EXPECT_THAT(off.status().message(), StartsWith("data.csv.target_columns: "));
  spec = csv_spec("r.csv", 0);
  spec.mutable_csv()->set_target_columns(4);
  EXPECT_THAT(load(spec, TaskKind::kRegression).status().message(),
              HasSubstr("no feature columns"));
  spec.mutable_csv()->set_target_columns(-1);
  EXPECT_EQ(load(spec, TaskKind::kRegression).status().message(),
            "data.csv.target_columns: must be >= 1, got -1");
}

TEST_F(CsvSourceTest, MalformedFilesNameFileLineAndColumn) {
  Status s = error_for("1,2,0\n1,2\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "bad.csv:2: expected 3 columns, got 2");

  s = error_for("1,2,0\n1,2,0\n1,abc,0\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "bad.csv:3:2: 'abc' is not a number");

  s = error_for("1,2,0\ninf,2,0\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "bad.csv:2:1: non-finite value 'inf'");

  s = error_for("1,nan,0\n");
  EXPECT_EQ(s.message(), "bad.csv:1:2: non-finite value 'nan'");

  s = error_for("");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "bad.csv: no data rows");

  s = error_for("1,2,0\n1,2,1\n\n1,2,10.5\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "bad.csv:4:3: label 10.5 is not a non-negative integer");

  s = error_for("1,2,0\n1,2,-1\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "bad.csv:2:3: label -1 is not a non-negative integer");

  s = error_for("1,2,0\n1,2,100000\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "bad.csv:2:3: label 100000 exceeds the limit of 99999");

  s = error_for("1,2,0\n1,2,0\n");
  EXPECT_EQ(s.message(), "bad.csv: every label is 0; classification needs at least 2 classes");

  s = error_for("0\n1\n");
  EXPECT_THAT(s.message(), HasSubstr("no feature columns"));

  // The file name in messages is the path as the spec wrote it.
  s = error_for("1,2,0\n1,x,0\n", "sub/nested.csv");
  EXPECT_EQ(s.message(), "sub/nested.csv:2:2: 'x' is not a number");
}

TEST_F(CsvSourceTest, PathsThatLeaveTheDataDirectory) {
  const auto expect_outside = [&](const std::string& path) {
    auto d = load(csv_spec(path));
    ASSERT_FALSE(d.ok()) << path;
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument) << path;
    EXPECT_EQ(d.status().message(), "data.csv.path: '" + path + "' is outside the data directory");
  };
  expect_outside("../outside.csv");
  expect_outside("sub/../../outside.csv");
  expect_outside((root_ / "outside.csv").string());  // absolute
  expect_outside("/etc/passwd");
  // A symbolic link inside the directory that points out of it, to a file or a directory.
  fs::create_symlink(root_ / "outside.csv", data_ / "link.csv");
  expect_outside("link.csv");
  fs::create_directory_symlink(root_, data_ / "up");
  expect_outside("up/outside.csv");
  expect_outside("up/data/../outside.csv");
  // A link that stays inside is fine, as are harmless dot segments.
  write("sub/in.csv", "1,2,0\n3,4,1\n");
  fs::create_symlink(data_ / "sub" / "in.csv", data_ / "in_link.csv");
  EXPECT_TRUE(load(csv_spec("in_link.csv")).ok());
  EXPECT_TRUE(load(csv_spec("./sub/../sub/in.csv")).ok());
  EXPECT_TRUE(load(csv_spec("up/data/sub/in.csv")).ok());  // resolves back inside
}

TEST_F(CsvSourceTest, MissingFilesAndDirectories) {
  auto missing = load(csv_spec("nope.csv"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(),
            "data.csv.path: 'nope.csv' does not exist in the data directory");
  auto empty = load(csv_spec(""));
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(empty.status().message(), "data.csv.path: must be set");
  auto dir = load(csv_spec("sub"));
  EXPECT_EQ(dir.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dir.status().message(), "sub: not a regular file");
  auto no_dir = load_dataset(csv_spec("x.csv"), TaskKind::kClassification, "", 0);
  EXPECT_EQ(no_dir.status().code(), StatusCode::kFailedPrecondition);
  auto resolved = resolve_data_path(data_.string(), "sub/../outside.csv");
  EXPECT_EQ(resolved.status().code(), StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------------
// Synthetic data
// ---------------------------------------------------------------------------------

TEST(Synthetic, DefaultsAndShapes) {
  auto spirals = load_dataset(synthetic_spec("spirals"), TaskKind::kClassification, "", 1);
  ASSERT_TRUE(spirals.ok()) << spirals.status().to_string();
  EXPECT_EQ(spirals->describe(), "synthetic:spirals: 1000 examples x 2 features, 3 classes");
  EXPECT_EQ(spirals->features.size(), 2000u);
  EXPECT_EQ(spirals->labels.size(), 1000u);

  auto blobs = load_dataset(synthetic_spec("blobs", 500, 0, 5), TaskKind::kClassification, "", 1);
  ASSERT_TRUE(blobs.ok()) << blobs.status().to_string();
  EXPECT_EQ(blobs->describe(), "synthetic:blobs: 500 examples x 16 features, 5 classes");
  EXPECT_EQ(blobs->features.size(), 500u * 16u);

  auto linear =
      load_dataset(synthetic_spec("linear_regression", 300, 8, 0), TaskKind::kRegression, "", 1);
  ASSERT_TRUE(linear.ok()) << linear.status().to_string();
  EXPECT_EQ(linear->describe(), "synthetic:linear_regression: 300 examples x 8 features, 1 target");
  EXPECT_EQ(linear->targets.size(), 300u);
  EXPECT_TRUE(linear->labels.empty());
  auto multi =
      load_dataset(synthetic_spec("linear_regression", 300, 8, 3), TaskKind::kRegression, "", 1);
  ASSERT_TRUE(multi.ok());
  EXPECT_EQ(multi->num_targets, 3);
  EXPECT_EQ(multi->targets.size(), 900u);

  for (const Dataset* d : {&spirals.value(), &blobs.value()}) {
    std::vector<int> histogram(d->num_classes, 0);
    for (int32_t label : d->labels) ++histogram.at(label);
    for (int count : histogram) EXPECT_GE(count, d->num_examples / d->num_classes);
  }
  for (const Dataset* d : {&spirals.value(), &blobs.value(), &linear.value()}) {
    for (float v : d->features) ASSERT_TRUE(std::isfinite(v));
    for (float v : d->targets) ASSERT_TRUE(std::isfinite(v));
  }
}

TEST(Synthetic, DeterministicBySeed) {
  for (const char* kind : {"spirals", "blobs", "linear_regression"}) {
    const TaskKind task = std::string(kind) == "linear_regression" ? TaskKind::kRegression
                                                                   : TaskKind::kClassification;
    auto a = load_dataset(synthetic_spec(kind, 200, 0, 0), task, "", 42);
    auto b = load_dataset(synthetic_spec(kind, 200, 0, 0), task, "", 42);
    auto c = load_dataset(synthetic_spec(kind, 200, 0, 0), task, "", 43);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << kind;
    EXPECT_EQ(a->features, b->features) << kind;
    EXPECT_EQ(a->labels, b->labels) << kind;
    EXPECT_EQ(a->targets, b->targets) << kind;
    EXPECT_NE(a->features, c->features) << kind;
  }
}

TEST(Synthetic, BlobsAreSeparableAtDefaultNoise) {
  // Nearest-centroid classification with the true centroids should be nearly perfect.
  for (int features : {1, 2, 16}) {
    auto d =
        load_dataset(synthetic_spec("blobs", 600, features, 3), TaskKind::kClassification, "", 7);
    ASSERT_TRUE(d.ok()) << d.status().to_string();
    const int64_t f = d->num_features;
    std::vector<double> centroid(3 * f, 0.0);
    std::vector<int> n(3, 0);
    for (int64_t i = 0; i < d->num_examples; ++i) {
      ++n[d->labels[i]];
      for (int64_t j = 0; j < f; ++j) centroid[d->labels[i] * f + j] += d->features[i * f + j];
    }
    for (int k = 0; k < 3; ++k) {
      for (int64_t j = 0; j < f; ++j) centroid[k * f + j] /= n[k];
    }
    int correct = 0;
    for (int64_t i = 0; i < d->num_examples; ++i) {
      int best = 0;
      double best_distance = 1e300;
      for (int k = 0; k < 3; ++k) {
        double sq = 0;
        for (int64_t j = 0; j < f; ++j) {
          const double diff = d->features[i * f + j] - centroid[k * f + j];
          sq += diff * diff;
        }
        if (sq < best_distance) best_distance = sq, best = k;
      }
      correct += best == d->labels[i];
    }
    EXPECT_GE(correct, 594) << features << " features";
  }
}

TEST(Synthetic, LinearRegressionWithoutNoiseIsAffine) {
  auto spec = synthetic_spec("linear_regression", 50, 2, 1);
  spec.mutable_synthetic()->set_noise(0);
  auto d = load_dataset(spec, TaskKind::kRegression, "", 3);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  // y = w0 x0 + w1 x1 + b: solve from the first three examples, check the rest.
  const auto& x = d->features;
  const auto& y = d->targets;
  const double a00 = x[0] - x[4], a01 = x[1] - x[5], a10 = x[2] - x[4], a11 = x[3] - x[5];
  const double r0 = y[0] - y[2], r1 = y[1] - y[2];
  const double det = a00 * a11 - a01 * a10;
  const double w0 = (r0 * a11 - a01 * r1) / det, w1 = (a00 * r1 - r0 * a10) / det;
  const double b = y[2] - w0 * x[4] - w1 * x[5];
  for (int i = 3; i < 50; ++i) {
    EXPECT_NEAR(y[i], w0 * x[2 * i] + w1 * x[2 * i + 1] + b, 1e-4) << i;
  }
}

TEST(Synthetic, ValidationNamesTheField) {
  const auto error = [](const ampd::v1::DataSpec& spec, TaskKind task = TaskKind::kClassification) {
    auto d = load_dataset(spec, task, "", 0);
    EXPECT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
    return d.status().message();
  };
  EXPECT_EQ(error(synthetic_spec("foo")),
            "data.synthetic.kind: must be one of spirals, blobs, linear_regression; got 'foo'");
  EXPECT_EQ(error(synthetic_spec("spirals", -5)),
            "data.synthetic.samples: must be in [2, 10000000], got -5");
  EXPECT_EQ(error(synthetic_spec("spirals", 1)),
            "data.synthetic.samples: must be in [2, 10000000], got 1");
  EXPECT_EQ(error(synthetic_spec("blobs", 20000000)),
            "data.synthetic.samples: must be in [2, 10000000], got 20000000");
  EXPECT_EQ(error(synthetic_spec("blobs", 100, 70000)),
            "data.synthetic.features: must be in [1, 65536], got 70000");
  EXPECT_EQ(error(synthetic_spec("blobs", 100, -1)),
            "data.synthetic.features: must be in [1, 65536], got -1");
  EXPECT_THAT(error(synthetic_spec("spirals", 100, 3)), StartsWith("data.synthetic.features: "));
  EXPECT_EQ(error(synthetic_spec("blobs", 100, 4, 1)),
            "data.synthetic.classes: must be in [2, 10000], got 1");
  EXPECT_EQ(error(synthetic_spec("spirals", 100, 0, 10001)),
            "data.synthetic.classes: must be in [2, 10000], got 10001");
  EXPECT_EQ(error(synthetic_spec("linear_regression", 100, 4, -1), TaskKind::kRegression),
            "data.synthetic.classes: must be in [1, 10000], got -1");
  auto noisy = synthetic_spec("blobs");
  noisy.mutable_synthetic()->set_noise(-0.5f);
  EXPECT_EQ(error(noisy), "data.synthetic.noise: must be finite and >= 0, got -0.5");
  noisy.mutable_synthetic()->set_noise(std::nanf(""));
  EXPECT_THAT(error(noisy), StartsWith("data.synthetic.noise: must be finite"));
  EXPECT_EQ(error(synthetic_spec("blobs", 10000000, 65536)),
            "data.synthetic: samples x features = 655360000000 exceeds the limit of 268435456");
  EXPECT_EQ(error(synthetic_spec("blobs", 10000, 2000, 10000)),
            "data.synthetic: classes x features = 20000000 exceeds the limit of 16777216");
  EXPECT_EQ(error(synthetic_spec("linear_regression", 1000000, 200, 100), TaskKind::kRegression),
            "data.synthetic: samples x features x classes = 20000000000 exceeds the limit of "
            "4294967296");
  EXPECT_EQ(error(synthetic_spec("blobs", 5, 2, 10)),
            "data.synthetic.samples: must be at least classes (10), got 5");
  // The loss must fit the kind.
  EXPECT_THAT(error(synthetic_spec("linear_regression")),
              StartsWith("data.synthetic.kind: linear_regression generates real-valued targets"));
  EXPECT_THAT(error(synthetic_spec("spirals"), TaskKind::kRegression),
              StartsWith("data.synthetic.kind: spirals generates class labels"));
}

// ---------------------------------------------------------------------------------
// Split and standardization
// ---------------------------------------------------------------------------------

// n examples whose single feature is the example's index, so rows can be identified.
Dataset indexed(int64_t n, int64_t features = 1) {
  Dataset d;
  d.name = "indexed";
  d.num_examples = n;
  d.num_features = features;
  d.num_classes = 2;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < features; ++j)
      d.features.push_back(static_cast<float>(i * features + j));
    d.labels.push_back(static_cast<int32_t>(i % 2));
  }
  return d;
}

std::vector<int64_t> rows_of(const Dataset& d) {
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < d.num_examples; ++i) {
    rows.push_back(static_cast<int64_t>(d.features[i * d.num_features]) / d.num_features);
  }
  return rows;
}

TEST(Split, SizesDisjointAndCovering) {
  auto split = split_dataset(indexed(1000), 0.2f, false, 5);
  ASSERT_TRUE(split.ok()) << split.status().to_string();
  EXPECT_EQ(split->train.num_examples, 800);
  EXPECT_EQ(split->validation.num_examples, 200);
  EXPECT_EQ(split->train.labels.size(), 800u);
  EXPECT_EQ(split->validation.features.size(), 200u);
  EXPECT_FALSE(split->standardization.has_value());
  std::vector<int64_t> train = rows_of(split->train);
  std::vector<int64_t> val = rows_of(split->validation);
  EXPECT_TRUE(std::is_sorted(train.begin(), train.end()));  // original order kept
  std::set<int64_t> all(train.begin(), train.end());
  all.insert(val.begin(), val.end());
  EXPECT_EQ(all.size(), 1000u);
  EXPECT_EQ(*all.begin(), 0);
  EXPECT_EQ(*all.rbegin(), 999);
  // Labels travel with their rows.
  for (int64_t i = 0; i < split->train.num_examples; ++i) {
    EXPECT_EQ(split->train.labels[i], train[i] % 2);
  }
}

TEST(Split, DeterministicBySeed) {
  auto a = split_dataset(indexed(500), 0.3f, false, 11);
  auto b = split_dataset(indexed(500), 0.3f, false, 11);
  auto c = split_dataset(indexed(500), 0.3f, false, 12);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(rows_of(a->validation), rows_of(b->validation));
  EXPECT_NE(rows_of(a->validation), rows_of(c->validation));
}

TEST(Split, EdgeFractions) {
  auto none = split_dataset(indexed(10), 0.0f, false, 0);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->train.num_examples, 10);
  EXPECT_EQ(none->validation.num_examples, 0);
  EXPECT_EQ(none->validation.num_features, 1);
  auto at_least_one = split_dataset(indexed(3), 0.1f, false, 0);
  ASSERT_TRUE(at_least_one.ok());
  EXPECT_EQ(at_least_one->validation.num_examples, 1);
  auto at_most = split_dataset(indexed(2), 0.9f, false, 0);
  ASSERT_TRUE(at_most.ok());
  EXPECT_EQ(at_most->train.num_examples, 1);
  for (float bad : {-0.1f, 0.95f, std::nanf("")}) {
    auto s = split_dataset(indexed(10), bad, false, 0);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(s.status().message(), StartsWith("data.validation_fraction: must be in [0, 0.9]"));
  }
  EXPECT_FALSE(split_dataset(indexed(0), 0.2f, false, 0).ok());
}

// The backends do not check labels (kernels/backend.h): the data set guarantees every
// label of both splits in [0, num_classes), for every source, including a class that
// lands entirely in the validation split.
TEST(Split, EveryLabelOfBothSplitsIsInRangeForEverySource) {
  const auto expect_in_range = [](const DataSplit& split, int32_t classes,
                                  const std::string& what) {
    for (const Dataset* d : {&split.train, &split.validation}) {
      EXPECT_EQ(d->num_classes, classes) << what;
      ASSERT_EQ(static_cast<int64_t>(d->labels.size()), d->num_examples) << what;
      for (int32_t label : d->labels) {
        ASSERT_GE(label, 0) << what;
        ASSERT_LT(label, classes) << what;
      }
    }
  };
  auto digits = load_dataset(digits_spec(), TaskKind::kClassification, "", 0);
  ASSERT_TRUE(digits.ok());
  auto split = split_dataset(std::move(digits.value()), 0.2f, true, 3);
  ASSERT_TRUE(split.ok()) << split.status().to_string();
  expect_in_range(*split, 10, "digits");
  for (const char* kind : {"spirals", "blobs"}) {
    auto d = load_dataset(synthetic_spec(kind, 500, 0, 7), TaskKind::kClassification, "", 9);
    ASSERT_TRUE(d.ok()) << d.status().to_string();
    auto sp = split_dataset(std::move(d.value()), 0.3f, false, 9);
    ASSERT_TRUE(sp.ok()) << sp.status().to_string();
    expect_in_range(*sp, 7, kind);
  }
  // Class 2 occurs once: whichever split it falls in, both keep 3 classes.
  bool seen_only_in_validation = false;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    Dataset d = indexed(10);
    d.num_classes = 3;
    d.labels[7] = 2;
    auto sp = split_dataset(std::move(d), 0.3f, false, seed);
    ASSERT_TRUE(sp.ok()) << sp.status().to_string();
    expect_in_range(*sp, 3, "seed " + std::to_string(seed));
    const auto& v = sp->validation.labels;
    seen_only_in_validation |= std::find(v.begin(), v.end(), 2) != v.end();
  }
  EXPECT_TRUE(seen_only_in_validation);
}

TEST(Split, RejectsALabelOutsideTheClassCount) {
  for (int32_t bad : {-1, 2, 1000}) {
    Dataset d = indexed(10);
    d.labels[6] = bad;
    auto s = split_dataset(std::move(d), 0.2f, false, 0);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.status().message(),
              "data: indexed: example 6 has label " + std::to_string(bad) + ", outside [0, 2)");
  }
}

TEST(Split, StandardizesWithTrainingStatisticsOnly) {
  // Feature 0 varies with the index, feature 1 is constant, feature 2 is pixel-like.
  Dataset wide;
  wide.name = "wide";
  wide.num_examples = 400;
  wide.num_features = 3;
  for (int64_t i = 0; i < 400; ++i) {
    wide.features.insert(wide.features.end(),
                         {static_cast<float>(i), 7.0f, static_cast<float>((i * 37) % 17)});
    wide.labels.push_back(static_cast<int32_t>(i % 2));
  }
  wide.num_classes = 2;
  auto raw = split_dataset(wide, 0.25f, false, 9);
  auto split = split_dataset(wide, 0.25f, true, 9);
  ASSERT_TRUE(raw.ok() && split.ok());
  ASSERT_TRUE(split->standardization.has_value());
  const Standardization& s = *split->standardization;
  ASSERT_EQ(s.mean.size(), 3u);
  // Statistics are those of the raw training split.
  for (int j = 0; j < 3; ++j) {
    double sum = 0, sq = 0;
    const Dataset& t = raw->train;
    for (int64_t i = 0; i < t.num_examples; ++i) sum += t.features[i * 3 + j];
    const double mean = sum / t.num_examples;
    for (int64_t i = 0; i < t.num_examples; ++i) {
      sq += (t.features[i * 3 + j] - mean) * (t.features[i * 3 + j] - mean);
    }
    EXPECT_NEAR(s.mean[j], mean, 1e-3);
    if (j != 1) {
      EXPECT_NEAR(s.stddev[j], std::sqrt(sq / t.num_examples), 1e-3);
    }
  }
  EXPECT_EQ(s.stddev[1], 1.0f);  // constant feature: divided by 1
  // The training split now has mean 0 and standard deviation 1 (the constant feature 0).
  const Dataset& t = split->train;
  for (int j = 0; j < 3; ++j) {
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < t.num_examples; ++i) sum += t.features[i * 3 + j];
    const double mean = sum / t.num_examples;
    for (int64_t i = 0; i < t.num_examples; ++i) {
      sq += (t.features[i * 3 + j] - mean) * (t.features[i * 3 + j] - mean);
    }
    EXPECT_NEAR(mean, 0.0, 1e-5) << j;
    EXPECT_NEAR(std::sqrt(sq / t.num_examples), j == 1 ? 0.0 : 1.0, 1e-5) << j;
  }
  // Validation used the same statistics, not its own.
  const Dataset& v = split->validation;
  const Dataset& rv = raw->validation;
  for (int64_t i = 0; i < v.num_examples; ++i) {
    for (int j = 0; j < 3; ++j) {
      EXPECT_FLOAT_EQ(v.features[i * 3 + j], (rv.features[i * 3 + j] - s.mean[j]) / s.stddev[j]);
    }
  }
}

// ---------------------------------------------------------------------------------
// Epoch order and batches
// ---------------------------------------------------------------------------------

TEST(EpochOrder, IdentityWithoutShuffle) {
  std::vector<int64_t> expected(100);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(epoch_order(100, 1, 0, false), expected);
  EXPECT_EQ(epoch_order(100, 1, 5, false), expected);
  EXPECT_TRUE(epoch_order(0, 1, 0, true).empty());
}

TEST(EpochOrder, PermutationDeterministicAndPerEpoch) {
  const int64_t n = 1000;
  std::vector<int64_t> e0 = epoch_order(n, 77, 0, true);
  std::vector<int64_t> sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> identity(n);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_EQ(sorted, identity);
  EXPECT_NE(e0, identity);
  EXPECT_EQ(epoch_order(n, 77, 0, true), e0);  // a pure function: same after a "resume"
  EXPECT_NE(epoch_order(n, 77, 1, true), e0);
  EXPECT_NE(epoch_order(n, 78, 0, true), e0);
  EXPECT_EQ(epoch_order(n, 77, 3, true), epoch_order(n, 77, 3, true));
  // Every position sees many different examples across epochs (no fixed points pattern).
  int fixed = 0;
  for (int64_t i = 0; i < n; ++i) fixed += e0[i] == i;
  EXPECT_LT(fixed, 10);
}

TEST(EpochOrder, PinnedValues) {
  // The order is part of the checkpoint contract: a resumed job must see the orders the
  // original run would have seen, also with a newer build. Pinned so that a change of
  // the PRNG or of the shuffle shows up here.
  EXPECT_EQ(epoch_order(10, 0, 0, true), (std::vector<int64_t>{3, 6, 4, 2, 7, 8, 0, 9, 1, 5}));
  EXPECT_EQ(epoch_order(10, 12345, 3, true), (std::vector<int64_t>{4, 5, 3, 2, 9, 6, 1, 8, 0, 7}));
}

TEST(GatherBatch, CopiesRowsInOrder) {
  Dataset d = indexed(10, 3);
  const std::vector<int64_t> order = {9, 2, 5, 0, 7};
  std::vector<float> features(2 * 3, -1);
  std::vector<int32_t> labels(2, -1);
  gather_batch(d, order, 1, 2, features.data(), labels.data(), nullptr);
  EXPECT_EQ(features, (std::vector<float>{6, 7, 8, 15, 16, 17}));
  EXPECT_EQ(labels, (std::vector<int32_t>{0, 1}));

  Dataset r;
  r.task = TaskKind::kRegression;
  r.num_examples = 3;
  r.num_features = 1;
  r.num_targets = 2;
  r.features = {0, 1, 2};
  r.targets = {0, 0.5f, 1, 1.5f, 2, 2.5f};
  std::vector<float> f(2), t(4);
  std::vector<int32_t> untouched(2, -7);
  gather_batch(r, order, 2, 0, f.data(), nullptr, t.data());  // empty batch: nothing
  const std::vector<int64_t> o = {2, 0};
  gather_batch(r, o, 0, 2, f.data(), untouched.data(), t.data());
  EXPECT_EQ(f, (std::vector<float>{2, 0}));
  EXPECT_EQ(t, (std::vector<float>{2, 2.5f, 0, 0.5f}));
  EXPECT_EQ(untouched, (std::vector<int32_t>{-7, -7}));  // labels of a regression set: skipped
}

}  // namespace
}  // namespace ampd::engine
