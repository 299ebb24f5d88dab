#!/usr/bin/env bash
# Builds posenc's libFuzzer targets (the fuzz preset: clang, ASan + UBSan) and runs each for a bounded time; CI runs it short, people run it long.
#
# usage: scripts/fuzz.sh [-t SECONDS] [-s SEED] [-p PARALLEL] [--no-build] [--merge] [TARGET...]
#   -t SECONDS   time per target (default 600; .ci/run uses 60)
#   -s SEED      libFuzzer's -seed (default 1, fixed; 0 lets libFuzzer pick one)
#   -p PARALLEL  targets run at the same time (default: 1)
#   --no-build   use the targets already in build/fuzz
#   --merge      after the runs, add the inputs that cover new code to the committed seeds
#                fuzz/corpus/<target> (libFuzzer -merge=1; review and commit them, keep them small)
#   TARGET       fuzz_config fuzz_npy fuzz_cli fuzz_validate fuzz_tracker fuzz_positions (default: all six)
#
# Per target: the committed seeds fuzz/corpus/<target> (plus configs/ for fuzz_config) are read,
# inputs that reach new code are kept in build/fuzz/corpus/<target> (a later run continues from
# them), a crashing input is written to build/fuzz/artifacts/<target>/ and the log to
# build/fuzz/logs/<target>.log. One summary line per target; exit 1 when any target failed.
# Reproduce a crash: build/fuzz/fuzz/<target> build/fuzz/artifacts/<target>/crash-...
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

seconds=600
seed=1
parallel=1
build=1
merge=0
targets=()
while (($#)); do
  case $1 in
    -t) seconds=$2; shift 2 ;;
    -s) seed=$2; shift 2 ;;
    -p) parallel=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --merge) merge=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    fuzz_*) targets+=("$1"); shift ;;
    *) echo "fuzz.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
((${#targets[@]})) || targets=(fuzz_config fuzz_npy fuzz_cli fuzz_validate fuzz_tracker fuzz_positions)

bin=$root/build/fuzz/fuzz
work=$root/build/fuzz
mkdir -p "$work"
if ((build)); then
  { cmake --preset fuzz >"$work-configure.log" 2>&1 || { cat "$work-configure.log"; false; }; } &&
    cmake --build --preset fuzz --target "${targets[@]}" || { echo "fuzz.sh: build failed" >&2; exit 1; }
fi
mkdir -p "$work/logs"

# Per target: the longest input and the extra read-only seed directories.
max_len() { case $1 in fuzz_config) echo 16384 ;; fuzz_npy) echo 4096 ;; fuzz_cli) echo 1024 ;; *) echo 512 ;; esac; }
# seed_dirs NAME: the committed seed directories of NAME that exist (libFuzzer exits 1 on a missing
# corpus directory, and git keeps no empty ones).
seed_dirs() {
  local dir
  for dir in "$root/fuzz/corpus/${1#fuzz_}" $([[ $1 == fuzz_config ]] && echo "$root/configs"); do
    [[ -d $dir ]] && echo "$dir"
  done
}

# run_target NAME: fuzzes NAME for $seconds, writes its log, prints its summary line.
run_target() {
  local name=$1 short=${1#fuzz_}
  local exe=$bin/$name log=$work/logs/$name.log artifacts=$work/artifacts/$name/ corpus=$work/corpus/$name
  mkdir -p "$artifacts" "$corpus"
  local dict=()
  [[ -f $root/fuzz/dict/$short.dict ]] && dict=(-dict="$root/fuzz/dict/$short.dict")
  local start=$SECONDS rc=0
  # Absolute paths throughout: fuzz_cli changes its working directory. Leak checking stays on.
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    "$exe" -seed="$seed" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=3072 \
    -max_len="$(max_len "$name")" -close_fd_mask=3 -print_final_stats=1 "${dict[@]}" \
    -artifact_prefix="$artifacts" "$corpus" $(seed_dirs "$name") \
    >"$log" 2>&1 || rc=$?
  local took=$((SECONDS - start))
  echo "$rc" >"$work/logs/$name.status"
  local runs cov crash
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
  crash=$(grep -o "Test unit written to .*" "$log" | tail -n 1 | sed 's/Test unit written to //')
  if ((rc == 0)); then
    printf 'fuzz: %-14s ok      %s runs in %ss, %s, corpus %s files\n' "$name" "${runs:-?}" "$took" "${cov:-cov ?}" \
      "$(find "$corpus" -type f | wc -l)"
  else
    printf 'fuzz: %-14s FAILED  exit %s after %ss, %s runs; input: %s; log: %s\n' "$name" "$rc" "$took" "${runs:-?}" \
      "${crash:-none written}" "${log#"$root"/}"
    grep -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer)|runtime error:|property violated|terminate called|deadly signal' "$log" | sed 's/^/fuzz:   /'
    return 1
  fi
}

status=0
for name in "${targets[@]}"; do
  rm -f "$work/logs/$name.status"
  [[ -x $bin/$name ]] || { echo "fuzz: $name is not built ($bin/$name)"; status=1; continue; }
  run_target "$name" &
  while (($(jobs -rp | wc -l) >= parallel)); do wait -n; done
done
wait
for name in "${targets[@]}"; do
  [[ -x $bin/$name && $(cat "$work/logs/$name.status" 2>/dev/null) == 0 ]] || status=1
done

if ((merge)); then
  for name in "${targets[@]}"; do
    short=${name#fuzz_}
    mkdir -p "$root/fuzz/corpus/$short"
    "$bin/$name" -merge=1 -close_fd_mask=3 "$root/fuzz/corpus/$short" "$work/corpus/$name" \
      >"$work/logs/$name.merge.log" 2>&1 && echo "fuzz: merged new coverage of $name into fuzz/corpus/$short"
  done
fi
exit $status
