#!/usr/bin/env bash
# Here, before a device call: the source of each named branch or commit into .ab-ref/NAME (gitignored), for scripts/gpu-ab.sh and scripts/gpu-branch.sh on the GPU machine, which has no history.
#
# usage: bash scripts/stage-branches.sh [--bench-only] NAME...
#   --bench-only  leave out tests/golden too (a tree that only builds posenc_bench_gpu: the
#                 reference side of a before/after pair); the sweeps' records and the plots are
#                 always left out
# Each tree is about 9 MB (3 MB bench-only); a device call carries at most 64 MiB with the working
# tree, .deps and .whl, so this prints what the call would carry.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
excludes=(':!docs/sweeps' ':!docs/*.png')
if [[ ${1-} == --bench-only ]]; then
  excludes+=(':!tests/golden')
  shift
fi
(($#)) || { echo "usage: scripts/stage-branches.sh [--bench-only] NAME..." >&2; exit 2; }
for name in "$@"; do
  git -C "$root" rev-parse --verify --quiet "$name^{commit}" >/dev/null || { echo "stage-branches: no commit $name" >&2; exit 1; }
  dest=$root/.ab-ref/$name
  rm -rf "$dest"
  mkdir -p "$dest"
  git -C "$root" archive "$name" -- . "${excludes[@]}" | tar -x -C "$dest"
  git -C "$root" rev-parse --short "$name" >"$dest/.posenc-commit"  # gpu-check.sh names it
  echo "  .ab-ref/$name  $(git -C "$root" rev-parse --short "$name")  $(du -sh "$dest" | cut -f1)"
done
# The tree the call is made from (B of a before/after pair): the GPU machine's copy of .git may be
# older than its working tree, so gpu-ab.sh names B from this file.
dirty=$(git -C "$root" status --porcelain --untracked-files=no | grep -q . && echo "+changes" || true)
echo "$(git -C "$root" rev-parse --short HEAD)$dirty" >"$root/.ab-ref/HEAD-commit"
tree=$(git -C "$root" ls-files -z | (cd "$root" && du -cb --files0-from=- | tail -n 1 | cut -f1))
carried=$(du -sb "$root/.ab-ref" "$root/.deps" "$root/.whl" 2>/dev/null | awk '{s += $1} END {print s + 0}')
echo "a call carrying .deps, .whl and .ab-ref sends about $(((tree + carried) / 1048576)) MiB (limit 64)"
