"""`recserve bench` against real servers: the report's figures, open-loop queueing, SLOs,
the plot, and the shape of the traffic."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from recserve.cli import build_parser
from recserve.loadtest import BenchOptions, run
from recserve.loadtest.report import parse_slo
from recserve.loadtest.run import plan_workers
from recserve.loadtest.traffic import IdSpace, RequestBuilder, ZipfSampler, fetch_id_space
from recserve.server.app import RunningServer, ServeOptions, build_server

SERVICE_SECONDS = 0.05  # the slowed server's time per request: capacity 20 requests/s
PERCENTILE_ORDER = ("p50", "p90", "p99", "p99.9", "max")


def target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


def check_report(report: dict, rpc: str, mode: str) -> None:
    """Every field the JSON promises, with values that make sense."""
    assert report["rpc"] == rpc and report["mode"] == mode
    assert report["options"]["rpc"] == rpc
    assert report["duration_s"] > 0
    requests = report["requests"]
    assert set(requests) == {"sent", "completed", "errors"}
    assert requests["completed"] > 0
    assert requests["sent"] == requests["completed"] + requests["errors"]
    assert report["throughput_rps"] == pytest.approx(
        requests["completed"] / report["duration_s"], rel=1e-3
    )
    latency = report["latency_ms"]
    assert set(latency) == {*PERCENTILE_ORDER, "mean"}
    ordered = [latency[name] for name in PERCENTILE_ORDER]
    assert ordered == sorted(ordered) and ordered[0] > 0
    assert latency["mean"] <= latency["max"]
    assert isinstance(report["errors_by_code"], dict)
    assert report["warmup_requests"] > 0  # sent, and left out of the figures
    series = report["series"]
    assert series and series[0]["time_s"] == 0.0
    assert sum(s["count"] for s in series) == requests["completed"]
    assert all({"time_s", "count", "p99_ms"} <= set(s) for s in series)
    generator = report["generator"]
    assert set(generator) == {
        "late_sends", "max_send_lag_ms", "cpu_seconds", "cpu_ms_per_answer", "cpu_cores",
        "decoded_answers",
    }  # fmt: skip
    # Its own CPU time, over the measured window; answers parsed only where they must be.
    assert generator["cpu_seconds"] > 0 and generator["cpu_ms_per_answer"] > 0
    assert generator["cpu_ms_per_answer"] == pytest.approx(
        1000 * generator["cpu_seconds"] / requests["completed"], rel=1e-2
    )
    assert (generator["decoded_answers"] >= requests["completed"]) == (rpc == "stream")


def bench(server: RunningServer, *extra: str) -> list[str]:
    return ["bench", "--target", target(server), "--warmup", "0.5", "--seed", "1", *extra]


@pytest.mark.parametrize("rpc", ["rank", "recommend", "stream"])
def test_closed_loop_report(live_server, run_recserve, tmp_path: Path, rpc: str) -> None:
    out = tmp_path / "bench.json"
    done = run_recserve(
        *bench(live_server, "--rpc", rpc, "--concurrency", "4", "--processes", "2"),
        "--duration", "2", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    check_report(report, rpc, "closed")
    assert report["requests"]["errors"] == 0, report["errors_by_code"]
    assert report["processes"] == 2
    assert report["model"] == {"name": "deepfm", "version": 1}
    assert "throughput" in done.stdout and "p99.9" in done.stdout
    assert "generator  CPU" in done.stdout and "cores (2 processes" in done.stdout
    # stderr is not a terminal: one line saying what runs, no progress line.
    assert done.stderr.startswith(f"bench: {rpc} at") and done.stderr.count("\n") == 1


def test_open_loop_stream_matches_answers_by_request_id(live_server, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    options = BenchOptions(
        target=target(live_server), rpc="stream", rate=60, arrival="poisson", streams=3,
        duration=1.5, warmup=0.3, seed=2, json=str(out), progress=True,
    )  # fmt: skip
    err = io.StringIO()
    assert run(options, out=io.StringIO(), err=err) == 0, err.getvalue()
    report = json.loads(out.read_text())
    check_report(report, "stream", "open")
    assert report["requests"]["errors"] == 0, report["errors_by_code"]
    # Poisson arrivals at 60/s for 1.5 s: about 90 requests, give or take a few sigma.
    assert 50 <= report["requests"]["sent"] <= 140
    assert "\r" in err.getvalue()  # --progress rewrites one line


@dataclass
class SlowServer:
    target: str
    served: list[float]  # when each Rank started being served


@pytest.fixture
def slow_server(model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowServer]:
    """One handler thread, no batching, 50 ms per Rank: at most 20 answers/s; no limit on
    how long a request may queue (max_queue_ms=0), so the queue grows instead of refusing."""
    options = ServeOptions(
        model_repo=model_repo, port=0, metrics_port=-1, workers=1, max_batch_size=1,
        max_queue_ms=0,
    )  # fmt: skip
    running = build_server(options)
    running.repository.load_all()
    pipeline = running.repository.get().pipeline
    rank = pipeline.rank
    server = SlowServer(target(running), [])

    def slow_rank(*args, **kwargs):
        server.served.append(time.monotonic())
        time.sleep(SERVICE_SECONDS)
        return rank(*args, **kwargs)

    monkeypatch.setattr(pipeline, "rank", slow_rank)
    running.set_serving(True)
    yield server
    running.stop(0)


def test_open_loop_counts_queueing_of_a_slow_server(slow_server: SlowServer, tmp_path) -> None:
    closed_json, open_json = tmp_path / "closed.json", tmp_path / "open.json"
    common = dict(target=slow_server.target, rpc="rank", warmup=0.5, seed=3, timeout=20)
    # Closed loop, one request at a time: every request finds the server idle.
    closed = BenchOptions(**common, concurrency=1, duration=1.0, json=str(closed_json))
    assert run(closed, out=io.StringIO(), err=io.StringIO()) == 0
    assert len(slow_server.served) > 0  # the slowed pipeline really answered
    closed_report = json.loads(closed_json.read_text())
    assert SERVICE_SECONDS * 1000 <= closed_report["latency_ms"]["p50"] < 150

    # Open loop at twice the capacity: 40 requests/s offered, 20/s served, so the queue
    # grows by 20 requests a second and the request sent at t waits about t seconds.
    opened = BenchOptions(**common, rate=40, duration=2.0, json=str(open_json))
    assert run(opened, out=io.StringIO(), err=io.StringIO()) == 0
    report = json.loads(open_json.read_text())
    check_report(report, "rank", "open")
    assert report["requests"]["errors"] == 0, report["errors_by_code"]
    latency = report["latency_ms"]
    # A coordinated-omission-prone generator, one that holds the next request back until
    # an answer frees a slot (a "rate" over a fixed pool of in-flight requests, like the
    # closed loop above) and times it from when it actually went out, would have
    # reported p50 = p99 = about 50 ms, the service time alone, while users arriving at
    # 40/s wait seconds. Timed from the intended send times, the queueing shows: the
    # requests due late in the run waited behind about 2.5 s x 20/s = 50 others.
    assert latency["p99"] > 300
    assert latency["p99"] > 10 * closed_report["latency_ms"]["p50"]
    assert latency["p50"] > 3 * SERVICE_SECONDS * 1000
    # Latency grows over the run, second by second, as the queue does.
    p99s = [s["p99_ms"] for s in report["series"]]
    assert p99s == sorted(p99s)
    # The server's capacity, not the offered rate, is what it answered.
    assert report["throughput_rps"] < 25
    assert report["requests"]["sent"] == pytest.approx(80, abs=2)


def test_missed_slo_fails_and_says_which(live_server, run_recserve) -> None:
    done = run_recserve(
        *bench(live_server, "--duration", "1", "--concurrency", "2", "--processes", "1"),
        "--slo", "p50=10s,p99=0.001ms",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "SLO missed: p99 <= 0.001 ms" in done.stderr
    assert "p50" not in done.stderr.split("SLO missed", 1)[1]  # the met target is not named
    assert "SLO p50 <= 10000 ms: met" in done.stdout


def test_malformed_slo_is_a_usage_error(run_recserve, free_port: int) -> None:
    # Checked before anything is sent: nobody listens at the target.
    done = run_recserve("bench", "--target", f"127.0.0.1:{free_port}", "--slo", "p99=fast")
    assert done.returncode == 2, done.stderr
    assert "--slo: cannot read 'p99=fast'" in done.stderr


@pytest.mark.parametrize("slo", ["p99", "p99=20", "p99=20ms;p50=1ms", "p101=1s", "fast=1ms", ""])
def test_malformed_slo_targets(slo: str, free_port: int, capsys) -> None:
    args = build_parser().parse_args(["bench", "--target", f"127.0.0.1:{free_port}", "--slo", slo])
    assert args.handler(args) == 2
    assert "--slo" in capsys.readouterr().err


def test_parse_slo() -> None:
    objectives = parse_slo("p99=20ms,p50=5ms, p99.9=0.1s,max=250us,errors=0.5%")
    assert [(o.name, o.limit) for o in objectives] == [
        ("p99", pytest.approx(0.020)),
        ("p50", pytest.approx(0.005)),
        ("p99.9", pytest.approx(0.1)),
        ("max", pytest.approx(250e-6)),
        ("errors", 0.5),
    ]


def test_bad_options_exit_2(run_recserve, free_port: int) -> None:
    address = f"127.0.0.1:{free_port}"
    assert run_recserve("bench", "--target", address, "--rate", "0").returncode == 2
    both = run_recserve("bench", "--target", address, "--rate", "5", "--concurrency", "2")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_unreachable_target_says_what_to_do(free_port: int) -> None:
    err = io.StringIO()
    options = BenchOptions(target=f"127.0.0.1:{free_port}", timeout=0.5)
    assert run(options, out=io.StringIO(), err=err) == 1
    assert "is `recserve serve` running" in err.getvalue()


def test_errors_are_counted_by_code_with_an_example(live_server, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    options = BenchOptions(
        target=target(live_server), rpc="stream", k=5000, concurrency=2, processes=1,
        duration=0.5, warmup=0.1, json=str(out),
    )  # fmt: skip
    text, err = io.StringIO(), io.StringIO()
    assert run(options, out=text, err=err) == 1  # nothing answered: the run failed
    assert "no request got an answer" in err.getvalue()
    report = json.loads(out.read_text())
    sent = report["requests"]["sent"]
    assert sent > 0 and report["requests"]["completed"] == 0
    assert report["errors_by_code"] == {"INVALID_ARGUMENT": sent}
    assert "k must be between 0 and 1000" in report["error_examples"]["INVALID_ARGUMENT"]
    assert f"INVALID_ARGUMENT {sent} (after p50 " in text.getvalue()
    assert "k must be" in text.getvalue()
    took = report["error_latency_ms"]["INVALID_ARGUMENT"]
    assert 0 < took["p50"] <= took["p99"] < 10_000  # how fast the refusals came back
    assert report["latency_ms"]["p99"] is None


def test_request_count_ends_the_run_first(live_server, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    options = BenchOptions(
        target=target(live_server), concurrency=2, duration=60, warmup=0.2, requests=25,
        json=str(out),
    )  # fmt: skip
    started = time.monotonic()
    assert run(options, out=io.StringIO(), err=io.StringIO()) == 0
    assert time.monotonic() - started < 30
    report = json.loads(out.read_text())
    assert report["requests"]["sent"] == report["requests"]["completed"] == 25
    assert report["duration_s"] < 30


def test_plot_writes_a_png(live_server, tmp_path: Path) -> None:
    path = tmp_path / "latency.png"
    options = BenchOptions(
        target=target(live_server), concurrency=2, processes=1, duration=1.0, warmup=0.2,
        plot=str(path),
    )  # fmt: skip
    assert run(options, out=io.StringIO(), err=io.StringIO()) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- traffic ---------------------------------------------------------------------------


def test_zipf_draws_are_skewed_and_from_the_id_space() -> None:
    ids = np.arange(1000, dtype=np.int64) * 7 + 3  # external ids need not be 0..n-1
    sampler = ZipfSampler(ids, 1.1, np.random.default_rng(0))
    drawn = sampler.draw(100_000)
    assert np.isin(drawn, ids).all()
    counts = np.sort(np.unique(drawn, return_counts=True)[1])[::-1]
    # Zipf 1.1 over 1000 ids: rank 1 is drawn 500^1.1 (~900) times as often as rank 500.
    median = np.median(np.concatenate([counts, np.zeros(ids.size - counts.size)]))
    assert counts[0] > 100 * max(median, 1)
    uniform = ZipfSampler(ids, 0.0, np.random.default_rng(0)).draw(100_000)
    assert np.unique(uniform, return_counts=True)[1].max() < 3 * 100  # flat: ~100 each


@pytest.mark.parametrize("n", [1, 10, 140, 150, 400])
def test_distinct_draws_have_no_duplicates(n: int) -> None:
    ids = np.arange(150, dtype=np.int64) + 1
    sampler = ZipfSampler(ids, 1.1, np.random.default_rng(n))
    for _ in range(20):
        drawn = sampler.draw_distinct(n)
        assert drawn.size == min(n, ids.size)
        assert np.unique(drawn).size == drawn.size
        assert np.isin(drawn, ids).all()


def test_processes_agree_on_popular_ids() -> None:
    ids = np.arange(500, dtype=np.int64)
    tops = []
    for seed in (1, 2):
        drawn = ZipfSampler(ids, 1.1, np.random.default_rng(seed), layout_seed=9).draw(20_000)
        values, counts = np.unique(drawn, return_counts=True)
        tops.append(values[np.argmax(counts)])
    assert tops[0] == tops[1]


def test_requests_come_from_the_models_id_space(live_server) -> None:
    space = fetch_id_space(target(live_server))
    pipeline = live_server.repository.get().pipeline
    assert np.array_equal(space.item_ids, np.sort(pipeline.item_ids))
    assert np.array_equal(space.user_ids, np.sort(pipeline.user_ids))
    builder = RequestBuilder(space, candidates=100, history=10, k=5, seed=0)
    for n in range(50):
        rank = builder.rank(f"r{n}")
        candidates = list(rank.candidate_item_ids)
        assert len(candidates) == len(set(candidates)) == 100
        assert set(candidates) <= set(space.item_ids.tolist())
        assert rank.user_id in space.user_ids and rank.k == 5 and rank.request_id == f"r{n}"
        recommend = builder.recommend()
        assert len(set(recommend.recent_item_ids)) == 10
        assert set(recommend.recent_item_ids) <= set(space.item_ids.tolist())


def test_load_is_split_between_processes() -> None:
    space = IdSpace("m", 1, np.arange(3), np.arange(3))
    closed = plan_workers(BenchOptions(concurrency=5, processes=2, requests=7), space)
    assert [p.slots for p in closed] == [3, 2] and [p.quota for p in closed] == [4, 3]
    assert len(plan_workers(BenchOptions(concurrency=1, processes=4), space)) == 1
    opened = plan_workers(BenchOptions(rate=100, processes=4), space)
    assert [p.rate for p in opened] == [25] * 4
    # Constant arrivals interleave: together, one request every 10 ms.
    assert [p.phase for p in opened] == pytest.approx([0, 0.01, 0.02, 0.03])
