"""The `recserve` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recserve import Client
from recserve.server.app import RunningServer


def test_recommend_prints_k_unseen_titles(live_server: RunningServer, run_recserve) -> None:
    pipeline = live_server.repository.get().pipeline
    user = int(pipeline.user_ids[0])
    seen = set(pipeline.item_ids[pipeline.seen_rows(0)].tolist())
    result = run_recserve(
        "recommend",
        "--user",
        str(user),
        "-k",
        "6",
        "--target",
        f"127.0.0.1:{live_server.port}",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)["items"]
    assert len(items) == 6 and not {i["item_id"] for i in items} & seen
    assert all(i["title"] for i in items)

    table = run_recserve(
        "recommend", "--user", str(user), "-k", "6", "--target", f"127.0.0.1:{live_server.port}"
    )
    assert table.returncode == 0
    assert all(i["title"] in table.stdout for i in items)


def test_rank_orders_the_given_items(live_server: RunningServer, run_recserve) -> None:
    ids = [int(i) for i in live_server.repository.get().pipeline.item_ids[:5]]
    result = run_recserve(
        "rank",
        "--user",
        "1",
        "--items",
        ",".join(map(str, ids)),
        "--json",
        "--target",
        f"127.0.0.1:{live_server.port}",
    )
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)["items"]
    assert sorted(i["item_id"] for i in items) == sorted(ids)
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)


def test_models_and_errors(live_server: RunningServer, run_recserve, free_port: int) -> None:
    target = f"127.0.0.1:{live_server.port}"
    listed = run_recserve("models", "--target", target)
    assert listed.returncode == 0 and "deepfm v1" in listed.stdout
    bad = run_recserve("rank", "--user", "1", "--items", "5,5", "--target", target)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "duplicates" in bad.stderr
    usage = run_recserve("rank", "--user", "1", "--items", "a,b", "--target", target)
    assert usage.returncode == 2 and "comma-separated integer ids" in usage.stderr
    down = run_recserve("models", "--target", f"127.0.0.1:{free_port}", "--timeout", "2")
    assert down.returncode == 1 and "is `recserve serve` running" in down.stderr


def test_train_then_serve_then_ctrl_c(tmp_path: Path, run_recserve, free_port: int) -> None:
    repo = tmp_path / "repo"
    trained = run_recserve(
        "train", "--data", "synthetic", "--epochs", "1", "--model-repo", str(repo), "--name", "tiny"
    )
    assert trained.returncode == 0, trained.stderr
    assert "test AUC" in trained.stdout
    assert (repo / "tiny" / "1" / "manifest.json").is_file()

    port = free_port
    command = [
        sys.executable,
        "-m",
        "recserve.cli",
        "serve",
        "--model-repo",
        str(repo),
        "--port",
        str(port),
        "--metrics-port",
        "0",
    ]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as server:
        try:
            deadline = time.monotonic() + 60
            with Client(f"127.0.0.1:{port}", timeout=2) as client:
                while not client.is_serving():
                    assert server.poll() is None, server.stdout.read()
                    assert time.monotonic() < deadline, "server did not become healthy"
                    time.sleep(0.2)
                assert len(client.recommend(1, k=3).items) == 3
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=30) == 0
            output = server.stdout.read()
            assert "serving tiny v1" in output and "SIGINT received" in output
            assert "Traceback" not in output
        finally:
            if server.poll() is None:
                server.kill()


def test_serve_without_a_model_says_what_to_do(tmp_path: Path, run_recserve) -> None:
    result = run_recserve("serve", "--model-repo", str(tmp_path / "none"), "--port", "0")
    assert result.returncode == 1
    assert "recserve train" in result.stderr


@pytest.mark.parametrize("command", ["serve", "train", "data", "recommend", "rank", "models"])
def test_every_subcommand_has_help(command: str, run_recserve) -> None:
    result = run_recserve(command, "--help")
    assert result.returncode == 0 and "usage: recserve" in result.stdout


def test_resume_continues_on_the_runs_own_data(tmp_path: Path, run_recserve) -> None:
    common = ("--model", "bpr", "--run-dir", str(tmp_path / "run"), "--model-repo", str(tmp_path))
    first = run_recserve("train", *common, "--data", "synthetic", "--epochs", "1")
    assert first.returncode == 0, first.stderr
    resumed = run_recserve("train", *common, "--resume", "--epochs", "2")  # no --data
    assert resumed.returncode == 0, resumed.stderr
    assert "training bpr on synthetic" in resumed.stderr and "(resuming)" in resumed.stderr
