// Test environment helpers: where the shared data is, and how a test that
// needs it (or a GPU) skips — or fails under EPLB_REQUIRE_DATA=1 /
// EPLB_REQUIRE_GPU=1, so a run that must exercise them cannot pass by
// skipping.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace eplb_test {

inline bool EnvFlag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

inline bool PathExists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

// The shared data folder: $EPLB_DATA_DIR, else the configured default
// (the `shared` folder beside the source tree).
inline std::string DataDir() {
  const char* env = std::getenv("EPLB_DATA_DIR");
  if (env != nullptr && env[0] != '\0') return env;
#ifdef EPLB_DEFAULT_DATA_DIR
  return EPLB_DEFAULT_DATA_DIR;
#else
  return "";
#endif
}

// Path of `rel` inside the data folder, or "" when it is absent.
inline std::string DataPath(const std::string& rel) {
  std::string dir = DataDir();
  if (dir.empty()) return "";
  std::string p = dir + "/" + rel;
  return PathExists(p) ? p : "";
}

}  // namespace eplb_test

// In a TEST body: binds `var` to the data path of `rel` or skips (fails
// under EPLB_REQUIRE_DATA=1).
#define EPLB_REQUIRE_DATA_PATH(var, rel)                                              \
  std::string var = ::eplb_test::DataPath(rel);                                       \
  if (var.empty()) {                                                                  \
    if (::eplb_test::EnvFlag("EPLB_REQUIRE_DATA")) {                                  \
      FAIL() << "shared data '" << (rel) << "' not found under '"                     \
             << ::eplb_test::DataDir() << "' and EPLB_REQUIRE_DATA=1";                \
    }                                                                                 \
    GTEST_SKIP() << "shared data '" << (rel) << "' not found under '"                 \
                 << ::eplb_test::DataDir() << "' (set EPLB_DATA_DIR)";                \
  }
