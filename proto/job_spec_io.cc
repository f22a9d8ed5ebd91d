#include "proto/job_spec_io.h"

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

namespace ampd::spec_io {
namespace {

namespace pb = google::protobuf;
using ampd::v1::JobSpec;

// JobSpec nests 5 levels deep (model.layers[i].linear.out_features); anything much deeper
// is not a job spec.
constexpr int kMaxYamlDepth = 32;
// The JSON a YAML job file turns into; far above any real spec (kMaxSpecBytes of YAML
// gives at most a few times that).
constexpr size_t kMaxJsonBytes = 8 * kMaxSpecBytes;

// An error message; empty means success. Every error here is ErrorKind::kInvalid.
using Error = std::string;

// Every error message, with control characters escaped (\x04): the libraries' messages can
// quote the input (yaml-cpp's "unknown escape character: " ends with the byte after a
// trailing backslash, found by tests/fuzz/fuzz_job_spec, seed regress-raw-byte-in-error),
// and messages end up in logs and terminals.
ParseResult Failure(ErrorKind kind, std::string message) {
  ParseResult r;
  r.error = kind;
  for (char ch : message) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      r.message += buf;
    } else {
      r.message += ch;
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------
// Formatting helpers
// ---------------------------------------------------------------------------------------

void append_json_string(std::string_view s, std::string* out) {
  out->push_back('"');
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          *out += buf;
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

std::string_view strip_bom(std::string_view text) {
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  return text;
}

std::string_view leading_space_stripped(std::string_view text) {
  size_t i = text.find_first_not_of(" \t\r\n");
  return i == std::string_view::npos ? std::string_view() : text.substr(i);
}

// ---------------------------------------------------------------------------------------
// YAML -> JSON
// ---------------------------------------------------------------------------------------

bool all_digits(std::string_view s, int base) {
  if (s.empty()) return false;
  for (char c : s) {
    bool ok = base == 16 ? std::isxdigit(static_cast<unsigned char>(c)) != 0
                         : (c >= '0' && c < static_cast<char>('0' + base));
    if (!ok) return false;
  }
  return true;
}

std::string strip_leading_zeros(std::string_view digits) {
  size_t i = digits.find_first_not_of('0');
  return i == std::string_view::npos ? "0" : std::string(digits.substr(i));
}

// A YAML 1.2 core-schema number as JSON text, or nullopt when `s` is not one. Decimal forms
// are rewritten textually (no rounding): "+1." -> "1", ".5" -> "0.5", "007" -> "7".
// 0x / 0o integers become decimal (or a string that protobuf will reject, past 2^64);
// .inf / .nan become the strings protobuf's JSON mapping accepts for float fields.
std::optional<std::string> yaml_number_to_json(std::string_view s) {
  if (s == ".nan" || s == ".NaN" || s == ".NAN") return std::string("\"NaN\"");
  std::string_view body = s;
  bool negative = false;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
    negative = body[0] == '-';
    body.remove_prefix(1);
  }
  if (body == ".inf" || body == ".Inf" || body == ".INF") {
    return std::string(negative ? "\"-Infinity\"" : "\"Infinity\"");
  }
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
    int base = s[1] == 'x' ? 16 : 8;
    std::string_view digits = s.substr(2);
    if (!all_digits(digits, base)) return std::nullopt;
    uint64_t v = 0;
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v, base);
    if (ec != std::errc() || ptr != digits.data() + digits.size()) {
      std::string quoted;
      append_json_string(s, &quoted);
      return quoted;
    }
    return std::to_string(v);
  }
  // [0-9]* ( . [0-9]* )? ( [eE] [-+]? [0-9]+ )?, with at least one mantissa digit.
  size_t i = 0;
  while (i < body.size() && body[i] >= '0' && body[i] <= '9') ++i;
  std::string_view int_part = body.substr(0, i);
  std::string_view frac_part;
  if (i < body.size() && body[i] == '.') {
    size_t start = ++i;
    while (i < body.size() && body[i] >= '0' && body[i] <= '9') ++i;
    frac_part = body.substr(start, i - start);
  }
  if (int_part.empty() && frac_part.empty()) return std::nullopt;
  std::string exponent;
  if (i < body.size() && (body[i] == 'e' || body[i] == 'E')) {
    ++i;
    exponent = "e";
    if (i < body.size() && (body[i] == '+' || body[i] == '-')) exponent += body[i++];
    size_t start = i;
    while (i < body.size() && body[i] >= '0' && body[i] <= '9') ++i;
    if (i == start) return std::nullopt;
    exponent += body.substr(start, i - start);
  }
  if (i != body.size()) return std::nullopt;
  std::string out = negative ? "-" : "";
  out += strip_leading_zeros(int_part);
  if (!frac_part.empty()) {
    out += '.';
    out += frac_part;
  }
  return out + exponent;
}

// YAML 1.2 core schema booleans (not 1.1's yes/no/on/off).
std::optional<bool> yaml_bool(std::string_view s) {
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  return std::nullopt;
}

std::string at_mark(const YAML::Mark& mark) {
  if (mark.is_null()) return "";
  return "line " + std::to_string(mark.line + 1) + ", column " + std::to_string(mark.column + 1) +
         ": ";
}

// The field a JSON key names: protobuf accepts the proto name and the lowerCamel JSON name.
const pb::FieldDescriptor* find_field(const pb::Descriptor* message, const std::string& key) {
  for (int i = 0; i < message->field_count(); ++i) {
    const pb::FieldDescriptor* f = message->field(i);
    if (f->name() == key || f->json_name() == key) return f;
  }
  return nullptr;
}

// Writes a YAML node as JSON text. The JobSpec descriptor is consulted where YAML leaves
// the type open: a plain scalar given to a string field stays a string (`name: 2024`), and
// an empty value given to a message field is that message with its defaults (`- relu:`,
// `digits:`). Unknown keys pass through for protobuf to report.
class YamlToJson {
 public:
  // What the node is the value of: a message (the top level, a message field or one
  // element of a repeated message field), a scalar field, or nothing known.
  struct Context {
    const pb::Descriptor* message = nullptr;
    const pb::FieldDescriptor* field = nullptr;
    bool element = false;  // one element of the repeated `field`
  };

  // Appends the node's JSON to json(); returns an error message, or "" when it worked.
  Error convert(const YAML::Node& node, const Context& ctx, int depth) {
    if (depth > kMaxYamlDepth) {
      return fail(node, "nested deeper than " + std::to_string(kMaxYamlDepth) + " levels");
    }
    // Aliases (*a) repeat what their anchor (&a) names: ten lists of ten aliases each to
    // the previous one are 10^10 nodes in a few hundred bytes ("billion laughs").
    if (out_.size() > kMaxJsonBytes) {
      return fail(node, "the document expands to more than " + std::to_string(kMaxJsonBytes) +
                            " bytes (YAML aliases repeating large anchors?)");
    }
    switch (node.Type()) {
      case YAML::NodeType::Undefined: return fail(node, "undefined YAML node");
      case YAML::NodeType::Null: {
        bool whole_list = ctx.field != nullptr && ctx.field->is_repeated() && !ctx.element;
        out_ += ctx.message != nullptr && !whole_list ? "{}" : "null";
        return {};
      }
      case YAML::NodeType::Scalar: return convert_scalar(node, ctx);
      case YAML::NodeType::Sequence: {
        Context element = ctx;
        element.element = true;
        out_ += '[';
        bool first = true;
        for (const YAML::Node& item : node) {
          if (!first) out_ += ',';
          first = false;
          if (Error e = convert(item, element, depth + 1); !e.empty()) return e;
        }
        out_ += ']';
        return {};
      }
      case YAML::NodeType::Map: {
        out_ += '{';
        std::set<std::string> seen;
        bool first = true;
        for (const auto& kv : node) {
          const YAML::Node& key = kv.first;
          if (!key.IsScalar()) return fail(key, "mapping keys must be field names");
          const std::string& name = key.Scalar();
          if (!seen.insert(name).second)
            return fail(key, "duplicate key " + quote_for_message(name));
          Context child;
          if (ctx.message != nullptr) {
            child.field = find_field(ctx.message, name);
            if (child.field != nullptr) child.message = child.field->message_type();
          }
          if (!first) out_ += ',';
          first = false;
          append_json_string(name, &out_);
          out_ += ':';
          if (Error e = convert(kv.second, child, depth + 1); !e.empty()) return e;
        }
        out_ += '}';
        return {};
      }
    }
    return fail(node, "unexpected YAML node");
  }

  const std::string& json() const { return out_; }

 private:
  static Error fail(const YAML::Node& node, const std::string& what) {
    return "job spec: " + at_mark(node.Mark()) + what;
  }

  Error convert_scalar(const YAML::Node& node, const Context& ctx) {
    static const std::string kCore = "tag:yaml.org,2002:";
    const std::string& tag = node.Tag();
    const std::string& text = node.Scalar();
    // "!" marks a quoted or block scalar: always a string.
    if (tag == "!" || tag == kCore + "str") {
      append_json_string(text, &out_);
      return {};
    }
    bool plain = tag == "?" || tag.empty();
    if (plain && ctx.field != nullptr && ctx.field->type() == pb::FieldDescriptor::TYPE_STRING) {
      append_json_string(text, &out_);
      return {};
    }
    if (plain || tag == kCore + "bool") {
      if (std::optional<bool> b = yaml_bool(text)) {
        out_ += *b ? "true" : "false";
        return {};
      }
      if (!plain) return fail(node, quote_for_message(text) + " is not a boolean (true or false)");
    }
    if (plain || tag == kCore + "int" || tag == kCore + "float") {
      if (std::optional<std::string> number = yaml_number_to_json(text)) {
        out_ += *number;
        return {};
      }
      if (!plain) return fail(node, quote_for_message(text) + " is not a number");
    }
    if (plain) {
      append_json_string(text, &out_);
      return {};
    }
    if (tag == kCore + "null") {
      out_ += "null";
      return {};
    }
    return fail(node, "unsupported YAML tag " + quote_for_message(tag));
  }

  std::string out_;
};

// Receives a document's parse events and ignores them: only the number of documents is
// wanted from the first pass.
class IgnoreEvents : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// YAML syntax only: the one document, or the parser's error with its line and column.
//
// Not YAML::LoadAll: it stops at the first *empty* document, and after a top-level flow
// collection followed by more text (`{"a": 1}}, "b": 2}`) yaml-cpp 0.7's parser returns a
// non-empty document on every further call, so LoadAll never returns and its vector grows
// until memory runs out (found by tests/fuzz/fuzz_job_spec; seeds regress-*-hang.json in
// tests/fuzz/corpus/job_spec). Here the documents are counted with a bound first, then
// the one document is loaded.
//
// `syntax` tells a YAML syntax error (where a JSON reading's error may say more) from a
// well-formed stream of more than one document.
Error load_yaml(std::string_view text, YAML::Node* doc, bool* syntax) {
  *syntax = false;
  try {
    const std::string copy(text);
    std::istringstream in(copy);
    YAML::Parser parser(in);
    IgnoreEvents ignore;
    int documents = 0;
    while (parser.HandleNextDocument(ignore)) {
      if (++documents > 1) {
        return "job spec: expected one YAML document, found more than one (a '---' line, or "
               "text after the end of the top-level mapping)";
      }
    }
    *doc = YAML::Load(copy);
    return {};
  } catch (const YAML::Exception& e) {
    *syntax = true;
    return "job spec: YAML syntax error at " + at_mark(e.mark) + e.msg;
  }
}

Error yaml_document_to_json(const YAML::Node& doc, std::string* json) {
  if (!doc.IsDefined() || doc.IsNull()) return "job spec: empty document";
  if (!doc.IsMap()) {
    return "job spec: " + at_mark(doc.Mark()) +
           "expected a mapping of JobSpec fields at the top level";
  }
  YamlToJson converter;
  YamlToJson::Context top;
  top.message = JobSpec::descriptor();
  if (Error e = converter.convert(doc, top, 0); !e.empty()) return e;
  *json = converter.json();
  return {};
}

ParseResult parse_json(std::string_view json) {
  ParseResult r;
  pb::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  pb::util::Status status =
      pb::util::JsonStringToMessage(pb::StringPiece(json.data(), json.size()), &r.spec, options);
  if (!status.ok()) {
    pb::StringPiece message = status.message();
    return Failure(ErrorKind::kInvalid, "job spec: " + std::string(message.data(), message.size()));
  }
  return r;
}

ParseResult invalid(std::string message) {
  return Failure(ErrorKind::kInvalid, std::move(message));
}

// A job file is Unicode text in UTF-8, and only YAML 1.2's printable characters
// (c-printable: tab, LF, CR, U+0020..U+007E, U+0085, U+00A0..U+D7FF, U+E000..U+FFFD,
// U+10000..U+10FFFF), which JSON text satisfies too. yaml-cpp 0.7 does not enforce this:
// it misreads a NUL byte and what follows ("x\0b" came back as "x\x08 ") and passes
// invalid UTF-8 through. So anything else is refused here, with its position.
Error non_printable_error(std::string_view text) {
  size_t line = 1, column = 1;
  const auto at = [&](const std::string& what) {
    return "job spec: line " + std::to_string(line) + ", column " + std::to_string(column) + ": " +
           what;
  };
  size_t i = 0;
  while (i < text.size()) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    uint32_t cp = 0;
    size_t len = 0;
    if (b0 < 0x80) {
      cp = b0;
      len = 1;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
      cp = b0 & 0x1F;
      len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      cp = b0 & 0x0F;
      len = 3;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      cp = b0 & 0x07;
      len = 4;
    } else {
      len = 0;
    }
    bool valid = len > 0 && i + len <= text.size();
    for (size_t k = 1; valid && k < len; ++k) {
      const auto b = static_cast<unsigned char>(text[i + k]);
      if ((b & 0xC0) != 0x80) valid = false;
      cp = (cp << 6) | (b & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8 either.
    if (valid && ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
                  (cp >= 0xD800 && cp <= 0xDFFF))) {
      valid = false;
    }
    if (!valid) {
      char byte[8];
      std::snprintf(byte, sizeof(byte), "0x%02x", b0);
      return at(std::string("invalid UTF-8 (byte ") + byte + "); save the file as UTF-8");
    }
    const bool printable = cp == '\t' || cp == '\n' || cp == '\r' || (cp >= 0x20 && cp <= 0x7E) ||
                           cp == 0x85 || (cp >= 0xA0 && cp <= 0xFFFD) || cp >= 0x10000;
    if (!printable) {
      char code[16];
      std::snprintf(code, sizeof(code), "U+%04X", static_cast<unsigned>(cp));
      return at(std::string("control character ") + code +
                " is not allowed in a job file (inside a double-quoted string, write it as an "
                "escape)");
    }
    if (cp == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
    i += len;
  }
  return {};
}

}  // namespace

// 'text' for messages: at most 64 bytes, control characters escaped.
std::string quote_for_message(std::string_view s) {
  std::string out = "'";
  size_t n = std::min<size_t>(s.size(), 64);
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > n) out += "...";
  return out + "'";
}

ParseResult parse_job_spec_text(std::string_view text, std::string_view format) {
  if (text.size() > kMaxSpecBytes) {
    return invalid("job spec: larger than " + std::to_string(kMaxSpecBytes) + " bytes (" +
                   std::to_string(text.size()) + ")");
  }
  if (format != "" && format != "yaml" && format != "json") {
    return invalid("job spec: format must be yaml, json or empty (guess), got " +
                   quote_for_message(format));
  }
  text = strip_bom(text);
  if (Error e = non_printable_error(text); !e.empty()) return invalid(e);
  std::string_view body = leading_space_stripped(text);
  if (body.empty()) return invalid("job spec: empty document");
  try {
    if (format == "json") return parse_json(text);
    std::optional<ParseResult> json_error;
    if (format.empty() && body[0] == '{') {
      // Most likely JSON; but a YAML flow mapping starts with '{' too. When protobuf rejects
      // the text and it is YAML, the YAML reading's result (or error) is the one that
      // speaks to what was written; when it is not YAML either, protobuf's error is.
      ParseResult json = parse_json(text);
      if (json.ok()) return json;
      json_error = std::move(json);
    }
    YAML::Node doc;
    bool syntax = false;
    if (Error e = load_yaml(text, &doc, &syntax); !e.empty()) {
      return json_error && syntax ? std::move(*json_error) : invalid(e);
    }
    std::string converted;
    if (Error e = yaml_document_to_json(doc, &converted); !e.empty()) return invalid(e);
    return parse_json(converted);
  } catch (const std::exception& e) {
    return invalid(std::string("job spec: ") + e.what());
  } catch (...) {
    return Failure(ErrorKind::kInternal, "job spec: unknown exception while parsing");
  }
}

ParseResult read_job_spec_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (st.type() == fs::file_type::not_found) {
    return Failure(ErrorKind::kNotFound, path + ": no such file");
  }
  if (ec) return invalid(path + ": cannot read: " + ec.message());
  if (st.type() == fs::file_type::directory) return invalid(path + ": is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) return invalid(path + ": cannot open: " + std::strerror(errno));
  std::string text;
  char buf[65536];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxSpecBytes) {
      return invalid(path + ": job spec larger than " + std::to_string(kMaxSpecBytes) + " bytes");
    }
  }
  if (in.bad()) return invalid(path + ": read error");

  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  std::string_view format = ext == ".json"                      ? "json"
                            : (ext == ".yaml" || ext == ".yml") ? "yaml"
                                                                : "";
  ParseResult spec = parse_job_spec_text(text, format);
  if (!spec.ok()) spec.message = path + ": " + spec.message;
  return spec;
}

}  // namespace ampd::spec_io
