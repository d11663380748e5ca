"""examples/two_tower end to end on a slice of MovieLens-100k: a two-tower model written
in plain PyTorch is trained, packaged with `recserve package two-tower`, served, and
called from the Python client and the Node.js client's example."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from client_runs import require
from helpers.packages import movielens_slice
from helpers.serving import serving
from test_node_client import NODE_CLIENT, _missing_node_setup

from recserve import Client

ROOT = Path(__file__).resolve().parents[2]
SLICE_USERS = 40


@pytest.mark.slow
def test_the_two_tower_example_trains_packages_serves_and_answers_both_clients(
    tmp_path: Path, run_recserve
) -> None:
    log, split = movielens_slice(tmp_path, run_recserve, SLICE_USERS)
    items = split / "items.csv"
    out = tmp_path / "towers"
    script = ROOT / "examples" / "two_tower" / "train_towers.py"
    trained = subprocess.run(
        [
            sys.executable,
            str(script),
            "--log",
            str(log),
            "--items",
            str(items),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert trained.returncode == 0, trained.stderr
    repo = tmp_path / "repo"
    packaged = run_recserve(
        "package",
        "two-tower",
        "--items",
        str(out / "items.csv"),
        "--item-embeddings",
        str(out / "items.npy"),
        "--users",
        str(out / "users.csv"),
        "--user-embeddings",
        str(out / "users.npy"),
        "--interactions",
        str(out / "interactions.csv"),
        "--model-repo",
        str(repo),
        "--name",
        "towers",
    )
    assert packaged.returncode == 0, packaged.stderr

    with serving(repo, default_model="towers") as running:
        with Client(f"127.0.0.1:{running.port}", timeout=10) as client:
            answer = client.recommend(1, k=5)
        with log.open(newline="") as f:
            seen = {row[1] for row in csv.reader(f) if row[0] == "1"}
        assert answer.model_name == "towers" and len(answer.items) == 5
        assert not {str(i.item_id) for i in answer.items} & seen
        with items.open(newline="") as f:
            titles = {int(r["item_id"]): r["title"] for r in csv.DictReader(f)}
        assert [i.title for i in answer.items] == [titles[i.item_id] for i in answer.items]

        require(_missing_node_setup(), "Node.js client")
        node = shutil.which("node")
        called = subprocess.run(
            [node, "examples/recommend.js", f"127.0.0.1:{running.port}", "1"],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert called.returncode == 0, called.stderr
        assert "from towers v1" in called.stdout
        assert str(answer.items[0].item_id) in called.stdout.splitlines()[1]
