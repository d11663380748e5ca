"""Shared fixtures: a small DeepFM trained on synthetic data, its artifact, a live server."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from recserve import Client
from recserve.engine.artifact import load_artifact
from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.training.data import InteractionData, make_synthetic_movielens
from recserve.training.ranker import TrainedRanker, train_ranker
from recserve.training.trainer import TrainConfig

SMALL_CONFIG = dict(epochs=4, patience=2, embedding_dim=8, hidden=[32, 16], num_threads=1)


@pytest.fixture(scope="session")
def synthetic_data() -> InteractionData:
    return make_synthetic_movielens()


@pytest.fixture(scope="session")
def trained_ranker(synthetic_data: InteractionData) -> TrainedRanker:
    return train_ranker("deepfm", synthetic_data, TrainConfig(**SMALL_CONFIG), show_progress=False)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory, trained_ranker: TrainedRanker) -> Path:
    repo = tmp_path_factory.mktemp("model-repo")
    trained_ranker.export(repo, "deepfm", "synthetic")
    return repo


@pytest.fixture(scope="session")
def artifact(model_repo: Path):
    return load_artifact(model_repo / "deepfm" / "1")


@pytest.fixture(scope="session")
def live_server(model_repo: Path) -> Iterator[RunningServer]:
    running = build_server(
        ServeOptions(model_repo=model_repo, port=0, max_candidates=500, metrics_port=0)
    )
    running.repository.load_all()
    running.set_serving(True)
    yield running
    running.stop(0)


@pytest.fixture
def client(live_server: RunningServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{live_server.port}", timeout=10) as c:
        yield c


def _run_recserve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_recserve() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs the `recserve` command in a subprocess, as a user would."""
    return _run_recserve


@pytest.fixture
def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    return _free_port()
