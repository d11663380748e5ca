"""The options of `recserve bench`: one dataclass, its command-line flags, and their checks."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from recserve.client import DEFAULT_TARGET, MAX_MESSAGE_BYTES, channel_target

RPCS = ("rank", "recommend", "stream")
ARRIVALS = ("constant", "poisson")


@dataclass(frozen=True)
class BenchOptions:
    """One load test. ``rate`` set: open loop at that many requests/s; else closed loop
    with ``concurrency`` requests in flight. Times are in seconds."""

    target: str = DEFAULT_TARGET
    rpc: str = "rank"
    model: str = ""
    concurrency: int = 8
    rate: float | None = None
    arrival: str = "constant"
    streams: int = 4  # open loop with rpc "stream": RankStream calls the requests share
    processes: int = 2
    duration: float = 10.0
    requests: int | None = None
    warmup: float = 1.0
    candidates: int = 100
    history: int = 10
    k: int = 10
    zipf: float = 1.1
    seed: int | None = None
    json: str | None = None
    plot: str | None = None
    slo: str | None = None
    timeout: float = 10.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    decode: bool = False  # parse every unary answer (RankStream's always are)
    progress: bool | None = None  # None: when stderr is a terminal

    @property
    def mode(self) -> str:
        return "closed" if self.rate is None else "open"

    def check(self) -> None:
        """Raises ValueError naming the flag when an option is out of range."""
        try:
            channel_target(self.target)
        except ValueError as exc:
            raise ValueError(f"--target: {exc}") from None
        if self.rpc not in RPCS:
            raise ValueError(f"--rpc must be one of {', '.join(RPCS)}; got {self.rpc!r}")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"--arrival must be one of {', '.join(ARRIVALS)}")
        positive = {
            "--concurrency": self.concurrency,
            "--streams": self.streams,
            "--processes": self.processes,
            "--duration": self.duration,
            "--timeout": self.timeout,
            "--max-message-bytes": self.max_message_bytes,
        }
        if self.rate is not None:
            positive["--rate"] = self.rate
        if self.requests is not None:
            positive["--requests"] = self.requests
        if self.rpc != "recommend":
            positive["--candidates"] = self.candidates
        for flag, value in positive.items():
            if not value > 0:
                raise ValueError(f"{flag} must be greater than 0; got {value}")
        for flag, value in {
            "--warmup": self.warmup,
            "--history": self.history,
            "-k": self.k,
        }.items():
            if value < 0:
                raise ValueError(f"{flag} must be 0 or more; got {value}")
        if not self.zipf >= 0:
            raise ValueError(f"--zipf must be 0 (uniform) or more; got {self.zipf}")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `recserve bench`; :func:`options_from` reads them back."""
    d = BenchOptions()
    parser.add_argument(
        "--target",
        default=d.target,
        help="server host:port; or replicas, balanced round robin with health checks and "
        "retries: several ip:port separated by commas, or dns:///NAME:PORT "
        "(docs/deploy.md)",
    )
    parser.add_argument("--rpc", choices=RPCS, default=d.rpc, help="what to call (default: rank)")
    parser.add_argument("--model", default=d.model, help="model name (default: server's default)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        type=int,
        default=d.concurrency,
        help=f"closed loop: requests in flight, each sent when the last returns "
        f"(default: {d.concurrency})",
    )
    load.add_argument(
        "--rate",
        type=float,
        help="open loop: requests per second, sent on schedule whatever the server does; "
        "latency counts from each request's intended send time",
    )
    parser.add_argument(
        "--arrival", choices=ARRIVALS, default=d.arrival, help="open loop: request spacing"
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=d.streams,
        help=f"open loop with --rpc stream: RankStream calls to spread the requests over "
        f"(default: {d.streams})",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=d.processes,
        help=f"generator processes sharing the load (default: {d.processes})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=d.duration,
        help=f"seconds measured, after the warm-up (default: {d.duration:g})",
    )
    parser.add_argument("--requests", type=int, help="stop after this many measured requests")
    parser.add_argument(
        "--warmup",
        type=float,
        default=d.warmup,
        help=f"seconds sent first and left out of the figures (default: {d.warmup:g})",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=d.candidates,
        help=f"candidate items per rank request (default: {d.candidates})",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=d.history,
        help=f"recent items per recommend request (default: {d.history})",
    )
    parser.add_argument(
        "-k", "--k", type=int, default=d.k, help=f"items asked for (default: {d.k})"
    )
    parser.add_argument(
        "--zipf",
        type=float,
        default=d.zipf,
        help=f"popularity skew of users and items, P(rank r) ~ r^-s; 0 = uniform "
        f"(default: {d.zipf})",
    )
    parser.add_argument("--seed", type=int, help="random seed of traffic and arrivals")
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw the latency distribution and latency over time"
    )
    parser.add_argument(
        "--slo",
        metavar="TARGETS",
        help="fail (exit 1) when missed, e.g. p99=20ms,p50=5ms or p99.9=0.1s (also max, mean)",
    )
    parser.add_argument(
        "--timeout", type=float, default=d.timeout, help="deadline of each request in seconds"
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=d.max_message_bytes,
        help="largest message sent or received (the id list of a large catalog may need more)",
    )
    parser.add_argument(
        "--decode",
        action="store_true",
        help="parse every answer, as a real client would; by default Rank and Recommend "
        "answers are timed but not parsed, to keep the generator's CPU for the server "
        "(RankStream answers are always parsed, to match them to their requests)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a live progress line on stderr (default: when stderr is a terminal)",
    )


def options_from(args: argparse.Namespace) -> BenchOptions:
    """The options of parsed flags, checked (ValueError names the flag)."""
    options = BenchOptions(
        **{name: getattr(args, name) for name in BenchOptions.__dataclass_fields__}
    )
    options.check()
    return options
