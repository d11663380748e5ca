"""`pip install .` builds one wheel holding the runtime, server, training and the C++ core."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import recserve

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_maps_three_folders_into_one_package(tmp_path: Path) -> None:
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
        "recserve/kernels.py",
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


def test_installed_package_reports_its_backends() -> None:
    assert recserve.kernels.available_backends()[0] == "cpu"
    assert ("cuda" in recserve.kernels.available_backends()) <= recserve.HAS_CUDA
    assert recserve.__version__ == "0.1.0"
