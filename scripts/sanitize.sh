#!/usr/bin/env bash
# Builds recserve._core with AddressSanitizer + UndefinedBehaviorSanitizer into build/asan
# (its own build dir; the editable install is untouched), then runs the kernel tests
# (tests/csrc) and the C++ fuzz corpus (tests/fuzz/corpus/core, plus bounded random
# inputs) against that build. Any sanitizer report aborts the run: exit status != 0.
# Python is not instrumented, so the sanitizer runtimes are LD_PRELOADed.
# Usage: bash scripts/sanitize.sh [extra pytest args]   (RECSERVE_SANITIZE_RANDOM=N
# sets the number of random fuzz inputs, default 3000).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate

build=build/asan
overlay=$build/pkg
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g -O1"
start=$(date +%s)
mkdir -p "$build"

echo "sanitize: configuring $build (CMAKE_CXX_FLAGS=$flags)"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=None \
  -DSKBUILD_PROJECT_NAME=recserve -DSKBUILD_PROJECT_VERSION=0.1.0 \
  -DRECSERVE_WITH_CUDA=OFF -DRECSERVE_WITH_STUBS=OFF \
  -DPython_EXECUTABLE="$(command -v python)" \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" >"$build/configure.log" \
  || { cat "$build/configure.log"; exit 1; }
echo "sanitize: building _core with sanitizers"
cmake --build "$build" --target _core -j "${RECSERVE_SANITIZE_JOBS:-2}" >"$build/build.log" \
  || { tail -50 "$build/build.log"; exit 1; }

# An import overlay: the recserve package (Python sources and the generated stubs of the
# editable install) with the sanitized _core, and
# a sitecustomize that takes the editable install's import redirect out of the way, so
# that this tree's recserve is the one imported, in subprocesses too.
site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$overlay"
mkdir -p "$overlay"
cp -r python/recserve "$overlay/recserve"
cp -r "$site/recserve/v1" "$site/recserve/kserve" "$overlay/recserve/"
cp "$build"/_core*.so "$overlay/recserve/"
cat >"$overlay/sitecustomize.py" <<'PY'
import sys

sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
PY

export PYTHONPATH="$PWD/$overlay${PYTHONPATH:+:$PYTHONPATH}"
LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONFAULTHANDLER=1

core=$(python -c 'import recserve._core as c; print(c.__file__)')
case "$core" in
  "$PWD/$overlay"/*) echo "sanitize: importing the sanitized core $core" ;;
  *) echo "sanitize: FAILED: recserve._core comes from $core, not the sanitized build"; exit 1 ;;
esac

echo "sanitize: kernel tests (tests/csrc) against the sanitized core"
# --capture=sys: a sanitizer report goes to fd 2 and must not be lost in pytest's capture.
python -m pytest tests/csrc -q -p no:cacheprovider --capture=sys "$@"
echo "sanitize: C++ fuzz corpus and ${RECSERVE_SANITIZE_RANDOM:-3000} random inputs"
python tests/fuzz/fuzz_core.py --replay tests/fuzz/corpus/core \
  --random "${RECSERVE_SANITIZE_RANDOM:-3000}"
echo "sanitize: OK, no sanitizer report ($(( $(date +%s) - start ))s)"
