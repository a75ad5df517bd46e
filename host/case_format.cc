// Reader and writer of the conformance case format. The reader is a strict
// token reader: it remembers the line of every token so that each error can
// say exactly where the file went wrong, and it checks every value against
// the library limits before anything downstream sees it.
#include "case_format.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <ostream>
#include <sstream>

#include "error.h"

namespace eplb {
namespace {

// Library limits (mirrors of the EPLB_MAX_* macros of the public header,
// which this pure host file cannot include).
constexpr int64_t kMaxLayers = 128;
constexpr int64_t kMaxLogical = 1024;
constexpr int64_t kMaxPhysical = 4096;
constexpr int64_t kMaxRanks = 1024;
constexpr int64_t kMaxLoad = int64_t{1} << 53;

struct Token {
  std::string text;
  int line;
};

// The optional blocks after `weights`, in the only order they may appear.
enum Block : int {
  kPhy2log = 0,
  kLogcnt,
  kLog2phy,
  kObjective,
  kOldPhy2log,
  kPreservedPhy2log,
  kMovedSlots,
  kEnd,
  kNumBlocks
};
const char* const kBlockNames[kNumBlocks] = {"phy2log",     "logcnt",      "log2phy",
                                             "objective",   "old_phy2log", "preserved_phy2log",
                                             "moved_slots", "end"};

int BlockIndex(const std::string& word) {
  for (int b = 0; b < kNumBlocks; ++b)
    if (word == kBlockNames[b]) return b;
  return -1;
}

class Reader {
 public:
  // Tokens are read one at a time as the parser asks for them (a whole-file
  // token list took about 40 bytes per two-byte number: 1.4 GB for a 50 MB
  // file of zeros, before the first check could reject it).
  Reader(const std::string& text, const std::string& source) : text_(text), source_(source) {
    Advance();
  }

  [[noreturn]] void Fail(int line, const std::string& reason) const {
    std::string prefix = source_.empty() ? "" : source_ + ":";
    throw Error(Status::kInvalidArgument,
                Format("%sline %d: %s", prefix.c_str(), line, reason.c_str()));
  }

  bool AtEnd() const { return !has_next_; }
  const Token& Peek() const { return next_; }
  // Line of the next token, or the last line of the file at its end.
  int Line() const { return AtEnd() ? line_ : next_.line; }
  // Bytes of the file not yet read: a bound on the numbers still to come.
  size_t RemainingBytes() const { return text_.size() - pos_; }

  Token Next(const char* what) {
    if (AtEnd()) Fail(line_, Format("unexpected end of file, expected %s", what));
    Token t = std::move(next_);
    Advance();
    return t;
  }

  void Expect(const char* keyword) {
    const Token& t = Next(Format("'%s'", keyword).c_str());
    if (t.text != keyword)
      Fail(t.line, Format("expected keyword '%s', found '%s'", keyword, t.text.c_str()));
  }

  static bool ParseInt(const std::string& s, int64_t* v) {
    if (s.empty()) return false;
    size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
    if (i == s.size()) return false;
    for (size_t k = i; k < s.size(); ++k)
      if (s[k] < '0' || s[k] > '9') return false;
    errno = 0;
    char* end = nullptr;
    long long x = std::strtoll(s.c_str(), &end, 10);
    if (errno == ERANGE || *end != '\0') return false;
    *v = x;
    return true;
  }

  // An integer in [lo, hi]; `what` names the field in messages.
  int64_t Int(const char* what, int64_t lo, int64_t hi) {
    const Token& t = Next(Format("a number (%s)", what).c_str());
    int64_t v = 0;
    if (!ParseInt(t.text, &v)) {
      Fail(t.line, Format("%s: expected an integer, found '%s'", what, t.text.c_str()));
    }
    if (v < lo || v > hi) {
      Fail(t.line,
           Format("%s: value %lld out of range [%lld, %lld]", what, static_cast<long long>(v),
                  static_cast<long long>(lo), static_cast<long long>(hi)));
    }
    return v;
  }

  double Real(const char* what, double lo, double hi) {
    const Token& t = Next(Format("a number (%s)", what).c_str());
    errno = 0;
    char* end = nullptr;
    double v = std::strtod(t.text.c_str(), &end);
    if (t.text.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v)) {
      Fail(t.line, Format("%s: expected a finite number, found '%s'", what, t.text.c_str()));
    }
    if (v < lo || v > hi) {
      Fail(t.line, Format("%s: value %s out of range [%g, %g]", what, t.text.c_str(), lo, hi));
    }
    return v;
  }

  // A block of `count` integers in [lo, hi]. A short block shows up as a
  // keyword where a number was due, a long one as a number where a keyword
  // was due (see ParsePlanCase); both messages name the block and its size.
  template <typename T>
  std::vector<T> Ints(const char* block, size_t count, int64_t lo, int64_t hi, const char* shape) {
    std::vector<T> out;
    // The count comes from the header: reserve no more than the rest of the
    // file can hold (a number and a separator each).
    out.reserve(std::min(count, RemainingBytes() / 2 + 1));
    for (size_t i = 0; i < count; ++i) {
      if (AtEnd() || IsKeyword(Peek().text)) {
        Fail(Line(), Format("%s: expected %zu numbers (%s), found %zu", block, count, shape, i));
      }
      out.push_back(static_cast<T>(Int(block, lo, hi)));
    }
    return out;
  }

  static bool IsKeyword(const std::string& word);

 private:
  // Scans the next token into next_ (has_next_ false at the end). A line
  // whose first non-blank is '#' is a comment. line_ is the line of pos_;
  // at the end, the last line of the file (a final newline starts none).
  void Advance() {
    const size_t n = text_.size();
    while (pos_ < n) {
      if (at_line_start_) {
        size_t j = pos_;
        while (j < n && (text_[j] == ' ' || text_[j] == '\t' || text_[j] == '\r')) ++j;
        in_comment_ = j < n && text_[j] == '#';
        at_line_start_ = false;
      }
      const char ch = text_[pos_];
      if (ch == '\n') {
        ++pos_;
        if (pos_ < n) ++line_;
        at_line_start_ = true;
        continue;
      }
      if (in_comment_ || std::isspace(static_cast<unsigned char>(ch))) {
        ++pos_;
        continue;
      }
      size_t k = pos_;
      while (k < n && !std::isspace(static_cast<unsigned char>(text_[k]))) ++k;
      next_.text.assign(text_, pos_, k - pos_);
      next_.line = line_;
      pos_ = k;
      has_next_ = true;
      return;
    }
    has_next_ = false;
  }

  const std::string& text_;
  std::string source_;
  size_t pos_ = 0;
  int line_ = 1;
  bool at_line_start_ = true, in_comment_ = false, has_next_ = false;
  Token next_;
};

bool Reader::IsKeyword(const std::string& word) {
  return BlockIndex(word) >= 0;
}

}  // namespace

PlanCase ParsePlanCase(const std::string& text, const std::string& source) {
  Reader r(text, source);
  PlanCase c;

  r.Expect("eplb-case");
  r.Int("format version", 1, 1);
  r.Expect("name");
  {
    const Token& t = r.Next("a case name");
    c.name = t.text;
  }
  r.Expect("layers");
  c.num_layers = static_cast<int32_t>(r.Int("layers", 1, kMaxLayers));
  r.Expect("logical");
  c.num_logical_experts = static_cast<int32_t>(r.Int("logical", 1, kMaxLogical));
  r.Expect("physical");
  // P >= E: every expert has a slot, and log2phy rows have P - E + 1 entries.
  c.num_physical_experts =
      static_cast<int32_t>(r.Int("physical", c.num_logical_experts, kMaxPhysical));
  r.Expect("groups");
  c.num_groups = static_cast<int32_t>(r.Int("groups", 1, c.num_logical_experts));
  r.Expect("nodes");
  c.num_nodes = static_cast<int32_t>(r.Int("nodes", 1, kMaxRanks));
  r.Expect("gpus");
  c.num_ranks = static_cast<int32_t>(r.Int("gpus", c.num_nodes, kMaxRanks));

  const size_t L = static_cast<size_t>(c.num_layers);
  const size_t E = static_cast<size_t>(c.num_logical_experts);
  const size_t P = static_cast<size_t>(c.num_physical_experts);
  const size_t W = P - E + 1;  // log2phy width
  const std::string le = Format("%zu layers x %zu", L, E);
  const std::string lp = Format("%zu layers x %zu", L, P);
  const std::string lw = Format("%zu layers x %zu experts x %zu", L, E, W);

  r.Expect("weights");
  c.weights = r.Ints<int64_t>("weights", L * E, 0, kMaxLoad - 1, le.c_str());

  int last = -1;  // index of the last block read
  const char* last_name = "weights";
  bool ended = false;
  while (!ended) {
    if (r.AtEnd()) r.Fail(r.Line(), "unexpected end of file, expected 'end'");
    const Token t = r.Next("a keyword");
    int b = BlockIndex(t.text);
    if (b < 0) {
      int64_t dummy = 0;
      if (Reader::ParseInt(t.text, &dummy)) {
        r.Fail(t.line, Format("expected a keyword after block '%s', found the number '%s' "
                              "(too many numbers in '%s'?)",
                              last_name, t.text.c_str(), last_name));
      }
      r.Fail(t.line, Format("unknown keyword '%s'", t.text.c_str()));
    }
    if (b <= last) {
      r.Fail(t.line, Format("keyword '%s' out of order or repeated (after '%s')", t.text.c_str(),
                            last_name));
    }
    last = b;
    last_name = kBlockNames[b];
    switch (b) {
      case kPhy2log:
        c.phy2log = r.Ints<int32_t>("phy2log", L * P, 0, static_cast<int64_t>(E) - 1, lp.c_str());
        break;
      case kLogcnt:
        c.logcnt = r.Ints<int32_t>("logcnt", L * E, 1, static_cast<int64_t>(W), le.c_str());
        break;
      case kLog2phy:
        c.log2phy =
            r.Ints<int32_t>("log2phy", L * E * W, -1, static_cast<int64_t>(P) - 1, lw.c_str());
        break;
      case kObjective:
        r.Expect("max_load_sum");
        c.max_load_sum = r.Real("max_load_sum", 0.0, HUGE_VAL);
        r.Expect("balancedness");
        c.balancedness = r.Real("balancedness", 0.0, 1.0);
        c.has_objective = true;
        break;
      case kOldPhy2log:
        c.old_phy2log =
            r.Ints<int32_t>("old_phy2log", L * P, 0, static_cast<int64_t>(E) - 1, lp.c_str());
        break;
      case kPreservedPhy2log:
        c.preserved_phy2log =
            r.Ints<int32_t>("preserved_phy2log", L * P, 0, static_cast<int64_t>(E) - 1, lp.c_str());
        break;
      case kMovedSlots:
        c.moved_slots = r.Int("moved_slots", 0, static_cast<int64_t>(L * P));
        break;
      case kEnd:
        ended = true;
        break;
    }
  }
  if (!r.AtEnd()) {
    r.Fail(r.Peek().line, Format("unexpected '%s' after 'end'", r.Peek().text.c_str()));
  }
  return c;
}

PlanCase ReadPlanCase(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Throw(Status::kInvalidArgument, "%s: cannot open file", path.c_str());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) Throw(Status::kInvalidArgument, "%s: read error", path.c_str());
  return ParsePlanCase(ss.str(), path);
}

namespace {

template <typename T>
void WriteRows(std::ostream& out, const char* keyword, const std::vector<T>& v, size_t rows) {
  out << keyword << '\n';
  const size_t cols = rows == 0 ? 0 : v.size() / rows;
  for (size_t r = 0; r < rows; ++r) {
    for (size_t k = 0; k < cols; ++k) {
      if (k) out << ' ';
      out << v[r * cols + k];
    }
    out << '\n';
  }
}

std::string Real17(double x) {
  return Format("%.17g", x);
}

}  // namespace

void WritePlanCase(std::ostream& out, const PlanCase& c) {
  const size_t L = static_cast<size_t>(c.num_layers);
  const size_t E = static_cast<size_t>(c.num_logical_experts);
  const size_t P = static_cast<size_t>(c.num_physical_experts);
  const size_t W = P >= E ? P - E + 1 : 0;
  // Refuse to write what the reader would reject: a short block would shift
  // every later token.
  auto check = [&](const char* what, size_t have, size_t want) {
    EPLB_CHECK_ARG(have == 0 || have == want, "WritePlanCase: %s has %zu entries, expected %zu",
                   what, have, want);
  };
  EPLB_CHECK_ARG(c.weights.size() == L * E, "WritePlanCase: weights has %zu entries, expected %zu",
                 c.weights.size(), L * E);
  check("phy2log", c.phy2log.size(), L * P);
  check("logcnt", c.logcnt.size(), L * E);
  check("log2phy", c.log2phy.size(), L * E * W);
  check("old_phy2log", c.old_phy2log.size(), L * P);
  check("preserved_phy2log", c.preserved_phy2log.size(), L * P);

  EPLB_CHECK_ARG(!c.name.empty(), "WritePlanCase: the name is empty");
  for (char ch : c.name) {
    EPLB_CHECK_ARG(!std::isspace(static_cast<unsigned char>(ch)),
                   "WritePlanCase: name '%s' contains white space", c.name.c_str());
  }
  // The shape line obeys the reader's ranges too (an empty shape would write
  // a file no reader accepts): validate it through the reader's own checks.
  {
    std::ostringstream head;
    head << "eplb-case 1\nname " << c.name << "\nlayers " << c.num_layers << " logical "
         << c.num_logical_experts << " physical " << c.num_physical_experts << " groups "
         << c.num_groups << " nodes " << c.num_nodes << " gpus " << c.num_ranks << "\nweights\n";
    for (size_t i = 0; i < c.weights.size(); ++i)
      head << c.weights[i] << ((i + 1) % (E ? E : 1) ? ' ' : '\n');
    head << "end\n";
    try {
      (void)ParsePlanCase(head.str(), "WritePlanCase");
    } catch (const Error& e) {
      Throw(Status::kInvalidArgument, "WritePlanCase: the case is not writable: %s", e.what());
    }
  }
  out << "eplb-case 1\n";
  out << "name " << c.name << '\n';
  out << "layers " << c.num_layers << " logical " << c.num_logical_experts << " physical "
      << c.num_physical_experts << " groups " << c.num_groups << " nodes " << c.num_nodes
      << " gpus " << c.num_ranks << '\n';
  WriteRows(out, "weights", c.weights, L);
  if (!c.phy2log.empty()) WriteRows(out, "phy2log", c.phy2log, L);
  if (!c.logcnt.empty()) WriteRows(out, "logcnt", c.logcnt, L);
  if (!c.log2phy.empty()) WriteRows(out, "log2phy", c.log2phy, L);
  if (c.has_objective) {
    out << "objective max_load_sum " << Real17(c.max_load_sum) << " balancedness "
        << Real17(c.balancedness) << '\n';
  }
  if (!c.old_phy2log.empty()) WriteRows(out, "old_phy2log", c.old_phy2log, L);
  if (!c.preserved_phy2log.empty()) WriteRows(out, "preserved_phy2log", c.preserved_phy2log, L);
  if (c.moved_slots >= 0) out << "moved_slots " << c.moved_slots << '\n';
  out << "end\n";
}

}  // namespace eplb
