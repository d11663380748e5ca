"""examples/ranker end to end on a small log: a ranker written in plain PyTorch is
trained, packaged with `recserve package ranker` (both program formats), served, and
called from the Python client and the Node.js client's example."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from client_runs import require
from helpers.packages import write_csv
from helpers.serving import serving
from test_node_client import NODE_CLIENT, _missing_node_setup

from recserve import Client
from recserve.engine.programs import torchscript_deprecation_silenced

ROOT = Path(__file__).resolve().parents[2]
GENRES = ["Comedy", "Drama", "Horror", "Sci-Fi"]
JOBS = ["artist", "student", "writer"]


def small_data(folder: Path) -> tuple[Path, Path, Path]:
    """40 users, 30 items, each user's items mostly from one genre."""
    rng = np.random.default_rng(5)
    genre = rng.integers(0, len(GENRES), 30)
    items = [
        [100 + i, f"film {i}", str(1960 + 2 * i), GENRES[g] + ("|Drama" if i % 5 == 0 else "")]
        for i, g in enumerate(genre)
    ]
    users = [[u + 1, str(15 + u), "MF"[u % 2], JOBS[u % 3]] for u in range(40)]
    rows = []
    for user in range(40):
        liked = np.flatnonzero(genre == user % len(GENRES))
        for item in rng.choice(liked, size=min(5, liked.size), replace=False):
            rows.append([user + 1, 100 + int(item)])
    return (
        write_csv(folder / "log.csv", ["user_id", "item_id"], rows),
        write_csv(folder / "users.csv", ["user_id", "age", "gender", "occupation"], users),
        write_csv(folder / "items.csv", ["item_id", "title", "release_year", "genres"], items),
    )


def train(folder: Path, out: Path, program_format: str) -> None:
    log, users, items = small_data(folder)
    script = ROOT / "examples" / "ranker" / "train_ranker.py"
    args = ["--log", log, "--users", users, "--items", items, "--out", out]
    args += ["--format", program_format, "--epochs", "2", "--batch-size", "32"]
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
    train(tmp_path, out, program_format)
    program = out / ("ranker.pt2" if program_format == "export" else "ranker.pt")
    repo = tmp_path / "repo"
    packaged = run_recserve(
        "package", "ranker", "--program", str(program), "--features", str(out / "features.toml"),
        "--items", str(out / "items.csv"), "--users", str(out / "users.csv"),
        "--interactions", str(out / "interactions.csv"), "--model-repo", str(repo),
        "--name", "ranker",
    )  # fmt: skip
    assert packaged.returncode == 0, packaged.stderr

    # the program's own order for user 1 (id and feature codes as the schema declares:
    # user 1 is row 1; item 100 + i is row i + 1)
    candidates = [100, 103, 107, 111, 118, 125, 129]
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
    the example encodes them (user 1: id 1, age 15 -> bucket 1, gender M, artist)."""
    if program_format == "export":
        module = torch.export.load(str(program)).module()
    else:
        with torchscript_deprecation_silenced():
            module = torch.jit.load(str(program))
    with (program.parent / "items.csv").open(newline="") as f:
        items = {int(r["id"]): r for r in csv.DictReader(f)}
    genres = sorted({g for r in items.values() for g in r["genres"].split("|")})
    years = [1950, 1970, 1980, 1990, 1995, 1997]
    rows, multi = [], []
    for item in candidates:
        year = float(items[item]["release_year"])
        rows.append([item - 99, int(np.searchsorted(years, year, side="right")) + 1])
        codes = [genres.index(g) + 1 for g in items[item]["genres"].split("|")]
        multi.append(codes + [0] * (6 - len(codes)))
    user = torch.tensor([[1, 1, 2, 1]] * len(candidates))  # gender M = 2, artist = 1
    with torch.no_grad():
        logits = module(user, torch.tensor(rows), torch.tensor(multi)).double().numpy()
    return [candidates[j] for j in np.argsort(-logits, kind="stable")]
