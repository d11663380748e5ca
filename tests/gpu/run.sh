#!/usr/bin/env bash
# The GPU check, in one go, on a bare GPU machine with PyTorch (CUDA build), numpy,
# pybind11, CMake and the CUDA toolkit, and no network (about 5 minutes on an H200):
#   1. builds recserve._core with RECSERVE_WITH_CUDA=ON (sm_80, sm_90) with CMake into
#      build/gpu: the _core target alone, no gRPC stubs (they need grpcio-tools), no pip;
#   2. stages a `recserve` package in build/gpu/site (symlinks to python/recserve's files
#      and subpackages, and the built _core; `import recserve` loads neither gRPC nor the
#      client) and puts it on PYTHONPATH, so the machine's own torch is used and nothing
#      is downloaded;
#   3. runs the GPU tests (pytest if present, else tests/gpu/run_checks.py);
#   4. runs compute-sanitizer memcheck on tests/gpu/memcheck_case.py;
#   5. prints the timing table (tests/gpu/timings.py).
# Everything is also written to $OUT/gpu-run.log (if OUT is set) or docs/gpu-run.log.
# Exits non-zero if the build, any test, memcheck or the crossing check fails.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
log=${OUT:+$OUT/gpu-run.log}
log=${log:-docs/gpu-run.log}
exec > >(tee "$log") 2>&1
PY=${PYTHON:-python3}
failed=()
step() { echo; echo "== $* ($(date -u +%H:%M:%S) UTC)"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || failed+=(nvidia-smi)
nvcc --version | tail -n 1
"$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'device', torch.cuda.get_device_name(0), '| numpy', numpy.__version__)" || exit 1

step "build (CMake, RECSERVE_WITH_CUDA=ON, sm_80;sm_90)"
build=build/gpu
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if ! cmake -S . -B "$build" "${generator[@]}" -DRECSERVE_WITH_CUDA=ON -DRECSERVE_WITH_STUBS=OFF \
     -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="80;90" \
     -DSKBUILD_PROJECT_NAME=recserve -DSKBUILD_PROJECT_VERSION="$version" \
     -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$PY")" \
   || ! cmake --build "$build" --target _core -j "$(nproc)"; then
  echo "FAILED: build"; exit 1
fi
site=$build/site
rm -rf "$site" && mkdir -p "$site/recserve"
for f in python/recserve/*; do
  case "$(basename "$f")" in *.so | __pycache__) ;; *) ln -s "$root/$f" "$site/recserve/" ;; esac
done
cp "$build"/_core*.so "$site/recserve/"
export PYTHONPATH=$root/$site:$root/tests/csrc
"$PY" -c "import recserve.core.kernels as k; print('recserve', k._core.__version__, 'HAS_CUDA', k.HAS_CUDA, \
'backends', k.available_backends())"
"$PY" -c "import recserve.core.kernels as k, sys; sys.exit(0 if 'cuda' in k.available_backends() else 1)" \
  || { echo "FAILED: the CUDA backend is not usable"; exit 1; }

step "GPU tests (each CUDA kernel against the CPU kernel and float64 references)"
if "$PY" -c "import pytest" 2>/dev/null; then
  "$PY" -m pytest -c tests/gpu/pytest.ini --rootdir . --noconftest -q \
    tests/csrc/test_cuda_kernels.py "tests/csrc/test_topk.py::TestCuda" || failed+=(tests)
else
  echo "pytest is not installed: running tests/gpu/run_checks.py"
  "$PY" tests/gpu/run_checks.py || failed+=(tests)
fi

step "compute-sanitizer memcheck (a small case of each kernel)"
if command -v compute-sanitizer >/dev/null; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 3 \
    --print-limit 20 "$PY" tests/gpu/memcheck_case.py || failed+=(memcheck)
else
  echo "FAILED: compute-sanitizer not found (it ships with the CUDA toolkit)"; failed+=(memcheck)
fi

step "timings"
"$PY" tests/gpu/timings.py || failed+=(timings)

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "GPU CHECK FAILED: ${failed[*]} (log: $log)"
  exit 1
fi
echo "GPU CHECK PASSED (log: $log)"
