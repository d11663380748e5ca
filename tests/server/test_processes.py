"""`recserve serve --processes 2`, run as a user would (a subprocess): both processes
serve on one port, share the tables' pages, reload together, report through the
supervisor's /metrics, are restarted when one dies, and stop cleanly together."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.serving import publish, reload_rpc, serving_of, wait_for
from prometheus_client.parser import text_string_to_metric_families

from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

pytestmark = [
    pytest.mark.slow,  # each test starts two serving processes: 10-30 s on 2 shared cores
    pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc"),
]

PROCESSES = 2
CHANNELS = 16  # connections over which SO_REUSEPORT spreads: all on one process: 2^-15


@pytest.fixture
def repo(tmp_path: Path, model_repo: Path) -> Path:
    shutil.copytree(model_repo / "deepfm" / "1", tmp_path / "repo" / "deepfm" / "1")
    return tmp_path / "repo"


@dataclass
class Served:
    supervisor: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    metrics_port: int = 0

    def lines(self) -> list[dict[str, Any]]:
        """Every line a JSON log record: no warning or traceback printed by anything."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def messages(self, pid: int | None = None) -> list[str]:
        return [e["message"] for e in self.lines() if e.get("pid") == pid]

    def children(self) -> list[int]:
        """Pids of the serving processes started so far, from the supervisor's log."""
        return [
            int(m.group(1))
            for message in self.messages()
            if (m := re.match(r"serving process \d+ of \d+: pid (\d+)", message))
        ]

    def loaded(self, version: int) -> set[int]:
        """Pids that logged loading deepfm ``version``."""
        return {
            e["pid"]
            for e in self.lines()
            if e.get("action") == "loaded" and e.get("version") == version and "pid" in e
        }

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return samples


@contextmanager
def serve_processes(repo: Path, log_path: Path) -> Iterator[Served]:
    """`recserve serve --processes 2` on port 0, metrics on port 0, JSON logs; yields
    once the supervisor says every process serves. Whatever is left is killed at exit."""
    command = [sys.executable, "-m", "recserve.cli", "serve", "--model-repo", str(repo)]
    command += ["--processes", str(PROCESSES), "--port", "0", "--metrics-port", "0"]
    command += ["--poll-seconds", "0", "--log-format", "json"]
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    served = Served(supervisor, log_path)
    try:
        wait_for(
            lambda: (
                supervisor.poll() is not None or any("processes on" in m for m in served.messages())
            ),
            180,
            "every process to serve",
        )
        assert supervisor.poll() is None, log_path.read_text()
        for message in served.messages():
            if m := re.match(r"serving deepfm v1 with 2 processes on 127\.0\.0\.1:(\d+)", message):
                served.port = int(m.group(1))
            if m := re.match(r"metrics of every process on http://127\.0\.0\.1:(\d+)/", message):
                served.metrics_port = int(m.group(1))
        assert served.port and served.metrics_port, log_path.read_text()
        yield served
    finally:
        for pid in [supervisor.pid, *served.children()]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        supervisor.wait(30)


def alive(pid: int) -> bool:
    """Running, not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections on ``port`` that process ``pid`` holds."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            count += local_port == port and state == "01" and inode in sockets
    return count


@contextmanager
def fresh_channels(port: int, n: int = CHANNELS) -> Iterator[list[grpc.Channel]]:
    """``n`` channels with a connection each (a local subchannel pool: channels of equal
    arguments would otherwise share one), held open while in use."""
    with ExitStack() as stack:
        channels = [
            stack.enter_context(
                grpc.insecure_channel(
                    f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
                )
            )
            for _ in range(n)
        ]
        yield channels


def rank_versions(channels: list[grpc.Channel], items: list[int]) -> list[int]:
    request = pb.RankRequest(user_id=1, candidate_item_ids=items, k=3)
    return [pb_grpc.RecommenderStub(c).Rank(request, timeout=30).model.version for c in channels]


def catalog_items(port: int) -> list[int]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = pb_grpc.RecommenderStub(channel).Recommend(
            pb.RecommendRequest(user_id=1, k=20, include_seen=True), timeout=30
        )
    return [item.item_id for item in answer.items]


def every_process_answers(served: Served, version: int, items: list[int]) -> None:
    """Fresh connections, spread by the kernel, all answered by ``version``; each
    serving process holds some of them."""
    with fresh_channels(served.port) as channels:
        assert rank_versions(channels, items) == [version] * CHANNELS
        children = [pid for pid in served.children() if alive(pid)]
        assert len(children) == PROCESSES
        held = {pid: connections_to(pid, served.port) for pid in children}
        assert all(count > 0 for count in held.values()), held


def npy_mappings(pid: int, version_dir: Path) -> dict[str, Counter[str]]:
    """Per .npy file of ``version_dir`` mapped by ``pid``: its smaps figures in kB."""
    mappings: dict[str, Counter[str]] = {}
    current: Counter[str] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            path = fields[5] if len(fields) > 5 else ""
            inside = path.startswith(str(version_dir)) and path.endswith(".npy")
            current = mappings.setdefault(Path(path).name, Counter()) if inside else None
        elif current is not None and len(fields) == 3 and fields[2] == "kB":
            current[fields[0].rstrip(":")] += int(fields[1])
    return mappings


def metrics_directory(pid: int) -> Path:
    """The PROMETHEUS_MULTIPROC_DIR the supervisor gave serving process ``pid``."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    name = b"PROMETHEUS_MULTIPROC_DIR="
    return Path(next(v for v in environ if v.startswith(name))[len(name) :].decode())


def stop(served: Served) -> None:
    """SIGTERM to the supervisor: exit 0, every process drained and gone, the metrics
    directory removed."""
    children = [pid for pid in served.children() if alive(pid)]
    directory = metrics_directory(children[0])
    assert directory.is_dir()
    served.supervisor.send_signal(signal.SIGTERM)
    assert served.supervisor.wait(60) == 0, served.log_path.read_text()
    assert not any(alive(pid) for pid in served.children())
    for pid in children:
        assert served.messages(pid)[-1] == "stopped"
        assert "SIGTERM received: draining for up to 5s" in served.messages(pid)
    assert not directory.exists()


def test_two_processes_share_the_port_the_tables_and_the_metrics(
    repo: Path, tmp_path: Path
) -> None:
    with serve_processes(repo, tmp_path / "serve.log") as served:
        children = served.children()
        assert len(children) == PROCESSES and served.supervisor.pid not in children
        items = catalog_items(served.port)
        every_process_answers(served, 1, items)

        with fresh_channels(served.port) as channels:  # health answers on every process
            for channel in channels:
                check = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="recserve.v1.Recommender"), timeout=10
                )
                assert check.status == health_pb2.HealthCheckResponse.SERVING

        metrics = served.metrics()  # each process's requests, summed by the supervisor
        ranks = [v for labels, v in metrics["recserve_requests_total"] if labels["rpc"] == "Rank"]
        assert sum(ranks) == CHANNELS
        loaded = {(s["pid"], s["version"]): v for s, v in metrics["recserve_model_loaded"]}
        assert loaded == {(str(pid), "1"): 1.0 for pid in children}
        assert metrics["recserve_in_flight"] == [({}, 0.0)]

        # Every table of the served version is a file mapping in both processes, no page
        # of it copied, and the pages both touched are counted once between them (PSS
        # below RSS). A copy-on-write copy is an anonymous page, so "Anonymous" is the
        # check. Not "Private_Dirty": smaps counts a mapped page as dirty while the page
        # cache has not yet written it back (the export wrote these files seconds ago),
        # and as private when one process alone touched it, so it can be nonzero with
        # nothing copied (it was, once, in a CI run).
        tables = {p.name for p in (repo / "deepfm" / "1").glob("*.npy")}
        figures = [npy_mappings(pid, repo / "deepfm" / "1") for pid in children]
        for mapped in figures:
            assert set(mapped) == tables
            assert all(m["Anonymous"] == 0 for m in mapped.values()), mapped
        rss = sum(m["Rss"] for mapped in figures for m in mapped.values())
        pss = sum(m["Pss"] for mapped in figures for m in mapped.values())
        assert 0 < pss < rss, (pss, rss)

        stop(served)


def test_a_reload_reaches_every_process(repo: Path, tmp_path: Path) -> None:
    """A ReloadModels RPC lands on one process, which answers once it serves the new
    version; the others rescan once it has answered. SIGHUP to the supervisor reaches
    them all."""
    with serve_processes(repo, tmp_path / "serve.log") as served:
        children = served.children()
        items = catalog_items(served.port)
        publish(repo / "deepfm" / "1", repo / "deepfm", 2)
        assert serving_of(reload_rpc(served.port)) == [("deepfm", 2)]
        wait_for(lambda: served.loaded(2) == set(children), 60, "every process to load v2")
        assert any("answered ReloadModels" in m for m in served.messages())
        every_process_answers(served, 2, items)

        publish(repo / "deepfm" / "1", repo / "deepfm", 3)
        served.supervisor.send_signal(signal.SIGHUP)
        wait_for(lambda: served.loaded(3) == set(children), 60, "every process to load v3")
        every_process_answers(served, 3, items)
        loaded = {(s["pid"], s["version"]): v for s, v in served.metrics()["recserve_model_loaded"]}
        for pid in children:  # retired versions read 0
            assert loaded[(str(pid), "3")] == 1.0
            assert loaded.get((str(pid), "2"), 0.0) == loaded.get((str(pid), "1"), 0.0) == 0.0

        stop(served)


def test_a_process_that_dies_is_restarted_and_a_killed_supervisor_stops_them(
    repo: Path, tmp_path: Path
) -> None:
    with serve_processes(repo, tmp_path / "serve.log") as served:
        first, second = served.children()
        items = catalog_items(served.port)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: any("serves again" in m for m in served.messages()), 120, "a restart")
        assert any(
            m.endswith(f"(pid {first}) exited unexpectedly with signal SIGKILL")
            for m in served.messages()
        )
        third = served.children()[-1]
        assert third not in (first, second)
        every_process_answers(served, 1, items)
        pids = {s["pid"] for s, _ in served.metrics()["recserve_model_loaded"]}
        assert pids == {str(second), str(third)}  # the dead process's gauges are dropped

        # The supervisor killed outright: the serving processes see their pipe close and
        # stop by themselves, draining as on SIGTERM.
        directory = metrics_directory(second)
        served.supervisor.kill()
        served.supervisor.wait(30)
        wait_for(lambda: not alive(second) and not alive(third), 60, "the processes to stop")
        for pid in (second, third):
            assert "the supervisor exited; stopping" in served.messages(pid)
            assert served.messages(pid)[-1] == "stopped"
        shutil.rmtree(directory)  # the supervisor had no chance to


def test_a_process_that_cannot_start_stops_the_server_with_its_error(
    tmp_path: Path, run_recserve
) -> None:
    (tmp_path / "empty").mkdir()
    done = run_recserve(
        "serve", "--model-repo", str(tmp_path / "empty"), "--processes", "2", "--port", "0",
        "--metrics-port", "-1",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"error: no servable model in {tmp_path / 'empty'}" in done.stderr
