"""The Go client (clients/go) against a live server: runs its `bash build.sh test`."""

from __future__ import annotations

import shutil
from pathlib import Path

from client_runs import require, run_client_test

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
    require(_missing_go_setup(), "Go client")
    run_client_test(
        ["bash", "build.sh", "test"], GO_CLIENT, live_server, TIMEOUT_S, "RECSERVE_PROTO_ROOT"
    )
