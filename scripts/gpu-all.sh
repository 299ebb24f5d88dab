#!/usr/bin/env bash
# On the GPU machine, in one 10-minute call: gpu-check (build, GPU tests, quick sanitizers), golden parity, Python, then the benchmarks.
#
# Run from the repository root with `.deps` and `.whl` carried (scripts/stage-gpu-deps.sh prepares
# both here; without `.whl` the Python step fails to build the package):
#     device call: carry [".deps", ".whl"], command: bash scripts/gpu-all.sh
# compute-sanitizer over every GPU test binary (scripts/gpu-sanitize.sh, about 6 minutes) does not
# fit beside the benchmarks: it is a call of its own, which reuses build/gpu-h100 on a warm machine
# and builds it otherwise:
#     device call: carry [".deps"], command: bash scripts/gpu-sanitize.sh
# or, in this script, POSENC_GPU_ALL_SANITIZE=1 POSENC_GPU_ALL_BENCH=0 POSENC_PYTHON=0 (tests + sanitizers).
# What comes back under $OUT (the device returns at most 8 files):
#   check-logs.tar.gz   every gpu-check log (summary, build, ctest-gpu, sanitizers) + golden parity +
#                       python/ (gpu-python.sh: pip build, pytest, python_ops) + sanitize/ (POSENC_GPU_ALL_SANITIZE=1)
#   python_ops.md       bench/python_ops.py's tables (POSENC_PYTHON=0 skips the Python step)
#   summary.txt         gpu-check's summary and the golden parity result
#   bench.csv PERFORMANCE.md performance_share.png bench.log   from bench/run.sh
# The reply's tail: gpu-check's summary, then every issue-18 target with PASS/FAIL and posenc's speed
# over its best peer (FlashInfer, vLLM's and HF's formulas) at every T.
# Benchmark allowances (seconds; a program past its allowance starts no new case): by default a share
# of what the call has left after the tests and Python (see below), at most POSENC_BENCH_GPU_S (210:
# posenc, FlashInfer and the decode rows), POSENC_BENCH_CPU_S (40), POSENC_BENCH_TORCH_S (100: vLLM's
# rows first, then HF's); setting one fixes it. POSENC_BENCH_PEERS=0 / POSENC_BENCH_DECODE=0 shorten
# the GPU part; POSENC_PYTHON=0 leaves the benchmarks the most time.
set -u
out=${OUT:?set OUT}
logs=$(mktemp -d)

# gpu-check builds, runs the GPU tests and its quick sanitizer subset (gpu-sanitize's full matrix
# replaces the subset under POSENC_GPU_ALL_SANITIZE=1).
OUT=$logs POSENC_GPU_CHECK_CPU=0 POSENC_GPU_CHECK_SANITIZERS=$((1 - ${POSENC_GPU_ALL_SANITIZE:-0})) \
  POSENC_SANITIZER_S=${POSENC_SANITIZER_S:-75} bash scripts/gpu-check.sh
check=$?

# Golden parity is labelled cpu (it runs everywhere); its GPU half runs only where a GPU is.
golden=build/gpu-h100/tests/test_golden
if [[ -x $golden ]]; then
  timeout 120 "$golden" >"$logs/golden.log" 2>&1
  echo "golden parity (CPU and GPU engines vs transformers fixtures): exit $?, $(grep -c '^\[       OK \]' "$logs/golden.log") families passed" >>"$logs/summary.txt"
fi
# compute-sanitizer, every tool over every GPU test binary (POSENC_GPU_ALL_SANITIZE=1): a log per
# run in check-logs.tar.gz (sanitize/), a line per run in summary.txt.
sanitize=0
if [[ ${POSENC_GPU_ALL_SANITIZE:-0} == 1 ]]; then
  OUT='' POSENC_SANITIZER_LOGS=$logs/sanitize bash scripts/gpu-sanitize.sh build/gpu-h100 >/dev/null 2>&1
  sanitize=$?
  sed 's/^/sanitize: /' "$logs/sanitize/summary.txt" >>"$logs/summary.txt"
elif command -v compute-sanitizer >/dev/null 2>&1; then
  # Multi-axis rotation under memcheck too (the gpu-check sanitizer steps cover test_gpu_engine).
  timeout "${POSENC_SANITIZER_S:-75}" compute-sanitizer --tool memcheck --error-exitcode 1 \
    build/gpu-h100/tests/test_gpu_multi_axis --gtest_filter='*bfloat16*' >"$logs/memcheck-multi-axis.log" 2>&1
  echo "memcheck test_gpu_multi_axis (bf16): exit $?, $(grep -h 'ERROR SUMMARY' "$logs/memcheck-multi-axis.log")" >>"$logs/summary.txt"
fi
# The Python package against the machine's torch: pytest (CUDA included) and bench/python_ops.py.
if [[ ${POSENC_PYTHON:-1} != 0 ]]; then
  mkdir -p "$logs/python"
  # The Python benchmark's quick sweep: the full one (POSENC_PY_BENCH_ARGS='') does not fit beside
  # the build and pytest within the call (the first run of 2026-12-06 ran out of time).
  OUT=$logs/python POSENC_PY_BENCH_ARGS="${POSENC_PY_BENCH_ARGS---quick}" timeout "${POSENC_PYTHON_S:-540}" \
    bash scripts/gpu-python.sh >/dev/null 2>&1
  echo "python (gpu-python.sh): exit $?" >>"$logs/summary.txt"
  cat "$logs/python/summary-python.txt" >>"$logs/summary.txt" 2>/dev/null
  cp "$logs/python/python_ops.md" "$out/python_ops.md" 2>/dev/null
fi
cp "$logs/summary.txt" "$out/summary.txt"
tar -czf "$out/check-logs.tar.gz" -C "$logs" .

# The benchmarks get what is left of the call (POSENC_GPU_ALL_S, default 570 of the device's 600 s):
# GPU 60 %, PyTorch 25 %, CPU 10 % of it unless set, capped at their usual allowances; with under
# 150 s left they are skipped with a line saying so (bench/run.sh in a call of its own runs them).
left=$((${POSENC_GPU_ALL_S:-570} - SECONDS))
if [[ ${POSENC_GPU_ALL_BENCH:-1} == 1 && $left -lt 150 ]]; then
  echo "bench: skipped, ${left}s of the call left (run bench/run.sh in a call of its own)" >>"$out/summary.txt"
elif [[ ${POSENC_GPU_ALL_BENCH:-1} == 1 ]]; then
  cap() { local v=$1 max=$2; ((v > max)) && v=$max; echo "$v"; }
  POSENC_BENCH_GPU_S=${POSENC_BENCH_GPU_S:-$(cap $((left * 60 / 100 - 40)) 210)} \
    POSENC_BENCH_CPU_S=${POSENC_BENCH_CPU_S:-$(cap $((left * 10 / 100)) 40)} \
    POSENC_BENCH_TORCH_S=${POSENC_BENCH_TORCH_S:-$(cap $((left * 25 / 100 - 30)) 100)} \
    OUT=$out bash bench/run.sh >/dev/null 2>&1
  echo "bench: exit $? after $((SECONDS - (${POSENC_GPU_ALL_S:-570} - left)))s ($(ls "$out" | tr '\n' ' '))" >>"$out/summary.txt"
fi
cat "$out/summary.txt"
if [[ -f $out/bench.log ]]; then
  grep -E '^(FlashInfer peer|=== posenc_bench_gpu: exit|=== torch_baseline: exit|torch_baseline: )' "$out/bench.log"
  sed -n '/^=== targets/,$p' "$out/bench.log" | head -n 120
fi
((check == 0 && sanitize == 0))
