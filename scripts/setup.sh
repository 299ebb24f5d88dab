#!/usr/bin/env bash
# Installs what building and testing posenc needs on Debian 12 (idempotent): toolchain, CMake,
# Ninja, nlohmann-json, CLI11, GoogleTest/GoogleMock, Google Benchmark, SLEEF, Python 3, and Intel
# MKL's static libraries from PyPI (mkl-static, into /opt/posenc/mkl); hipcc and cargo when the
# archive has them; clang and its sanitizer/libFuzzer runtime with POSENC_FUZZ=1. Runs as root (CI)
# or through sudo. Installed packages are skipped without a word.
set -euo pipefail

required=(build-essential cmake ninja-build nlohmann-json3-dev libcli11-dev libgtest-dev
          libgmock-dev googletest libbenchmark-dev libsleef-dev python3 python3-pip git)
# torch's CPU cos/sin are Intel MKL's (docs/NUMERICS.md §3.4); posenc links the same functions from
# MKL's static libraries (cmake/PosencMath.cmake). 2024.2.0 is the MKL torch 2.11's wheels carry.
mkl_version=2024.2.0
mkl_prefix=/opt/posenc/mkl
# Optional, each named by its package and its command: hipcc (the HIP engine, or beside CUDA a HIP
# compile check: cmake/PosencGpu.cmake; it brings libamdhip64-dev), cargo (the Rust crates' tests,
# rust.cargo_test). The build skips what is missing, and says so.
optional=(hipcc cargo)

# Fuzzing, only when asked for (POSENC_FUZZ=1: scripts/fuzz.sh, the fuzz step of .ci/run): clang
# and the runtime libraries of its version (libFuzzer, ASan, UBSan: libclang-rt-<major>-dev).
fuzz=${POSENC_FUZZ:-0}
clang_runtime() {
  local major
  major=$(clang --version 2>/dev/null | sed -n 's/.*clang version \([0-9][0-9]*\).*/\1/p' | head -n 1)
  [[ -n $major ]] && echo "libclang-rt-$major-dev"
}
if [[ $fuzz == 1 ]]; then
  required+=(clang)
  if runtime=$(clang_runtime); then required+=("$runtime"); fi
fi

say() { printf 'setup.sh: %s\n' "$*"; }

installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

if ! command -v apt-get >/dev/null 2>&1; then
  say "apt-get not found: this script targets Debian 12; install by hand: ${required[*]}" >&2
  exit 1
fi

as_root=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    say "not root and no sudo: run as root, or install by hand: ${required[*]}" >&2
    exit 1
  fi
fi
apt_get() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }

missing=()
for p in "${required[@]}"; do installed "$p" || missing+=("$p"); done
missing_optional=()
for p in "${optional[@]}"; do
  command -v "$p" >/dev/null 2>&1 || installed "$p" || missing_optional+=("$p")
done

need_mkl=0
[[ -f $mkl_prefix/lib/libmkl_core.a ]] || need_mkl=1

if [[ ${#missing[@]} -eq 0 && ${#missing_optional[@]} -eq 0 && $need_mkl -eq 0 ]]; then
  exit 0  # everything is there: no network, no output
fi

# One `apt-get update` per run, and only when a package has to be installed.
if [[ ${#missing[@]} -gt 0 || ${#missing_optional[@]} -gt 0 ]]; then
  say "updating the package lists"
  apt_get update -qq
fi

if [[ ${#missing[@]} -gt 0 ]]; then
  say "installing ${missing[*]}"
  apt_get install -y -qq --no-install-recommends "${missing[@]}"
fi
# clang was just installed: its runtime's name is known only now.
if [[ $fuzz == 1 ]] && runtime=$(clang_runtime) && ! installed "$runtime"; then
  say "installing $runtime"
  apt_get install -y -qq --no-install-recommends "$runtime"
fi

for p in "${missing_optional[@]}"; do
  if apt-cache show "$p" >/dev/null 2>&1; then
    say "installing optional $p"
    apt_get install -y -qq --no-install-recommends "$p" || say "optional $p failed to install; continuing without it"
  else
    say "optional $p is not in the package archive; continuing without it"
  fi
done

if ((need_mkl)); then
  # --prefix puts the wheel's lib/*.a under $mkl_prefix (and leaves the system Python alone);
  # --no-deps: the sequential layer needs no OpenMP or TBB.
  say "installing Intel MKL $mkl_version's static libraries (PyPI mkl-static) into $mkl_prefix"
  "${as_root[@]}" python3 -m pip install -q --root-user-action=ignore --no-deps --no-cache-dir --prefix "$mkl_prefix" "mkl-static==$mkl_version"
  [[ -f $mkl_prefix/lib/libmkl_core.a ]] || { say "mkl-static installed no $mkl_prefix/lib/libmkl_core.a" >&2; exit 1; }
fi
