"""Overload: twice the measured saturation rate for 30 s against `recserve serve` with its
default limits and `--compute-nice 19`, then half of it: the server keeps answering at most of its saturation
rate, admitted requests answer within a bounded p99 in the server, the rest are refused
(RESOURCE_EXHAUSTED, or CANCELLED by gRPC's core when its backlog of calls not yet taken
overflows; never DEADLINE_EXCEEDED), the server recovers at once and its memory stays
bounded (docs/reliability.md)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from reliability_helpers import (
    MIB,
    SATURATION_CONCURRENCY,
    bench,
    process_figures,
    sampling,
    saturation_rate,
    serve_process,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc"),
]

MAX_QUEUE_MS = 500.0  # the server's default --max-queue-ms
OVERLOAD_SECONDS = 30.0
RECOVERY_SECONDS = 5.0
# The generator sends with a 10 s deadline; admitted requests must do far better.
TIMEOUT_SECONDS = 10.0


def server_seconds(metrics_port: int) -> dict[float, float]:
    """Cumulative buckets of the server's Rank latency (handler start to answer)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        float(s.labels["le"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "recserve_request_seconds_bucket" and s.labels.get("rpc") == "Rank"
    }


def test_twice_the_saturation_rate_is_shed_and_the_server_recovers_at_once(
    repo: Path, tmp_path: Path, free_port: int
) -> None:
    """Saturation S: answers per second of a closed loop with 16 Rank requests (100
    candidates) in flight. Then an open loop at 2 S for 30 s.

    Bound on admitted latency in the server (its own histogram, from the handler's start):
    an admitted request starts computing within --max-queue-ms of being taken, then
    takes one batch's compute; the bound allows --max-queue-ms twice over.
    Goodput: with the compute threads at a lower priority the server keeps taking and
    refusing calls as fast as they come, so it spends the cores on admitted requests;
    it must answer at least 60% of S (measured: 69-96% on a 2-core EPYC, S itself varying
    from 568 to 720/s between runs; with the compute at the callers' priority, 6-24%, the
    rest DEADLINE_EXCEEDED or CANCELLED).
    Memory: requests beyond the limits are refused before any work; resident memory must
    level off (its peak over the second half of the overload within 5% of the first
    half's), not climb with the requests sent."""
    target = f"127.0.0.1:{free_port}"
    metrics_port = free_port + 1 if free_port < 65535 else free_port - 1
    # The compute at the lowest priority, the setting for hosts that expect such bursts
    # (docs/serving.md); at the callers' priority this load collapses (6-24% answered).
    flags = ["--metrics-port", str(metrics_port), "--compute-nice", "19"]
    with serve_process(repo, free_port, tmp_path / "serve.log", *flags) as process:
        rate = saturation_rate(target, tmp_path / "saturation.json")
        after_saturation = process_figures(process.pid).resident
        buckets_before = server_seconds(metrics_port)
        with sampling(process.pid) as samples:
            overload = bench(
                target,
                tmp_path / "overload.json",
                "--rate",
                f"{2 * rate:.1f}",
                "--duration",
                str(OVERLOAD_SECONDS),
                "--warmup",
                "1",
                "--timeout",
                str(TIMEOUT_SECONDS),
                "--seed",
                "2",
                timeout=OVERLOAD_SECONDS + 120,
            )
        buckets_after = server_seconds(metrics_port)
        recovery = bench(
            target,
            tmp_path / "recovery.json",
            "--rate",
            f"{0.5 * rate:.1f}",
            "--duration",
            str(RECOVERY_SECONDS),
            "--warmup",
            "0",
            "--timeout",
            str(TIMEOUT_SECONDS),
            "--seed",
            "3",
        )
        alive = process.poll() is None
    bound_ms = 2 * MAX_QUEUE_MS
    sent = overload["requests"]["sent"]
    errors = overload["errors_by_code"]
    shed = errors.get("RESOURCE_EXHAUSTED", 0)
    admitted_p99 = overload["latency_ms"]["p99"]
    edge = min(e for e in buckets_after if e >= bound_ms / 1000)
    handled = buckets_after[float("inf")] - buckets_before[float("inf")]
    within = (buckets_after[edge] - buckets_before[edge]) / handled
    peak = max(figures.resident for _, figures in samples)
    half = samples[-1][0] / 2
    first_half = max(f.resident for t, f in samples if t < half)
    second_half = max(f.resident for t, f in samples if t >= half)
    print(
        f"\nsaturation (closed loop, {SATURATION_CONCURRENCY} in flight): {rate:.0f}/s; "
        f"overload at {2 * rate:.0f}/s for {OVERLOAD_SECONDS:g} s: {sent} sent, "
        f"{overload['requests']['completed']} answered ({overload['throughput_rps']:.0f}/s), "
        f"{shed} RESOURCE_EXHAUSTED ({100 * shed / sent:.1f}%, answered after p50/p99 "
        f"{overload['error_latency_ms'].get('RESOURCE_EXHAUSTED', {})}), other errors "
        f"{ {k: v for k, v in errors.items() if k != 'RESOURCE_EXHAUSTED'} }; admitted p50 "
        f"{overload['latency_ms']['p50']:.1f} ms, p99 {admitted_p99:.1f} ms (bound "
        f"{bound_ms:.1f} ms), max {overload['latency_ms']['max']:.1f} ms; generator late "
        f"sends {overload['generator']['late_sends']}; server-side: {handled:.0f} handled, "
        f"{100 * within:.2f}% within {edge * 1000:g} ms\n"
        f"recovery at {0.5 * rate:.0f}/s: {recovery['requests']['sent']} sent, "
        f"{recovery['requests']['errors']} errors, p99 {recovery['latency_ms']['p99']:.1f} ms, "
        f"first second {recovery['series'][0]}\n"
        f"resident: {after_saturation / MIB:.1f} MiB after saturation, peak "
        f"{peak / MIB:.1f} MiB during overload ({100 * (peak / after_saturation - 1):+.1f}%); "
        f"peak of the first half {first_half / MIB:.1f} MiB, second half "
        f"{second_half / MIB:.1f} MiB"
    )
    assert alive
    # Shed: RESOURCE_EXHAUSTED by the server's limits, or CANCELLED by gRPC's core when
    # more calls wait for the server's one call-taking thread than its backlog holds (at
    # 100 candidates per request, Python's per-call work, not the cores, is the limit:
    # docs/performance.md, "Overload"); no call waited until its deadline.
    assert set(errors) <= {"RESOURCE_EXHAUSTED", "CANCELLED"}, overload["error_examples"]
    assert shed > 0, "2x saturation was not shed: was saturation measured wrong?"
    # Refused by the in-flight bound (grpc's own message) or by --max-queue-ms (ours,
    # naming the flag); the example kept is the first refusal of the run.
    example = overload["error_examples"]["RESOURCE_EXHAUSTED"]
    assert "Concurrent RPC limit exceeded" in example or "--max-queue-ms" in example, example
    assert within >= 0.99  # admitted requests' p99 in the server is within the bound
    assert admitted_p99 < 1000 * TIMEOUT_SECONDS  # every admitted request answered
    assert overload["throughput_rps"] >= 0.6 * rate  # shedding keeps the server working
    assert recovery["requests"]["errors"] == 0, recovery["errors_by_code"]
    assert recovery["series"][0]["errors"] == 0 and recovery["series"][0]["count"] > 0
    assert recovery["latency_ms"]["p99"] < bound_ms
    # Bounded: a plateau, not a climb; what the overload adds is the calls gRPC's core
    # holds for the server (its pending-call backlog) and the admitted ones.
    assert second_half <= 1.05 * first_half
