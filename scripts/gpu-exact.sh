#!/usr/bin/env bash
# On the GPU machine, one call: the C++ GPU tests of the arithmetic and engine, the Python package against the machine's torch, the bit-exactness sweep on CUDA, then pytest's CUDA exactness cases.
#
# Run from the repository root with `.deps` and `.whl` carried (scripts/stage-gpu-deps.sh; the
# wheels gpu-python.sh names). Each step is capped by `timeout` and its log lands under $OUT:
#   summary.txt          every step's outcome, the sweep's table
#   check/               gpu-check.sh's logs (build, ctest-gpu)
#   python/              gpu-python.sh's logs (pip build)
#   sweep-cuda.jsonl     one line per case of scripts/golden/sweep_bitexact.py --device cuda (the
#                        cases of docs/sweeps/cuda.jsonl, then those this call ran)
#   sweep.log pytest.log
# Knobs (seconds): POSENC_EXACT_CHECK_S (150), POSENC_EXACT_BUILD_S (120), POSENC_EXACT_SWEEP_S (150),
# POSENC_EXACT_PYTEST_S (60); POSENC_EXACT_STRIDE (1: every position 0 .. 2^20 - 1);
# POSENC_EXACT_SWEEP_ARGS: more sweep arguments (a part of the grid: --schemes, --thetas, --dims);
# POSENC_EXACT_JOBS (4): (scheme, theta) groups swept at once (one process each, sharing the GPU);
# POSENC_EXACT_CHECK=0 skips the C++ GPU tests (when gpu-all.sh ran them in the same session);
# POSENC_EXACT_CPU_SWEEP_S (0: off) runs a strided CPU sweep on the host's CPU after the CUDA one
# (sweep-cpu-host.jsonl, sweep-cpu.log; POSENC_EXACT_CPU_STRIDE, default 61; POSENC_EXACT_CPU_JOBS
# (scheme, theta) processes at once, default 4).
set -u
out=${OUT:?set OUT}
summary=$out/summary.txt
: >"$summary"
mkdir -p "$out/check" "$out/python"
say() { echo "$*" | tee -a "$summary"; }

start=$SECONDS
if [[ ${POSENC_EXACT_CHECK:-1} == 0 ]]; then
  say "gpu-check (C++ GPU tests): skipped (POSENC_EXACT_CHECK=0)"
else
  OUT=$out/check POSENC_GPU_CHECK_CPU=0 POSENC_GPU_CHECK_SANITIZERS=0 \
    POSENC_GPU_CHECK_TARGETS="${POSENC_EXACT_TARGETS:-test_gpu_arithmetic test_gpu_engine test_gpu_append test_gpu_cos_sin_cache}" \
    POSENC_GPU_CHECK_REGEX="${POSENC_EXACT_REGEX:-GpuArithmetic|GpuEngine|GpuSweep|GpuAppend|GpuCosSinCache}" \
    timeout "${POSENC_EXACT_CHECK_S:-150}" bash scripts/gpu-check.sh >/dev/null 2>&1
  say "gpu-check (C++ GPU tests): exit $? after $((SECONDS - start)) s"
  cat "$out/check/summary.txt" >>"$summary" 2>/dev/null
  grep -E "^\[  FAILED|Failure|Expected|Which is" "$out/check/ctest-gpu.log" 2>/dev/null | head -n 20 >>"$summary"
fi

start=$SECONDS
OUT=$out/python POSENC_PY_BENCH=0 POSENC_PYTEST_S=1 \
  timeout "${POSENC_EXACT_BUILD_S:-120}" bash scripts/gpu-python.sh >/dev/null 2>&1
say "python package build: after $((SECONDS - start)) s: $(grep -h built "$out/python/summary-python.txt" 2>/dev/null)"
export PYTHONPATH=/tmp/posenc-py:/tmp/posenc-py-deps${PYTHONPATH:+:$PYTHONPATH}

if [[ -d /tmp/posenc-py/posenc ]]; then
  # The sweep resumes: cases already in docs/sweeps/cuda.jsonl (earlier device calls) are
  # skipped; copy $OUT/sweep-cuda.jsonl back over that file afterwards.
  [[ -f docs/sweeps/cuda.jsonl && ! -f $out/sweep-cuda.jsonl ]] && cp docs/sweeps/cuda.jsonl "$out/sweep-cuda.jsonl"
  start=$SECONDS
  timeout "${POSENC_EXACT_SWEEP_S:-150}" python3 scripts/golden/sweep_bitexact.py --device cuda \
    --stride "${POSENC_EXACT_STRIDE:-1}" --jobs "${POSENC_EXACT_JOBS:-4}" ${POSENC_EXACT_SWEEP_ARGS:-} --no-docs \
    --out "$out/sweep-cuda.jsonl" >"$out/sweep.log" 2>&1
  say "sweep (--device cuda): exit $? after $((SECONDS - start)) s, $(wc -l <"$out/sweep-cuda.jsonl" 2>/dev/null || echo 0) records (one per case and dtype; the grid has 336 x 3)"
  grep -E "<--|^\||Total" "$out/sweep.log" | head -n 40 >>"$summary"
  tail -n 3 "$out/sweep.log" >>"$summary"
  grep -E "^child" "$out/sweep.log" | tail -n 8 >>"$summary"
  # Where this call's sweep time went (records that carry stage times: the ones run here).
  python3 - "$out/sweep-cuda.jsonl" <<'PY' 2>&1 | tee -a "$summary"
import collections, json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
timed = [r for r in records if "seconds" in r]
stages = collections.Counter()
for r in timed:
    stages.update(r["stage_seconds"])
print(f"sweep time over the {len(timed)} records run here: {sum(r['seconds'] for r in timed):.0f} s, by stage {dict(stages)}")
PY

  # The CPU engine against torch on this host's CPU (an Intel Xeon on the GPU machine, whose MKL
  # picks other cos/sin kernels than the development host's AMD EPYC): a strided sweep of the grid,
  # POSENC_EXACT_CPU_SWEEP_S seconds (default 0: not run), every POSENC_EXACT_CPU_STRIDE-th position.
  if [[ ${POSENC_EXACT_CPU_SWEEP_S:-0} -gt 0 ]]; then
    start=$SECONDS
    timeout "$POSENC_EXACT_CPU_SWEEP_S" python3 scripts/golden/sweep_bitexact.py --device cpu \
      --stride "${POSENC_EXACT_CPU_STRIDE:-61}" --jobs "${POSENC_EXACT_CPU_JOBS:-4}" --no-docs \
      --out "$out/sweep-cpu-host.jsonl" >"$out/sweep-cpu.log" 2>&1
    say "sweep (--device cpu, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), stride ${POSENC_EXACT_CPU_STRIDE:-61}): exit $? after $((SECONDS - start)) s, $(wc -l <"$out/sweep-cpu-host.jsonl" 2>/dev/null || echo 0) records"
    grep -E "<--" "$out/sweep-cpu.log" | head -n 20 >>"$summary"
    echo "CPU sweep: $(python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(sum(x["differ"] for x in r), "differing of", sum(x["values"] for x in r))' "$out/sweep-cpu-host.jsonl" 2>/dev/null)" | tee -a "$summary"
  fi

  start=$SECONDS
  (cd python/tests && timeout "${POSENC_EXACT_PYTEST_S:-60}" python3 -m pytest -q -rs -p no:cacheprovider \
    test_ops.py test_transformers.py -k cuda) >"$out/pytest.log" 2>&1
  say "pytest -k cuda (test_ops, test_transformers): exit $? after $((SECONDS - start)) s: $(tail -n 1 "$out/pytest.log")"
  grep -E "^FAILED|Error" "$out/pytest.log" | head -n 10 >>"$summary"
else
  say "sweep and pytest: not run (no Python package; see python/python-build.log)"
  tail -n 20 "$out/python/python-build.log" >>"$summary" 2>/dev/null
fi
cat "$summary"
