#!/usr/bin/env bash
# One command from a fresh clone to a served model: set up, fetch MovieLens-100k, train and
# export the default DeepFM when the repository has none, then serve on 127.0.0.1:50051 in
# the foreground (Ctrl-C stops it cleanly).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_REPO=${RECSERVE_MODEL_REPO:-model-repo}
PORT=${RECSERVE_PORT:-50051}

bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

if ! compgen -G "$MODEL_REPO/deepfm/[0-9]*/manifest.json" >/dev/null; then
  recserve data fetch ml-100k --data-dir data
  recserve train --model deepfm --data ml-100k --data-dir data --model-repo "$MODEL_REPO"
fi
exec recserve serve --model-repo "$MODEL_REPO" --host 127.0.0.1 --port "$PORT"
