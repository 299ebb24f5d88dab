#!/usr/bin/env bash
# On the GPU machine, one branch waiting for a GPU: its GPU tests (built and run in its own source tree) and its before/after pair against this tree, logs in one archive.
#
# usage: bash scripts/gpu-branch.sh BRANCH "TARGETS" "REGEX" [posenc_bench_gpu options...]
#   BRANCH   a branch or commit whose source is .ab-ref/BRANCH (scripts/stage-branches.sh makes it on
#            the development machine, where the history is)
#   TARGETS  the test targets to build there (e.g. "test_gpu_qk_norm test_gpu_append"); "" builds all
#   REGEX    ctest -R over the GPU tests (e.g. "GpuQkNorm"); "" runs every GPU test
#   options  for scripts/gpu-ab.sh; with none, only the tests run
# Device call: carry [".deps", ".ab-ref"], command, e.g.
#   bash scripts/gpu-branch.sh norm-pipe test_gpu_qk_norm GpuQkNorm --tokens 1,64,4096,65536 --no-append --no-peers --no-decode --filter qk_norm
# The pair has A = the branch, B = this tree (B/A < 1: this tree is faster). Several branches in one
# call: one line each; every step is capped (POSENC_BRANCH_TEST_S, default 200; POSENC_BRANCH_AB_S,
# default 200; rounds POSENC_AB_ROUNDS, default 2 here), so a call of 600 s holds about two.
# Under $OUT: BRANCH.tar.gz (gpu-check's summary, build and ctest logs; ab.md and the runs); the
# summary, the failures and the table are printed.
set -uo pipefail

branch=${1:?usage: scripts/gpu-branch.sh BRANCH "TARGETS" "REGEX" [posenc_bench_gpu options...]}
targets=${2-}
regex=${3-}
shift $(($# < 3 ? $# : 3))
root=$(pwd)
out=${OUT:?set OUT}
src=$root/.ab-ref/$branch
logs=$out/$branch
mkdir -p "$logs"
[[ -f $src/CMakeLists.txt ]] || { echo "gpu-branch: no source in .ab-ref/$branch (scripts/stage-branches.sh $branch)"; exit 2; }
[[ -e $src/.deps ]] || ln -s "$root/.deps" "$src/.deps"

(cd "$src" && OUT=$logs POSENC_GPU_CHECK_CPU=0 POSENC_GPU_CHECK_SANITIZERS=0 POSENC_GPU_CHECK_TARGETS="$targets" \
  POSENC_GPU_CHECK_REGEX="$regex" timeout "${POSENC_BRANCH_TEST_S:-200}" bash scripts/gpu-check.sh >"$logs/check.out" 2>&1)
status=$?
echo "== $branch: GPU tests exit $status"
grep -E "ok |FAILED|tests passed|tests failed" "$logs/summary.txt" 2>/dev/null
grep -E "^\[  FAILED|Failure|Expected|Which is|Value of|Actual" "$logs/ctest-gpu.log" 2>/dev/null | head -n 16

if (($#)); then
  OUT=$logs POSENC_AB_ROUNDS=${POSENC_AB_ROUNDS:-2} timeout "${POSENC_BRANCH_AB_S:-200}" \
    bash scripts/gpu-ab.sh "$branch" "$@" >/dev/null 2>&1
  echo "== $branch: before/after pair exit $? (A = $branch, B = this tree)"
  sed -n '/^## /,$p' "$logs/ab.md" 2>/dev/null
fi
tar -czf "$out/$branch.tar.gz" -C "$out" "$branch" && rm -rf "${logs:?}"
exit $status
