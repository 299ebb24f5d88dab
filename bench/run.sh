#!/usr/bin/env bash
# One command on the lent GPU machine: GPU, CPU and PyTorch benchmarks, then the report; results go under $OUT.
#
# Run from the repository root after scripts/gpu-check.sh has built the gpu-h100 preset
# (build/gpu-h100); the two bench targets are (re)built here if needed:
#
#     bash bench/run.sh            # full sweep (about 8 minutes)
#     bash bench/run.sh --quick    # a few T and variants (about 2 minutes)
#
# Writes five files (the device machine returns at most eight):
#   $OUT/bench.csv              every row of the three programs, one CSV
#   $OUT/PERFORMANCE.md         docs/PERFORMANCE.md with its results region filled in
#   $OUT/performance_share.png  share of the floor and time per call against T (if matplotlib is there)
#   $OUT/append_share.png       fused append against RoPE + a separate cache copy (if matplotlib is there)
#   $OUT/bench.log              everything printed
# Copy PERFORMANCE.md and the PNGs into docs/ to publish them.
#
# POSENC_BENCH_GPU_ARGS adds options to posenc_bench_gpu (e.g. "--no-append", "--filter append").
# POSENC_BENCH_PEERS=0 drops FlashInfer's rows, POSENC_BENCH_DECODE=0 the decode rows (each saves
# a few tens of seconds); POSENC_BENCH_TORCH_ARGS adds options to torch_baseline.py (e.g.
# "--variants vllm" for vLLM's rows only, "--no-compile").
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
out=${OUT:-build/bench-out}
build=${POSENC_BENCH_BUILD_DIR:-build/gpu-h100}
quick=()
[[ "${1:-}" == "--quick" ]] && quick=(--quick)
mkdir -p "$out"
work=$(mktemp -d)

# Seconds allowed for each program, and the time past which it is reported as too slow (the whole
# command must end inside the device machine's 10-minute limit). Each program stops starting new
# cases at its allowance and still writes what it measured; the hard limit is the backstop.
# POSENC_BENCH_{GPU,CPU,TORCH}_S shrink the allowances to fit a shorter device call.
gpu_warn=${POSENC_BENCH_GPU_S:-330} cpu_warn=${POSENC_BENCH_CPU_S:-90} torch_warn=${POSENC_BENCH_TORCH_S:-150}
gpu_limit=$((gpu_warn + 40)) cpu_limit=$((cpu_warn + 30)) torch_limit=$((torch_warn + 30))
torch_budget=$((torch_warn - 10))

warnings=()

step() {  # step NAME LIMIT WARN COMMAND...: runs COMMAND under a time limit and reports how long it took
  local name=$1 limit=$2 warn=$3
  shift 3
  echo
  echo "=== $name: $*"
  local t0=$SECONDS rc
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  rc=$?
  local took=$((SECONDS - t0))
  echo "=== $name: exit $rc after ${took} s"
  if ((rc == 124 || rc == 130 || rc == 137)); then
    warnings+=("$name was stopped at its ${limit} s limit: its table is incomplete")
  elif ((took > warn)); then
    warnings+=("$name took ${took} s, more than its ${warn} s allowance")
  fi
  if ((rc == 2)); then
    warnings+=("$name: an output did not match apply_reference (exit 2): see the verified column")
  elif ((rc != 0 && rc != 124 && rc != 130 && rc != 137)); then
    warnings+=("$name exited with status $rc")
  fi
  return 0
}

find_exe() {
  find "$build" -type f -name "$1" -perm -u+x 2>/dev/null | head -n 1
}

main() {
  echo "posenc benchmarks, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), tree $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv 2>/dev/null || echo "(nvidia-smi not available)"
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) usable CPUs"

  if [[ -d "$build" ]]; then
    cmake --build "$build" --target posenc_bench_gpu posenc_bench_cpu || warnings+=("building the bench targets failed")
  else
    echo "$build does not exist: configuring the gpu-h100 preset for the benchmarks only"
    cmake --preset gpu-h100 -DPOSENC_BUILD_TESTS=OFF -DPOSENC_BUILD_TOOLS=OFF &&
      cmake --build "$build" --target posenc_bench_gpu posenc_bench_cpu || warnings+=("building the bench targets failed")
  fi
  local gpu_exe cpu_exe
  gpu_exe=$(find_exe posenc_bench_gpu)
  cpu_exe=$(find_exe posenc_bench_cpu)

  local gpu_args=()
  [[ ${POSENC_BENCH_PEERS:-1} == 0 ]] && gpu_args+=(--no-peers)
  [[ ${POSENC_BENCH_DECODE:-1} == 0 ]] && gpu_args+=(--no-decode)
  if [[ -n "$gpu_exe" ]]; then
    # shellcheck disable=SC2086  # POSENC_BENCH_GPU_ARGS is a list of words
    step posenc_bench_gpu "$gpu_limit" "$gpu_warn" "$gpu_exe" --out "$work" --budget-s "$gpu_warn" "${quick[@]}" \
      "${gpu_args[@]}" ${POSENC_BENCH_GPU_ARGS:-}
  else
    warnings+=("posenc_bench_gpu was not built: no GPU table")
  fi
  if [[ -n "$cpu_exe" ]]; then
    step posenc_bench_cpu "$cpu_limit" "$cpu_warn" "$cpu_exe" --out "$work" --budget-s "$cpu_warn" "${quick[@]}"
  else
    warnings+=("posenc_bench_cpu was not built: no CPU table")
  fi
  # shellcheck disable=SC2086  # POSENC_BENCH_TORCH_ARGS is a list of words
  step torch_baseline "$torch_limit" "$torch_warn" \
    env PYTHONUNBUFFERED=1 python3 bench/torch_baseline.py --out "$work" --budget-s "$torch_budget" "${quick[@]}" \
    ${POSENC_BENCH_TORCH_ARGS:-}

  # The short tables last: the device machine's reply carries the end of the output.
  [[ -f "$work/bench_gpu.md" ]] && { echo; awk '/^## (posenc against FlashInfer|Fused append)/ { on = 1 } /^\| target/ { on = 0 } on' "$work/bench_gpu.md"; }
  echo
  echo "=== report"
  # Its summary (every issue-18 target with PASS/FAIL, posenc's speed over its best peer) ends the log.
  python3 bench/report.py --csv "$work/bench_gpu.csv" "$work/bench_cpu.csv" "$work/torch_baseline.csv" \
    --merged "$out/bench.csv" --doc docs/PERFORMANCE.md --doc-out "$out/PERFORMANCE.md" \
    --png "$out/performance_share.png" --png-append "$out/append_share.png" || warnings+=("report.py failed")
  echo
  if ((${#warnings[@]})); then
    printf 'WARNING: %s\n' "${warnings[@]}"
  else
    echo "all steps finished inside their time allowances"
  fi
  echo "results in $out: $(cd "$out" && ls | tr '\n' ' ')"
}

main 2>&1 | tee "$out/bench.log"
rm -rf "$work"
