#!/usr/bin/env bash
# On the GPU machine, one call: posenc_bench_gpu built from a reference commit and from this tree, run in alternation on the same card, and every row's time side by side (a before/after pair).
#
# usage: bash scripts/gpu-ab.sh REF [posenc_bench_gpu options...]
#   REF      a commit: its source is .ab-ref/REF (prepared on the development machine, where the
#            history is:  mkdir -p .ab-ref/REF && git archive REF | tar -x -C .ab-ref/REF ), or, where
#            this copy has the history, `git archive REF` here
#   options  passed to both programs (default: --quick --no-append --no-peers); both must know them
# Device call: carry [".deps", ".ab-ref"], command: bash scripts/gpu-ab.sh 54b64de
#
# Both trees are built with the gpu-h100 preset (the reference in its own folder, only the
# posenc_bench_gpu target), then run A, B, A, B... (POSENC_AB_ROUNDS rounds, default 3; each run
# capped by POSENC_AB_RUN_S seconds, default 60, through --budget-s) so that clock or thermal drift
# falls on both. Under $OUT: ab.md (the table), ab-runs.tar.gz (a/ and b/: each run's bench_gpu.csv and log), build logs.
# The table: per row (variant, dtype, pairing, T), the median over rounds of each side's median
# time per call and share of the floor, and B's time over A's (< 1: this tree is faster). A row
# whose output was not verified on either side is marked.
set -uo pipefail

ref=${1:?usage: scripts/gpu-ab.sh REF [posenc_bench_gpu options...]}
shift
args=("$@")
((${#args[@]})) || args=(--quick --no-append --no-peers)
out=${OUT:-build/ab-out}
root=$(pwd)
rounds=${POSENC_AB_ROUNDS:-3}
run_s=${POSENC_AB_RUN_S:-60}
mkdir -p "$out"

say() { echo "gpu-ab: $*" | tee -a "$out/ab.md"; }
: >"$out/ab.md"

# ---- the reference source ----------------------------------------------------------------------
src=$root/.ab-ref/$ref
if [[ ! -f $src/CMakeLists.txt ]]; then
  mkdir -p "$src"
  git archive "$ref" 2>"$out/archive.log" | tar -x -C "$src" ||
    { say "no source for $ref: prepare .ab-ref/$ref on the development machine and carry .ab-ref"; exit 2; }
fi
[[ -e $src/.deps ]] || ln -s "$root/.deps" "$src/.deps"

# ---- the two builds ----------------------------------------------------------------------------
build() {  # build SIDE DIR: configure (gpu-h100 preset) and build posenc_bench_gpu in DIR's tree
  local side=$1 dir=$2 start=$SECONDS
  (cd "$dir" && cmake --preset gpu-h100 >"$out/build-$side.log" 2>&1 &&
    cmake --build --preset gpu-h100 --target posenc_bench_gpu -j "$(nproc)" >>"$out/build-$side.log" 2>&1) ||
    { say "building $side ($dir) failed: build-$side.log"; tail -n 20 "$out/build-$side.log"; exit 1; }
  say "built $side in $((SECONDS - start)) s"
}
build a "$src"
build b "$root"
find_bench() { find "$1/build/gpu-h100" -name posenc_bench_gpu -type f -perm -u+x | head -n 1; }
exe_a=$(find_bench "$src")
exe_b=$(find_bench "$root")

# ---- the runs: A B A B ... ----------------------------------------------------------------------
for ((r = 1; r <= rounds; ++r)); do
  for side in a b; do
    exe=$exe_a
    [[ $side == b ]] && exe=$exe_b
    mkdir -p "$out/$side/$r"
    timeout $((run_s + 60)) "$exe" --out "$out/$side/$r" --budget-s "$run_s" "${args[@]}" \
      >"$out/$side/$r/run.log" 2>&1
    say "round $r $side: exit $? ($(grep -c . "$out/$side/$r/bench_gpu.csv" 2>/dev/null || echo 0) csv lines)"
  done
done

# ---- the table -----------------------------------------------------------------------------------
python3 - "$out" "$ref" "$rounds" "$(cat "$root/.ab-ref/HEAD-commit" 2>/dev/null || git -C "$root" rev-parse --short HEAD 2>/dev/null || echo tree)" <<'EOF' | tee -a "$out/ab.md"
import csv, statistics, sys
from pathlib import Path

out, ref, rounds, head = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
key_fields = ("engine", "variant", "dtype", "pairing", "numerics", "T")

def load(side):
    rows = {}
    for r in range(1, rounds + 1):
        path = out / side / str(r) / "bench_gpu.csv"
        if not path.exists():
            continue
        for row in csv.DictReader(path.open()):
            if not row.get("median_us") or not row.get("T"):  # floors and launch rows: no T
                continue
            rows.setdefault(tuple(row[k] for k in key_fields), []).append(row)
    return rows

a, b = load("a"), load("b")
card = next((r[0]["card"] for r in list(a.values()) + list(b.values())), "?")
print(f"\n## {card}: A = {ref}, B = {head} (median over {rounds} alternating rounds)\n")
print("| engine | variant | dtype | pairing | T | A us | B us | B/A time | A graph us | B graph us | B/A graph | A % floor | B % floor |")
print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
ratios = []
graph_ratios = []
for key in sorted(set(a) & set(b), key=lambda k: (k[0], k[1], k[2], k[3], int(k[5] or 0))):
    def med(rows, field):
        vals = [float(r[field]) for r in rows if r.get(field)]
        return statistics.median(vals) if vals else float("nan")
    ua, ub = med(a[key], "median_us"), med(b[key], "median_us")
    sa, sb = med(a[key], "ratio"), med(b[key], "ratio")
    bad = any(not r["verified"].startswith(("exact", "ulp")) and r["verified"] not in ("", "skipped")
              for r in a[key] + b[key])
    ratio = ub / ua if ua > 0 else float("nan")
    # Graph-replayed time per call (small T): no host launch path in it, so far less noise than
    # one event-timed launch (an empty kernel's launch varies by +-20 % between runs).
    ga, gb = med(a[key], "graph_us_per_call"), med(b[key], "graph_us_per_call")
    graph_ratio = gb / ga if ga > 0 else float("nan")
    if key[0].startswith("posenc"):
        ratios.append(ratio)
        if graph_ratio == graph_ratio:
            graph_ratios.append(graph_ratio)
    cell = lambda v, f: "" if v != v else format(v, f)
    print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[5]} | {ua:.2f} | {ub:.2f} | {ratio:.3f}"
          f"{' (unverified)' if bad else ''} | {cell(ga, '.2f')} | {cell(gb, '.2f')} | {cell(graph_ratio, '.3f')} | "
          f"{100 * sa:.1f} | {100 * sb:.1f} |")
if ratios:
    print(f"\nposenc rows: B/A time median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f} over {len(ratios)} rows")
if graph_ratios:
    print(f"posenc rows, graph-replayed: B/A median {statistics.median(graph_ratios):.3f}, "
          f"min {min(graph_ratios):.3f}, max {max(graph_ratios):.3f} over {len(graph_ratios)} rows")
only = sorted(set(a) ^ set(b))
if only:
    print(f"\n{len(only)} rows ran on one side only (the options or the variants differ): "
          + ", ".join("/".join(k[1:4]) + f" T={k[5]}" for k in only[:10]))
EOF
# The device returns at most 8 files: every run's CSV and log in one archive beside ab.md.
tar -czf "$out/ab-runs.tar.gz" -C "$out" a b 2>/dev/null && rm -rf "$out/a" "$out/b"
