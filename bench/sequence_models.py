"""Recommend latency of two sequence models served side by side: SASRec against GRU4Rec
(the baseline), in one run, on one server.

Both are family ``sequence``: per request the encoder program reads the user's stored
history merged with the request's ``recent_item_ids``, and the C++ top-k scans the
catalog with the resulting vector. One ``recserve serve`` holds both models; a closed
loop of ``recserve bench --rpc recommend`` (``--history`` recent items per request)
measures each model at each concurrency, the models alternating within every round.

    recserve train --model gru4rec --data ml-100k && recserve train --model sasrec --data ml-100k
    python bench/sequence_models.py                       # c = 1 and 8, 2 rounds
    python bench/sequence_models.py --concurrency 1,8,32 --rounds 3 --json seq.json

Prints answers/s, p50 and p99 per model, concurrency and round, then the ratios of the
means (SASRec / GRU4Rec: above 1 the transformer is slower, or answers more). The machine
and the recserve SIMD level head the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import (
    ServerConfig,
    Started,
    closed_loop_point,
    machine,
    print_point,
    print_ratios,
    running,
)

from recserve.core import kernels


def measure(started: Started, model: str, concurrency: int, args: argparse.Namespace) -> dict:
    return closed_loop_point(
        started.target, model, concurrency, rpc="recommend", processes=args.processes,
        duration=args.duration, warmup=1.0, history=args.history, k=args.k, seed=args.seed,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--baseline", default="gru4rec")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--history", type=int, default=10, help="recent items per request")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--processes", type=int, default=1, help="generator processes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args(argv)
    models = [args.baseline, args.model]
    missing = [m for m in models if not (args.model_repo / m).is_dir()]
    if missing:
        print(
            f"error: {', '.join(missing)} not in {args.model_repo}; train them with "
            f"`recserve train --model NAME --data ml-100k --model-repo {args.model_repo}`",
            file=sys.stderr,
        )
        return 2
    argv_serve = [sys.executable, "-m", "recserve.cli", "serve", "--model-repo",
                  str(args.model_repo), "--host", "127.0.0.1", "--grace", "0",
                  "--poll-seconds", "0"]  # fmt: skip
    host = machine()
    print(f"machine: {host['cpu']}, {host['cores']} cores, recserve SIMD level "
          f"{kernels.SIMD_LEVEL}, torch {host['torch']}")  # fmt: skip
    print(f"Recommend, k = {args.k}, {args.history} recent items per request, closed loop, "
          f"{args.duration:g} s per point, {args.processes} generator process(es)")  # fmt: skip
    print("| model | concurrency | round | answers/s | p50 ms | p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows: list[dict[str, Any]] = []
    levels = [int(c) for c in args.concurrency.split(",")]
    with (
        tempfile.TemporaryDirectory() as logs,
        running(ServerConfig("recserve", "recserve", argv_serve), Path(logs)) as started,
    ):
        for round_ in range(1, args.rounds + 1):
            for concurrency in levels:
                for model in models:
                    row = {**measure(started, model, concurrency, args), "round": round_}
                    rows.append(row)
                    print_point(row, round_)
    print_ratios(rows, args.model, args.baseline, levels)
    if args.json:
        args.json.write_text(json.dumps({"machine": host, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
