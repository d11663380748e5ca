"""The Go client (clients/go) against a live server: runs its `bash build.sh test`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from recserve.server.app import RunningServer

GO_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "go"
GOCODE = Path("/usr/share/gocode/src")
DEBIAN_PACKAGES = (
    "golang-go golang-google-grpc-dev golang-google-protobuf-dev "
    "golang-github-golang-protobuf-1-5-dev protobuf-compiler protoc-gen-go protoc-gen-go-grpc"
)
INSTALL_HINT = f"install Debian's `{DEBIAN_PACKAGES}` (bash scripts/test.sh does, as root)"
TIMEOUT_S = 300  # the first build compiles grpc-go from source


def _missing_go_setup() -> str | None:
    """Why the Go client cannot be built here, or None when it can."""
    for tool in ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH: {INSTALL_HINT}"
    # registry.go marks github.com/golang/protobuf >= 1.4 (the 1-5 package): grpc's codec
    # goes through it, and the 1.3 one cannot decode what protoc-gen-go generates.
    for source in (
        "google.golang.org/grpc/clientconn.go",
        "google.golang.org/protobuf/proto/proto.go",
        "github.com/golang/protobuf/proto/registry.go",
    ):
        if not (GOCODE / source).is_file():
            return f"{GOCODE / source} is missing: {INSTALL_HINT}"
    return None


def test_go_client_against_a_live_server(live_server: RunningServer) -> None:
    missing = _missing_go_setup()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Go client test, but {missing}")
        pytest.skip(missing)
    env = {**os.environ, "RECSERVE_TARGET": f"127.0.0.1:{live_server.port}"}
    env.pop("RECSERVE_PROTO_ROOT", None)  # test the .proto of this checkout
    try:
        done = subprocess.run(
            ["bash", "build.sh", "test"],
            cwd=GO_CLIENT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as timeout:
        output = b"".join(
            part if isinstance(part, bytes) else part.encode()
            for part in (timeout.stdout, timeout.stderr)
            if part
        )
        pytest.fail(
            f"`bash build.sh test` in clients/go took over {TIMEOUT_S} s:\n"
            f"{output.decode(errors='replace')}"
        )
    assert done.returncode == 0, (
        f"`bash build.sh test` in clients/go exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
