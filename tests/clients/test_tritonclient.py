"""Triton's Python client (`tritonclient[grpc]` from the package index) against recserve's
KServe v2 endpoint: its answers equal those of Rank."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
from client_runs import require

from recserve import Client
from recserve.kserve import grpc_predict_v2_pb2 as kpb
from recserve.server.app import RunningServer

ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = ROOT / ".venv-tritonclient" / "bin" / "python"
CHECK = Path(__file__).with_name("tritonclient_check.py")


def run_check(*args: str) -> dict:
    """Runs tritonclient_check.py in tritonclient's venv; its JSON output."""
    missing = None
    if not TRITON_PYTHON.exists():
        missing = f"{TRITON_PYTHON} is missing: bash scripts/test.sh installs tritonclient there"
    require(missing, "tritonclient")
    done = subprocess.run(
        [str(TRITON_PYTHON), str(CHECK), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_messages_have_tritonclients_wire_layout() -> None:
    names = [m.name for m in kpb.DESCRIPTOR.message_types_by_name.values()]
    theirs = run_check("--fields", *names)

    def fields(descriptor) -> dict:
        layout = {
            f.name: [
                f.number,
                f.message_type.full_name if f.message_type else f.type,
                f.is_repeated,
            ]
            for f in descriptor.fields
        }
        for nested in descriptor.nested_types:
            layout[nested.name] = fields(nested)
        return layout

    ours = {n: fields(kpb.DESCRIPTOR.message_types_by_name[n]) for n in names}
    assert ours == theirs
    assert len(names) == 14


def test_tritonclient_gets_the_answers_of_rank(live_server: RunningServer, client: Client) -> None:
    items = live_server.repository.get().pipeline.item_ids[10:40].tolist()
    candidates = [*items, 777_777]
    target = f"127.0.0.1:{live_server.port}"
    got = run_check(target, "deepfm", "7", "5", *(str(i) for i in candidates))
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["server"]["name"] == "recserve"
    assert got["metadata"]["platform"] == "recserve_deepfm"
    assert got["metadata"]["versions"] == ["1"]
    assert got["id"] == "triton-1"
    ranked = client.rank(7, candidates, k=5)
    assert got["item_ids"] == [i.item_id for i in ranked.items]
    assert got["scores"] == [float(np.float32(i.score)) for i in ranked.items]
    assert got["unknown_item_ids"] == [777_777]
    assert got["missing_model_status"] == "StatusCode.NOT_FOUND"
