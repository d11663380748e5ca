"""Resident memory of `recserve serve` with one process against `--processes N`.

Starts `recserve serve --processes 1`, then `--processes N`, on --model-repo (Linux: reads
/proc). Once serving, each gets --requests Recommend and Rank calls over 16 fresh
connections (spread over the processes by SO_REUSEPORT), then every process of the
server's tree is read from /proc/PID/smaps_rollup (RSS, PSS) and /proc/PID/smaps (the
mappings of the model's .npy tables), and the server is stopped.

    python bench/processes_memory.py --model-repo model-repo            # N = 2
    python bench/processes_memory.py --model-repo model-repo --processes 4

Prints, per process, RSS, PSS and the tables' mapped RSS and PSS in MiB; then the bar of
docs/serving.md: the serving processes' summed RSS against one process + N x its fixed
runtime (its RSS less the tables' mapped pages).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

KIB = 1024


def figures(pid: int) -> dict[str, float]:
    """RSS and PSS of the process, and of its mappings of .npy files, in MiB."""
    out = {"rss": 0.0, "pss": 0.0, "tables_rss": 0.0, "tables_pss": 0.0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            out[name.lower()] = int(rest.split()[0]) / KIB
    table = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            table = len(fields) > 5 and fields[5].endswith(".npy")
        elif table and fields[0] in ("Rss:", "Pss:"):
            out["tables_" + fields[0][:-1].lower()] += int(fields[1]) / KIB
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and its children (the serving processes and multiprocessing's tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def measure(model_repo: Path, processes: int, requests: int) -> list[tuple[str, dict]]:
    with tempfile.TemporaryDirectory(prefix="recserve-memory-") as tmp:
        log_path = Path(tmp) / "serve.log"
        command = [sys.executable, "-m", "recserve.cli", "serve", "--model-repo", str(model_repo)]
        command += ["--processes", str(processes), "--port", "0", "--metrics-port", "-1"]
        # No admission limit: the figures are of memory, on a machine others may load.
        command += ["--poll-seconds", "0", "--max-queue-ms", "0"]
        with log_path.open("wb") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            return _measure_running(server, processes, requests, log_path)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)


def _measure_running(
    server: subprocess.Popen[bytes], processes: int, requests: int, log_path: Path
) -> list[tuple[str, dict]]:
    ready = r"serving .* on [^:]+:(\d+)"
    if processes > 1:
        ready = r"serving .* with \d+ processes on [^:]+:(\d+)"
    deadline = time.monotonic() + 300
    while not (found := re.search(ready, log_path.read_text())):
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start:\n{log_path.read_text()}")
        time.sleep(0.2)
    port = int(found.group(1))
    channels = [
        grpc.insecure_channel(f"127.0.0.1:{port}", [("grpc.use_local_subchannel_pool", 1)])
        for _ in range(16)
    ]
    stubs = [pb_grpc.RecommenderStub(c) for c in channels]
    first = stubs[0].Recommend(pb.RecommendRequest(user_id=1, k=100), timeout=30)
    items = [i.item_id for i in first.items]
    for n in range(requests):
        stub = stubs[n % len(stubs)]
        stub.Recommend(pb.RecommendRequest(user_id=1 + n % 50, k=10), timeout=30)
        stub.Rank(pb.RankRequest(user_id=1 + n % 50, candidate_item_ids=items), timeout=30)
    time.sleep(1)
    rows = []
    for pid in tree(server.pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        role = "supervisor" if pid == server.pid and processes > 1 else "serving"
        role = "tracker" if b"resource_tracker" in cmdline else role
        rows.append((f"{role} {pid}", figures(pid)))
    for channel in channels:
        channel.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--requests", type=int, default=400, help="of each RPC, per run")
    args = parser.parse_args()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown",
    )  # fmt: skip
    print(f"CPU: {cpu}; model repository: {args.model_repo}")
    runs = {n: measure(args.model_repo, n, args.requests) for n in (1, args.processes)}
    header = f"{'process':<18}{'RSS':>9}{'PSS':>9}{'tables RSS':>12}{'tables PSS':>12}  (MiB)"
    for n, rows in runs.items():
        print(f"\n--processes {n}\n{header}")
        for name, f in rows:
            print(
                f"{name:<18}{f['rss']:>9.1f}{f['pss']:>9.1f}"
                f"{f['tables_rss']:>12.2f}{f['tables_pss']:>12.2f}"
            )
        total = {k: sum(f[k] for _, f in rows) for k in rows[0][1]}
        print(f"{'all':<18}{total['rss']:>9.1f}{total['pss']:>9.1f}")
    one = runs[1][0][1]
    serving = [f for name, f in runs[args.processes] if name.startswith("serving")]
    runtime = one["rss"] - one["tables_rss"]
    bar = one["rss"] + args.processes * runtime
    summed = sum(f["rss"] for f in serving)
    print(
        f"\nbar: {args.processes} serving processes' RSS {summed:.1f} MiB <= one process "
        f"{one['rss']:.1f} + {args.processes} x its fixed runtime {runtime:.1f} = {bar:.1f} MiB: "
        f"{'met' if summed <= bar else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
