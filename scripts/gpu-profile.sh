#!/usr/bin/env bash
# On the GPU machine: build the GPU benchmark and profile posenc's rotation kernel with Nsight Compute at a few token counts; reports to $OUT.
#
# Run from the repository root with `.deps` carried. Env: POSENC_PROFILE_TOKENS (default
# "1 64 4096 65536"), POSENC_PROFILE_VARIANT (a bench --filter word, default main_half_split),
# POSENC_PROFILE_KERNEL (ncu kernel regex, default rope_kernel).
set -euo pipefail
out=${OUT:?set OUT}
root=$(pwd)
prefix=$root/.deps/prefix
build=$root/build/gpu-h100
if [[ ! -f $prefix/lib/cmake/GTest/GTestConfig.cmake && ! -f $prefix/lib64/cmake/GTest/GTestConfig.cmake ]]; then
  cmake -S .deps/googletest -B .deps/build-googletest -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$prefix" -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON >"$out/build.log" 2>&1
  cmake --build .deps/build-googletest -j 16 >>"$out/build.log" 2>&1
  cmake --install .deps/build-googletest >>"$out/build.log" 2>&1
fi
cmake --preset gpu-h100 -DCMAKE_PREFIX_PATH="$prefix" >>"$out/build.log" 2>&1
cmake --build "$build" -j 16 --target posenc_bench_gpu >>"$out/build.log" 2>&1
bench=$build/bench/posenc_bench_gpu
variant=${POSENC_PROFILE_VARIANT:-main_half_split}
kernel=${POSENC_PROFILE_KERNEL:-rope_kernel}
for t in ${POSENC_PROFILE_TOKENS:-1 64 4096 65536}; do
  # Skip the verification and warm-up launches; profile one timed launch.
  ncu -k "regex:$kernel" --launch-skip 40 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section SchedulerStats \
    --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum,sm__cycles_active.max' \
    "$bench" --filter "$variant" --tokens "$t" --no-append --budget-s 30 --out "$out/bench-$t" \
    >"$out/ncu-$t.txt" 2>&1 || echo "ncu T=$t failed (see ncu-$t.txt)"
  rm -rf "$out/bench-$t"
done
