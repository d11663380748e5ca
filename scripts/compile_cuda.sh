#!/usr/bin/env bash
# Builds recserve._core with RECSERVE_WITH_CUDA=ON in build/cuda, so every .cu file is
# compiled by nvcc and linked, even on a machine without a GPU. Needs scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate

if ! command -v nvcc >/dev/null; then
  echo "compile_cuda: nvcc not found; install the CUDA toolkit to compile the CUDA kernels" >&2
  exit 1
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
cmake -S . -B build/cuda -DRECSERVE_WITH_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
  -DSKBUILD_PROJECT_NAME=recserve -DSKBUILD_PROJECT_VERSION="$version" \
  -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python)" \
  -DCMAKE_CUDA_ARCHITECTURES="80;90" >/dev/null
cmake --build build/cuda -j "$(nproc)"
# Every .cu must have been compiled into the library: a file left out of the build could
# break unnoticed.
missing=0
for cu in csrc/cuda/*.cu; do
  if ! find build/cuda -name "$(basename "$cu").o" | grep -q .; then
    echo "compile_cuda: $cu was not compiled (is it in CMakeLists.txt?)" >&2
    missing=1
  fi
done
[ "$missing" = 0 ] || exit 1
echo "compile_cuda: all $(ls csrc/cuda/*.cu | wc -l) CUDA sources compiled and linked into build/cuda"
