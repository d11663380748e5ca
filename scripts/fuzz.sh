#!/usr/bin/env bash
# Coverage-guided fuzzing (atheris, libFuzzer) of the C++ entry points of recserve._core,
# bounded: RECSERVE_FUZZ_RUNS inputs (default 20000), starting from the committed seed
# corpus tests/fuzz/corpus/core. New interesting inputs go to build/fuzz-corpus (not
# committed; copy good ones into the seed corpus by hand). A crash or a failed check
# writes the input to build/fuzz-artifacts/ and exits non-zero; replay it with
#   python tests/fuzz/fuzz_core.py build/fuzz-artifacts/crash-<hash>
# The gRPC-level fuzzing is tests/fuzz/test_server_fuzz.py (part of the pytest suite).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate

runs=${RECSERVE_FUZZ_RUNS:-20000}
mkdir -p build/fuzz-corpus build/fuzz-artifacts
start=$(date +%s)
echo "fuzz: $runs atheris runs on recserve._core (seed corpus: $(ls tests/fuzz/corpus/core | wc -l) files)"
python tests/fuzz/fuzz_core.py -atheris_runs="$runs" -seed=1 -max_len=256 -timeout=30 \
  -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix=build/fuzz-artifacts/ \
  build/fuzz-corpus tests/fuzz/corpus/core
echo "fuzz: OK, $runs runs without a failure ($(( $(date +%s) - start ))s)"
