"""The Node.js client (clients/node) against a live server: runs its `npm test`."""

from __future__ import annotations

import shutil
from pathlib import Path

from client_runs import require, run_client_test

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
    require(_missing_node_setup(), "Node.js client")
    run_client_test(["npm", "test", "--silent"], NODE_CLIENT, live_server, 120, "RECSERVE_PROTO")
