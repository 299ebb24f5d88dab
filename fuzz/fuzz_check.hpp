// What the fuzz targets share: the failure report (a property of the code broke: print it and abort, which libFuzzer records as a crash with the input).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace posenc::fuzz {

/// Aborts with `what` when `ok` is false: the input that got here is a finding.
inline void require(bool ok, const std::string& what) {
  if (ok) return;
  std::fprintf(stderr, "posenc fuzz: property violated: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace posenc::fuzz
