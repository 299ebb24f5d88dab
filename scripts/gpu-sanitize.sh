#!/usr/bin/env bash
# On the GPU machine: compute-sanitizer memcheck, racecheck, synccheck and initcheck over every GPU test binary of a build, one summary line per (tool, binary).
#
# usage: bash scripts/gpu-sanitize.sh [BUILD_DIR]   (default build/gpu-h100; run from the repository root)
# As a device call of its own (about 1 minute of build on a fresh machine, then about 6 of runs):
#     carry [".deps"], command: bash scripts/gpu-sanitize.sh
# BUILD_DIR is reused when it holds a build (brought up to date by `cmake --build`); otherwise
# scripts/gpu-check.sh builds build/gpu-h100 first (POSENC_GPU_CHECK_BUILD_ONLY=1: no tests; needs
# `.deps` carried).
#
# Binaries: the executable of every ctest labelled gpu (`ctest -L gpu -N`: each GoogleTest binary
# once, `posenc_cli run --device gpu` with its arguments), plus the GPU halves of two cpu-labelled
# tests: test_golden (the GPU engine against the transformers fixtures) and test_capi (the C ABI's
# GPU engine). A new GPU test is picked up without editing this script.
# Runs: every tool over every binary, POSENC_SANITIZER_JOBS at a time, the longest first. Filters
# (gtest_filter below) only where a run would not fit; each says why.
# A run passes with the tool's summary at 0 errors, exit status 0 and no test skipped.
# test_gpu_fault faults on purpose (a kernel reads and writes through an invalid pointer): under
# memcheck it is the positive control, passing only when memcheck reports that invalid access in
# the rope kernel (the test itself fails there: memcheck turns the fault into a launch failure
# whose message the test does not expect); under the other tools it must pass as usual.
#
# Environment:
#   POSENC_SANITIZER_TOOLS     default "memcheck racecheck synccheck initcheck"
#   POSENC_SANITIZER_JOBS      runs at the same time (default 8 on 16 cores; each its own process and context)
#   POSENC_SANITIZER_S         time limit of one run (default 300 s)
#   POSENC_SANITIZER_BUDGET_S  wall-clock limit of all runs (default 360 s): no run starts in its last 30 s,
#                              and a run's own limit is cut to what is left of it; runs left are
#                              reported "NOT RUN", cut ones "TIMEOUT", and both fail the script
#   POSENC_SANITIZER_LOGS      where logs go (default BUILD_DIR/sanitize): <tool>.<binary>.log, summary.txt
#   OUT                        when set (a device call), summary.txt and sanitize-logs.tar.gz are copied there
# Exit status: 0 when every run passed, 1 otherwise.
set -uo pipefail

build=${1:-build/gpu-h100}
logs=${POSENC_SANITIZER_LOGS:-$build/sanitize}
tools=${POSENC_SANITIZER_TOOLS:-memcheck racecheck synccheck initcheck}
jobs=${POSENC_SANITIZER_JOBS:-8}
limit=${POSENC_SANITIZER_S:-300}
budget=${POSENC_SANITIZER_BUDGET_S:-360}

# finish STATUS: copies the summary and the logs to $OUT (device call) and exits with STATUS.
finish() {
  if [[ -n ${OUT:-} && -d $logs ]]; then
    mkdir -p "$OUT"
    cp "$logs/summary.txt" "$OUT/summary.txt" 2>/dev/null
    tar -czf "$OUT/sanitize-logs.tar.gz" -C "$logs" . 2>/dev/null
  fi
  exit "$1"
}

mkdir -p "$logs"
summary=$logs/summary.txt
: >"$summary"
fail() { echo "FAILED  $*" | tee -a "$summary"; finish 1; }

# ---- the build ----------------------------------------------------------------------------------
mkdir -p "$logs/build"
if [[ -f $build/CTestTestfile.cmake ]]; then
  # Brought up to date (a no-op right after gpu-check.sh built it from the same tree).
  timeout 420 cmake --build "$build" -j "$(nproc)" >"$logs/build/build.log" 2>&1 ||
    fail "cmake --build $build failed: $logs/build/build.log"
else
  [[ $build == build/gpu-h100 ]] || fail "no build in $build (only build/gpu-h100 is built here)"
  echo "gpu-sanitize: no build in $build: building it with scripts/gpu-check.sh (build only)" | tee -a "$summary"
  OUT=$logs/build POSENC_GPU_CHECK_BUILD_ONLY=1 bash scripts/gpu-check.sh >/dev/null 2>&1 ||
    fail "scripts/gpu-check.sh could not build $build: $logs/build/build.log"
fi
command -v compute-sanitizer >/dev/null 2>&1 || fail "compute-sanitizer not found on PATH"
command -v python3 >/dev/null 2>&1 || fail "python3 not found (it reads ctest's test list)"

# ---- the binaries: one line per binary, "name<TAB>gtest|plain<TAB>workdir<TAB>command..." ---------
binaries=$(python3 - "$build" <<'EOF'
import json, os, subprocess, sys

build = sys.argv[1]
listing = subprocess.run(["ctest", "--test-dir", build, "-N", "--show-only=json-v1"],
                         capture_output=True, text=True, check=True).stdout
gpu_halves = {"test_golden", "test_capi"}  # cpu-labelled tests with a GPU half
runs = {}
for test in json.loads(listing)["tests"]:
    command = test.get("command") or []
    props = {p["name"]: p["value"] for p in test.get("properties", [])}
    labels = props.get("LABELS", [])
    labels = labels if isinstance(labels, list) else [labels]
    if not command or ("gpu" not in labels and os.path.basename(command[0]) not in gpu_halves):
        continue
    gtest = any(a.startswith("--gtest_") for a in command[1:])
    args = [a for a in command[1:] if not a.startswith("--gtest_")]
    key = (command[0], tuple(args))
    if key not in runs:
        runs[key] = (gtest, props.get("WORKING_DIRECTORY", build))
names = set()
for (exe, args), (gtest, workdir) in runs.items():
    name = os.path.basename(exe)
    while name in names:
        name += "_"
    names.add(name)
    print("\t".join([name, "gtest" if gtest else "plain", workdir, exe, *args]))
EOF
) || fail "ctest -N could not list the tests of $build"
[[ -n $binaries ]] || fail "no GPU test in $build (a CPU-only build?)"

# gtest_filter TOOL BINARY: that run's filter ("" = every test). Left out everywhere: the two tests
# comparing device-wide free memory (GpuRuntime.FreeMemoryIsStableOverBufferChurn,
# GpuEngineTest.TenThousandCallsAllocateNothing: runs share the device, and the tools allocate
# memory of their own; `ctest -L gpu` runs them alone, and memcheck's leak check covers the same
# ground here), and GpuUnavailable.* (it skips wherever a GPU exists). test_gpu_alloc_fault skips
# only its free-memory comparisons (POSENC_TEST_DEVICE_SHARED=1).
gtest_filter() {
  local tool=$1 name=$2
  case $name in
    test_gpu_engine)
      # The prefill sweeps (T = 1000 and 65536) run the decode sweep's kernels on larger grids and
      # take minutes under each tool. racecheck and synccheck, the slowest, run the cases with
      # shared memory or block barriers: the bf16 decode sweep, the LongRoPE and dynamic-NTK
      # pre-pass, interleaved_to_half and the registry's every scheme.
      case $tool in
        racecheck) echo 'Gpu/GpuSweep.*/Decode_bfloat16_*:GpuEngineTest.LongRope*:GpuEngineTest.Dynamic*:GpuEngineTest.EveryRegistryScheme*' ;;
        synccheck) echo 'Gpu/GpuSweep.*/Decode_*_interleavedtohalf:GpuEngineTest.LongRope*:GpuEngineTest.Dynamic*:GpuEngineTest.EveryRegistryScheme*' ;;
        *) echo 'Gpu/GpuSweep.*/Decode_*:GpuEngineTest.*-GpuEngineTest.TenThousandCallsAllocateNothing' ;;
      esac ;;
    test_gpu_cos_sin_cache)
      # LongCalls runs the sweep's kernels on 8192 tokens of 40 heads: memcheck and initcheck only.
      case $tool in
        racecheck | synccheck) echo '*-GpuCosSinCache.LongCalls*' ;;
        *) echo '' ;;
      esac ;;
    test_gpu_append)
      # ManyTokens (3000 tokens over 200 pages) under memcheck and initcheck only; the other
      # tests cover every kernel of the fused append.
      case $tool in
        racecheck | synccheck) echo '*-GpuAppend.ManyTokens*' ;;
        *) echo '' ;;
      esac ;;
    test_gpu_runtime) echo '*-GpuRuntime.FreeMemoryIsStableOverBufferChurn:GpuUnavailable.*' ;;
    *) echo '' ;;
  esac
}

# rank BINARY: the order runs start in (longest first, so the last ones to start are short).
rank() {
  case $1 in
    test_gpu_engine) echo 0 ;; test_gpu_append) echo 1 ;; test_glm_attention_gpu_example) echo 2 ;;
    test_golden) echo 3 ;; test_gpu_large) echo 4 ;; test_gpu_cos_sin_cache) echo 5 ;;
    test_gpu_multi_axis) echo 6 ;; test_gpu_alloc_fault) echo 7 ;; *) echo 9 ;;
  esac
}

# sanitize TOOL SECONDS NAME KIND WORKDIR COMMAND...: one run; writes its log and "<status>|<line>".
sanitize() {
  local tool=$1 seconds=$2 name=$3 kind=$4 workdir=$5
  shift 5
  local filter log=$logs/$tool.$name.log result=$logs/.$tool.$name.result start=$SECONDS rc=0
  filter=$( [[ $kind == gtest ]] && gtest_filter "$tool" "$name")
  local args=(--tool "$tool" --error-exitcode 99 --report-api-errors no)
  [[ $tool == memcheck ]] && args+=(--leak-check full)
  # The GLM example's o_proj output is written by cuBLAS alone (beta = 0), by its Hopper GEMM
  # kernels (nvjet, TMA stores), whose writes initcheck does not see: every download of that
  # output reads as uninitialized (the H100 run of 2026-12-06: 456 host-API reports, no device-side
  # one, while the test's outputs equal transformers'). For that binary initcheck checks device
  # accesses only; posenc's kernels there still read nothing unwritten.
  [[ $tool == initcheck && $name == test_glm_attention_gpu_example ]] && args+=(--check-api-memory-access no)
  local extra=()
  [[ -n $filter ]] && extra=(--gtest_filter="$filter")
  {
    echo "== (cd $workdir && compute-sanitizer ${args[*]} $* ${extra[*]})"
    (cd "$workdir" && POSENC_TEST_DEVICE_SHARED=1 exec timeout --kill-after=15 "$seconds" \
      compute-sanitizer "${args[@]}" "$@" "${extra[@]}")
  } >"$log" 2>&1 || rc=$?
  local took=$((SECONDS - start))
  # memcheck, synccheck, initcheck: "========= ERROR SUMMARY: N errors"; racecheck: "========= RACECHECK
  # SUMMARY: H hazards displayed (N errors, W warnings)".
  local report errors
  if [[ $tool == racecheck ]]; then
    report=$(grep -hoE 'RACECHECK SUMMARY: .*' "$log" | tail -n 1)
    errors=$(grep -oE '\([0-9]+ error' <<<"$report" | grep -oE '[0-9]+')
  fi
  [[ -n ${report:-} ]] || report=$(grep -hoE 'ERROR SUMMARY: [0-9]+ errors?' "$log" | tail -n 1)
  [[ -n ${errors:-} ]] || errors=$(grep -oE '[0-9]+' <<<"$report" | head -n 1)
  local passed skipped
  passed=$(grep -oE '\[  PASSED  \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | tail -n 1)
  skipped=$(grep -oE '\[  SKIPPED \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | tail -n 1)
  local status=ok detail
  if [[ $name == test_gpu_fault && $tool == memcheck ]]; then
    # (grep -c, not grep -q: under pipefail, grep -q closing the pipe early fails the first grep
    # with SIGPIPE once memcheck's report outgrows the pipe buffer, and a caught fault read as missed.)
    local caught
    caught=$(grep -A4 -E 'Invalid __global__ (write|read)' "$log" | grep -ci 'rope')
    if [[ ${errors:-0} -ge 1 && ${caught:-0} -ge 1 ]]; then
      detail="$report: the deliberate invalid access, caught as intended"
    else
      status=FAILED
      detail="memcheck did not report the deliberate invalid access (${report:-no summary}, exit $rc)"
    fi
  elif [[ $rc == 124 || $rc == 137 ]]; then
    status=TIMEOUT
    detail="after ${seconds}s${report:+ ($report)}"
  elif [[ -z $report ]]; then
    status=FAILED
    detail="no sanitizer summary (exit $rc)"
  elif [[ $errors != 0 || $rc != 0 ]]; then
    status=FAILED
    detail="$report, exit $rc$([[ $rc == 99 ]] && echo ' (sanitizer errors)')"
  elif [[ ${skipped:-0} != 0 ]]; then
    status=FAILED
    detail="$report, but $skipped test(s) skipped"
  else
    detail="$report$([[ $kind == gtest ]] && echo "; ${passed:-?} tests passed")"
  fi
  printf '%s|%-7s %-9s %-30s %s (%ss)%s\n' "$status" "$status" "$tool" "$name" "$detail" "$took" \
    "$([[ -n $filter ]] && echo " [filter $filter]")" >"$result"
}

# ---- the runs -----------------------------------------------------------------------------------
queue=$(while IFS= read -r line; do
  name=${line%%$'\t'*}
  for tool in $tools; do printf '%s\t%s\t%s\n' "$(rank "$name")" "$tool" "$line"; done
done <<<"$binaries" | sort -s -t $'\t' -k1,1n)

start=$SECONDS
runs=0
not_run=()
rm -f "$logs"/.*.result
while IFS=$'\t' read -r _ tool name kind workdir command; do
  left=$((budget - (SECONDS - start)))
  if ((left < 30)); then  # too little left for a run to finish
    not_run+=("$tool $name")
    continue
  fi
  read -r -a command <<<"$command"
  sanitize "$tool" "$((left < limit ? left : limit))" "$name" "$kind" "$workdir" "${command[@]}" &
  runs=$((runs + 1))
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n; done
done <<<"$queue"
wait

status=0
failed=0
for result in "$logs"/.*.result; do
  [[ -f $result ]] || continue
  cut -d'|' -f2- "$result" >>"$summary"
  [[ $(cut -d'|' -f1 "$result") == ok ]] || { status=1; failed=$((failed + 1)); }
  rm -f "$result"
done
for r in "${not_run[@]}"; do
  echo "NOT RUN $r (budget of ${budget}s spent)" >>"$summary"
  status=1
done
echo "compute-sanitizer: $runs runs ($tools) over $(wc -l <<<"$binaries") binaries in $((SECONDS - start))s: $failed failed, ${#not_run[@]} not run" >>"$summary"
cat "$summary"
finish $status
