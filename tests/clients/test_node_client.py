"""The Node.js client (clients/node) against a live server: runs its `npm test`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from recserve.server.app import RunningServer

NODE_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"
INSTALL_HINT = "install it with `npm ci --prefix clients/node` (bash scripts/setup.sh does)"


def _missing_node_setup() -> str | None:
    """Why the Node.js client cannot run here, or None when it can."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH: install Node.js >= 20, then {INSTALL_HINT}"
    if not (NODE_CLIENT / "node_modules").is_dir():
        return f"{NODE_CLIENT / 'node_modules'} is missing: {INSTALL_HINT}"
    return None


def test_node_client_against_a_live_server(live_server: RunningServer) -> None:
    missing = _missing_node_setup()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Node.js client test, but {missing}")
        pytest.skip(missing)
    env = {**os.environ, "RECSERVE_TARGET": f"127.0.0.1:{live_server.port}"}
    env.pop("RECSERVE_PROTO", None)  # test the .proto of this checkout
    try:
        done = subprocess.run(
            ["npm", "test", "--silent"],
            cwd=NODE_CLIENT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired as timeout:
        output = b"".join(
            part if isinstance(part, bytes) else part.encode()
            for part in (timeout.stdout, timeout.stderr)
            if part
        )
        pytest.fail(
            f"`npm test` in clients/node took over 120 s:\n{output.decode(errors='replace')}"
        )
    assert done.returncode == 0, (
        f"`npm test` in clients/node exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
