#!/usr/bin/env bash
# One command from a fresh clone to served models: set up, fetch MovieLens-100k, train and
# export what the repository lacks, then serve on 127.0.0.1:50051 in the foreground
# (Ctrl-C stops it cleanly). The default Recommend is the cascade SASRec -> DIN (DIN
# learns from SASRec's answers, so it trains second). DeepFM, which answers Rank, trains
# in the background once the cascade serves; the server loads it when it is exported.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_REPO=${RECSERVE_MODEL_REPO:-model-repo}
PORT=${RECSERVE_PORT:-50051}
# The retriever with the best validation NDCG@10 among the sequence models, and the
# ranker trained on its items (docs/results.md).
RETRIEVER=sasrec
CASCADE_RANKER=din
RANKER=deepfm

bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

has_model() { compgen -G "$MODEL_REPO/$1/[0-9]*/manifest.json" >/dev/null; }
train() { recserve train --model "$1" --data ml-100k --data-dir data --model-repo "$MODEL_REPO"; }

if ! has_model "$RETRIEVER" || ! has_model "$CASCADE_RANKER" || ! has_model "$RANKER"; then
  recserve data fetch ml-100k --data-dir data
fi
has_model "$RETRIEVER" || train "$RETRIEVER"
has_model "$CASCADE_RANKER" || train "$CASCADE_RANKER"
if ! has_model "$RANKER"; then
  ranker_log=$(mktemp -t "recserve-train-$RANKER-XXXXXX")
  echo "training $RANKER in the background (log: $ranker_log); the server loads it when it is exported"
  train "$RANKER" >"$ranker_log" 2>&1 &
fi
exec recserve serve --model-repo "$MODEL_REPO" --host 127.0.0.1 --port "$PORT" \
  --default-model "${RECSERVE_DEFAULT_MODEL:-$RETRIEVER}" \
  --default-rank-with "${RECSERVE_DEFAULT_RANK_WITH:-$CASCADE_RANKER}"
