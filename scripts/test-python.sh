#!/usr/bin/env bash
# Builds the Python package into a fresh virtual environment (build/python-venv) and runs its pytest
# suite; part of the README's test command. Tests that need a GPU skip with the reason.
#   POSENC_PY_TORCH=0   skip installing torch/transformers (their tests then skip, with the reason)
#   PYTHON=...          the interpreter to build the environment from (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'test-python.sh: %s\n' "$*"; }
python=${PYTHON:-python3}
venv=build/python-venv

if [[ ! -x "$venv/bin/python" ]]; then
  say "creating $venv from $($python --version 2>&1)"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
# Build requirements (installed here so the build can run without isolation and reuse its folder).
"$py" -m pip install -q "scikit-build-core>=0.10" "nanobind>=2.4" "numpy>=1.22" "pytest>=7" ml_dtypes
if [[ "${POSENC_PY_TORCH:-1}" != "0" ]]; then
  # torch and transformers are large (about 3 GB with torch's CUDA libraries, ~2-3 min from PyPI).
  start=$SECONDS
  "$py" -m pip install -q "torch==2.11.*" "transformers==5.17.*"
  say "torch and transformers installed in $((SECONDS - start)) s"
fi

start=$SECONDS
# One CUDA architecture keeps CI's build short; `pip install .` for users builds sm_80 and sm_90.
CMAKE_ARGS="${CMAKE_ARGS:--DCMAKE_CUDA_ARCHITECTURES=90}" \
  "$py" -m pip install -q --no-build-isolation --no-deps .
say "posenc built and installed in $((SECONDS - start)) s ($("$py" -c 'import posenc; print("backend", posenc.backend())'))"

# Run from outside the source tree so `import posenc` is the installed package.
cd python/tests
exec "../../$py" -m pytest -q -rs -p no:cacheprovider .
