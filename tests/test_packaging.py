"""`pip install .` builds one wheel holding the client, engine, server, training and the C++
core; installed with only the `client` extra, it calls a server without torch."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import recserve
import recserve.core.kernels

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_one_wheel_holds_every_subpackage_and_its_client_extra_needs_no_torch(
    tmp_path: Path, live_server
) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=900,
    )
    (wheel,) = tmp_path.glob("recserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "recserve/__init__.py",
        "recserve/core/kernels.py",
        "recserve/engine/pipeline.py",
        "recserve/client/client.py",
        "recserve/server/app.py",
        "recserve/training/trainer.py",
        "recserve/training/data/movielens.py",
        "recserve/v1/recserve_pb2.py",
        "recserve/v1/recserve_pb2_grpc.py",
        "recserve/kserve/grpc_predict_v2_pb2.py",
        "recserve/kserve/grpc_predict_v2_pb2_grpc.py",
    } <= names
    assert any(n.startswith("recserve/_core.") and n.endswith(".so") for n in names)
    assert not any(n.endswith(".proto") or n.startswith(("tests/", "csrc/")) for n in names)
    # A fresh environment with only the client extra: grpcio, protobuf, numpy; no torch.
    venv = tmp_path / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{wheel}[client]"], check=True, timeout=900
    )
    call = (
        "import sys; from recserve import Client; "
        f"print(len(Client('127.0.0.1:{live_server.port}').rank(1, [1, 2, 3], k=2).items)); "
        "import importlib.util as u; print(u.find_spec('torch') is None)"
    )
    result = subprocess.run(
        [python, "-c", call], capture_output=True, text=True, timeout=300, check=True
    )
    assert result.stdout.split() == ["2", "True"], result.stdout + result.stderr
    # The command line parses without torch too (its server and training parts load lazily).
    recserve_command = str(venv / "bin" / "recserve")
    subprocess.run(
        [recserve_command, "bench", "--help"], check=True, timeout=120, capture_output=True
    )


def test_installed_package_reports_its_backends() -> None:
    assert recserve.core.kernels.available_backends()[0] == "cpu"
    assert ("cuda" in recserve.core.kernels.available_backends()) <= recserve.HAS_CUDA
    assert recserve.__version__ == "0.1.0"
