#!/usr/bin/env bash
# Stages what the offline GPU machine lacks (nlohmann-json, CLI11, GoogleTest sources, SLEEF, MKL's vmsCos/vmsSin; FlashInfer's headers for the benchmark's peer) into .deps/, and the Python build's wheels into .whl/.
#
# Run here, before a device call that carries `.deps` and `.whl` (both gitignored). Layout:
#   .deps/prefix/include/{nlohmann,CLI}           headers
#   .deps/prefix/share/cmake/{nlohmann_json,CLI11} CMake packages (they locate the headers relative
#                                                  to themselves, so the prefix can move)
#   .deps/googletest/                             GoogleTest sources; scripts/gpu-check.sh builds and
#                                                  installs them into .deps/prefix on the GPU machine
#   .deps/prefix/{include/sleef.h,lib/libsleef.so*} SLEEF (torch's CPU powf, HfArithmetic::torch_cpu)
#   .deps/mkl/lib/posenc_mkl_vml.o                MKL's vmsCos/vmsSin with what they call (about
#                                                  1.4 MB, cmake/posenc_mkl_object.cmake, from the
#                                                  mkl-static libraries scripts/setup.sh installed),
#                                                  which cmake/PosencMath.cmake finds there
#   .deps/flashinfer/include/flashinfer/           FlashInfer's C++ headers, from the flashinfer-python
#   .deps/flashinfer/VERSION                       wheel on PyPI (`pip download --no-deps`; only
#                                                  flashinfer/data/include is kept): bench/CMakeLists.txt
#                                                  builds posenc_bench_gpu's FlashInfer rows from them.
#                                                  Nothing of FlashInfer is committed.
#   .whl/*.whl                                    the pure-Python wheels scripts/gpu-python.sh installs
#                                                  there to build and test the package offline (nanobind,
#                                                  scikit-build-core and their needs, pytest and its;
#                                                  about 2.5 MB); wheels already in .whl are kept
# The first three come from this machine's Debian packages. POSENC_FLASHINFER_VERSION picks the
# wheel (default 0.7.4); a copy of that version already in .deps is kept, so only the first run
# downloads. Without network or pip the benchmark still builds, without its peer rows.
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
sleef_header=/usr/include/x86_64-linux-gnu/sleef.h
[[ -f $sleef_header ]] || sleef_header=/usr/include/sleef.h
[[ -f $sleef_header ]] || die "SLEEF not found (apt-get install libsleef-dev; scripts/setup.sh does)"
sleef_libs=$(dirname "$(readlink -f "$(ldconfig -p | sed -n 's/.*libsleef\.so\.3 .*=> //p' | head -n 1)")")
mkl_lib=${POSENC_MKL_ROOT:-/opt/posenc/mkl}/lib
[[ -f $mkl_lib/libmkl_core.a ]] || die "MKL's static libraries not found in $mkl_lib (scripts/setup.sh installs them)"

flashinfer_version=${POSENC_FLASHINFER_VERSION:-0.7.4}
flashinfer_id="flashinfer-python $flashinfer_version"
kept=""
if [[ -f $deps/flashinfer/VERSION && $(head -n 1 "$deps/flashinfer/VERSION") == "$flashinfer_id" &&
  -f $deps/flashinfer/include/flashinfer/pos_enc.cuh ]]; then
  kept=$(mktemp -d)
  mv "$deps/flashinfer" "$kept/flashinfer"
fi

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
mkdir -p "$prefix/lib" "$deps/mkl/lib"
cp "$sleef_header" "$prefix/include/"
cp -L "$sleef_libs"/libsleef.so "$sleef_libs"/libsleef.so.3 "$prefix/lib/"  # copies, not links
cmake -DLINKER=ld -DOBJCOPY=objcopy -DMKL_LIB_DIR="$mkl_lib" -DOUT="$deps/mkl/lib/posenc_mkl_vml.o" \
  -P "$root/cmake/posenc_mkl_object.cmake"

# FlashInfer's headers: the wheel's flashinfer/data/include, nothing else.
flashinfer_note="kept from an earlier run"
if [[ -n $kept ]]; then
  mv "$kept/flashinfer" "$deps/flashinfer"
  rmdir "$kept"
else
  wheel_dir=$(mktemp -d)
  if python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheel_dir" \
    "flashinfer-python==$flashinfer_version" >"$wheel_dir/pip.log" 2>&1; then
    python3 - "$wheel_dir" "$deps/flashinfer/include" <<'PY'
import glob, os, sys, zipfile
wheel_dir, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(wheel_dir, "flashinfer_python-*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one flashinfer_python wheel in {wheel_dir}, found {wheels}")
prefix = "flashinfer/data/include/"
with zipfile.ZipFile(wheels[0]) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    for n in names:
        target = os.path.join(dest, n[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(n) as src, open(target, "wb") as out:
            out.write(src.read())
print(f"  {len(names)} headers from {os.path.basename(wheels[0])}")
PY
    echo "$flashinfer_id" >"$deps/flashinfer/VERSION"
    flashinfer_note="pip download flashinfer-python==$flashinfer_version"
  else
    echo "stage-gpu-deps: warning: could not download flashinfer-python==$flashinfer_version (see below);" \
      "the benchmark builds without its FlashInfer rows" >&2
    tail -n 5 "$wheel_dir/pip.log" >&2
    flashinfer_note="not staged"
  fi
  rm -rf "$wheel_dir"
fi
if [[ -f $deps/flashinfer/include/flashinfer/pos_enc.cuh ]]; then
  echo "FlashInfer headers: $flashinfer_id ($flashinfer_note)"
elif [[ $flashinfer_note != "not staged" ]]; then
  die "the flashinfer-python wheel has no flashinfer/data/include/flashinfer/pos_enc.cuh"
fi

# The Python build's wheels (pure Python, so this machine's pip fetches what the GPU machine's
# CPython 3.12 installs); the machine's torch, numpy and transformers are used as they are.
wheels=(nanobind scikit-build-core pathspec packaging pytest pluggy iniconfig pygments)
wheel_note="kept from an earlier run"
missing=()
for w in "${wheels[@]}"; do
  ls "$root/.whl/${w//-/_}"-*.whl >/dev/null 2>&1 || missing+=("$w")
done
if ((${#missing[@]})); then
  mkdir -p "$root/.whl"
  if python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform any --dest "$root/.whl" "${missing[@]}" >"$root/.whl/pip.log" 2>&1; then
    wheel_note="pip download ${missing[*]}"
    rm -f "$root/.whl/pip.log"
  else
    echo "stage-gpu-deps: warning: could not download ${missing[*]} (.whl/pip.log);" \
      "scripts/gpu-python.sh will not build the package there" >&2
    wheel_note="not staged"
  fi
fi

size=$(du -sm "$deps" | cut -f1)
echo "staged into $deps (${size} MiB):"
echo "  nlohmann-json  $nlohmann_headers + $nlohmann_cmake"
echo "  CLI11          $cli_headers${cli_cmake:+ + $cli_cmake}"
echo "  googletest     $gtest_src"
echo "  SLEEF          $sleef_header + $sleef_libs/libsleef.so.3"
echo "  MKL            vmsCos/vmsSin from $mkl_lib (posenc_mkl_vml.o)"
echo "  flashinfer     $flashinfer_id ($flashinfer_note)"
echo "  .whl           $(find "$root/.whl" -maxdepth 1 -type f -name "*.whl" 2>/dev/null | wc -l) wheels for the Python build ($wheel_note)"
if ((size > 48)); then
  echo "stage-gpu-deps: warning: ${size} MiB is close to the 64 MiB a device call can carry" >&2
fi
echo "device call: carry [\".deps\", \".whl\"], command: bash scripts/gpu-all.sh (or scripts/gpu-check.sh)"
