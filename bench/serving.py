"""Serving: recserve against a plain grpcio + TorchScript server, under the same load, in one run.

(a) `recserve serve` (fused C++ crossing + TorchScript head + C++ top-k, dynamic
batching) and (b) bench/baseline_server.py (the same exported TorchScript model's whole
forward per request, torch.sigmoid, torch.topk; no C++ core, no batching), each started
as its own subprocess on a free loopback port with the same model repository, one at a
time (never both at once). Each gets the same closed-loop Rank load from the
`recserve bench` generator (recserve.loadtest, its own processes): for each
--concurrency, --candidates ids per request, k = --k, --warmup seconds then --duration
seconds measured.

    python bench/serving.py                                  # 1,8,32 x 1000 candidates
    python bench/serving.py --head-precision fp32,bf16 --rounds 2 --json serving.json

Order: the baseline's torch intra-op setting is chosen first (1 thread against torch's
default, at the largest concurrency; the faster is kept), then --rounds rounds, each
server once per round, alternating (recserve, baseline, baseline, recserve, ...), so
drift on the machine hits both. Before the load, a few sample requests go to every
server and their top-k ids are compared (the same model: scores may differ in the last
float32 digits, so ids may swap on near-ties, which is reported as such).

Prints one table: per concurrency the answers/s and p99 of each (the mean over rounds),
recserve/baseline throughput and baseline/recserve p99 (above 1: recserve is better);
then each round's figures, where recserve's server-side time goes (its
recserve_stage_seconds metrics over each measured point, per request), and the CPU time
per answer of the server process and of the rest of the machine (mostly the generator,
which shares the cores), from /proc. ``--json FILE`` writes every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from recserve.engine.artifact import list_versions
from recserve.loadtest import BenchOptions, run
from recserve.loadtest.traffic import IdSpace, RequestBuilder, fetch_id_space
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent
READY_SECONDS = 180.0  # most a server may take to load and warm up
STOP_SECONDS = 15.0
NEAR_TIE = 1e-5  # relative score difference under which two items count as tied
STAGES = ("queue", "feature", "crossing", "head", "topk")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_loop_point(target: str, model: str, concurrency: int, **options: Any) -> dict:
    """One closed-loop point of ``recserve bench`` on ``model`` (``options``: more
    BenchOptions): answers/s, p50 and p99 ms, errors."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        bench = BenchOptions(
            target=target, model=model, concurrency=concurrency, json=f.name, progress=False,
            **options,
        )  # fmt: skip
        err = io.StringIO()
        if run(bench, out=io.StringIO(), err=err) != 0:
            raise RuntimeError(f"the load run on {model} failed:\n{err.getvalue()}")
        report = json.loads(Path(f.name).read_text())
    return {
        "model": model,
        "concurrency": concurrency,
        "answers_per_s": report["throughput_rps"],
        "p50_ms": report["latency_ms"]["p50"],
        "p99_ms": report["latency_ms"]["p99"],
        "errors": report["requests"]["errors"],
    }


def print_point(row: dict, round_: int) -> None:
    """One closed_loop_point row of a table headed | model | concurrency | round | ... |."""
    print(f"| {row['model']} | {row['concurrency']} | {round_} | {row['answers_per_s']:.0f} | "
          f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} |", flush=True)  # fmt: skip


def print_ratios(rows: list[dict], model: str, baseline: str, levels: list[int]) -> None:
    """Per concurrency: model / baseline for p50, p99 and answers/s, means of the rounds."""
    for c in levels:

        def mean(name: str, key: str, c: int = c) -> float:
            return statistics.mean(
                r[key] for r in rows if r["model"] == name and r["concurrency"] == c
            )

        ratios = ", ".join(
            f"{label} {mean(model, key) / mean(baseline, key):.2f}x"
            for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("answers_per_s", "answers/s"))
        )
        print(f"c = {c}: {model} / {baseline}: {ratios} (means of rounds)")


def newest_version(model_repo: Path, model: str) -> Path | None:
    """The newest version directory of ``model``, or None after saying how to train it."""
    versions = list_versions(model_repo / model)
    if not versions:
        print(
            f"error: no {model} in {model_repo}; train it with `recserve train --model "
            f"{model} --data ml-100k --model-repo {model_repo}`",
            file=sys.stderr,
        )
        return None
    return model_repo / model / str(versions[-1])


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import torch

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "grpcio": grpc.__version__,
    }


def load_average() -> float:
    return os.getloadavg()[0]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return float("nan"), float("nan")
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values[:8]) - idle) / tick, sum(values[:8]) / tick


# -- the servers -----------------------------------------------------------------------


@dataclass
class ServerConfig:
    """One server to measure: its label, the command that starts it, what it runs with."""

    label: str  # "recserve fp32", "recserve bf16", "baseline"
    kind: str  # "recserve" or "baseline"
    argv: list[str]  # without --port (and --metrics-port)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Started:
    process: subprocess.Popen
    target: str
    metrics_port: int | None
    log: Path


def recserve_config(args: argparse.Namespace, precision: str) -> ServerConfig:
    settings = {
        "max_batch_size": args.max_batch_size,
        "max_batch_delay_ms": args.max_batch_delay_ms,
        "workers": args.workers,
        "head_precision": precision,
        "torch_threads": args.recserve_torch_threads,
    }
    argv = [sys.executable, "-m", "recserve.cli", "serve", "--model-repo", str(args.model_repo)]
    argv += ["--host", "127.0.0.1", "--grace", "0", "--poll-seconds", "0"]
    argv += ["--max-batch-size", str(args.max_batch_size)]
    argv += ["--max-batch-delay-ms", str(args.max_batch_delay_ms)]
    argv += ["--workers", str(args.workers), "--head-precision", precision]
    argv += ["--torch-threads", str(args.recserve_torch_threads)]
    argv += ["--max-candidates", str(max(10_000, args.candidates))]
    return ServerConfig(f"recserve {precision}", "recserve", argv, settings)


def baseline_config(args: argparse.Namespace, torch_threads: int) -> ServerConfig:
    argv = [sys.executable, str(HERE / "baseline_server.py"), "--model-repo", str(args.model_repo)]
    argv += ["--host", "127.0.0.1", "--workers", str(args.workers)]
    argv += ["--torch-threads", str(torch_threads)]
    argv += ["--max-candidates", str(max(10_000, args.candidates))]
    threads = "default" if torch_threads == 0 else torch_threads
    return ServerConfig(
        "baseline",
        "baseline",
        argv,
        {"workers": args.workers, "torch_threads": threads},
    )


def wait_ready(started: Started, deadline: float) -> None:
    """Until GetModelInfo answers (recserve: once its models are loaded and warmed up)."""
    with grpc.insecure_channel(started.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        while True:
            if started.process.poll() is not None:
                tail = started.log.read_text()[-3000:]
                raise RuntimeError(
                    f"the server exited with status {started.process.returncode}:\n{tail}"
                )
            try:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the server at {started.target} did not answer in {READY_SECONDS:g} s; "
                        f"its log: {started.log}"
                    ) from None
                time.sleep(0.2)


@contextlib.contextmanager
def running(config: ServerConfig, logs: Path) -> Iterator[Started]:
    port = free_port()
    argv = [*config.argv, "--port", str(port)]
    metrics_port = None
    if config.kind == "recserve":
        metrics_port = free_port()
        argv += ["--metrics-port", str(metrics_port)]
    log = logs / f"{config.label.replace(' ', '-')}-{port}.log"
    with log.open("w") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    started = Started(process, f"127.0.0.1:{port}", metrics_port, log)
    try:
        wait_ready(started, time.monotonic() + READY_SECONDS)
        yield started
    finally:
        process.terminate()
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- what the servers answer -----------------------------------------------------------


def sample_requests(space: IdSpace, args: argparse.Namespace) -> list[pb.RankRequest]:
    builder = RequestBuilder(space, candidates=args.candidates, k=args.k, seed=args.seed + 99)
    return [builder.rank(f"sample-{i}") for i in range(args.samples)]


def answer_samples(target: str, requests: list[pb.RankRequest]) -> list[dict[str, Any]]:
    """Each sample's top-k ids and scores, and recserve's server-side timing (ms)."""
    answers = []
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        for request in requests:
            response, call = stub.Rank.with_call(request, timeout=30)
            timing = {}
            for key, value in call.trailing_metadata() or ():
                if key == "recserve-timing-ms":
                    timing = {
                        k: float(v) for k, v in (part.split("=") for part in value.split(","))
                    }
            answers.append(
                {
                    "ids": [item.item_id for item in response.items],
                    "scores": [item.score for item in response.items],
                    "timing_ms": timing,
                }
            )
    return answers


def compare_answers(ours: list[dict], base: list[dict]) -> dict[str, Any]:
    """Same top-k ids, in the same order? Where not, are the differing items near-ties?"""
    same = near_ties = 0
    max_rel = 0.0
    detail = []
    for a, b in zip(ours, base, strict=True):
        sa, sb = np.asarray(a["scores"], np.float64), np.asarray(b["scores"], np.float64)
        if sa.size == sb.size and sa.size:
            max_rel = max(max_rel, float(np.max(np.abs(sa - sb) / np.maximum(np.abs(sb), 1e-30))))
        if a["ids"] == b["ids"]:
            same += 1
            detail.append("same")
            continue
        # Different ids: a near-tie when the scores at every rank agree within NEAR_TIE
        # and the id sets differ only in the items whose scores tie with a neighbour.
        close = sa.size == sb.size and bool(
            np.all(np.abs(sa - sb) <= NEAR_TIE * np.maximum(np.abs(sb), 1e-30))
        )
        near_ties += close
        detail.append("near-tie" if close else "different")
    n = len(ours)
    return {
        "samples": n,
        "same_ids": same,
        "near_ties": near_ties,
        "different": n - same - near_ties,
        "passed": same + near_ties == n,
        "max_rel_score_diff": max_rel,
        "detail": detail,
    }


# -- load and metrics ------------------------------------------------------------------


_METRIC = re.compile(r"^(recserve_\w+?)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN)$")


def scrape(port: int | None) -> dict[tuple[str, str], float]:
    if port is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match:
            name, labels, value = match.groups()
            values[(name, labels or "")] = float(value)
    return values


def stage_breakdown(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per Rank request in each stage, the whole server-side time, the batch size."""

    def delta(name: str, labels: str) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    requests = delta("recserve_request_seconds_count", 'rpc="Rank"')
    if requests <= 0:
        return {}
    out = {
        stage: round(1000 * delta("recserve_stage_seconds_sum", f'stage="{stage}"') / requests, 4)
        for stage in STAGES
    }
    out["server_total"] = round(
        1000 * delta("recserve_request_seconds_sum", 'rpc="Rank"') / requests, 4
    )
    batches = sum(
        delta("recserve_batch_size_count", labels)
        for (name, labels) in after
        if name == "recserve_batch_size_count"
    )
    batched = sum(
        delta("recserve_batch_size_sum", labels)
        for (name, labels) in after
        if name == "recserve_batch_size_sum"
    )
    out["mean_batch_size"] = round(batched / batches, 2) if batches else 0.0
    return out


def load_point(started: Started, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop measurement: throughput, latency percentiles, errors, stages, and
    the CPU time the server and everything else (the generator) spent per answer."""
    target, metrics_port = started.target, started.metrics_port
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out_json = f.name
    options = BenchOptions(
        target=target,
        rpc="rank",
        concurrency=concurrency,
        processes=args.processes,
        duration=args.duration,
        warmup=args.warmup,
        candidates=args.candidates,
        k=args.k,
        seed=args.seed,
        json=out_json,
        progress=False,
        timeout=30.0,
    )
    before = scrape(metrics_port)
    server_cpu, (busy, total) = process_cpu_seconds(started.process.pid), machine_cpu_seconds()
    out, err = io.StringIO(), io.StringIO()
    status = run(options, out=out, err=err)
    server_cpu = process_cpu_seconds(started.process.pid) - server_cpu
    busy_after, total_after = machine_cpu_seconds()
    busy, total = busy_after - busy, total_after - total
    after = scrape(metrics_port)
    try:
        report = json.loads(Path(out_json).read_text()) if status in (0, 1) else None
    except (OSError, ValueError):
        report = None
    finally:
        Path(out_json).unlink(missing_ok=True)
    if report is None or report["requests"]["completed"] == 0:
        raise RuntimeError(f"the load run against {target} failed:\n{err.getvalue()}")
    # Every request of the run, warm-up included: the CPU times cover all of it.
    handled = max(report["warmup_requests"] + report["requests"]["sent"], 1)
    cores = os.cpu_count() or 1
    return {
        "concurrency": concurrency,
        "throughput_rps": report["throughput_rps"],
        "latency_ms": report["latency_ms"],
        "requests": report["requests"],
        "errors_by_code": report["errors_by_code"],
        "processes": report["processes"],
        "generator_late_sends": report["generator"]["late_sends"],
        "stages_ms": stage_breakdown(before, after),
        "cpu": {
            "server_ms_per_answer": round(1000 * server_cpu / handled, 4),
            "other_ms_per_answer": round(1000 * (busy - server_cpu) / handled, 4),
            "machine_busy_share": round(busy / total, 3) if total > 0 else None,
            "cores": cores,
        },
        "load_average": round(load_average(), 2),
    }


def measure(
    config: ServerConfig,
    concurrencies: list[int],
    args: argparse.Namespace,
    logs: Path,
    samples: list[pb.RankRequest] | None = None,
) -> dict[str, Any]:
    """Starts the server, answers the samples, runs every concurrency, stops it."""
    print(f"  {config.label}: starting ...", file=sys.stderr, flush=True)
    with running(config, logs) as started:
        answers = answer_samples(started.target, samples) if samples else None
        points = []
        for c in concurrencies:
            point = load_point(started, c, args)
            points.append(point)
            print(
                f"  {config.label:14s} concurrency {c:3d}: {point['throughput_rps']:8.1f} "
                f"answers/s, p99 {point['latency_ms']['p99']:8.2f} ms, "
                f"errors {point['requests']['errors']}",
                file=sys.stderr,
                flush=True,
            )
    return {
        "label": config.label,
        "settings": config.settings,
        "points": points,
        "answers": answers,
    }


# -- the report ------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def summarize(runs: list[dict], labels: list[str], concurrencies: list[int]) -> dict:
    """Per label and concurrency: the mean over rounds and each round's figures."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for label in labels:
        out[label] = {}
        for c in concurrencies:
            points = [
                p for r in runs if r["label"] == label for p in r["points"] if p["concurrency"] == c
            ]
            out[label][c] = {
                "throughput_rps": _mean([p["throughput_rps"] for p in points]),
                "p99_ms": _mean([p["latency_ms"]["p99"] for p in points]),
                "p50_ms": _mean([p["latency_ms"]["p50"] for p in points]),
                "rounds_throughput_rps": [p["throughput_rps"] for p in points],
                "rounds_p99_ms": [p["latency_ms"]["p99"] for p in points],
                "errors": sum(p["requests"]["errors"] for p in points),
                "stages_ms": [p["stages_ms"] for p in points],
                "server_cpu_ms": _mean([p["cpu"]["server_ms_per_answer"] for p in points]),
                "other_cpu_ms": _mean([p["cpu"]["other_ms_per_answer"] for p in points]),
                "machine_busy": _mean([p["cpu"]["machine_busy_share"] or 0.0 for p in points]),
            }
    return out


def format_table(summary: dict, ours: str, concurrencies: list[int]) -> str:
    base = summary["baseline"]
    head = (
        f"{'concurrency':>11}  {ours + ' ans/s':>20}  {'baseline ans/s':>14}  {'thr x':>6}  "
        f"{ours + ' p99 ms':>21}  {'baseline p99 ms':>15}  {'p99 x':>6}"
    )
    lines = [head, "-" * len(head)]
    for c in concurrencies:
        a, b = summary[ours][c], base[c]
        lines.append(
            f"{c:>11}  {a['throughput_rps']:>20.1f}  {b['throughput_rps']:>14.1f}  "
            f"{a['throughput_rps'] / b['throughput_rps']:>5.2f}x  {a['p99_ms']:>21.2f}  "
            f"{b['p99_ms']:>15.2f}  {b['p99_ms'] / a['p99_ms']:>5.2f}x"
        )
    return "\n".join(lines)


def format_rounds(summary: dict, labels: list[str], concurrencies: list[int]) -> str:
    lines = ["each round (answers/s | p99 ms):"]
    for label in labels:
        for c in concurrencies:
            s = summary[label][c]
            thr = " ".join(f"{v:8.1f}" for v in s["rounds_throughput_rps"])
            p99 = " ".join(f"{v:7.2f}" for v in s["rounds_p99_ms"])
            lines.append(f"  {label:14s} c={c:<3d} {thr} | {p99}")
    return "\n".join(lines)


def format_stages(summary: dict, labels: list[str], concurrencies: list[int]) -> str:
    cols = [*STAGES, "server_total", "mean_batch_size"]
    title = (
        "recserve server-side time per Rank request, ms (recserve_stage_seconds over each "
        "measured point, mean of rounds; a batch's head time counts for each request in it):"
    )
    lines = [title, f"  {'server':14s} {'c':>3}  " + "  ".join(f"{c:>12}" for c in cols)]
    for label in labels:
        if not label.startswith("recserve"):
            continue
        for c in concurrencies:
            rounds = [s for s in summary[label][c]["stages_ms"] if s]
            if not rounds:
                continue
            values = [_mean([r[col] for r in rounds]) for col in cols]
            lines.append(f"  {label:14s} {c:>3}  " + "  ".join(f"{v:>12.3f}" for v in values))
    return "\n".join(lines)


def format_cpu(summary: dict, labels: list[str], concurrencies: list[int]) -> str:
    """CPU time per answer: the server process, and the rest of the machine (the load
    generator's processes, the bench, the kernel), mean of rounds."""
    base = summary["baseline"]
    title = (
        "CPU ms per answer (mean of rounds): the server process, and everything else on the "
        "machine (mostly the load generator); busy = share of all cores in use"
    )
    header = (
        f"  {'server':14s} {'c':>3}  {'server CPU':>10}  {'baseline':>8}  {'base/ours':>9}  "
        f"{'other CPU':>9}  {'baseline':>8}  {'busy':>5}  {'baseline':>8}"
    )
    lines = [title, header]
    for label in labels:
        if label == "baseline":
            continue
        for c in concurrencies:
            a, b = summary[label][c], base[c]
            lines.append(
                f"  {label:14s} {c:>3}  {a['server_cpu_ms']:>10.3f}  {b['server_cpu_ms']:>8.3f}  "
                f"{b['server_cpu_ms'] / a['server_cpu_ms']:>8.2f}x  {a['other_cpu_ms']:>9.3f}  "
                f"{b['other_cpu_ms']:>8.3f}  {a['machine_busy']:>5.0%}  {b['machine_busy']:>8.0%}"
            )
    return "\n".join(lines)


def parse_list(text: str, kind: type) -> list:
    return [kind(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--concurrency", default="1,8,32", help="closed-loop points (1,8,32)")
    parser.add_argument("--candidates", type=int, default=1000, help="ids per Rank (1000)")
    parser.add_argument("-k", "--k", type=int, default=10, help="items asked for (10)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds left out first (2)")
    parser.add_argument("--processes", type=int, default=2, help="generator processes (2)")
    parser.add_argument("--rounds", type=int, default=1, help="times each server is measured")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--samples", type=int, default=5, help="requests compared for top-k ids")
    parser.add_argument(
        "--head-precision", default="fp32", help="recserve head precisions, e.g. fp32,bf16"
    )
    parser.add_argument("--max-batch-size", type=int, default=32, help="recserve's (32)")
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0, help="recserve's (2)")
    parser.add_argument("--workers", type=int, default=64, help="handler threads of both (64)")
    parser.add_argument("--recserve-torch-threads", type=int, default=1, help="recserve's (1)")
    parser.add_argument(
        "--baseline-torch-threads",
        default="auto",
        help="auto: measure 1 against torch's default at the largest concurrency, keep the "
        "faster; or 1, 2, ... (0: torch's default)",
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    args = parser.parse_args(argv)
    concurrencies = parse_list(args.concurrency, int)
    precisions = parse_list(args.head_precision, str)
    if not concurrencies or not precisions or args.rounds < 1:
        parser.error("--concurrency, --head-precision and --rounds need a value each")
    if not list(args.model_repo.glob("*/[0-9]*/manifest.json")):
        print(
            f"error: no model in {args.model_repo}. Make the default DeepFM with "
            "`bash scripts/start.sh` (trains it, then serves: stop it with Ctrl-C) or "
            "`recserve train --model deepfm --data ml-100k --model-repo "
            f"{args.model_repo}`",
            file=sys.stderr,
        )
        return 2

    info = machine()
    started_at = datetime.now(timezone.utc)
    command = "python bench/serving.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(
        f"{command}\n{started_at:%Y-%m-%d %H:%M} UTC, load average {load_average():.2f}",
        file=sys.stderr,
    )
    result: dict[str, Any] = {
        "command": command.strip(),
        "date": started_at.isoformat(timespec="seconds"),
        "machine": info,
        "load_average_before": round(load_average(), 2),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        logs = Path(tmp)
        try:
            result.update(run_all(args, concurrencies, precisions, logs))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    result["load_average_after"] = round(load_average(), 2)
    labels = [f"recserve {p}" for p in precisions] + ["baseline"]
    summary = summarize(result["runs"], labels, concurrencies)
    result["summary"] = {label: {str(c): v for c, v in s.items()} for label, s in summary.items()}

    base = result["baseline_settings"]
    ours = result["recserve_settings"]
    machine_line = (
        f"machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, grpcio "
        f"{info['grpcio']}; load average {result['load_average_before']} before, "
        f"{result['load_average_after']} after"
    )
    load_line = (
        f"load: closed loop, Rank, {args.candidates} candidates, k={args.k}, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s per point, {args.processes} "
        "generator processes (recserve.loadtest) on the same machine; servers one at a "
        f"time; {args.rounds} round(s), order {' '.join(result['order'])}"
    )
    recserve_line = (
        f"recserve: recserve serve --max-batch-size {ours['max_batch_size']} "
        f"--max-batch-delay-ms {ours['max_batch_delay_ms']:g} --workers {ours['workers']} "
        f"--torch-threads {ours['torch_threads']} --head-precision {'/'.join(precisions)}"
    )
    baseline_line = (
        f"baseline: bench/baseline_server.py, {base['workers']} handler threads, "
        f"torch.inference_mode, intra-op threads {base['torch_threads']} "
        f"({result['baseline_choice']})"
    )
    lines = ["", machine_line, load_line, recserve_line, baseline_line]
    for precision in precisions:
        check = result["topk_check"][precision]
        lines.append(
            f"same top-{args.k} ids, recserve {precision} vs baseline, {check['samples']} sample "
            f"requests: {check['same_ids']} identical, {check['near_ties']} differ on near-ties "
            f"only, {check['different']} different (largest relative score difference "
            f"{check['max_rel_score_diff']:.2e})"
        )
    for precision in precisions:
        label = f"recserve {precision}"
        lines += [
            "",
            f"{label} against the baseline (mean of rounds; x: above 1 recserve is better)",
        ]
        lines.append(format_table(summary, label, concurrencies))
    lines += ["", format_rounds(summary, labels, concurrencies)]
    lines += ["", format_stages(summary, labels, concurrencies)]
    lines += ["", format_cpu(summary, labels, concurrencies)]
    errors = {label: sum(summary[label][c]["errors"] for c in concurrencies) for label in labels}
    lines.append(f"\nerrors: {errors}")
    print("\n".join(lines), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_all(
    args: argparse.Namespace, concurrencies: list[int], precisions: list[str], logs: Path
) -> dict[str, Any]:
    top = max(concurrencies)
    out: dict[str, Any] = {}
    # The baseline's intra-op threads: 1 against torch's default (one per core).
    calibration = {}
    if args.baseline_torch_threads == "auto":
        print(f"baseline intra-op threads: 1 vs default at concurrency {top}", file=sys.stderr)
        for threads in (1, 0):
            r = measure(baseline_config(args, threads), [top], args, logs)
            calibration["1" if threads == 1 else "default"] = r["points"][0]
        one, default = calibration["1"], calibration["default"]
        threads = 1 if one["throughput_rps"] >= default["throughput_rps"] else 0
        out["baseline_choice"] = (
            f"chosen: at concurrency {top} 1 thread gave {one['throughput_rps']:.1f} answers/s "
            f"(p99 {one['latency_ms']['p99']:.2f} ms), torch's default "
            f"{default['throughput_rps']:.1f} (p99 {default['latency_ms']['p99']:.2f} ms)"
        )
    else:
        threads = int(args.baseline_torch_threads)
        out["baseline_choice"] = "set by --baseline-torch-threads"
    out["baseline_calibration"] = calibration
    baseline = baseline_config(args, threads)
    recservers = [recserve_config(args, p) for p in precisions]
    out["baseline_settings"] = baseline.settings
    out["recserve_settings"] = {
        k: v for k, v in recservers[0].settings.items() if k != "head_precision"
    }

    # Sample requests for the top-k check, drawn from the model's id space.
    with running(baseline, logs) as started:
        space = fetch_id_space(started.target, "", 30, 64 << 20)
    samples = sample_requests(space, args)

    order: list[ServerConfig] = []
    for r in range(args.rounds):
        one_round = [*recservers, baseline]
        order += one_round if r % 2 == 0 else one_round[::-1]
    out["order"] = [c.label.replace(" ", "-") for c in order]
    runs = []
    answers: dict[str, list] = {}
    for index, config in enumerate(order):
        print(f"[{index + 1}/{len(order)}] {config.label}", file=sys.stderr, flush=True)
        first = config.label not in answers
        r = measure(config, concurrencies, args, logs, samples if first else None)
        if first:
            answers[config.label] = r["answers"]
        runs.append(r)
    out["runs"] = runs
    out["sample_answers"] = answers
    out["topk_check"] = {
        p: compare_answers(answers[f"recserve {p}"], answers["baseline"]) for p in precisions
    }
    return out


if __name__ == "__main__":
    sys.exit(main())
