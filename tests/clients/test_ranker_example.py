"""examples/ranker end to end on a slice of MovieLens-100k: a ranker written in plain
PyTorch is trained, packaged with `recserve package ranker` (both program formats),
served, and called from the Python client and the Node.js client's example."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from client_runs import require
from helpers.packages import movielens_slice
from helpers.serving import serving
from test_node_client import NODE_CLIENT, _missing_node_setup

from recserve import Client
from recserve.engine.programs import torchscript_deprecation_silenced

ROOT = Path(__file__).resolve().parents[2]
SLICE_USERS = 40


def train(folder: Path, out: Path, program_format: str, run_recserve) -> None:
    log, split = movielens_slice(folder, run_recserve, SLICE_USERS)
    users, items = split / "users.csv", split / "items.csv"
    script = ROOT / "examples" / "ranker" / "train_ranker.py"
    args = ["--log", log, "--users", users, "--items", items, "--out", out]
    args += ["--format", program_format, "--epochs", "2", "--batch-size", "256"]
    trained = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert trained.returncode == 0, trained.stderr


@pytest.mark.slow
@pytest.mark.parametrize("program_format", ["torchscript", "export"])
def test_the_ranker_example_trains_packages_serves_and_answers_both_clients(
    tmp_path: Path, run_recserve, program_format: str
) -> None:
    out = tmp_path / "ranker"
    train(tmp_path, out, program_format, run_recserve)
    program = out / ("ranker.pt2" if program_format == "export" else "ranker.pt")
    repo = tmp_path / "repo"
    packaged = run_recserve(
        "package", "ranker", "--program", str(program), "--features", str(out / "features.toml"),
        "--items", str(out / "items.csv"), "--users", str(out / "users.csv"),
        "--interactions", str(out / "interactions.csv"), "--model-repo", str(repo),
        "--name", "ranker",
    )  # fmt: skip
    assert packaged.returncode == 0, packaged.stderr

    # the program's own order for user 1
    candidates = [1, 50, 100, 127, 172, 181, 258, 313, 1682]
    with serving(repo, default_model="ranker") as running:
        with Client(f"127.0.0.1:{running.port}", timeout=10) as client:
            answer = client.rank(1, candidates)
            explained = client.rank(1, candidates[:2], explain=True)
        assert answer.model_name == "ranker"
        assert sorted(i.item_id for i in answer.items) == candidates
        scores = [i.score for i in answer.items]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
        assert own_order(program, program_format, candidates) == [i.item_id for i in answer.items]
        assert [f.feature for f in explained.items[0].explanation.fields][:2] == ["user_id", "age"]

        require(_missing_node_setup(), "Node.js client")
        called = subprocess.run(
            [
                shutil.which("node"), "examples/rank.js", f"127.0.0.1:{running.port}", "1",
                ",".join(map(str, candidates)),
            ],
            cwd=NODE_CLIENT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert called.returncode == 0, called.stderr
        assert "ranked by ranker v1" in called.stdout
        lines = called.stdout.splitlines()[1:]
        assert [int(line.split()[1]) for line in lines] == [i.item_id for i in answer.items]


def own_order(program: Path, program_format: str, candidates: list[int]) -> list[int]:
    """The saved program run here on user 1's row and the candidates' rows, encoded as
    features.toml declares (an id's code: its rank among the sorted ids + 1; a bucket's:
    its index among the boundaries + 1; a token's: its index in the vocabulary + 1)."""
    if program_format == "export":
        module = torch.export.load(str(program)).module()
    else:
        with torchscript_deprecation_silenced():
            module = torch.jit.load(str(program))
    schema = tomllib.loads((program.parent / "features.toml").read_text())
    fields = {f["name"]: f for side in ("user", "item") for f in schema[side]}
    with (program.parent / "users.csv").open(newline="") as f:
        users = {int(r["id"]): r for r in csv.DictReader(f)}
    with (program.parent / "items.csv").open(newline="") as f:
        items = {int(r["id"]): r for r in csv.DictReader(f)}

    def code(name: str, value: str) -> int:
        field = fields[name]
        if field["kind"] == "bucket":
            return int(np.searchsorted(field["boundaries"], float(value), side="right")) + 1
        return field["vocabulary"].index(value) + 1

    user = users[1]
    user_row = [sorted(users).index(1) + 1, code("age", user["age"])]
    user_row += [code("gender", user["gender"]), code("occupation", user["occupation"])]
    rows, multi = [], []
    for item in candidates:
        year = items[item]["release_year"]
        rows.append([sorted(items).index(item) + 1, code("release_year", year)])
        genres = [code("genres", g) for g in items[item]["genres"].split("|") if g]
        multi.append(genres + [0] * (fields["genres"]["max_values"] - len(genres)))
    with torch.no_grad():
        logits = (
            module(
                torch.tensor([user_row] * len(candidates)), torch.tensor(rows), torch.tensor(multi)
            )
            .double()
            .numpy()
        )
    return [candidates[j] for j in np.argsort(-logits, kind="stable")]
