#include "topk_format.h"

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "error.h"

namespace eplb {
namespace {

// Whitespace tokenizer that skips '#' comment lines and knows line numbers.
class Tokens {
 public:
  Tokens(const std::string& text, const std::string& source) : text_(text), source_(source) {}

  std::string Next(const char* what) {
    Skip();
    if (pos_ >= text_.size()) Fail("unexpected end of file, expected %s", what);
    const size_t b = pos_;
    while (pos_ < text_.size() && !IsSpace(text_[pos_])) ++pos_;
    return text_.substr(b, pos_ - b);
  }
  void Expect(const char* word) {
    const std::string t = Next(word);
    if (t != word) Fail("expected '%s', found '%s'", word, t.c_str());
  }
  int64_t Int(const char* what, int64_t lo, int64_t hi) {
    const std::string t = Next(what);
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(t.c_str(), &end, 10);
    if (t.empty() || *end != '\0' || errno != 0)
      Fail("%s: '%s' is not an integer", what, t.c_str());
    if (v < lo || v > hi)
      Fail("%s (%lld) is outside [%lld, %lld]", what, v, (long long)lo, (long long)hi);
    return v;
  }
  bool AtEnd() {
    Skip();
    return pos_ >= text_.size();
  }
  template <typename... A>
  [[noreturn]] void Fail(const char* fmt, A... a) {
    const std::string msg = Format(fmt, a...);
    if (source_.empty()) Throw(Status::kInvalidArgument, "line %d: %s", line_, msg.c_str());
    Throw(Status::kInvalidArgument, "%s:line %d: %s", source_.c_str(), line_, msg.c_str());
  }

 private:
  static bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
  void Skip() {
    for (;;) {
      while (pos_ < text_.size() && IsSpace(text_[pos_])) {
        if (text_[pos_] == '\n') ++line_;
        ++pos_;
      }
      if (pos_ < text_.size() && text_[pos_] == '#') {
        while (pos_ < text_.size() && text_[pos_] != '\n') ++pos_;
        continue;
      }
      return;
    }
  }
  const std::string& text_;
  std::string source_;
  size_t pos_ = 0;
  int line_ = 1;
};

}  // namespace

TopkTrace ParseTopkTrace(const std::string& text, const std::string& source) {
  Tokens tk(text, source);
  TopkTrace t;
  tk.Expect("eplb-topk");
  tk.Int("version", 1, 1);
  tk.Expect("layers");
  t.num_layers = static_cast<int32_t>(tk.Int("layers", 1, 1024));
  tk.Expect("experts");
  t.num_experts = static_cast<int32_t>(tk.Int("experts", 1, 1 << 20));
  tk.Expect("topk");
  t.top_k = static_cast<int32_t>(tk.Int("topk", 1, 1024));
  tk.Expect("tokens");
  t.num_tokens = tk.Int("tokens", 0, int64_t{1} << 28);
  const int64_t per_layer = t.num_tokens * t.top_k;
  // Each id takes at least two characters: a header that claims more ids than
  // the text can hold is a format error, found before any allocation.
  if (static_cast<uint64_t>(per_layer) * static_cast<uint64_t>(t.num_layers) > text.size() / 2)
    tk.Fail("header claims %lld ids (layers x tokens x topk), more than the file holds",
            static_cast<long long>(per_layer * t.num_layers));
  t.ids.resize(static_cast<size_t>(per_layer * t.num_layers));
  for (int32_t l = 0; l < t.num_layers; ++l) {
    tk.Expect("layer");
    tk.Int("layer index", l, l);
    int32_t* dst = t.ids.data() + static_cast<size_t>(l) * static_cast<size_t>(per_layer);
    for (int64_t i = 0; i < per_layer; ++i)
      dst[i] = static_cast<int32_t>(tk.Int("expert id", 0, t.num_experts - 1));
  }
  if (!tk.AtEnd()) tk.Fail("trailing data after layer %d", t.num_layers - 1);
  return t;
}

TopkTrace ReadTopkTrace(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EPLB_CHECK_ARG(in.good(), "cannot open topk trace '%s'", path.c_str());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ParseTopkTrace(ss.str(), path);
}

int64_t TopkLayerChecksum(const TopkTrace& trace, int32_t layer) {
  const int64_t n = trace.num_tokens * trace.top_k;
  const int32_t* p = trace.layer(layer);
  int64_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += p[i] + 1;
  return s;
}

}  // namespace eplb
