#!/usr/bin/env bash
# Set up like scripts/start.sh, then lint and run the whole test suite (slow tests too).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/setup_client_tools.sh
# shellcheck disable=SC1091
. .venv/bin/activate

ruff check .
ruff format --check .
lint-imports --no-cache  # the import rules between subpackages (docs/architecture.md)
# The 25 slowest tests close the report: where the CI run's time goes.
python -m pytest --durations=25 "$@"
