// Internal error type of the pure host logic. No CUDA headers here: this
// code builds and is tested without a GPU. The C shim turns eplb::Error into
// an eplbStatus_t (same numeric values, checked there) plus the thread-local
// detail text.
#pragma once

#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>

namespace eplb {

// Mirrors eplbStatus_t; the values are part of the ABI and never change.
enum class Status : int {
  kSuccess = 0,
  kInvalidArgument = 1,
  kInvalidUsage = 2,
  kCuda = 3,
  kNccl = 4,
  kOutOfMemory = 5,
  kTimeout = 6,
  kMismatch = 7,
  kNotSupported = 8,
  kInternal = 9,
};

class Error : public std::runtime_error {
 public:
  Error(Status status, std::string message)
      : std::runtime_error(std::move(message)), status_(status) {}
  Status status() const { return status_; }

 private:
  Status status_;
};

// printf-style message builder used by the checks below.
template <typename... Args>
std::string Format(const char* fmt, Args... args) {
  int n = std::snprintf(nullptr, 0, fmt, args...);
  if (n <= 0) return fmt;
  std::string s(static_cast<size_t>(n), '\0');
  std::snprintf(&s[0], s.size() + 1, fmt, args...);
  return s;
}
inline std::string Format(const char* fmt) { return fmt; }

template <typename... Args>
[[noreturn]] void Throw(Status status, const char* fmt, Args... args) {
  throw Error(status, Format(fmt, args...));
}

}  // namespace eplb

// Argument check: throws kInvalidArgument with a message naming the field.
#define EPLB_CHECK_ARG(cond, ...)                                         \
  do {                                                                    \
    if (!(cond)) ::eplb::Throw(::eplb::Status::kInvalidArgument, __VA_ARGS__); \
  } while (0)

#define EPLB_CHECK_USAGE(cond, ...)                                    \
  do {                                                                 \
    if (!(cond)) ::eplb::Throw(::eplb::Status::kInvalidUsage, __VA_ARGS__); \
  } while (0)

// Internal invariant: a failure is a bug in eplb.
#define EPLB_ASSERT(cond)                                                               \
  do {                                                                                  \
    if (!(cond))                                                                        \
      ::eplb::Throw(::eplb::Status::kInternal, "internal invariant failed: %s (%s:%d)", \
                    #cond, __FILE__, __LINE__);                                         \
  } while (0)
