"""Security checks not covered by tests/server/test_security.py (tokens, TLS and mutual
TLS refusals are there): model names that look like paths are refused before any file is
touched, and the documented deployment (deploy/recserve.service) runs unprivileged."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from reliability_helpers import serving, wait_for

from recserve import Client
from recserve.kserve import grpc_predict_v2_pb2 as kpb
from recserve.kserve import grpc_predict_v2_pb2_grpc as kserve_grpc
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "recserve.service"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOBODY = 65534

# Names a client might send to reach a file outside the repository (or another model's).
TRAVERSAL_NAMES = [
    "../x",
    "..",
    "../../../../etc/passwd",
    "/etc/passwd",
    "deepfm/../x",
    "deepfm/1",
    "./deepfm",
    ".staging-2",
    "..\\x",
    "deepfm\x00",
    "%2e%2e%2fx",
    "~root",
    "a" * 200,
]

_opened: list[str] = []
_recording = threading.Event()


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _recording.is_set():
        _opened.append(str(args[0]))


sys.addaudithook(_audit)  # cannot be removed: it records only while _recording is set


@pytest.fixture
def recorded_opens() -> Iterator[list[str]]:
    _opened.clear()
    _recording.set()
    try:
        yield _opened
    finally:
        _recording.clear()


def test_model_names_that_look_like_paths_are_refused_and_open_no_file(
    repo: Path, tmp_path: Path, source: Path, recorded_opens: list[str]
) -> None:
    """Each traversal name through Rank, Recommend (model and rank_with), GetModelInfo,
    RankStream and KServe (ModelInfer, ModelMetadata, ModelReady) is INVALID_ARGUMENT.
    A good model sits at tmp/x, where '../x' would lead if a name were a path: no file
    is opened while the requests are handled (Python's audit hook sees every open)."""
    shutil.copytree(source, tmp_path / "x" / "1")  # the bait
    with (
        serving(repo, poll_seconds=0) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = pb_grpc.RecommenderStub(channel)
        kserve = kserve_grpc.GRPCInferenceServiceStub(channel)
        items = running.repository.get().pipeline.item_ids[:10].tolist()
        user = kpb.ModelInferRequest.InferInputTensor(
            name="user_id", datatype="INT64", shape=[1], contents={"int64_contents": [1]}
        )
        codes: dict[tuple[str, str], object] = {}
        _opened.clear()
        for name in TRAVERSAL_NAMES:
            model = pb.ModelSpec(name=name)
            calls = {
                "Rank": lambda m=model: stub.Rank(
                    pb.RankRequest(user_id=1, candidate_item_ids=items, model=m), timeout=10
                ),
                "Recommend": lambda m=model: stub.Recommend(
                    pb.RecommendRequest(user_id=1, model=m), timeout=10
                ),
                "Recommend.rank_with": lambda m=model: stub.Recommend(
                    pb.RecommendRequest(user_id=1, rank_with=m), timeout=10
                ),
                "GetModelInfo": lambda m=model: stub.GetModelInfo(
                    pb.GetModelInfoRequest(model=m, include_ids=True), timeout=10
                ),
                "ModelInfer": lambda n=name: kserve.ModelInfer(
                    kpb.ModelInferRequest(model_name=n, inputs=[user]), timeout=10
                ),
                "ModelMetadata": lambda n=name: kserve.ModelMetadata(
                    kpb.ModelMetadataRequest(name=n), timeout=10
                ),
                "ModelReady": lambda n=name: kserve.ModelReady(
                    kpb.ModelReadyRequest(name=n), timeout=10
                ),
            }
            for rpc, call in calls.items():
                try:
                    answer = call()
                except grpc.RpcError as exc:
                    codes[(rpc, name)] = exc.code()
                else:
                    codes[(rpc, name)] = getattr(answer, "ready", "answered")
            streamed = list(
                stub.RankStream(
                    iter([pb.RankRequest(user_id=1, candidate_item_ids=items, model=model)]),
                    timeout=10,
                )
            )
            codes[("RankStream", name)] = (
                grpc.StatusCode.INVALID_ARGUMENT
                if (streamed[0].error_code == INVALID.value[0])
                else streamed[0].error_code
            )
        opened = list(recorded_opens)
    wrong = {key: code for key, code in codes.items() if code not in (INVALID, False)}
    print(
        f"\n{len(TRAVERSAL_NAMES)} names x {len(codes) // len(TRAVERSAL_NAMES)} RPCs: "
        f"{len(codes) - len(wrong)} refused; files opened meanwhile: {len(opened)}"
    )
    assert wrong == {}
    # ModelReady answers ready = false for a name it does not serve (KServe's contract)
    # unless the name is malformed; either way it reads nothing.
    assert opened == []


# -- the documented deployment: unprivileged -------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_systemd_unit_runs_without_privileges() -> None:
    settings = unit_settings()
    assert settings.get("DynamicUser") == ["yes"] or settings.get("User", ["root"])[-1] not in (
        "",
        "root",
        "0",
    )
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["AmbientCapabilities"] == [""]
    assert settings["CapabilityBoundingSet"] == [""]
    assert "ReadWritePaths" not in settings
    assert settings["ReadOnlyPaths"] == ["/srv/recserve/models"]
    command = shlex.split(settings["ExecStart"][0])
    assert int(command[command.index("--port") + 1]) > 1024
    assert int(command[command.index("--metrics-port") + 1]) > 1024


def unit_command(repo: Path, port: int) -> list[str]:
    """The unit's ExecStart, with this checkout's Python, a test repository and ports."""
    command = shlex.split(unit_settings()["ExecStart"][0])
    assert command[:2] == ["/opt/recserve/bin/recserve", "serve"]
    options = command[2:]
    for flag, value in (("--model-repo", str(repo)), ("--port", str(port))):
        options[options.index(flag) + 1] = value
    options[options.index("--host") + 1] = "127.0.0.1"
    options[options.index("--metrics-port") + 1] = "-1"
    return [sys.executable, "-m", "recserve.cli", "serve", *options, "--poll-seconds", "0"]


def as_nobody(command: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="switches to user nobody: needs root and setpriv",
)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder nobody can read (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="recserve-deploy-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def readable_copy(source: Path, repo: Path) -> Path:
    shutil.copytree(source, repo / "deepfm" / "1")
    for path in [repo, *repo.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return repo


@needs_root
def test_the_documented_deployment_serves_as_an_unprivileged_user(
    public_dir: Path, source: Path, free_port: int
) -> None:
    repo = readable_copy(source, public_dir / "repo")
    log_path = public_dir / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            as_nobody(unit_command(repo, free_port)),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=public_dir,
        )
    try:
        with Client(f"127.0.0.1:{free_port}", timeout=5) as client:
            wait_for(lambda: client.is_serving() or process.poll() is not None, 120, "serving")
            assert process.poll() is None, log_path.read_text()
            assert len(client.recommend(1, k=3).items) == 3
        status = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
        )
        uids = [int(u) for u in status["Uid"].split()]
        gids = [int(g) for g in status["Gid"].split()]
        print(f"\nserving as Uid {uids}, Gid {gids}, CapEff {status['CapEff'].strip()}")
        assert uids == [NOBODY] * 4 and gids == [NOBODY] * 4
        assert int(status["CapEff"], 16) == 0
    finally:
        process.terminate()
        assert process.wait(30) == 0, log_path.read_text()


@needs_root
@pytest.mark.parametrize("closed", ["repository", "folder above it"])
def test_a_repository_the_user_cannot_read_stops_the_start_with_a_clear_error(
    public_dir: Path, source: Path, free_port: int, closed: str
) -> None:
    repo = readable_copy(source, public_dir / "above" / "repo")
    (public_dir / "above").chmod(0o755)
    (repo if closed == "repository" else public_dir / "above").chmod(0o700)
    done = subprocess.run(
        as_nobody(unit_command(repo, free_port)),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=public_dir,
        check=False,
    )
    print(f"\n{done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 1
    assert f"model repository {repo} is not readable by the account running the server" in (
        done.stderr
    )
    assert f"uid {NOBODY}" in done.stderr and "chmod -R a+rX" in done.stderr
    assert "train" not in done.stderr  # not mistaken for an empty repository
