#!/usr/bin/env bash
# On a machine with an AMD GPU: build the HIP engine for its architecture, run every test and the CLI on the device; no GPU test may skip.
#
# Run from the repository root after scripts/setup.sh (Debian 12: hipcc, libamdhip64-dev, rocminfo;
# the user in the `render` and `video` groups). The architecture comes from rocminfo, or from
# POSENC_HIP_ARCHITECTURES (e.g. gfx90a). Logs go to $OUT (default build/hip/hip-check); the
# script exits non-zero when a build or test step fails, or when a `gpu` test was skipped: on an
# AMD machine a skip means the device was not usable, which is exactly what this run must rule out.
set -euo pipefail

root=$(pwd)
[[ -f $root/CMakePresets.json && -d $root/src/gpu ]] || { echo "hip-check: run from the posenc repository root" >&2; exit 2; }
arch=${POSENC_HIP_ARCHITECTURES:-$(rocminfo 2>/dev/null | awk '$1 == "Name:" && $2 ~ /^gfx/ { print $2; exit }' || true)}
[[ -n $arch ]] || { echo "hip-check: rocminfo names no gfx device; set POSENC_HIP_ARCHITECTURES (e.g. gfx90a)" >&2; exit 2; }
out=${OUT:-$root/build/hip/hip-check}
mkdir -p "$out"
status=0

echo "hip-check: $(hipcc --version 2>/dev/null | head -1); target $arch; logs in $out"
cmake --preset hip -DPOSENC_HIP_ARCHITECTURES="$arch" >"$out/configure.log" 2>&1
cmake --build --preset hip >"$out/build.log" 2>&1 || { echo "hip-check: build failed (build.log)"; exit 1; }

ctest --preset hip -L gpu --output-on-failure >"$out/ctest-gpu.log" 2>&1 || status=1
ctest --preset hip -LE gpu --output-on-failure >"$out/ctest-other.log" 2>&1 || status=1
skipped=$(grep -c -- '\*\*\*Skipped' "$out/ctest-gpu.log" || true)
if ((skipped > 0)); then
  echo "hip-check: $skipped gpu tests were skipped (ctest-gpu.log says why): the device was not used"
  status=1
fi

for dtype in bf16 f16 f32; do
  build/hip/tools/posenc/posenc run --device gpu --dtype "$dtype" >>"$out/cli.log" 2>&1 || status=1
done
build/hip/tools/posenc/posenc run --device gpu --numerics accurate --dtype f32 >>"$out/cli.log" 2>&1 || status=1

grep -h -E "tests passed|tests failed" "$out"/ctest-*.log || true
grep -E "^(device|max|result)" "$out/cli.log" | head -20 || true
echo "hip-check: $( ((status == 0)) && echo PASSED || echo FAILED )"
exit "$status"
