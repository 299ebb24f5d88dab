// What the fuzz targets share: the failure report (a property of the code broke: print it and abort, which libFuzzer records as a crash with the input).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>

#include "posenc/error.hpp"

namespace posenc::fuzz {

/// Aborts with `what` when `ok` is false: the input that got here is a finding.
inline void require(bool ok, const std::string& what) {
  if (ok) return;
  std::fprintf(stderr, "posenc fuzz: property violated: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

/// Runs `op`: true when it returned, false when it threw posenc::Error; any other exception is a
/// finding (the library promises one exception type).
template <class Op>
bool returns_or_error(Op&& op, const char* name) {
  try {
    op();
    return true;
  } catch (const posenc::Error&) {
    return false;
  } catch (const std::exception& e) {
    require(false, std::string(name) + " threw a non-posenc exception: " + e.what());
  } catch (...) {
    require(false, std::string(name) + " threw something that is not a std::exception");
  }
  return false;
}

/// returns_or_error for an operation with a result: the result, or nullopt after a posenc::Error.
template <class Build>
auto result_or_error(Build&& build, const char* name) -> std::optional<decltype(build())> {
  std::optional<decltype(build())> out;
  returns_or_error([&] { out.emplace(build()); }, name);
  return out;
}

}  // namespace posenc::fuzz
