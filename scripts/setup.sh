#!/usr/bin/env bash
# Creates .venv and installs PyTorch (CPU build) and recserve with its C++ extension,
# editable. Re-running is quick: the build is skipped while its inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${RECSERVE_TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

# The Node.js client's packages (clients/node), for its test against a live server.
# npm writes node_modules/.package-lock.json on each install: reinstall when the
# committed package-lock.json is newer than it.
node_lock=clients/node/node_modules/.package-lock.json
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: npm not found; the Node.js client test will be skipped (and fail under CI): install Node.js >= 20"
elif [ ! -f "$node_lock" ] || [ clients/node/package-lock.json -nt "$node_lock" ]; then
  echo "setup: installing the Node.js client's packages (npm ci)"
  npm ci --prefix clients/node --no-audit --no-fund
fi

stamp_file=.venv/.recserve-build-stamp
stamp=$(cat pyproject.toml CMakeLists.txt scripts/setup.sh \
          $(find csrc proto -type f | sort) | sha256sum | cut -d' ' -f1)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
   && python -c "import recserve._core" 2>/dev/null; then
  echo "setup: recserve is installed and up to date"
  exit 0
fi

# Torch first, so the project's torch>=... range is already met by the CPU build.
# Where the default index would give a CUDA build of several GB, point
# RECSERVE_TORCH_INDEX_URL at PyTorch's CPU wheel index.
if ! python -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  python -m pip install --quiet "$TORCH_SPEC" \
    ${RECSERVE_TORCH_INDEX_URL:+--index-url "$RECSERVE_TORCH_INDEX_URL"}
fi
echo "setup: installing build tools"
python -m pip install --quiet "scikit-build-core>=0.10" "pybind11>=3" "grpcio-tools>=1.70"
echo "setup: building recserve (C++ core + gRPC stubs)"
python -m pip install --quiet --no-build-isolation -Cbuild-dir=build -e ".[serve,train,test]"
echo "$stamp" > "$stamp_file"
python -c "import recserve, recserve.core.kernels as k; print('setup: recserve', \
recserve.__version__, 'backends:', ', '.join(k.available_backends()))"
