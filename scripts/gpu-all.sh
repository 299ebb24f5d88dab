#!/usr/bin/env bash
# On the GPU machine, in one 10-minute call: gpu-check (build, GPU tests), golden parity, compute-sanitizer over every GPU test binary (gpu-sanitize.sh), then the benchmarks.
#
# Run from the repository root with `.deps` carried (scripts/stage-gpu-deps.sh prepares it here):
#     device call: carry [".deps"], command: bash scripts/gpu-all.sh
# What comes back under $OUT (the device returns at most 8 files):
#   check-logs.tar.gz   every gpu-check log (summary, build, ctest-gpu) + golden parity + sanitize/
#                       (gpu-sanitize.sh, a log per run) + python/ (gpu-python.sh: pip build, pytest, python_ops)
#   python_ops.md       bench/python_ops.py's tables (POSENC_PYTHON=0 skips the Python step)
#   summary.txt         gpu-check's summary and the golden parity result
#   bench.csv PERFORMANCE.md performance_share.png bench.log   from bench/run.sh
# The reply's tail: gpu-check's summary, then every issue-18 target with PASS/FAIL and posenc's speed
# over its best peer (FlashInfer, vLLM's and HF's formulas) at every T.
# Benchmark allowances (seconds; a program past its allowance starts no new case): POSENC_BENCH_GPU_S
# (210: posenc, FlashInfer and the decode rows), POSENC_BENCH_CPU_S (40), POSENC_BENCH_TORCH_S (100:
# vLLM's rows first, then HF's); POSENC_BENCH_PEERS=0 / POSENC_BENCH_DECODE=0 shorten the GPU part.
set -u
out=${OUT:?set OUT}
logs=$(mktemp -d)

# gpu-check builds and runs the GPU tests; the compute-sanitizer step is gpu-sanitize's below.
OUT=$logs POSENC_GPU_CHECK_CPU=0 POSENC_GPU_CHECK_SANITIZERS=0 bash scripts/gpu-check.sh
check=$?

# Golden parity is labelled cpu (it runs everywhere); its GPU half runs only where a GPU is.
golden=build/gpu-h100/tests/test_golden
if [[ -x $golden ]]; then
  timeout 120 "$golden" >"$logs/golden.log" 2>&1
  echo "golden parity (CPU and GPU engines vs transformers fixtures): exit $?, $(grep -c '^\[       OK \]' "$logs/golden.log") families passed" >>"$logs/summary.txt"
fi
# ---- compute-sanitizer: memcheck, racecheck, synccheck, initcheck over every GPU test binary ----
# One log per run in check-logs.tar.gz (sanitize/), one line per run and a total in summary.txt.
# Bounded by POSENC_SANITIZER_BUDGET_S: with the benchmarks in the same 10-minute call it gets 60 s
# (memcheck over the quickest binaries); the whole matrix needs a call of its own:
# POSENC_GPU_ALL_BENCH=0 POSENC_PYTHON=0 (budget 420 s). POSENC_GPU_ALL_SANITIZE=0 skips it.
sanitize=0
if [[ ${POSENC_GPU_ALL_SANITIZE:-1} == 1 ]]; then
  default_budget=$([[ ${POSENC_GPU_ALL_BENCH:-1} == 1 ]] && echo 60 || echo 420)
  OUT=$logs/sanitize POSENC_SANITIZER_BUDGET_S=${POSENC_SANITIZER_BUDGET_S:-$default_budget} \
    bash scripts/gpu-sanitize.sh build/gpu-h100 >/dev/null 2>&1
  sanitize=$?
  sed 's/^/sanitize: /' "$logs/sanitize/summary.txt" >>"$logs/summary.txt"
fi
# The Python package against the machine's torch: pytest (CUDA included) and bench/python_ops.py.
if [[ ${POSENC_PYTHON:-1} != 0 ]]; then
  mkdir -p "$logs/python"
  OUT=$logs/python timeout "${POSENC_PYTHON_S:-540}" bash scripts/gpu-python.sh >/dev/null 2>&1
  echo "python (gpu-python.sh): exit $?" >>"$logs/summary.txt"
  cat "$logs/python/summary-python.txt" >>"$logs/summary.txt" 2>/dev/null
  cp "$logs/python/python_ops.md" "$out/python_ops.md" 2>/dev/null
fi
cp "$logs/summary.txt" "$out/summary.txt"
tar -czf "$out/check-logs.tar.gz" -C "$logs" .

if [[ ${POSENC_GPU_ALL_BENCH:-1} == 1 ]]; then
  POSENC_BENCH_GPU_S=${POSENC_BENCH_GPU_S:-210} POSENC_BENCH_CPU_S=${POSENC_BENCH_CPU_S:-40} \
    POSENC_BENCH_TORCH_S=${POSENC_BENCH_TORCH_S:-100} OUT=$out bash bench/run.sh >/dev/null 2>&1
  echo "bench: exit $? ($(ls "$out" | tr '\n' ' '))" >>"$out/summary.txt"
fi
cat "$out/summary.txt"
if [[ -f $out/bench.log ]]; then
  grep -E '^(FlashInfer peer|=== posenc_bench_gpu: exit|=== torch_baseline: exit|torch_baseline: )' "$out/bench.log"
  sed -n '/^=== targets/,$p' "$out/bench.log" | head -n 120
fi
((check == 0 && sanitize == 0))
