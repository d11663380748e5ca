"""What the client tests share: skip (or, under CI, fail) when a client's toolchain is
missing, and run a client's own test command against a live server."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from recserve.server.app import RunningServer


def require(missing: str | None, what: str) -> None:
    """Skips with ``missing`` as the reason; under CI (env CI set) fails instead."""
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the {what} test, but {missing}")
    pytest.skip(missing)


def run_client_test(
    command: Sequence[str],
    cwd: Path,
    live_server: RunningServer,
    timeout_s: float,
    drop_env: str,
) -> None:
    """Runs ``command`` in ``cwd`` with RECSERVE_TARGET set to the live server (and the
    ``drop_env`` override removed, so this checkout's .proto is tested); fails with its
    output unless it exits 0 within ``timeout_s``."""
    env = {**os.environ, "RECSERVE_TARGET": f"127.0.0.1:{live_server.port}"}
    env.pop(drop_env, None)
    shown = f"`{' '.join(command)}` in {cwd.relative_to(cwd.parents[1])}"
    try:
        done = subprocess.run(
            list(command),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as timeout:
        output = b"".join(
            part if isinstance(part, bytes) else part.encode()
            for part in (timeout.stdout, timeout.stderr)
            if part
        )
        pytest.fail(f"{shown} took over {timeout_s:g} s:\n{output.decode(errors='replace')}")
    assert done.returncode == 0, f"{shown} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
