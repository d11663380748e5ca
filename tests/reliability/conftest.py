"""Fixtures and options of the reliability tests; the helpers are in reliability_helpers.py
(a module of its own name: every test folder's conftest is a module called "conftest")."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from reliability_helpers import SOAK_SECONDS_DEFAULT

SOAK_OVERHEAD_SECONDS = 300.0


def pytest_addoption(parser: pytest.Parser) -> None:
    # Registered when pytest starts from this folder or a file in it (e.g.
    # `pytest tests/reliability/test_soak.py --soak-seconds 3600`); from anywhere,
    # RECSERVE_SOAK_SECONDS=3600 does the same.
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=None,
        help=f"length of the soak test (default: $RECSERVE_SOAK_SECONDS or "
        f"{SOAK_SECONDS_DEFAULT:g})",
    )


def _soak_seconds(config: pytest.Config) -> float:
    try:
        flag = config.getoption("--soak-seconds")
    except ValueError:  # the option is not registered: pytest started elsewhere
        flag = None
    if flag is not None:
        return float(flag)
    return float(os.environ.get("RECSERVE_SOAK_SECONDS", SOAK_SECONDS_DEFAULT))


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    return _soak_seconds(request.config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The soak outlasts the suite's per-test timeout (pyproject.toml): give it its
    # length plus time to start the server, measure saturation and report.
    for item in items:
        if "soak_seconds" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(_soak_seconds(config) + SOAK_OVERHEAD_SECONDS))


@pytest.fixture
def source(model_repo: Path) -> Path:
    """The good version every test publishes copies of."""
    return model_repo / "deepfm" / "1"


@pytest.fixture
def repo(tmp_path: Path, source: Path) -> Path:
    """A repository of its own, holding deepfm version 1."""
    shutil.copytree(source, tmp_path / "repo" / "deepfm" / "1")
    return tmp_path / "repo"
