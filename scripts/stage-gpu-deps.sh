#!/usr/bin/env bash
# Stages what the offline GPU machine lacks (nlohmann-json, CLI11, GoogleTest sources) into .deps/ from this machine's Debian packages.
#
# Run here, before a device call that carries `.deps` (gitignored). Layout:
#   .deps/prefix/include/{nlohmann,CLI}           headers
#   .deps/prefix/share/cmake/{nlohmann_json,CLI11} CMake packages (they locate the headers relative
#                                                  to themselves, so the prefix can move)
#   .deps/googletest/                             GoogleTest sources; scripts/gpu-check.sh builds and
#                                                  installs them into .deps/prefix on the GPU machine
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deps=$root/.deps
prefix=$deps/prefix

die() {
  echo "stage-gpu-deps: $*" >&2
  exit 1
}

# First existing directory among the arguments.
first_dir() {
  local d
  for d in "$@"; do
    if [[ -d $d ]]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

nlohmann_headers=$(first_dir /usr/include/nlohmann) || die "nlohmann-json headers not found (apt-get install nlohmann-json3-dev)"
nlohmann_cmake=$(first_dir /usr/share/cmake/nlohmann_json /usr/lib/cmake/nlohmann_json \
  /usr/lib/x86_64-linux-gnu/cmake/nlohmann_json /usr/share/cmake-*/nlohmann_json) ||
  die "nlohmann_json CMake package not found"
cli_headers=$(first_dir /usr/include/CLI) || die "CLI11 headers not found (apt-get install libcli11-dev)"
cli_cmake=$(first_dir /usr/share/cmake/CLI11 /usr/lib/cmake/CLI11 /usr/lib/x86_64-linux-gnu/cmake/CLI11 || true)
gtest_src=$(first_dir /usr/src/googletest) || die "GoogleTest sources not found (apt-get install googletest)"

rm -rf "$deps"
mkdir -p "$prefix/include" "$prefix/share/cmake"
cp -r "$nlohmann_headers" "$prefix/include/"
cp -r "$nlohmann_cmake" "$prefix/share/cmake/nlohmann_json"
cp -r "$cli_headers" "$prefix/include/"
if [[ -n $cli_cmake ]]; then
  cp -r "$cli_cmake" "$prefix/share/cmake/CLI11"
else
  echo "stage-gpu-deps: no CLI11 CMake package; the CLI falls back to its own lookup" >&2
fi
cp -r "$gtest_src" "$deps/googletest"

size=$(du -sm "$deps" | cut -f1)
echo "staged into $deps (${size} MiB):"
echo "  nlohmann-json  $nlohmann_headers + $nlohmann_cmake"
echo "  CLI11          $cli_headers${cli_cmake:+ + $cli_cmake}"
echo "  googletest     $gtest_src"
if ((size > 48)); then
  echo "stage-gpu-deps: warning: ${size} MiB is close to the 64 MiB a device call can carry" >&2
fi
echo "device call: carry [\".deps\"], command: scripts/gpu-check.sh"
