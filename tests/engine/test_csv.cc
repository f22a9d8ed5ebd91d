// The numeric CSV reader: what it accepts, and that every rejection names the source,
// the line and (for a cell) the column.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/csv.h"

namespace ampd::engine {
namespace {

using ::testing::HasSubstr;

std::span<const unsigned char> bytes_of(const std::string& s) {
  return {reinterpret_cast<const unsigned char*>(s.data()), s.size()};
}

// gzip-compresses `text` (one member) in memory.
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

Status parse_error(const std::string& text, CsvOptions options = {}) {
  auto t = parse_csv(text, "data.csv", options);
  EXPECT_FALSE(t.ok()) << "parsed: " << text;
  return t.status();
}

TEST(Csv, ParsesPlainNumbers) {
  auto t = parse_csv("1,2,3\n4.5,-6,7e2\n", "data.csv");
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->num_rows, 2);
  EXPECT_EQ(t->num_columns, 3);
  EXPECT_EQ(t->values, (std::vector<float>{1, 2, 3, 4.5f, -6, 700}));
  EXPECT_EQ(t->row_lines, (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(t->column_names.empty());
  EXPECT_EQ(t->at(1, 2), 700);
  EXPECT_EQ(t->location(1, 2), "data.csv:2:3");
}

TEST(Csv, HeaderCrlfBomSpacesQuotesAndBlankLines) {
  const std::string text =
      "\xEF\xBB\xBF"
      "x, \"y,z\" ,\"say \"\"hi\"\"\"\r\n"
      " 1 , \"2\" ,+3\r\n"
      "\r\n"
      "\t.5,5.,-0\r\n"
      "\r\n";
  CsvOptions options;
  options.header = true;
  auto t = parse_csv(text, "data.csv", options);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->column_names, (std::vector<std::string>{"x", "y,z", "say \"hi\""}));
  EXPECT_EQ(t->num_rows, 2);
  EXPECT_EQ(t->values, (std::vector<float>{1, 2, 3, 0.5f, 5, 0}));
  EXPECT_EQ(t->row_lines, (std::vector<int64_t>{2, 4}));
}

TEST(Csv, LastLineWithoutNewline) {
  auto t = parse_csv("1,2\n3,4", "data.csv");
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->num_rows, 2);
}

TEST(Csv, OtherDelimiter) {
  CsvOptions options;
  options.delimiter = '\t';
  auto t = parse_csv("1\t 2\n3\t4\n", "data.tsv", options);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->values, (std::vector<float>{1, 2, 3, 4}));
}

TEST(Csv, FloatEdgeValues) {
  auto t = parse_csv("1e-50,3.4028234e38,-1.5e-45\n", "data.csv");
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->values[0], 0.0f);  // underflow rounds to zero
  EXPECT_EQ(t->values[1], std::numeric_limits<float>::max());
  EXPECT_LT(t->values[2], 0.0f);  // a subnormal
}

TEST(Csv, RaggedRowNamesLineAndCounts) {
  Status s = parse_error("1,2,3\n4,5,6\n\n7,8\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "data.csv:4: expected 3 columns, got 2");
  // Against the header's width too.
  CsvOptions options;
  options.header = true;
  s = parse_error("a,b\n1,2,3\n", options);
  EXPECT_EQ(s.message(), "data.csv:2: expected 2 columns, got 3");
}

TEST(Csv, NonNumericCellNamesLineAndColumn) {
  Status s = parse_error("1,2,3\n4,5,6\n7,8,9\n1,2,3\n1,2,3\n1,2,3\n1,2,3\n1,2,3\n1,2,3,\n");
  EXPECT_EQ(s.message(), "data.csv:9: expected 3 columns, got 4");
  s = parse_error("1,2,3,4,5\n1,2,3,4,5\n1,2,3,4,abc\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "data.csv:3:5: 'abc' is not a number");
  EXPECT_EQ(parse_error("1.5x,2\n").message(), "data.csv:1:1: '1.5x' is not a number");
  EXPECT_EQ(parse_error("1,0x10\n").message(), "data.csv:1:2: '0x10' is not a number");
  EXPECT_EQ(parse_error("1,2 3\n").message(), "data.csv:1:2: '2 3' is not a number");
  EXPECT_EQ(parse_error("1,,3\n").message(), "data.csv:1:2: empty cell");
  EXPECT_EQ(parse_error("1,2,\n").message(), "data.csv:1:3: empty cell");
  EXPECT_EQ(parse_error("1,\"2\n").message(), "data.csv:1:2: unterminated quoted cell");
  EXPECT_EQ(parse_error("1,\"2\"x\n").message(),
            "data.csv:1:2: unexpected text after a quoted cell");
  // Long cells are shortened in the message.
  Status long_cell = parse_error("1," + std::string(1000, 'z') + "\n");
  EXPECT_LT(long_cell.message().size(), 100u);
  EXPECT_THAT(long_cell.message(), HasSubstr("data.csv:1:2: 'zzz"));
}

TEST(Csv, NonFiniteValuesRejected) {
  for (const char* cell : {"nan", "NaN", "inf", "-inf", "Infinity"}) {
    Status s = parse_error(std::string("1,2\n3,") + cell + "\n");
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.message(), std::string("data.csv:2:2: non-finite value '") + cell + "'");
  }
  Status s = parse_error("1e39,1\n");
  EXPECT_EQ(s.message(), "data.csv:1:1: '1e39' is out of the float32 range");
}

TEST(Csv, EmptyInputHasNoDataRows) {
  EXPECT_EQ(parse_error("").message(), "data.csv: no data rows");
  EXPECT_EQ(parse_error("\n\r\n  \n").message(), "data.csv: no data rows");
  CsvOptions options;
  options.header = true;
  EXPECT_EQ(parse_error("a,b,c\n", options).message(), "data.csv: no data rows");
}

TEST(Csv, Limits) {
  CsvOptions options;
  options.max_columns = 3;
  EXPECT_EQ(parse_error("1,2,3,4\n", options).message(), "data.csv:1: more than 3 columns");
  options = {};
  options.max_bytes = 8;
  EXPECT_THAT(parse_error("1,2,3,4,5\n", options).message(),
              HasSubstr("exceeds the 8 bytes limit"));
}

TEST(Csv, GzipBuffer) {
  const std::string text = "1,2\r\n3,4\r\n";
  auto t = read_csv_buffer(bytes_of(gzip(text)), "data.csv.gz");
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->values, (std::vector<float>{1, 2, 3, 4}));
  // Concatenated members decompress to the concatenation, as with gunzip.
  auto two = read_csv_buffer(bytes_of(gzip("1,2\n") + gzip("3,4\n")), "data.csv.gz");
  ASSERT_TRUE(two.ok()) << two.status().to_string();
  EXPECT_EQ(two->values, (std::vector<float>{1, 2, 3, 4}));
  // Errors from the decompressed text still carry lines and columns.
  auto bad = read_csv_buffer(bytes_of(gzip("1,2\n3,x\n")), "data.csv.gz");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "data.csv.gz:2:2: 'x' is not a number");
}

TEST(Csv, CorruptGzip) {
  const std::string gz = gzip(std::string(10000, '1') + "\n");
  auto truncated = read_csv_buffer(bytes_of(gz.substr(0, gz.size() / 2)), "d.csv.gz");
  ASSERT_FALSE(truncated.ok());
  EXPECT_EQ(truncated.status().message(), "d.csv.gz: truncated gzip data");
  std::string corrupt = gz;
  corrupt[12] ^= 0x55;
  corrupt[13] ^= 0x55;
  auto bad = read_csv_buffer(bytes_of(corrupt), "d.csv.gz");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("d.csv.gz: "));
  auto trailing = read_csv_buffer(bytes_of(gz + "junk"), "d.csv.gz");
  ASSERT_FALSE(trailing.ok());
  EXPECT_THAT(trailing.status().message(), HasSubstr("unexpected data after the end"));
}

TEST(Csv, DecompressionLimit) {
  const std::string gz = gzip(std::string(1 << 20, '7'));
  auto out = gunzip(bytes_of(gz), "bomb.gz", 1000);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().message(), "bomb.gz: decompressed data exceeds the 1000 bytes limit");
  auto ok = gunzip(bytes_of(gz), "bomb.gz", 1 << 20);
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ(ok->size(), size_t{1} << 20);
}

class CsvFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "ampd_csv_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& content) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  std::filesystem::path dir_;
};

TEST_F(CsvFileTest, ReadsPlainAndGzipFiles) {
  auto plain = read_csv_file(write("a.csv", "h1,h2\n1,2\n"), "a.csv", CsvOptions{.header = true});
  ASSERT_TRUE(plain.ok()) << plain.status().to_string();
  EXPECT_EQ(plain->values, (std::vector<float>{1, 2}));
  auto gz = read_csv_file(write("a.csv.gz", gzip("1,2\n3,4\n")), "a.csv.gz");
  ASSERT_TRUE(gz.ok()) << gz.status().to_string();
  EXPECT_EQ(gz->num_rows, 2);
}

TEST_F(CsvFileTest, MissingDirectoryAndOversizedFiles) {
  auto missing = read_csv_file((dir_ / "nope.csv").string(), "nope.csv");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "nope.csv: no such file");
  auto directory = read_csv_file(dir_.string(), "dir");
  EXPECT_EQ(directory.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(directory.status().message(), "dir: not a regular file");
  CsvOptions options;
  options.max_bytes = 4;
  auto big = read_csv_file(write("big.csv", "1,2,3\n"), "big.csv", options);
  EXPECT_EQ(big.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(big.status().message(),
              HasSubstr("big.csv: the file is 6 bytes, over the 4 bytes limit"));
}

}  // namespace
}  // namespace ampd::engine
