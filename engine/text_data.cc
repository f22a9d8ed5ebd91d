#include "engine/text_data.h"

#include <algorithm>
#include <array>
#include <span>

#include "engine/csv.h"
#include "engine/dataset.h"
#include "kernels/dropout_hash.h"

namespace ampd::engine {

// The gzip-compressed Tiny Shakespeare, compiled in by scripts/embed_file.cmake.
extern const unsigned char kTinyShakespeareGz[];
extern const size_t kTinyShakespeareGzSize;

namespace fs = std::filesystem;

Vocabulary Vocabulary::bytes() {
  Vocabulary v;
  v.bytes_ = true;
  v.symbols_.resize(256);
  v.ids_.resize(256);
  for (int i = 0; i < 256; ++i) {
    v.symbols_[static_cast<size_t>(i)] = static_cast<char>(i);
    v.ids_[static_cast<size_t>(i)] = i;
  }
  return v;
}

Vocabulary Vocabulary::chars_of(std::string_view text) {
  std::array<bool, 256> seen{};
  for (char ch : text) seen[static_cast<unsigned char>(ch)] = true;
  Vocabulary v;
  v.ids_.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    if (!seen[static_cast<size_t>(b)]) continue;
    v.ids_[static_cast<size_t>(b)] = static_cast<int32_t>(v.symbols_.size());
    v.symbols_.push_back(static_cast<char>(b));
  }
  return v;
}

StatusOr<Vocabulary> Vocabulary::parse(std::string_view s) {
  if (s == "bytes") return bytes();
  if (s.substr(0, 6) != "chars:" || s.size() == 6) {
    return invalid_argument("vocabulary: expected \"bytes\" or \"chars:<symbols>\"");
  }
  const std::string_view symbols = s.substr(6);
  for (size_t i = 1; i < symbols.size(); ++i) {
    if (static_cast<unsigned char>(symbols[i - 1]) >= static_cast<unsigned char>(symbols[i])) {
      return invalid_argument("vocabulary: symbols must be distinct and sorted");
    }
  }
  return chars_of(symbols);
}

StatusOr<std::vector<int32_t>> Vocabulary::encode(std::string_view text,
                                                  const std::string& source) const {
  std::vector<int32_t> out(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const auto b = static_cast<unsigned char>(text[i]);
    const int32_t id = ids_[b];
    if (id < 0) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02x", b);
      return invalid_argument(
          source + ": the character " +
          (b >= 0x20 && b < 0x7f ? "'" + std::string(1, text[i]) + "'" : std::string(hex)) +
          " at byte " + std::to_string(i) + " is not in the model's vocabulary of " +
          std::to_string(size()) + " symbols");
    }
    out[i] = id;
  }
  return out;
}

std::string Vocabulary::decode_one(int32_t id) const {
  if (id < 0 || id >= size()) return "?";
  return std::string(1, symbols_[static_cast<size_t>(id)]);
}

std::string Vocabulary::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  out.reserve(ids.size());
  for (int32_t id : ids) out += decode_one(id);
  return out;
}

std::string TextData::describe() const {
  return name + ": " + std::to_string(train.size() + validation.size()) + " characters, " +
         std::to_string(vocab.size()) + "-symbol vocabulary, " + std::to_string(train.size()) +
         " train / " + std::to_string(validation.size()) + " validation";
}

StatusOr<std::string> tinyshakespeare_text() {
  auto text = gunzip(std::span<const unsigned char>(kTinyShakespeareGz, kTinyShakespeareGzSize),
                     "tinyshakespeare", kMaxTextBytes);
  if (!text.ok()) return internal("built-in tinyshakespeare: " + text.status().message());
  return text;
}

namespace {

// The file's text, decompressed when it is gzip.
StatusOr<std::string> read_text_file(const fs::path& file, const std::string& source) {
  AMPD_ASSIGN_OR_RETURN(std::string bytes, read_file(file.string(), source, kMaxTextBytes));
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
  if (is_gzip(std::span<const unsigned char>(u, bytes.size()))) {
    return gunzip(std::span<const unsigned char>(u, bytes.size()), source, kMaxTextBytes);
  }
  return bytes;
}

}  // namespace

StatusOr<TextData> load_text(const ampd::v1::TextSource& spec, const std::string& data_dir,
                             int64_t block_size) {
  TextData d;
  std::string text;
  if (spec.has_path()) {
    d.name = spec.path();
    AMPD_ASSIGN_OR_RETURN(fs::path file,
                          resolve_data_path(data_dir, spec.path(), "data.text.path"));
    AMPD_ASSIGN_OR_RETURN(text, read_text_file(file, "data.text.path " + spec.path()));
  } else {
    d.name = spec.builtin();
    if (spec.builtin() != "tinyshakespeare") {
      return invalid_argument("data.text.builtin: unknown text '" + spec.builtin() +
                              "' (built in: tinyshakespeare)");
    }
    AMPD_ASSIGN_OR_RETURN(text, tinyshakespeare_text());
  }
  const std::string source = "data.text " + d.name;
  if (text.empty()) return invalid_argument(source + ": the text is empty");
  d.vocab = spec.vocabulary() == "bytes" ? Vocabulary::bytes() : Vocabulary::chars_of(text);
  AMPD_ASSIGN_OR_RETURN(std::vector<int32_t> ids, d.vocab.encode(text, source));
  const auto n = static_cast<int64_t>(ids.size());
  const int64_t n_train = n * 9 / 10;  // nanoGPT: int(n * 0.9)
  const int64_t window = block_size + 1;
  if (n_train < window || n - n_train < window) {
    return invalid_argument(source + ": " + std::to_string(n) +
                            " characters is too short: each split (90% train, 10% validation) "
                            "needs at least one window of block_size + 1 = " +
                            std::to_string(window) + " characters, so at least " +
                            std::to_string(window * 10) + " in all");
  }
  d.train.assign(ids.begin(), ids.begin() + n_train);
  d.validation.assign(ids.begin() + n_train, ids.end());
  return d;
}

void draw_windows(const std::vector<int32_t>& tokens, int64_t block_size, int64_t batch,
                  uint64_t seed, uint64_t draw, int32_t* x, int32_t* y) {
  const auto starts = static_cast<uint64_t>(static_cast<int64_t>(tokens.size()) - block_size);
  uint64_t state = splitmix64(splitmix64(seed ^ 0x7e47ull) + draw);
  for (int64_t b = 0; b < batch; ++b) {
    state = splitmix64(state);
    // Multiply-shift maps 64 random bits to [0, starts) with negligible bias.
    const auto s = static_cast<int64_t>(
        static_cast<uint64_t>((static_cast<unsigned __int128>(state) * starts) >> 64));
    std::copy_n(tokens.begin() + s, block_size, x + b * block_size);
    std::copy_n(tokens.begin() + s + 1, block_size, y + b * block_size);
  }
}

}  // namespace ampd::engine
