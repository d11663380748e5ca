"""Publishing model versions into a repository and serving it, in process or as a
`recserve serve` subprocess: shared by the reload tests (tests/server) and the
reliability tests (tests/reliability)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from recserve import Client
from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc


def _add_table(version_dir: Path, manifest: dict[str, Any], key: str, table: np.ndarray) -> None:
    path = version_dir / f"{key}.npy"
    np.save(path, table, allow_pickle=False)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["files"][path.name] = {"kind": "table", "key": key, "sha256": sha}


def publish(
    source: Path,
    model_dir: Path,
    version: int,
    *,
    padding_bytes: int = 0,
    damage: Callable[[Path], None] | None = None,
) -> Path:
    """Publishes a copy of the version directory ``source`` as ``version`` of
    ``model_dir``, atomically as save_artifact does: written into a hidden directory of
    the model, then renamed. ``padding_bytes``: an extra table, so a version weighs
    something; ``damage``: alters the copy after its manifest was written."""
    staging = model_dir / f".staging-{version}"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest.update(name=model_dir.name, version=version)
    if padding_bytes:
        _add_table(staging, manifest, "padding", np.full(padding_bytes // 8, version, np.int64))
    (staging / "manifest.json").write_text(json.dumps(manifest))
    if damage is not None:
        damage(staging)
    os.rename(staging, model_dir / str(version))
    return model_dir / str(version)


def flip_a_byte(version_dir: Path, filename: str = "model.pt") -> None:
    data = bytearray((version_dir / filename).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (version_dir / filename).write_bytes(bytes(data))


@contextmanager
def serving(repo: Path, **options: Any) -> Iterator[RunningServer]:
    settings = {"port": 0, "metrics_port": -1, **options}  # a test may turn metrics on
    running = build_server(ServeOptions(model_repo=repo, **settings))
    try:
        running.repository.load_all()
        running.set_serving(True)
        yield running
    finally:
        running.stop(0)


def reload_rpc(port: int) -> pb.ReloadModelsResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        return stub.ReloadModels(pb.ReloadModelsRequest(), timeout=60)


def events_of(response: pb.ReloadModelsResponse) -> list[tuple[int, int]]:
    return [(e.action, e.model.version) for e in response.events]


def serving_of(response: pb.ReloadModelsResponse) -> list[tuple[str, int]]:
    return [(m.name, m.version) for m in response.serving]


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.02)


@contextmanager
def serve_process(
    repo: Path, port: int, log_path: Path, *options: str
) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "recserve.cli", "serve", "--model-repo", str(repo)]
    command += ["--port", str(port), "--metrics-port", "-1", "--poll-seconds", "0", *options]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        with Client(f"127.0.0.1:{port}", timeout=5) as c:
            wait_for(lambda: c.is_serving() or process.poll() is not None, 120, "the server")
        assert process.poll() is None, log_path.read_text()
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/<pid>/status")
