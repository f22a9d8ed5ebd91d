// Tests of engine/safetensors: round trips of every dtype, the byte layout checked by hand
// against the format, atomic writes under injected and real failures, and rejection of
// corrupt files with DataLoss.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "engine/write_faults.h"

namespace ampd::engine {
namespace {

namespace fs = std::filesystem;

template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> out(v.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

StTensor make(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> d) {
  return StTensor{std::move(name), dtype, std::move(shape), std::move(d)};
}

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

uint64_t le_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// A safetensors file from a header text and a buffer, as another tool would write it.
std::vector<uint8_t> raw_file(const std::string& header, const std::vector<uint8_t>& buffer,
                              uint64_t claimed_header_size = UINT64_MAX) {
  const uint64_t n = claimed_header_size == UINT64_MAX ? header.size() : claimed_header_size;
  std::vector<uint8_t> out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), buffer.begin(), buffer.end());
  return out;
}

// Bitwise CRC-32 (IEEE, reflected, as zlib): an independent check of the writer's checksum.
uint32_t crc32_ref(const std::vector<uint8_t>& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (uint8_t b : data) {
    crc ^= b;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

// Tensors of every dtype, a scalar and an empty tensor, with distinct known bytes.
StFile sample_file() {
  StFile f;
  f.tensors.push_back(make("layer0.weight", DType::kF32, {2, 3},
                           bytes_of<float>({0.f, 1.f, -2.5f, 3.25f, 1e-3f, -65504.f})));
  f.tensors.push_back(make("layer0.bias", DType::kF32, {3}, bytes_of<float>({0.5f, -0.5f, 7.f})));
  f.tensors.push_back(
      make("half", DType::kF16, {2, 2}, bytes_of<uint16_t>({0x3C00, 0xC000, 0x3800, 0x7BFF})));
  f.tensors.push_back(make("half.row", DType::kF16, {1, 3}, bytes_of<uint16_t>({1, 2, 3})));
  f.tensors.push_back(
      make("brain", DType::kBF16, {3}, bytes_of<uint16_t>({0x3F80, 0xC000, 0x4049})));
  f.tensors.push_back(make("brain.2d", DType::kBF16, {2, 1}, bytes_of<uint16_t>({0x3F00, 0x0001})));
  f.tensors.push_back(
      make("labels", DType::kI32, {4}, bytes_of<int32_t>({0, -1, 2147483647, -2147483647 - 1})));
  f.tensors.push_back(make("labels.2d", DType::kI32, {1, 1}, bytes_of<int32_t>({42})));
  f.tensors.push_back(make("mask", DType::kU8, {5}, {0, 1, 127, 128, 255}));
  f.tensors.push_back(make("mask.3d", DType::kU8, {1, 2, 1}, {9, 8}));
  f.tensors.push_back(make("step.scalar", DType::kF32, {}, bytes_of<float>({42.f})));
  f.tensors.push_back(make("empty", DType::kF32, {0, 3}, {}));
  f.metadata["step"] = "1234";
  f.metadata["scaler"] = R"({"scale":65536,"growth_tracker":7})";
  f.metadata["note"] = "h\xc3\xa9llo \xe2\x9c\x93";  // UTF-8
  return f;
}

// sample_file()'s tensors as the writer lays them out: by element size, 4 then 2 then 1
// bytes, in the given order within each size.
const std::vector<std::string> kSampleLayout = {
    "layer0.weight", "layer0.bias", "labels", "labels.2d", "step.scalar", "empty",
    "half",          "half.row",    "brain",  "brain.2d",  "mask",        "mask.3d"};

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = fs::temp_directory_path() /
           ("ampd-st-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    ::unsetenv("AMPD_FAULT_WRITE_ENOSPC");
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name = "ckpt.safetensors") const { return dir_ / name; }
  // Names in the directory other than `keep`: leftovers such as temporary files.
  std::vector<std::string> others(const std::string& keep) const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) {
      if (e.path().filename() != keep) out.push_back(e.path().filename());
    }
    return out;
  }
  // Writes raw bytes to a file and returns read_safetensors' status of it.
  Status read_raw(const std::vector<uint8_t>& bytes) {
    write_bytes(path("raw.safetensors"), bytes);
    return read_safetensors(path("raw.safetensors")).status();
  }

  fs::path dir_;
};

void expect_data_loss(const Status& s, const std::string& fragment = "") {
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
  EXPECT_NE(s.message().find("is corrupt"), std::string::npos) << s.to_string();
  if (!fragment.empty()) {
    EXPECT_NE(s.message().find(fragment), std::string::npos) << s.to_string();
  }
}

// ---- round trip and layout ------------------------------------------------------------

TEST_F(SafetensorsTest, RoundTripsEveryDtypeAndMetadata) {
  const StFile in = sample_file();
  ASSERT_TRUE(write_safetensors(path(), in).ok());
  StatusOr<StFile> out = read_safetensors(path());
  ASSERT_TRUE(out.ok()) << out.status().to_string();

  ASSERT_EQ(out->tensors.size(), in.tensors.size());
  for (size_t i = 0; i < out->tensors.size(); ++i) {
    EXPECT_EQ(out->tensors[i].name, kSampleLayout[i]);  // file order
  }
  for (const StTensor& want : in.tensors) {
    SCOPED_TRACE(want.name);
    const StTensor* got = out->find(want.name);
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(got->dtype, want.dtype);
    EXPECT_EQ(got->shape, want.shape);
    EXPECT_EQ(got->data, want.data);
  }
  for (const auto& [k, v] : in.metadata) EXPECT_EQ(out->metadata[k], v) << k;
  EXPECT_EQ(out->metadata[kStFormatKey], kStFormatValue);
  EXPECT_EQ(out->metadata[kStChecksumKey].rfind("crc32:", 0), 0u);
  EXPECT_EQ(out->metadata[kStHeaderChecksumKey].rfind("crc32:", 0), 0u);
  EXPECT_EQ(out->metadata.size(), in.metadata.size() + 3);

  ASSERT_NE(out->find("labels"), nullptr);
  EXPECT_EQ(out->find("labels")->shape, std::vector<int64_t>{4});
  EXPECT_EQ(out->find("nope"), nullptr);
  EXPECT_EQ(others("ckpt.safetensors"), std::vector<std::string>{});  // no temp file left
}

TEST_F(SafetensorsTest, RoundTripsAFileWithNoTensors) {
  ASSERT_TRUE(write_safetensors(path(), StFile{}).ok());
  StatusOr<StFile> out = read_safetensors(path());
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_TRUE(out->tensors.empty());
  EXPECT_EQ(out->metadata[kStChecksumKey], "crc32:00000000");
}

TEST_F(SafetensorsTest, BytesFollowTheFormat) {
  const StFile in = sample_file();
  ASSERT_TRUE(write_safetensors(path(), in).ok());
  const std::vector<uint8_t> bytes = read_bytes(path());
  ASSERT_GE(bytes.size(), 8u);

  const uint64_t n = le_u64(bytes.data());
  EXPECT_EQ(n % 8, 0u) << "header padded so the buffer starts 8-byte aligned";
  ASSERT_LE(8 + n, bytes.size());
  const std::string text(bytes.begin() + 8, bytes.begin() + 8 + static_cast<int64_t>(n));
  EXPECT_EQ(text.front(), '{');
  const size_t last = text.find_last_not_of(' ');
  EXPECT_EQ(text[last], '}');
  EXPECT_LT(text.size() - last - 1, 8u) << "at most 7 spaces of padding";

  const nlohmann::ordered_json h = nlohmann::ordered_json::parse(text);
  ASSERT_TRUE(h.is_object());
  EXPECT_EQ(h.begin().key(), "__metadata__");
  ASSERT_EQ(h.size(), in.tensors.size() + 1);

  const std::vector<uint8_t> buffer(bytes.begin() + 8 + static_cast<int64_t>(n), bytes.end());
  const char* dtype_names[] = {"F32", "F16", "BF16", "I32", "U8"};
  uint64_t offset = 0;
  std::vector<uint8_t> concat;
  size_t i = 0;
  for (const auto& [key, value] : h.items()) {
    if (key == "__metadata__") continue;
    EXPECT_EQ(key, kSampleLayout[i++]) << "header keys in layout order";
  }
  for (const std::string& name : kSampleLayout) {
    SCOPED_TRACE(name);
    const StTensor& t = *in.find(name);
    ASSERT_TRUE(h.contains(t.name));
    const auto& e = h[t.name];
    EXPECT_EQ(e["dtype"], dtype_names[static_cast<int>(t.dtype)]);
    EXPECT_EQ(e["shape"].get<std::vector<int64_t>>(), t.shape);
    const auto off = e["data_offsets"].get<std::vector<uint64_t>>();
    ASSERT_EQ(off.size(), 2u);
    EXPECT_EQ(off[0], offset);
    EXPECT_EQ(off[1], offset + t.data.size());
    EXPECT_EQ(off[0] % dtype_size(t.dtype), 0u) << "aligned to its element size";
    ASSERT_LE(off[1], buffer.size());
    EXPECT_EQ(std::vector<uint8_t>(buffer.begin() + off[0], buffer.begin() + off[1]), t.data);
    offset = off[1];
    concat.insert(concat.end(), t.data.begin(), t.data.end());
  }
  EXPECT_EQ(offset, buffer.size()) << "tensors cover the buffer";

  const auto& meta = h["__metadata__"];
  for (const auto& [k, v] : in.metadata) EXPECT_EQ(meta[k], v) << k;
  char want[16];
  std::snprintf(want, sizeof want, "crc32:%08x", crc32_ref(concat));
  EXPECT_EQ(meta["ampd.checksum"], want);
  EXPECT_EQ(meta["ampd.format"], "ampd-checkpoint-v1");
}

TEST_F(SafetensorsTest, KeepsTheCallersFormatButNotItsChecksum) {
  StFile in = sample_file();
  in.metadata[kStFormatKey] = "custom-v9";
  in.metadata[kStChecksumKey] = "crc32:deadbeef";
  ASSERT_TRUE(write_safetensors(path(), in).ok());
  StatusOr<StFile> out = read_safetensors(path());
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->metadata[kStFormatKey], "custom-v9");
  EXPECT_NE(out->metadata[kStChecksumKey], "crc32:deadbeef");
}

TEST_F(SafetensorsTest, ReadsAForeignFileWithoutChecksumOrPadding) {
  // As another tool may write it: keys out of offset order, no metadata, no padding.
  const std::string header = R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
                             R"("a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})";
  write_bytes(path("foreign.safetensors"), raw_file(header, {7, 0, 0, 0, 1, 2}));
  StatusOr<StFile> out = read_safetensors(path("foreign.safetensors"));
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  ASSERT_EQ(out->tensors.size(), 2u);
  EXPECT_EQ(out->tensors[0].name, "a");  // file order, not header order
  EXPECT_EQ(out->tensors[0].data, (std::vector<uint8_t>{7, 0, 0, 0}));
  EXPECT_EQ(out->tensors[1].name, "b");
  EXPECT_TRUE(out->metadata.empty());
}

TEST_F(SafetensorsTest, RejectsInvalidTensorsWithoutWriting) {
  auto status_of = [&](StFile f) { return write_safetensors(path(), f); };
  StFile f;
  f.tensors.push_back(make("w", DType::kF32, {2}, {1, 2, 3}));  // 3 bytes, not 8
  EXPECT_EQ(status_of(f).code(), StatusCode::kInvalidArgument);
  f.tensors = {make("w", DType::kU8, {-1}, {})};
  EXPECT_EQ(status_of(f).code(), StatusCode::kInvalidArgument);
  f.tensors = {make("w", DType::kU8, {1}, {1}), make("w", DType::kU8, {1}, {2})};
  EXPECT_EQ(status_of(f).code(), StatusCode::kInvalidArgument);
  f.tensors = {make("__metadata__", DType::kU8, {1}, {1})};
  EXPECT_EQ(status_of(f).code(), StatusCode::kInvalidArgument);
  f.tensors = {make("", DType::kU8, {1}, {1})};
  EXPECT_EQ(status_of(f).code(), StatusCode::kInvalidArgument);
  f.tensors = {make("bad\xff", DType::kU8, {1}, {1})};  // not UTF-8
  EXPECT_EQ(status_of(f).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(fs::is_empty(dir_));
}

// ---- atomic writes ---------------------------------------------------------------------

TEST_F(SafetensorsTest, DiskFullLeavesTheExistingFileIntact) {
  const StFile v1 = sample_file();
  ASSERT_TRUE(write_safetensors(path(), v1).ok());
  const std::vector<uint8_t> before = read_bytes(path());

  StFile v2 = v1;
  v2.metadata["step"] = "9999";
  ::setenv("AMPD_FAULT_WRITE_ENOSPC", "1", 1);
  const Status s = write_safetensors(path(), v2, ScheduledWriteFaults::from_environment().get());
  ::unsetenv("AMPD_FAULT_WRITE_ENOSPC");
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.to_string();
  EXPECT_NE(s.message().find(path()), std::string::npos) << s.to_string();
  EXPECT_NE(s.message().find(std::strerror(ENOSPC)), std::string::npos) << s.to_string();

  EXPECT_EQ(read_bytes(path()), before);
  EXPECT_EQ(others("ckpt.safetensors"), std::vector<std::string>{});
  StatusOr<StFile> out = read_safetensors(path());
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->metadata["step"], "1234");

  // "0" or empty means off; the next write goes through.
  ::setenv("AMPD_FAULT_WRITE_ENOSPC", "0", 1);
  ASSERT_TRUE(write_safetensors(path(), v2, ScheduledWriteFaults::from_environment().get()).ok());
  EXPECT_EQ(read_safetensors(path())->metadata["step"], "9999");
}

TEST_F(SafetensorsTest, UnwritableDirectoryLeavesTheExistingFileIntact) {
  if (::geteuid() == 0) {
    GTEST_SKIP() << "running as root: directory permissions do not stop writes (the disk-full "
                    "case above covers the cleanup through the fault hook)";
  }
  ASSERT_TRUE(write_safetensors(path(), sample_file()).ok());
  const std::vector<uint8_t> before = read_bytes(path());
  fs::permissions(dir_, fs::perms::owner_read | fs::perms::owner_exec);
  const Status s = write_safetensors(path(), StFile{});
  fs::permissions(dir_, fs::perms::owner_all);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.to_string();
  EXPECT_NE(s.message().find(path()), std::string::npos) << s.to_string();
  EXPECT_EQ(read_bytes(path()), before);
  EXPECT_EQ(others("ckpt.safetensors"), std::vector<std::string>{});
}

TEST_F(SafetensorsTest, MissingDirectoryIsAFailedPrecondition) {
  const std::string p = (dir_ / "no-such-dir" / "ckpt.safetensors").string();
  const Status s = write_safetensors(p, sample_file());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.to_string();
  EXPECT_NE(s.message().find(p), std::string::npos) << s.to_string();
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(SafetensorsTest, FailedRenameRemovesTheTemporaryFile) {
  // Renaming a file over a non-empty directory fails (EISDIR) even for root.
  fs::create_directories(dir_ / "ckpt.safetensors" / "inside");
  const Status s = write_safetensors(path(), sample_file());
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("rename"), std::string::npos) << s.to_string();
  EXPECT_EQ(others("ckpt.safetensors"), std::vector<std::string>{});
  EXPECT_TRUE(fs::is_directory(dir_ / "ckpt.safetensors" / "inside"));
}

TEST_F(SafetensorsTest, WritesIntoTheCurrentDirectoryForABareName) {
  const fs::path cwd = fs::current_path();
  fs::current_path(dir_);
  const Status s = write_safetensors("bare.safetensors", sample_file());
  fs::current_path(cwd);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(read_safetensors(path("bare.safetensors")).ok());
}

// ---- corrupt files ---------------------------------------------------------------------

TEST_F(SafetensorsTest, FlippedTensorByteIsAChecksumMismatch) {
  ASSERT_TRUE(write_safetensors(path(), sample_file()).ok());
  std::vector<uint8_t> bytes = read_bytes(path());
  const uint64_t n = le_u64(bytes.data());
  bytes[8 + n + 5] ^= 0x10;  // inside layer0.weight
  write_bytes(path(), bytes);
  const Status s = read_safetensors(path()).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_EQ(s.message(), "checkpoint " + path() + " is corrupt: checksum mismatch");
}

TEST_F(SafetensorsTest, TruncatedFilesAreDataLoss) {
  ASSERT_TRUE(write_safetensors(path(), sample_file()).ok());
  const std::vector<uint8_t> bytes = read_bytes(path());
  const uint64_t n = le_u64(bytes.data());
  for (size_t keep : {size_t{0}, size_t{4}, size_t{8}, size_t{8 + n / 2}, size_t{8 + n},
                      size_t{8 + n + 3}, bytes.size() - 1}) {
    SCOPED_TRACE(keep);
    expect_data_loss(read_raw({bytes.begin(), bytes.begin() + static_cast<int64_t>(keep)}));
  }
}

TEST_F(SafetensorsTest, GarbageHeaderIsDataLoss) {
  expect_data_loss(read_raw(raw_file("this is not json", {})), "JSON");
  expect_data_loss(read_raw(raw_file("[1, 2, 3]", {})), "object");
  expect_data_loss(read_raw(raw_file(R"({"a": 1})", {})));
  expect_data_loss(read_raw(raw_file("{\"a\": \"\xff\xfe\"}", {})));  // invalid UTF-8
  std::vector<uint8_t> noise(64);
  std::mt19937 rng(7);
  for (auto& b : noise) b = static_cast<uint8_t>(rng());
  noise[0] = 16;  // header size 16, then random bytes
  std::fill(noise.begin() + 1, noise.begin() + 8, 0);
  expect_data_loss(read_raw(noise));
}

TEST_F(SafetensorsTest, HeaderSizePastTheEndIsDataLoss) {
  const std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  expect_data_loss(read_raw(raw_file(header, {1}, header.size() + 100)), "past the end");
  expect_data_loss(read_raw(raw_file(header, {1}, uint64_t{1} << 62)), "100 MB");
  expect_data_loss(read_raw(raw_file(header, {1}, UINT64_MAX - 1)));
}

TEST_F(SafetensorsTest, InconsistentOffsetsAreDataLoss) {
  auto file = [](const std::string& entries, size_t buffer_bytes) {
    return raw_file("{" + entries + "}", std::vector<uint8_t>(buffer_bytes, 0));
  };
  const std::string a4 = R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  // Overlap: b starts inside a.
  expect_data_loss(
      read_raw(file(a4 + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]})", 6)),
      "overlaps");
  // Two tensors on the same bytes.
  expect_data_loss(
      read_raw(file(a4 + R"(,"b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]})", 4)),
      "overlaps");
  // Gap between tensors, and a gap at the start.
  expect_data_loss(
      read_raw(file(a4 + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]})", 12)), "gap");
  expect_data_loss(read_raw(file(R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]})", 2)),
                   "gap");
  // Trailing bytes no tensor covers.
  expect_data_loss(read_raw(file(a4, 5)), "cover");
  // Past the end of the file.
  expect_data_loss(read_raw(file(a4, 2)), "past the end");
  // Offsets not matching dtype * shape; reversed offsets.
  expect_data_loss(read_raw(file(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]})", 4)),
                   "do not match");
  expect_data_loss(read_raw(file(R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,0]})", 1)));
  // Malformed entries.
  expect_data_loss(read_raw(file(R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0]})", 4)));
  expect_data_loss(read_raw(file(R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,-4]})", 4)));
  expect_data_loss(read_raw(file(R"("a":{"dtype":"F32","shape":[1]})", 4)));
  expect_data_loss(read_raw(file(R"("a":{"shape":[1],"data_offsets":[0,4]})", 4)));
  expect_data_loss(read_raw(file(R"("a":{"dtype":"F32","shape":1,"data_offsets":[0,4]})", 4)));
}

TEST_F(SafetensorsTest, BadShapesAndDtypesAreRejected) {
  auto one = [](const std::string& dtype, const std::string& shape, const std::string& offsets,
                size_t buffer_bytes) {
    return raw_file(R"({"a":{"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" +
                        offsets + "}}",
                    std::vector<uint8_t>(buffer_bytes, 0));
  };
  expect_data_loss(read_raw(one("F32", "[-1]", "[0,0]", 0)), "dimension");
  expect_data_loss(read_raw(one("F32", "[1.5]", "[0,4]", 4)), "dimension");
  expect_data_loss(read_raw(one("F32", "[4294967296,4294967296]", "[0,0]", 0)), "overflows");
  expect_data_loss(read_raw(one("F32", "[9223372036854775808]", "[0,0]", 0)), "dimension");
  expect_data_loss(read_raw(one("F99", "[1]", "[0,4]", 4)), "unknown dtype");
  expect_data_loss(read_raw(one("f32", "[1]", "[0,4]", 4)), "unknown dtype");
  const Status i64 = read_raw(one("I64", "[1]", "[0,8]", 8));
  EXPECT_EQ(i64.code(), StatusCode::kUnimplemented) << i64.to_string();
  EXPECT_NE(i64.message().find("I64"), std::string::npos) << i64.to_string();
}

TEST_F(SafetensorsTest, BadMetadataAndDuplicateKeysAreDataLoss) {
  const std::string a = R"("a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]})";
  expect_data_loss(read_raw(raw_file(R"({"__metadata__":{"step":3},)" + a + "}", {1})), "string");
  expect_data_loss(read_raw(raw_file(R"({"__metadata__":[],)" + a + "}", {1})), "__metadata__");
  expect_data_loss(read_raw(raw_file("{" + a + "," + a + "}", {1})), "duplicate");
  // A malformed checksum cannot match.
  expect_data_loss(
      read_raw(raw_file(R"({"__metadata__":{"ampd.checksum":"md5:x"},)" + a + "}", {1})),
      "checksum mismatch");
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  EXPECT_EQ(read_safetensors(path("absent.safetensors")).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(read_safetensors(dir_.string()).status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ampd::engine
