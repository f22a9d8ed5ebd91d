// Text for language models (DataSpec.text): loading (a file under the data directory or
// the built-in Tiny Shakespeare), the vocabulary, the 90/10 split and the random windows
// a step trains on.
//
// Vocabulary "chars" is the sorted set of distinct bytes of the whole text (for ASCII
// text, nanoGPT's shakespeare_char vocabulary: newline 0, space 1, ...); "bytes" is all 256
// byte values (id = byte). The vocabulary travels in checkpoints (engine/checkpoint.h), so
// a checkpoint can encode prompts and decode samples on its own.
//
// Windows: a step draws batch_size start offsets uniformly from [0, n - block_size - 1]
// with SplitMix64 seeded by (job seed, step): x = tokens[s, s + T), y = tokens[s + 1, s + T
// + 1). A resumed job draws the windows an uninterrupted one would; an evaluation draws
// the same validation windows every time (seeded by the job seed alone), so successive
// val_loss values compare the model, not the sample.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "base/status.h"

namespace ampd::engine {

// Largest text accepted (the tokens are held in host memory as I32).
inline constexpr int64_t kMaxTextBytes = int64_t{1} << 30;

class Vocabulary {
 public:
  // Every byte value.
  static Vocabulary bytes();
  // The sorted distinct bytes of `text`.
  static Vocabulary chars_of(std::string_view text);
  // From its serialized form (to_string): "bytes", or "chars:" + the symbols.
  static StatusOr<Vocabulary> parse(std::string_view serialized);

  int32_t size() const { return static_cast<int32_t>(symbols_.size()); }
  bool is_bytes() const { return bytes_; }
  // The symbols in id order (one byte each).
  const std::string& symbols() const { return symbols_; }
  std::string to_string() const { return bytes_ ? "bytes" : "chars:" + symbols_; }

  // Ids of `text`; InvalidArgument naming `source` and the offset of the first byte that
  // is not in the vocabulary.
  StatusOr<std::vector<int32_t>> encode(std::string_view text, const std::string& source) const;
  // The text of ids (ids outside the vocabulary become '?').
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string decode_one(int32_t id) const;

 private:
  bool bytes_ = false;
  std::string symbols_;       // id -> byte
  std::vector<int32_t> ids_;  // byte -> id, -1 when absent
};

struct TextData {
  std::string name;  // "tinyshakespeare" or the path as written
  Vocabulary vocab;
  std::vector<int32_t> train, validation;
  // "tinyshakespeare: 1115394 characters, 65-symbol vocabulary, 1003854 train / 111540
  // validation"
  std::string describe() const;
};

// Loads the spec's text (`data_dir` roots paths, as for CSV files) and splits it: the
// first 90% train, the last 10% validation. Errors name the file: unreadable, empty,
// too large, or too short for one window of block_size + 1 tokens in each split.
StatusOr<TextData> load_text(const ampd::v1::TextSource& spec, const std::string& data_dir,
                             int64_t block_size);

// The built-in Tiny Shakespeare text, decompressed.
StatusOr<std::string> tinyshakespeare_text();

// Fills x and y (batch x block_size each) with the windows of draw `draw` (the step for
// training; a fixed stream for evaluation batches) from `tokens`.
void draw_windows(const std::vector<int32_t>& tokens, int64_t block_size, int64_t batch,
                  uint64_t seed, uint64_t draw, int32_t* x, int32_t* y);

}  // namespace ampd::engine
