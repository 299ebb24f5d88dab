#!/usr/bin/env bash
# On the GPU machine: build posenc for Hopper from the staged .deps, run the GPU (and CPU) tests and compute-sanitizer, log to $OUT.
#
# Run from the repository root with `.deps` carried (scripts/stage-gpu-deps.sh prepares it). Every
# step runs even when an earlier test step failed, writes its log under $OUT, and the script exits
# non-zero if any step failed. Logs (at most 8 files, simple names):
#   summary.txt   machine, toolchain, each step's status and time, test totals
#   build.log     GoogleTest build, posenc configure and build
#   ctest-gpu.log ctest -L gpu           ctest-cpu.log  ctest -L cpu
#   memcheck.log  racecheck.log  synccheck.log   compute-sanitizer over test_gpu_engine
# Budget: about 8 minutes on 16 cores (each step is also capped by `timeout`).
# For a quick iteration: POSENC_GPU_CHECK_TARGETS="test_gpu_append ..." builds only those targets
# and POSENC_GPU_CHECK_REGEX='test_gpu_append' runs only the matching tests (ctest -R).
# POSENC_GPU_CHECK_BUILD_ONLY=1 stops after the build (scripts/gpu-sanitize.sh uses it). The
# compute-sanitizer steps here are a quick subset; gpu-sanitize.sh runs every tool over every binary.
set -euo pipefail

root=$(pwd)
[[ -f $root/CMakePresets.json && -d $root/src/gpu ]] || { echo "gpu-check: run from the posenc repository root" >&2; exit 2; }
[[ -d $root/.deps/googletest ]] || { echo "gpu-check: .deps/googletest missing: run scripts/stage-gpu-deps.sh here and carry .deps" >&2; exit 2; }

out=${OUT:-$root/build/gpu-check}
mkdir -p "$out"
jobs=${POSENC_JOBS:-16}
prefix=$root/.deps/prefix
build=$root/build/gpu-h100
summary=$out/summary.txt
status=0
: >"$summary"

note() { echo "$*" | tee -a "$summary"; }

# step NAME LOG SECONDS CMD...: runs CMD under `timeout`, appending to LOG; records the outcome.
step() {
  local name=$1 log=$2 limit=$3
  shift 3
  local start rc=0
  start=$(date +%s)
  echo "== $name: $*" >>"$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1 || rc=$?
  local took=$(($(date +%s) - start))
  if ((rc == 0)); then
    note "ok      $name (${took}s)"
  else
    [[ $rc == 124 || $rc == 137 ]] && note "TIMEOUT $name after ${limit}s" || note "FAILED  $name (rc $rc, ${took}s) -> $(basename "$log")"
    status=1
    echo "---- tail of $(basename "$log") ----"
    tail -n 30 "$log"
  fi
  return $rc
}

# A tree staged by scripts/stage-branches.sh has no history of its own (git would name the
# enclosing checkout's commit): it carries its commit in .posenc-commit.
commit=$(cat "$root/.posenc-commit" 2>/dev/null || git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')
note "posenc gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $commit"
{
  nvidia-smi -L || echo "nvidia-smi -L failed"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
  nvcc --version | tail -n 2 || echo "nvcc not on PATH"
  cmake --version | head -n 1
  echo "cores: $(nproc)"
} 2>&1 | tee -a "$summary"

# ---- build --------------------------------------------------------------------------------------
build_log=$out/build.log
: >"$build_log"
built=1
if [[ ! -f $prefix/lib/cmake/GTest/GTestConfig.cmake && ! -f $prefix/lib64/cmake/GTest/GTestConfig.cmake ]]; then
  step googletest "$build_log" 300 bash -c "
    cmake -S '$root/.deps/googletest' -B '$root/.deps/build-googletest' -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_INSTALL_PREFIX='$prefix' -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON &&
    cmake --build '$root/.deps/build-googletest' -j $jobs &&
    cmake --install '$root/.deps/build-googletest'" || built=0
fi
if ((built)); then
  step configure "$build_log" 120 cmake --preset gpu-h100 -DCMAKE_PREFIX_PATH="$prefix" -DPOSENC_WERROR=ON || built=0
fi
if ((built)); then
  targets=()
  for t in ${POSENC_GPU_CHECK_TARGETS:-}; do targets+=(--target "$t"); done
  step build "$build_log" 420 cmake --build "$build" -j "$jobs" "${targets[@]}" || built=0
fi
if ((!built)); then
  note "build failed: no tests run"
  exit 1
fi
if [[ ${POSENC_GPU_CHECK_BUILD_ONLY:-0} == 1 ]]; then
  note "built $build; no tests run (POSENC_GPU_CHECK_BUILD_ONLY=1)"
  exit 0
fi

# ---- tests --------------------------------------------------------------------------------------
# GPU tests one at a time: the leak tests compare device-wide free memory.
regex=()
[[ -n ${POSENC_GPU_CHECK_REGEX:-} ]] && regex=(-R "$POSENC_GPU_CHECK_REGEX")
step ctest-gpu "$out/ctest-gpu.log" 900 \
  ctest --test-dir "$build" -L gpu "${regex[@]}" --output-on-failure --timeout 600 || true
if [[ ${POSENC_GPU_CHECK_CPU:-1} == 1 ]]; then
  step ctest-cpu "$out/ctest-cpu.log" 600 \
    ctest --test-dir "$build" -L cpu "${regex[@]}" -j "$jobs" --output-on-failure --timeout 600 || true
fi
for log in ctest-gpu ctest-cpu; do
  [[ -f $out/$log.log ]] || continue
  grep -E "tests passed|tests failed|Total Test time" "$out/$log.log" | sed "s/^/$log: /" >>"$summary" || true
done
grep -h "Skipped\|\*\*\*Skipped" "$out/ctest-gpu.log" | head -n 5 | sed 's/^/ctest-gpu skipped: /' >>"$summary" || true

# ---- compute-sanitizer ----------------------------------------------------------------------------
engine=$build/tests/test_gpu_engine
append=$build/tests/test_gpu_append
if [[ ${POSENC_GPU_CHECK_SANITIZERS:-1} != 1 ]]; then
  note "skipped compute-sanitizer (POSENC_GPU_CHECK_SANITIZERS=0)"
elif command -v compute-sanitizer >/dev/null 2>&1; then
  # memcheck: the decode sweep (every dtype, pairing, numerics, head_dim, layout), call-dependent
  # tables, position faults, bad input and threads. API errors are the tests' own (deliberate).
  san_s=${POSENC_SANITIZER_S:-300}
  if [[ -x $engine ]]; then
    step memcheck "$out/memcheck.log" "$san_s" compute-sanitizer --tool memcheck --error-exitcode 1 \
      --report-api-errors no --leak-check full "$engine" \
      --gtest_filter='Gpu/GpuSweep.*/Decode_*:GpuEngineTest.*-GpuEngineTest.TenThousandCallsAllocateNothing' || true
  fi
  # The fused append: every layout and cast, bad slots (which must write nothing out of bounds).
  if [[ -x $append ]]; then
    step memcheck-append "$out/memcheck.log" "$san_s" compute-sanitizer --tool memcheck --error-exitcode 1 \
      --report-api-errors no --leak-check full "$append" --gtest_filter='GpuAppend.*-GpuAppend.ManyTokens*' || true
  fi
  [[ -x $engine ]] || { note "skipped racecheck/synccheck (test_gpu_engine not built)"; note "overall: $([[ $status == 0 ]] && echo PASS || echo FAIL)"; exit $status; }
  # racecheck and synccheck: shared memory of the pre-pass, the block barrier of interleaved_to_half.
  step racecheck "$out/racecheck.log" "$san_s" compute-sanitizer --tool racecheck --error-exitcode 1 "$engine" \
    --gtest_filter='Gpu/GpuSweep.*/Decode_bfloat16_*:GpuEngineTest.LongRope*:GpuEngineTest.Dynamic*' || true
  step synccheck "$out/synccheck.log" "$san_s" compute-sanitizer --tool synccheck --error-exitcode 1 "$engine" \
    --gtest_filter='Gpu/GpuSweep.*/Decode_*_interleavedtohalf:GpuEngineTest.LongRope*' || true
else
  note "FAILED  compute-sanitizer not found on PATH"
  status=1
fi

note "overall: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
