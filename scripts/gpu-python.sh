#!/usr/bin/env bash
# On the GPU machine: builds the Python package against the machine's torch, runs the pytest suite
# (CUDA tests included) and the Python benchmark (bench/python_ops.py). Logs under $OUT.
#
# The machine is offline: the build requirements travel as wheels in .whl (scripts/stage-gpu-deps.sh
# downloads nanobind, scikit-build-core, pathspec, packaging, pytest, pluggy, iniconfig and pygments
# there), carried with the device call.
set -u
out=${OUT:?set OUT}
site=/tmp/posenc-py-deps
target=/tmp/posenc-py
py=${PYTHON:-python3}

say() { printf 'gpu-python.sh: %s\n' "$*" | tee -a "$out/summary-python.txt"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    >"$out/python-deps.log" 2>&1 || { say "FAIL: installing the carried wheels (python-deps.log)"; exit 1; }
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi

start=$SECONDS
CMAKE_ARGS="${CMAKE_ARGS:--DCMAKE_CUDA_ARCHITECTURES=90}" \
  "$py" -m pip install --no-build-isolation --no-deps --no-index --target "$target" --upgrade . \
  >"$out/python-build.log" 2>&1 || { say "FAIL: pip install . (python-build.log)"; tail -30 "$out/python-build.log"; exit 1; }
export PYTHONPATH=$target:$PYTHONPATH
say "built in $((SECONDS - start)) s: $("$py" -c 'import posenc, torch; print("posenc", posenc.__version__, posenc.backend(), "gpu", posenc.gpu_available(), "torch", torch.__version__)' 2>&1)"

# POSENC_PYTEST_ARGS: pytest's arguments (default: the whole suite), e.g. "test_ops.py -k cuda".
(cd python/tests && timeout "${POSENC_PYTEST_S:-300}" "$py" -m pytest -q -rs -p no:cacheprovider ${POSENC_PYTEST_ARGS:-.} ) \
  >"$out/pytest.log" 2>&1
status=$?
say "pytest: exit $status: $(tail -1 "$out/pytest.log")"

if [[ "${POSENC_PY_BENCH:-1}" != "0" ]]; then
  timeout "${POSENC_PY_BENCH_S:-240}" "$py" bench/python_ops.py ${POSENC_PY_BENCH_ARGS:-} --csv "$out/python_ops.csv" \
    >"$out/python_ops.md" 2>&1
  say "bench/python_ops.py: exit $?"
fi
exit $status
