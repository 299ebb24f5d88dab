#!/usr/bin/env bash
# On the GPU machine, in one 10-minute call: gpu-check (build, GPU tests, golden parity, sanitizers), then the benchmarks.
#
# Run from the repository root with `.deps` carried (scripts/stage-gpu-deps.sh prepares it here):
#     device call: carry [".deps"], command: bash scripts/gpu-all.sh
# What comes back under $OUT (the device returns at most 8 files):
#   check-logs.tar.gz   every gpu-check log (summary, build, ctest-gpu, sanitizers) + golden parity
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

OUT=$logs POSENC_GPU_CHECK_CPU=0 POSENC_SANITIZER_S=${POSENC_SANITIZER_S:-75} bash scripts/gpu-check.sh
check=$?

# Golden parity is labelled cpu (it runs everywhere); its GPU half runs only where a GPU is.
golden=build/gpu-h100/tests/test_golden
if [[ -x $golden ]]; then
  timeout 120 "$golden" >"$logs/golden.log" 2>&1
  echo "golden parity (CPU and GPU engines vs transformers fixtures): exit $?, $(grep -c '^\[       OK \]' "$logs/golden.log") families passed" >>"$logs/summary.txt"
fi
# Multi-axis rotation under memcheck too (the gpu-check sanitizer steps cover test_gpu_engine).
if command -v compute-sanitizer >/dev/null 2>&1; then
  timeout "${POSENC_SANITIZER_S:-75}" compute-sanitizer --tool memcheck --error-exitcode 1 \
    build/gpu-h100/tests/test_gpu_multi_axis --gtest_filter='*bfloat16*' >"$logs/memcheck-multi-axis.log" 2>&1
  echo "memcheck test_gpu_multi_axis (bf16): exit $?, $(grep -h 'ERROR SUMMARY' "$logs/memcheck-multi-axis.log")" >>"$logs/summary.txt"
fi
cp "$logs/summary.txt" "$out/summary.txt"
tar -czf "$out/check-logs.tar.gz" -C "$logs" .

POSENC_BENCH_GPU_S=${POSENC_BENCH_GPU_S:-210} POSENC_BENCH_CPU_S=${POSENC_BENCH_CPU_S:-40} \
  POSENC_BENCH_TORCH_S=${POSENC_BENCH_TORCH_S:-100} OUT=$out bash bench/run.sh >/dev/null 2>&1
echo "bench: exit $? ($(ls "$out" | tr '\n' ' '))" >>"$out/summary.txt"
cat "$out/summary.txt"
grep -E '^(FlashInfer peer|=== posenc_bench_gpu: exit|=== torch_baseline: exit|torch_baseline: )' "$out/bench.log"
sed -n '/^=== targets/,$p' "$out/bench.log" | head -n 120
exit $check
