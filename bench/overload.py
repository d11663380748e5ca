"""Overload: what clients get at twice the saturation rate, for recserve with its compute
threads at the lowest priority (``--compute-nice 19``, opt-in) and for the same server with
them at the callers' priority (``--compute-nice 0``, the default: the baseline), in one run.

For each server (alternating over --rounds, each started as its own subprocess on a
free loopback port, never two at once):

1. saturation S: answers/s of a closed loop of --concurrency Rank requests
   (--candidates ids, k = --k), --saturation-seconds long;
2. overload: an open loop at 2 S for --seconds with a --timeout deadline;
3. recovery: an open loop at S / 2 for 3 s, and its first second.

    python bench/overload.py                           # 100 candidates, 30 s, 2 rounds
    python bench/overload.py --seconds 15 --rounds 1 --json overload.json

Prints one row per server and round: S, goodput (answers/s during the overload) and its
share of S, each error code with its count and how fast it came back (p50/p99 from the
intended send time), the admitted answers' p50/p99, and the recovery. The machine, the
recserve SIMD level and the flags head the table. Needs a model repository with the
DeepFM of scripts/start.sh (--model-repo, default model-repo).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import ServerConfig, Started, machine, running

from recserve.core import kernels
from recserve.loadtest import BenchOptions, run

RECOVERY_SECONDS = 3.0


def server_config(args: argparse.Namespace, nice: int) -> ServerConfig:
    argv = [sys.executable, "-m", "recserve.cli", "serve", "--model-repo", str(args.model_repo)]
    argv += ["--host", "127.0.0.1", "--grace", "0", "--poll-seconds", "0"]
    argv += ["--compute-nice", str(nice), *args.serve_flags]
    label = f"recserve --compute-nice {nice}"
    return ServerConfig(label, "recserve", argv, {"compute_nice": nice})


def load(started: Started, args: argparse.Namespace, seed: int, **mode: Any) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        options = BenchOptions(
            target=started.target,
            rpc="rank",
            processes=args.processes,
            candidates=args.candidates,
            k=args.k,
            seed=seed,
            json=f.name,
            progress=False,
            **mode,
        )
        err = io.StringIO()
        if run(options, out=io.StringIO(), err=err) not in (0, 1):
            raise RuntimeError(f"the load run against {started.target} failed:\n{err.getvalue()}")
        return json.loads(Path(f.name).read_text())


def measure(config: ServerConfig, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    with running(config, logs) as started:
        closed = load(
            started, args, 1, concurrency=args.concurrency,
            duration=args.saturation_seconds, warmup=1.0,
        )  # fmt: skip
        saturation = closed["throughput_rps"]
        overload = load(
            started, args, 2, rate=2 * saturation, duration=args.seconds, warmup=1.0,
            timeout=args.timeout,
        )  # fmt: skip
        recovery = load(
            started, args, 3, rate=saturation / 2, duration=RECOVERY_SECONDS, warmup=0.0,
            timeout=args.timeout,
        )  # fmt: skip
    return {
        "server": config.label,
        "saturation_rps": saturation,
        "overload": {
            "offered_rps": 2 * saturation,
            "requests": overload["requests"],
            "goodput_rps": overload["throughput_rps"],
            "goodput_share": round(overload["throughput_rps"] / saturation, 3),
            "latency_ms": overload["latency_ms"],
            "errors_by_code": overload["errors_by_code"],
            "error_latency_ms": overload["error_latency_ms"],
            "error_examples": overload["error_examples"],
            "late_sends": overload["generator"]["late_sends"],
        },
        "recovery": {
            "requests": recovery["requests"],
            "latency_ms": recovery["latency_ms"],
            "first_second": recovery["series"][0] if recovery["series"] else None,
        },
    }


def format_row(result: dict[str, Any]) -> str:
    o, r = result["overload"], result["recovery"]
    errors = ", ".join(
        f"{code} {n} ({o['error_latency_ms'][code]['p50']:.0f}/"
        f"{o['error_latency_ms'][code]['p99']:.0f} ms)"
        for code, n in o["errors_by_code"].items()
    )
    lat = o["latency_ms"]
    admitted = "-" if lat["p50"] is None else f"{lat['p50']:.0f} / {lat['p99']:.0f} ms"
    first = r["first_second"] or {}
    return (
        f"| {result['server']} | {result['saturation_rps']:.0f} | {o['goodput_rps']:.0f} "
        f"({100 * o['goodput_share']:.0f}%) | {errors or 'none'} | {admitted} | "
        f"{r['requests']['errors']} errors, p99 {r['latency_ms']['p99'] or 0:.0f} ms, first "
        f"second {first.get('count', 0)} answered / {first.get('errors', 0)} errors |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16, help="closed loop for S")
    parser.add_argument("--saturation-seconds", type=float, default=6.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="overload duration")
    parser.add_argument("--timeout", type=float, default=2.0, help="each request's deadline")
    parser.add_argument("--processes", type=int, default=2, help="generator processes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nice", type=int, default=19, help="recserve's --compute-nice")
    parser.add_argument(
        "--serve-flags", default="", help="more flags for both servers, e.g. '--processes 2'"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.serve_flags = args.serve_flags.split()
    configs = [server_config(args, args.nice), server_config(args, 0)]
    results = []
    with tempfile.TemporaryDirectory() as logs:
        for round_ in range(args.rounds):
            order = configs if round_ % 2 == 0 else configs[::-1]
            for config in order:
                results.append({"round": round_ + 1, **measure(config, args, Path(logs))})
                print(f"round {round_ + 1}: {format_row(results[-1])}", file=sys.stderr)
    host = machine()
    print(
        f"{host['cpu']} ({host['cores']} cores), recserve SIMD level {kernels.SIMD_LEVEL}; "
        f"Rank, {args.candidates} candidates, k = {args.k}; S from a closed loop of "
        f"{args.concurrency}; overload 2 S for {args.seconds:g} s, deadline {args.timeout:g} s; "
        f"server flags: {' '.join(args.serve_flags) or 'defaults'}\n"
    )
    print(
        "| server | S (answers/s) | goodput at 2 S | errors (count, p50/p99 after) | "
        "admitted p50 / p99 | recovery at S/2 |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for result in results:
        print(format_row(result))
    if args.json:
        args.json.write_text(json.dumps({"machine": host, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
