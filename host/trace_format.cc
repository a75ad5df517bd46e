// Line-based strict reader of the eplb-loads format: each error names the
// source and the 1-based line where the file went wrong, because a trace is
// often hand-edited or produced by a script that can drift from the format.
#include "trace_format.h"

#include <algorithm>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <ostream>
#include <sstream>

#include "error.h"

namespace eplb {
namespace {

constexpr int64_t kMaxLayersT = 128;
constexpr int64_t kMaxLogicalT = 1024;
constexpr int64_t kMaxLoadT = int64_t{1} << 53;
// A history longer than this is almost certainly a corrupt count; it also
// bounds the allocation made from the header before any step is read.
constexpr int64_t kMaxSteps = int64_t{1} << 24;

class LineReader {
 public:
  LineReader(const std::string& text, const std::string& source) : text_(text), source_(source) {}

  // Next line that is neither blank nor a comment, split into words; false
  // at the end of the text.
  bool Next(std::vector<std::string>* words) {
    while (pos_ < text_.size()) {
      size_t end = text_.find('\n', pos_);
      if (end == std::string::npos) end = text_.size();
      ++line_;
      words->clear();
      size_t i = pos_;
      while (i < end && (text_[i] == ' ' || text_[i] == '\t' || text_[i] == '\r')) ++i;
      const bool comment = i < end && text_[i] == '#';
      if (!comment) {
        while (i < end) {
          char ch = text_[i];
          if (ch == ' ' || ch == '\t' || ch == '\r') {
            ++i;
            continue;
          }
          size_t k = i;
          while (k < end && text_[k] != ' ' && text_[k] != '\t' && text_[k] != '\r') ++k;
          words->push_back(text_.substr(i, k - i));
          i = k;
        }
      }
      pos_ = end + 1;
      if (!words->empty()) return true;
    }
    return false;
  }

  template <typename... Args>
  [[noreturn]] void Fail(const char* fmt, Args... args) const {
    Throw(Status::kInvalidArgument, "%s:line %d: %s", source_.c_str(), line_,
          Format(fmt, args...).c_str());
  }
  [[noreturn]] void FailEnd(const char* what) const {
    Throw(Status::kInvalidArgument, "%s:line %d: unexpected end of file, expected %s",
          source_.c_str(), line_, what);
  }

  // Parses a decimal integer in [lo, hi]; `what` names the field.
  int64_t Int(const std::string& word, int64_t lo, int64_t hi, const char* what) const {
    if (word.empty()) Fail("%s: empty value", what);
    size_t i = 0;
    if (word[0] == '-' || word[0] == '+') i = 1;
    if (i == word.size()) Fail("%s: '%s' is not an integer", what, word.c_str());
    for (size_t k = i; k < word.size(); ++k)
      if (word[k] < '0' || word[k] > '9') Fail("%s: '%s' is not an integer", what, word.c_str());
    errno = 0;
    char* endp = nullptr;
    long long v = std::strtoll(word.c_str(), &endp, 10);
    if (errno == ERANGE || v < lo || v > hi)
      Fail("%s: %s is outside [%lld, %lld]", what, word.c_str(), static_cast<long long>(lo),
           static_cast<long long>(hi));
    return v;
  }

  int line() const { return line_; }

 private:
  const std::string& text_;
  std::string source_;  // owned: callers may pass a temporary
  size_t pos_ = 0;
  int line_ = 0;
};

}  // namespace

LoadTrace ParseLoadTrace(const std::string& text, const std::string& source) {
  LineReader r(text, source.empty() ? std::string("<trace>") : source);
  std::vector<std::string> w;
  LoadTrace t;

  if (!r.Next(&w)) r.FailEnd("'eplb-loads 1'");
  if (w[0] != "eplb-loads") r.Fail("expected 'eplb-loads 1', found '%s'", w[0].c_str());
  if (w.size() != 2 || w[1] != "1")
    r.Fail("unsupported header: expected 'eplb-loads 1' (version 1)");

  if (!r.Next(&w)) r.FailEnd("'model' or 'layers'");
  if (w[0] == "model") {
    if (w.size() != 2) r.Fail("'model' takes exactly one name");
    t.model = w[1];
    if (!r.Next(&w)) r.FailEnd("'layers L experts E topk K steps S'");
  }
  if (w.size() != 8 || w[0] != "layers" || w[2] != "experts" || w[4] != "topk" || w[6] != "steps")
    r.Fail("expected 'layers L experts E topk K steps S'");
  t.num_layers = static_cast<int32_t>(r.Int(w[1], 1, kMaxLayersT, "layers"));
  t.num_logical_experts = static_cast<int32_t>(r.Int(w[3], 1, kMaxLogicalT, "experts"));
  t.topk = static_cast<int32_t>(r.Int(w[5], 0, t.num_logical_experts, "topk"));
  const int64_t steps = r.Int(w[7], 1, kMaxSteps, "steps");

  const int32_t L = t.num_layers, E = t.num_logical_experts;
  // Reserve no more than the text can hold (each number takes at least two
  // characters), so a header that claims a huge history is a format error at
  // its end, not an allocation failure.
  const size_t most_numbers = text.size() / 2;
  t.tokens.reserve(std::min(static_cast<size_t>(steps), most_numbers));
  t.loads.reserve(std::min(static_cast<size_t>(steps) * L * E, most_numbers));
  for (int64_t s = 0; s < steps; ++s) {
    if (!r.Next(&w)) r.FailEnd(Format("'step %lld tokens T'", static_cast<long long>(s)).c_str());
    if (w.size() != 4 || w[0] != "step" || w[2] != "tokens")
      r.Fail("expected 'step %lld tokens T'", static_cast<long long>(s));
    const int64_t idx = r.Int(w[1], 0, kMaxSteps, "step");
    if (idx != s)
      r.Fail("step %lld out of order (expected step %lld)", static_cast<long long>(idx),
             static_cast<long long>(s));
    const int64_t tokens = r.Int(w[3], 0, kMaxLoadT - 1, "tokens");
    t.tokens.push_back(tokens);
    for (int32_t l = 0; l < L; ++l) {
      if (!r.Next(&w))
        r.FailEnd(Format("layer %d of step %lld", l, static_cast<long long>(s)).c_str());
      if (w[0] == "step")
        r.Fail("step %lld has %d layer rows, expected %d", static_cast<long long>(s), l, L);
      if (static_cast<int64_t>(w.size()) != E)
        r.Fail("step %lld layer %d: %zu values, expected %d", static_cast<long long>(s), l,
               w.size(), E);
      int64_t sum = 0;
      for (int32_t e = 0; e < E; ++e) {
        const int64_t v = r.Int(w[e], 0, kMaxLoadT - 1, "load");
        sum += v;
        if (sum >= kMaxLoadT)
          r.Fail("step %lld layer %d: row sum reaches 2^53", static_cast<long long>(s), l);
        t.loads.push_back(v);
      }
      if (t.topk > 0 && sum != tokens * t.topk)
        r.Fail("step %lld layer %d: row sums to %lld, expected tokens * topk = %lld",
               static_cast<long long>(s), l, static_cast<long long>(sum),
               static_cast<long long>(tokens * t.topk));
    }
  }
  if (r.Next(&w))
    r.Fail("unexpected '%s' after the last step (header says %lld steps)", w[0].c_str(),
           static_cast<long long>(steps));
  return t;
}

LoadTrace ReadLoadTrace(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Throw(Status::kInvalidArgument, "%s: cannot open the trace file", path.c_str());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) Throw(Status::kInvalidArgument, "%s: read error", path.c_str());
  return ParseLoadTrace(ss.str(), path);
}

void WriteLoadTrace(std::ostream& out, const LoadTrace& t) {
  const int32_t L = t.num_layers, E = t.num_logical_experts;
  // Refuse what the reader would reject, so a written trace parses back.
  for (char ch : t.model)
    EPLB_CHECK_ARG(!std::isspace(static_cast<unsigned char>(ch)),
                   "WriteLoadTrace: model '%s' contains white space", t.model.c_str());
  EPLB_CHECK_ARG(t.num_steps() >= 1, "WriteLoadTrace: the history has no step");
  out << "eplb-loads 1\n";
  if (!t.model.empty()) out << "model " << t.model << "\n";
  out << "layers " << L << " experts " << E << " topk " << t.topk << " steps " << t.num_steps()
      << "\n";
  for (int32_t s = 0; s < t.num_steps(); ++s) {
    out << "step " << s << " tokens " << t.tokens[s] << "\n";
    const int64_t* block = t.step(s);
    for (int32_t l = 0; l < L; ++l) {
      for (int32_t e = 0; e < E; ++e) out << (e ? " " : "") << block[l * E + e];
      out << "\n";
    }
  }
}

}  // namespace eplb
