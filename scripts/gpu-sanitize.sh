#!/usr/bin/env bash
# On the GPU machine: compute-sanitizer memcheck, racecheck, synccheck and initcheck over every GPU test binary of a build, a log per run and one summary.
#
# usage: scripts/gpu-sanitize.sh [BUILD_DIR]        (default build/gpu-h100; run from the repository root)
# Environment:
#   OUT                        where logs go (default BUILD_DIR/sanitize): <tool>.<binary>.log, summary.txt
#   POSENC_SANITIZER_TOOLS     default "memcheck racecheck synccheck initcheck"
#   POSENC_SANITIZER_JOBS      runs at the same time (default 4; each is its own process and context)
#   POSENC_SANITIZER_S         time limit of one run (default 300 s)
#   POSENC_SANITIZER_BUDGET_S  the whole step's wall-clock limit (default 420): no run starts after
#                              it, and a run's own limit is cut to what is left of it; runs left
#                              are reported "NOT RUN", cut ones "TIMEOUT", and both fail the step
#
# Binaries: every tests/test_gpu_* of the build (test_gpu_divisor excepted: host arithmetic, no
# device code), test_glm_attention_gpu_example and test_golden (its GPU half), whichever exist.
# Filters, only where a run would not fit (each says why, in gtest_filter below):
#   - test_gpu_engine: the GpuSweep decode cases (every dtype, pairing, numerics, head_dim, layout;
#     tokens 1, 7, 64) plus every GpuEngineTest; the prefill cases (T = 1000 and 65536) run the
#     same kernels on larger grids and take minutes under the tools. racecheck and synccheck, the
#     slowest, run the cases with shared memory or block barriers (bf16 decode sweep, LongRoPE and
#     dynamic NTK pre-pass, interleaved_to_half).
#   - test_gpu_large: memcheck and initcheck only (its point is indexing past 2^31 elements; its
#     kernels' shared memory and barriers are those racecheck/synccheck check on test_gpu_engine).
#   - tests comparing device-wide free memory (GpuRuntime.FreeMemoryIsStableOverBufferChurn,
#     GpuEngineTest.TenThousandCallsAllocateNothing) are left out: runs share the device, and the
#     tools allocate memory of their own. ctest -L gpu runs them alone. test_gpu_alloc_fault skips
#     only its free-memory comparisons (POSENC_TEST_DEVICE_SHARED=1); memcheck's leak check
#     covers the same ground here.
#   - test_gpu_fault faults on purpose (a kernel writes through an invalid pointer): under memcheck
#     it is the positive control, passing when memcheck reports that invalid access in the posenc
#     rope kernel; under the other tools it must pass as usual.
# Exit status: 0 when every run passed, 1 otherwise. One line per run and a total in summary.txt.
set -uo pipefail

build=${1:-build/gpu-h100}
tests=$build/tests
out=${OUT:-$build/sanitize}
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
tools=${POSENC_SANITIZER_TOOLS:-memcheck racecheck synccheck initcheck}
jobs=${POSENC_SANITIZER_JOBS:-4}
limit=${POSENC_SANITIZER_S:-300}
budget=${POSENC_SANITIZER_BUDGET_S:-420}

command -v compute-sanitizer >/dev/null 2>&1 || { echo "FAILED  compute-sanitizer not found on PATH" | tee -a "$summary"; exit 1; }
[[ -d $tests ]] || { echo "FAILED  no test binaries in $tests" | tee -a "$summary"; exit 1; }

binaries=()
for b in "$tests"/test_gpu_* "$tests"/test_glm_attention_gpu_example "$tests"/test_golden; do
  [[ -x $b && -f $b ]] || continue
  case $(basename "$b") in test_gpu_divisor|*.*) continue ;; esac
  binaries+=("$b")
done

# gtest_filter TOOL BINARY: the filter of that run ("" = every test); "skip" = not run under TOOL.
gtest_filter() {
  local tool=$1 name=$2
  case $name in
    test_gpu_engine)
      case $tool in
        racecheck) echo 'Gpu/GpuSweep.*/Decode_bfloat16_*:GpuEngineTest.LongRope*:GpuEngineTest.Dynamic*' ;;
        synccheck) echo 'Gpu/GpuSweep.*/Decode_*_interleavedtohalf:GpuEngineTest.LongRope*:GpuEngineTest.Dynamic*' ;;
        *) echo 'Gpu/GpuSweep.*/Decode_*:GpuEngineTest.*-GpuEngineTest.TenThousandCallsAllocateNothing' ;;
      esac ;;
    test_gpu_runtime) echo '*-GpuRuntime.FreeMemoryIsStableOverBufferChurn' ;;
    test_gpu_large) [[ $tool == memcheck || $tool == initcheck ]] && echo '' || echo skip ;;
    *) echo '' ;;
  esac
}

# sanitize TOOL BINARY SECONDS: one run; writes its log and a result file "<status>|<line>".
sanitize() {
  local tool=$1 binary=$2 limit=$3 name filter log result start rc=0
  name=$(basename "$binary")
  filter=$(gtest_filter "$tool" "$name")
  log=$out/$tool.$name.log
  result=$out/.$tool.$name.result
  local args=(--tool "$tool" --error-exitcode 99 --report-api-errors no)
  [[ $tool == memcheck ]] && args+=(--leak-check full)
  local gtest=()
  [[ -n $filter ]] && gtest=(--gtest_filter="$filter")
  start=$SECONDS
  {
    echo "== compute-sanitizer ${args[*]} $binary ${gtest[*]}"
    POSENC_TEST_DEVICE_SHARED=1 timeout --kill-after=15 "$limit" compute-sanitizer "${args[@]}" "$binary" "${gtest[@]}"
  } >"$log" 2>&1 || rc=$?
  local took=$((SECONDS - start))
  local errors
  # memcheck, synccheck, initcheck: "ERROR SUMMARY: N errors"; racecheck: "RACECHECK SUMMARY: H hazards
  # displayed (N errors, W warnings)".
  errors=$(grep -hoE 'ERROR SUMMARY: [0-9]+ error' "$log" | grep -oE '[0-9]+' | tail -n 1)
  if [[ $tool == racecheck ]]; then
    local hazards
    hazards=$(grep -hoE 'RACECHECK SUMMARY: .*\([0-9]+ error' "$log" | grep -oE '[0-9]+ error' | grep -oE '[0-9]+' | tail -n 1)
    [[ -n $hazards ]] && errors=$hazards
  fi
  local passed
  passed=$(grep -o '\[  PASSED  \] [0-9]* test' "$log" | grep -o '[0-9]*' | tail -n 1)
  local status=ok detail
  if [[ $name == test_gpu_fault && $tool == memcheck ]]; then
    # The positive control: memcheck must catch the deliberate invalid write in the rope kernel.
    if [[ ${errors:-0} -ge 1 ]] && grep -A4 -E 'Invalid __global__ (write|read)' "$log" | grep -qi 'rope'; then
      detail="deliberate invalid access caught (${errors} error(s), as intended)"
    else
      status=FAILED
      detail="memcheck did not report the deliberate invalid access (errors: ${errors:-none}, exit $rc)"
    fi
  elif [[ $rc == 124 || $rc == 137 ]]; then
    status=TIMEOUT
    detail="after ${limit}s"
  elif [[ -z $errors ]]; then
    status=FAILED
    detail="no sanitizer summary (exit $rc)"
  elif [[ $errors != 0 || $rc != 0 ]]; then
    status=FAILED
    detail="$errors error(s), exit $rc$([[ $rc == 99 ]] && echo ' (sanitizer errors)')"
  else
    detail="0 errors, ${passed:-?} tests passed"
  fi
  printf '%s|%-7s %-9s %-32s %s (%ss)%s\n' "$status" "$status" "$tool" "$name" "$detail" "$took" \
    "$([[ -n $filter ]] && echo " [filter $filter]")" >"$result"
}

start=$SECONDS
runs=0
not_run=()
for tool in $tools; do
  for binary in "${binaries[@]}"; do
    name=$(basename "$binary")
    [[ $(gtest_filter "$tool" "$name") == skip ]] && continue
    left=$((budget - (SECONDS - start)))
    if ((left < 10)); then
      not_run+=("$tool $name")
      continue
    fi
    rm -f "$out/.$tool.$name.result"
    sanitize "$tool" "$binary" "$((left < limit ? left : limit))" &
    runs=$((runs + 1))
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n; done
  done
done
wait

status=0
failed=0
errors_total=0
for result in "$out"/.*.result; do
  [[ -f $result ]] || continue
  line=$(cut -d'|' -f2- "$result")
  echo "$line" >>"$summary"
  [[ $(cut -d'|' -f1 "$result") == ok ]] || { status=1; failed=$((failed + 1)); }
  n=$(grep -oE ' [0-9]+ error' <<<"$line" | grep -oE '[0-9]+' | head -n 1)
  [[ $line == *"as intended"* ]] || errors_total=$((errors_total + ${n:-0}))
  rm -f "$result"
done
for r in "${not_run[@]}"; do
  echo "NOT RUN $r (budget of ${budget}s spent)" >>"$summary"
  status=1
done
echo "compute-sanitizer: $runs runs over ${#binaries[@]} binaries in $((SECONDS - start))s, $failed failed, $errors_total errors, ${#not_run[@]} not run ($tools)" >>"$summary"
cat "$summary"
exit $status
