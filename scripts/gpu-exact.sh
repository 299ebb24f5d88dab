#!/usr/bin/env bash
# On the GPU machine, one call: the C++ GPU tests of the arithmetic and engine, the Python package against the machine's torch, the bit-exactness sweep on CUDA and pytest's CUDA exactness cases.
#
# Run from the repository root with `.deps` and `.whl` carried (scripts/stage-gpu-deps.sh; the
# wheels gpu-python.sh names). Each step is capped by `timeout` and its log lands under $OUT:
#   summary.txt          every step's outcome, the sweep's table
#   check/               gpu-check.sh's logs (build, ctest-gpu)
#   python/              gpu-python.sh's logs (pip build, pytest)
#   sweep-cuda.jsonl     one line per case of scripts/golden/sweep_bitexact.py --device cuda
# Knobs (seconds): POSENC_EXACT_CHECK_S (170), POSENC_EXACT_SWEEP_S (100), POSENC_EXACT_PYTEST_S (50);
# POSENC_EXACT_STRIDE (1: every position 0 .. 2^20 - 1 plus the top 64 and the thresholds' neighbours).
set -u
out=${OUT:?set OUT}
summary=$out/summary.txt
: >"$summary"
mkdir -p "$out/check" "$out/python"
say() { echo "$*" | tee -a "$summary"; }

start=$SECONDS
OUT=$out/check POSENC_GPU_CHECK_CPU=0 POSENC_GPU_CHECK_SANITIZERS=0 \
  POSENC_GPU_CHECK_TARGETS="${POSENC_EXACT_TARGETS:-test_gpu_arithmetic test_gpu_engine test_gpu_append test_gpu_cos_sin_cache test_golden}" \
  POSENC_GPU_CHECK_REGEX="${POSENC_EXACT_REGEX:-GpuArithmetic|GpuEngine|GpuSweep|GpuAppend|GpuCosSinCache|Golden}" \
  timeout "${POSENC_EXACT_CHECK_S:-170}" bash scripts/gpu-check.sh >/dev/null 2>&1
say "gpu-check (C++ GPU tests): exit $? after $((SECONDS - start)) s"
cat "$out/check/summary.txt" >>"$summary" 2>/dev/null

start=$SECONDS
OUT=$out/python POSENC_PY_BENCH=0 POSENC_PYTEST_S="${POSENC_EXACT_PYTEST_S:-50}" \
  POSENC_PYTEST_ARGS="test_ops.py test_transformers.py -k cuda" bash scripts/gpu-python.sh >/dev/null 2>&1
say "gpu-python (build + pytest -k cuda): exit $? after $((SECONDS - start)) s"
cat "$out/python/summary-python.txt" >>"$summary" 2>/dev/null

if [[ -d /tmp/posenc-py/posenc ]]; then
  start=$SECONDS
  PYTHONPATH=/tmp/posenc-py:/tmp/posenc-py-deps${PYTHONPATH:+:$PYTHONPATH} \
    timeout "${POSENC_EXACT_SWEEP_S:-100}" python3 scripts/golden/sweep_bitexact.py --device cuda \
    --stride "${POSENC_EXACT_STRIDE:-1}" --no-docs --out "$out/sweep-cuda.jsonl" >"$out/sweep.log" 2>&1
  say "sweep (--device cuda): exit $? after $((SECONDS - start)) s, $(wc -l <"$out/sweep-cuda.jsonl" 2>/dev/null || echo 0) cases"
  grep -E "differ|^\|" "$out/sweep.log" | head -n 40 >>"$summary"
  tail -n 3 "$out/sweep.log" >>"$summary"
else
  say "sweep: not run (no Python package)"
fi
cat "$summary"
