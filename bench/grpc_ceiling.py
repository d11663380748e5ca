"""How many calls per second one Python process can take: gRPC's synchronous server (what
recserve serves with) against its asyncio server (``grpc.aio``), in one run.

Both servers answer recserve's contract (``recserve.v1.Recommender``: GetModelInfo, so
the load generator can draw ids, and Rank) with no model behind it: Rank answers the
first k candidates with score 0. What remains is the framework's cost per call (taking
the call from gRPC's core, parsing the request, building and sending the answer), the
ceiling of any server written on it. The synchronous one is set up as recserve's is
(a handler pool of 64 threads, the same message limit); the asyncio one runs its handlers
on its event loop.

    python bench/grpc_ceiling.py                          # 100 candidates, c = 32, 2 rounds
    python bench/grpc_ceiling.py --candidates 1000 --rounds 3 --json ceiling.json

For each server (alternating over --rounds, each its own subprocess on a free port) a
closed loop of ``recserve bench``: answers/s, p50/p99, the server's CPU per answer (from
/proc) and the generator's. The last line is the asyncio server's throughput over the
synchronous one's (mean of rounds). The machine heads the table.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from recserve.loadtest import BenchOptions, run
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

SERVERS = ("sync", "aio")
NUM_USERS, NUM_ITEMS = 943, 1682  # ML-100k's id ranges, for the generator to draw from
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # recserve's default --max-message-bytes
HANDLER_THREADS = 64  # recserve's default --workers
READY_SECONDS = 30.0


class Answering(pb_grpc.RecommenderServicer):
    """The contract with nothing behind it (the synchronous handlers)."""

    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Any) -> Any:
        return pb.ModelInfo(
            model=pb.ModelRef(name="ceiling", version=1),
            user_ids=range(1, NUM_USERS + 1),
            item_ids=range(1, NUM_ITEMS + 1),
        )

    def Rank(self, request: pb.RankRequest, context: Any) -> Any:
        k = request.k or len(request.candidate_item_ids)
        items = [pb.ScoredItem(item_id=i) for i in request.candidate_item_ids[:k]]
        return pb.RankResponse(items=items, model=pb.ModelRef(name="ceiling", version=1))


class AsyncAnswering(Answering):
    """The same answers from coroutines, for ``grpc.aio``."""

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Any) -> Any:  # type: ignore[override]
        return Answering.GetModelInfo(self, request, context)

    async def Rank(self, request: pb.RankRequest, context: Any) -> Any:  # type: ignore[override]
        return Answering.Rank(self, request, context)


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


def serve_sync(port: int) -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=HANDLER_THREADS), options=channel_options()
    )
    pb_grpc.add_RecommenderServicer_to_server(Answering(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def serve_aio(port: int) -> None:
    server = grpc.aio.server(options=channel_options())
    pb_grpc.add_RecommenderServicer_to_server(AsyncAnswering(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# -- measuring ---------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def running(kind: str) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    argv = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_SECONDS
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            while True:
                try:
                    stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)
                    break
                except grpc.RpcError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the {kind} server did not start") from None
                    time.sleep(0.2)
        yield process, target
    finally:
        process.terminate()
        process.wait(10)


def measure(kind: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    with running(kind) as (process, target), tempfile.NamedTemporaryFile(suffix=".json") as f:
        options = BenchOptions(
            target=target, rpc="rank", concurrency=args.concurrency, processes=args.processes,
            candidates=args.candidates, k=args.k, duration=args.duration, warmup=1.0,
            seed=seed, json=f.name, progress=False,
        )  # fmt: skip
        before = cpu_seconds(process.pid)
        err = io.StringIO()
        if run(options, out=io.StringIO(), err=err) != 0:
            raise RuntimeError(f"the load run against the {kind} server failed:\n{err.getvalue()}")
        server_cpu = cpu_seconds(process.pid) - before
        report = json.loads(Path(f.name).read_text())
    answers = report["requests"]["completed"] + report["warmup_requests"]
    return {
        "server": kind,
        "answers_per_s": report["throughput_rps"],
        "p50_ms": report["latency_ms"]["p50"],
        "p99_ms": report["latency_ms"]["p99"],
        "errors": report["requests"]["errors"],
        # the server's CPU over warm-up and run together, per request of both
        "server_cpu_ms_per_answer": 1000 * server_cpu / max(answers, 1),
        "generator_cpu_ms_per_answer": report["generator"]["cpu_ms_per_answer"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2, help="generator processes")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args(argv)
    if args.serve == "sync":
        serve_sync(args.port)
        return 0
    if args.serve == "aio":
        asyncio.run(serve_aio(args.port))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serving import machine

    host = machine()
    print(f"machine: {host['cpu']}, {host['cores']} cores, Python {host['python']}, "
          f"grpcio {grpc.__version__}")  # fmt: skip
    print(f"Rank with {args.candidates} candidates, k = {args.k}, closed loop c = "
          f"{args.concurrency}, {args.processes} generator processes, {args.duration:g} s")  # fmt: skip
    print("| server | round | answers/s | p50 ms | p99 ms | errors | server CPU/answer | "
          "generator CPU/answer |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for round_ in range(1, args.rounds + 1):
        for kind in SERVERS:
            row = {**measure(kind, args, seed=round_), "round": round_}
            rows.append(row)
            print(
                f"| {kind} | {round_} | {row['answers_per_s']:.0f} | {row['p50_ms']:.2f} | "
                f"{row['p99_ms']:.2f} | {row['errors']} | "
                f"{row['server_cpu_ms_per_answer']:.3f} ms | "
                f"{row['generator_cpu_ms_per_answer']:.3f} ms |",
                flush=True,
            )
    mean = {
        kind: sum(r["answers_per_s"] for r in rows if r["server"] == kind) / args.rounds
        for kind in SERVERS
    }
    print(f"aio / sync throughput: {mean['aio'] / mean['sync']:.2f}x "
          f"({mean['aio']:.0f} against {mean['sync']:.0f} answers/s, mean of rounds)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"machine": host, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
