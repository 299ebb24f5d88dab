#!/usr/bin/env bash
# On the GPU machine: build the GPU benchmark and profile posenc's rotation kernel (and, for decode, FlashInfer's) with Nsight Compute; reports to $OUT.
#
# Run from the repository root with `.deps` carried (FlashInfer's headers included, so that the
# benchmark has its peer rows). Two modes (POSENC_PROFILE_MODE):
#
#   decode (default)  one timed launch each of posenc's kernel and of FlashInfer's two kernels
#                     (BatchQKApplyRotaryPosIds / its Llama 3.1 form, and ...CosSinCache) at the decode
#                     sizes POSENC_PROFILE_TOKENS (default "1 64") of POSENC_PROFILE_MODEL (a decode
#                     row of posenc_bench_gpu, default decode_llama31_8b: bf16 Q [T,32,128] +
#                     K [T,8,128]); prints side by side the metrics that explain a gap of a fraction
#                     of a microsecond: duration, launch shape, registers, theoretical and achieved
#                     occupancy, instructions issued and executed, cycles, DRAM bytes, and the stall
#                     reasons per issued instruction (long scoreboard = waiting on global memory);
#                     ncu-<kernel>-T<t>.csv keep every metric.
#   source            per-instruction stall samples (SASS) of one event-timed decode launch each:
#                     posenc's spec path, its cos/sin-cache path (the bench's decode_X_cache row) and
#                     FlashInfer's cache kernel, at POSENC_PROFILE_TOKENS (default "1") of
#                     POSENC_PROFILE_MODEL; caches and clocks left as the benchmark has them
#                     (--cache-control none --clock-control none). src-<name>-T<t>-sass.csv: ncu's source
#                     page (every SASS instruction with its samples by stall reason and its executed
#                     count); src-<name>-T<t>.txt: the sections' details; the .ncu-rep files too.
#   sweep             posenc's kernel at POSENC_PROFILE_TOKENS (default "1 64 4096 65536") of the bench
#                     variant POSENC_PROFILE_VARIANT (default main_half_split) with ncu's sections
#                     (SpeedOfLight, Occupancy, LaunchStats, WarpStateStats, MemoryWorkloadAnalysis,
#                     SchedulerStats) into ncu-<t>.txt.
#
# Each ncu run is capped by POSENC_PROFILE_RUN_S seconds (default 90); the whole profile stops
# starting runs after POSENC_PROFILE_S (default 420), so it fits one 10-minute device call with the build.
set -euo pipefail
out=${OUT:?set OUT}
root=$(pwd)
prefix=$root/.deps/prefix
build=$root/build/gpu-h100
started=$SECONDS
mode=${POSENC_PROFILE_MODE:-decode}
run_s=${POSENC_PROFILE_RUN_S:-90}
total_s=${POSENC_PROFILE_S:-420}

if [[ ! -f $prefix/lib/cmake/GTest/GTestConfig.cmake && ! -f $prefix/lib64/cmake/GTest/GTestConfig.cmake ]]; then
  cmake -S .deps/googletest -B .deps/build-googletest -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$prefix" -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON >"$out/build.log" 2>&1
  cmake --build .deps/build-googletest -j 16 >>"$out/build.log" 2>&1
  cmake --install .deps/build-googletest >>"$out/build.log" 2>&1
fi
cmake --preset gpu-h100 -DCMAKE_PREFIX_PATH="$prefix" >>"$out/build.log" 2>&1
cmake --build "$build" -j 16 --target posenc_bench_gpu >>"$out/build.log" 2>&1
bench=$build/bench/posenc_bench_gpu
grep -h "benchmark peer FlashInfer" "$out/build.log" | tail -n 1 || true

out_of_time() {
  if ((SECONDS - started > total_s)); then
    echo "gpu-profile: ${total_s} s spent; skipping $*"
    return 0
  fi
  return 1
}

if [[ $mode == sweep ]]; then
  variant=${POSENC_PROFILE_VARIANT:-main_half_split}
  kernel=${POSENC_PROFILE_KERNEL:-rope_kernel}
  for t in ${POSENC_PROFILE_TOKENS:-1 64 4096 65536}; do
    out_of_time "T=$t" && continue
    # Skip the verification and warm-up launches; profile one timed launch.
    timeout "$run_s" ncu -k "regex:$kernel" --launch-skip 40 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section MemoryWorkloadAnalysis --section SchedulerStats \
      --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum,sm__cycles_active.max' \
      "$bench" --filter "$variant" --tokens "$t" --no-append --no-decode --no-peers --budget-s 30 --out "$out/bench-$t" \
      >"$out/ncu-$t.txt" 2>&1 || echo "ncu T=$t failed (see ncu-$t.txt)"
    rm -rf "$out/bench-$t"
  done
  exit 0
fi

model=${POSENC_PROFILE_MODEL:-decode_llama31_8b}
if [[ $mode == source ]]; then
  # name | kernel regex | the bench's --filter | peers
  kernels=(
    "posenc|rope_kernel|$model|--no-peers"
    "posenc_cache|rope_kernel|${model}_cache|--no-peers"
    "fi_cos_sin_cache|BatchQKApplyRotaryPosIdsCosSinCache(HeadParallelism)?Kernel|$model|"
  )
  for t in ${POSENC_PROFILE_TOKENS:-1}; do
    for entry in "${kernels[@]}"; do
      IFS='|' read -r name regex filter peers <<<"$entry"
      out_of_time "$name T=$t" && continue
      rep=$out/src-$name-T$t
      # shellcheck disable=SC2086  # $peers is one option or none
      timeout "$run_s" ncu --kill yes --cache-control none --clock-control none --warp-sampling-interval 0 \
        --section SourceCounters --section WarpStateStats --section LaunchStats --section SpeedOfLight \
        -k "regex:$regex" --launch-skip 40 --launch-count 1 -f -o "$rep" \
        "$bench" --filter "$filter" --tokens "$t" --no-append $peers --budget-s 30 --out "$out/bench-$name-$t" \
        >"$rep.log" 2>&1 || true
      rm -rf "$out/bench-$name-$t"
      if [[ ! -f $rep.ncu-rep ]]; then
        echo "ncu $name T=$t: nothing profiled (see $(basename "$rep.log"))"
        continue
      fi
      ncu -i "$rep.ncu-rep" --page details >"$rep.txt" 2>&1 || true
      ncu -i "$rep.ncu-rep" --page source --csv --print-source sass >"$rep-sass.csv" 2>"$rep-sass.err" || true
      echo "== $name T=$t: $(grep -m1 -E 'Duration' "$rep.txt" | tr -s ' ')"
    done
  done
  exit 0
fi

# ---- decode: posenc against FlashInfer, one launch each, the same metrics ------------------------
metrics='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
metrics+=',gpu__time_duration.sum,launch__grid_size,launch__block_size,launch__registers_per_thread'
metrics+=',launch__shared_mem_per_block_static,launch__shared_mem_per_block_dynamic'
metrics+=',sm__maximum_warps_per_active_cycle_pct,sm__warps_active.avg.pct_of_peak_sustained_active'
metrics+=',smsp__inst_issued.sum,smsp__inst_executed.sum,sm__cycles_active.max,gpc__cycles_elapsed.max'
metrics+=',dram__bytes_read.sum,dram__bytes_write.sum'
# name | ncu kernel regex (function names; FlashInfer's small-T launches use the HeadParallelism kernels)
kernels=(
  "posenc|rope_kernel"
  "fi_pos_ids|BatchQKApplyRotaryPosIds(HeadParallelism)?Kernel"
  "fi_cos_sin_cache|BatchQKApplyRotaryPosIdsCosSinCache(HeadParallelism)?Kernel"
)
csvs=()
for t in ${POSENC_PROFILE_TOKENS:-1 64}; do
  for entry in "${kernels[@]}"; do
    name=${entry%%|*}
    regex=${entry#*|}
    out_of_time "$name T=$t" && continue
    peers=(--no-peers)
    [[ $name == fi_* ]] && peers=()
    csv=$out/ncu-$name-T$t.csv
    # --launch-skip 40: past the verification launch and the warm-up, inside the event-timed launches;
    # --kill yes ends the benchmark once that launch is profiled (its exit status is then not 0).
    timeout "$run_s" ncu --kill yes --csv --page raw --print-units base -k "regex:$regex" --launch-skip 40 \
      --launch-count 1 --metrics "$metrics" "$bench" --filter "$model" --tokens "$t" --no-append "${peers[@]}" \
      --budget-s 30 --out "$out/bench-$name-$t" >"$csv.log" 2>&1 || true
    # ncu's CSV is the part of its output from the header line on ("ID","Process ID",...): header,
    # units, one row per profiled launch.
    sed -n '/^"ID"/,$p' "$csv.log" >"$csv"
    if (($(wc -l <"$csv") >= 3)); then
      csvs+=("$name T=$t::$csv")
      rm -f "$csv.log"
    else
      echo "ncu $name T=$t: nothing profiled (see $(basename "$csv.log"))"
      rm -f "$csv"
    fi
    rm -rf "$out/bench-$name-$t"
  done
done
((${#csvs[@]})) || { echo "gpu-profile: no kernel was profiled"; exit 1; }

python3 - "$model" "${csvs[@]}" <<'PY' | tee "$out/decode-profile.txt"
import csv, sys

model, entries = sys.argv[1], sys.argv[2:]
columns, values = [], {}
for entry in entries:
    label, path = entry.split("::", 1)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    data = [r for r in rows if r.get("ID", "").strip().isdigit()]  # skip the units row
    if not data:
        print(f"{label}: no profiled launch in {path}")
        continue
    columns.append(label)
    values[label] = data[0]
    values[label + ":kernel"] = data[0].get("Kernel Name", "")

def get(label, metric):
    v = values[label].get(metric, "")
    try:
        return float(v.replace(",", ""))
    except ValueError:
        return None

def fmt(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if digits else f"{v:,.0f}"

rows = [
    ("duration (us)", "gpu__time_duration.sum", 1e-3, 2),
    ("grid size (blocks)", "launch__grid_size", 1, 0),
    ("block size (threads)", "launch__block_size", 1, 0),
    ("registers per thread", "launch__registers_per_thread", 1, 0),
    ("shared memory per block (B)", "launch__shared_mem_per_block_dynamic", 1, 0),
    ("theoretical occupancy (%)", "sm__maximum_warps_per_active_cycle_pct", 1, 1),
    ("achieved occupancy (%)", "sm__warps_active.avg.pct_of_peak_sustained_active", 1, 1),
    ("instructions issued", "smsp__inst_issued.sum", 1, 0),
    ("instructions executed", "smsp__inst_executed.sum", 1, 0),
    ("busiest SM active cycles", "sm__cycles_active.max", 1, 0),
    ("elapsed cycles", "gpc__cycles_elapsed.max", 1, 0),
    ("DRAM bytes read", "dram__bytes_read.sum", 1, 0),
    ("DRAM bytes written", "dram__bytes_write.sum", 1, 0),
]
width = max(18, *(len(c) + 2 for c in columns))
print(f"Nsight Compute, {model}: one event-timed launch per kernel (columns), base units")
print(f"{'':<30}" + "".join(f"{c:>{width}}" for c in columns))
for title, metric, scale, digits in rows:
    cells = []
    for c in columns:
        v = get(c, metric)
        cells.append(fmt(None if v is None else v * scale, digits))
    print(f"{title:<30}" + "".join(f"{x:>{width}}" for x in cells))
# Stall reasons: warps stalled per issued instruction, the largest first (by the first column).
prefix, suffix = "smsp__average_warps_issue_stalled_", "_per_issue_active.ratio"
stalls = sorted({m for c in columns for m in values[c] if m.startswith(prefix) and m.endswith(suffix)})
stalls.sort(key=lambda m: -(get(columns[0], m) or 0))
print("stall reasons (warps stalled per issued instruction):")
for m in stalls:
    vals = [get(c, m) for c in columns]
    if all((v or 0) < 0.05 for v in vals):
        continue
    print(f"  {m[len(prefix):-len(suffix)]:<28}" + "".join(f"{fmt(v, 2):>{width}}" for v in vals))
print("kernels: " + "; ".join(f"{c} = {values[c + ':kernel'][:90]}" for c in columns))
PY
