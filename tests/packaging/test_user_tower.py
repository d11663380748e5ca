"""`recserve package two-tower --user-tower`: the user side as a program over the user's
features (both program formats), served with the request's user_features; refusals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from helpers.packages import write_csv
from helpers.serving import serving
from torch import nn

from recserve import Client
from recserve.client.client import RecserveError
from recserve.engine.programs import (
    export_program,
    save_program,
    torchscript_deprecation_silenced,
)
from recserve.packaging import PackageError, TwoTowerFiles, package_two_tower

DIM = 6
AGE_BOUNDS = [20.0, 40.0]
COUNTRIES = ["de", "fr", "us"]
FEATURES = """
[[user]]
name = "user_id"
kind = "id"

[[user]]
name = "age"
kind = "bucket"
boundaries = [20, 40]

[[user]]
name = "country"
kind = "token"
vocabulary = ["de", "fr", "us"]
"""


class Tower(nn.Module):
    """A team's user tower: the sum of its fields' vectors, then a Linear layer."""

    def __init__(self, cardinalities: list[int], dim: int = DIM) -> None:
        super().__init__()
        offsets = np.concatenate([[0], np.cumsum(cardinalities)[:-1]])
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64))
        self.fields = nn.Embedding(int(sum(cardinalities)), 8)
        self.out = nn.Linear(8, dim)

    def forward(self, user: torch.Tensor) -> torch.Tensor:
        return self.out(self.fields(user + self.offsets).sum(dim=1))


def make_files(folder: Path, program_format: str = "torchscript", tower: nn.Module | None = None):
    rng = np.random.default_rng(2)
    item_ids = rng.permutation(np.arange(500, 560))[:31]
    user_ids = rng.permutation(np.arange(1, 30))[:12]
    users = [[int(u), str(int(rng.integers(10, 60))), str(rng.choice(COUNTRIES))] for u in user_ids]
    np.save(folder / "items.npy", rng.normal(size=(item_ids.size, DIM)).astype(np.float32))
    torch.manual_seed(0)
    tower = tower if tower is not None else Tower([12 + 1, 4, 4]).eval()
    path = folder / ("tower.pt2" if program_format == "export" else "tower.pt")
    if program_format == "export":
        save_program(export_program(tower, (torch.ones(2, 3, dtype=torch.int64),), [0]), path)
    else:
        with torchscript_deprecation_silenced():
            save_program(torch.jit.script(tower), path)
    (folder / "features.toml").write_text(FEATURES)
    pairs = [[int(user_ids[u]), int(item_ids[i])] for u, i in rng.integers(0, [12, 31], (20, 2))]
    files = TwoTowerFiles(
        items=write_csv(
            folder / "items.csv", ["id", "title"], [[i, f"item {i}"] for i in item_ids]
        ),
        item_embeddings=folder / "items.npy",
        users=write_csv(folder / "users.csv", ["id", "age", "country"], users),
        interactions=write_csv(folder / "log.csv", ["user_id", "item_id"], pairs),
        user_tower=path,
        user_features=folder / "features.toml",
    )
    truth = dict(tower=tower, users=users, item_ids=item_ids, pairs=pairs,
                 items=np.load(folder / "items.npy").astype(np.float64))  # fmt: skip
    return files, truth


def reference(truth: dict, user: int | None, age: str, country: str, seen: set[int]) -> list[int]:
    """Every unseen item by <tower(features), item vector> in float64, best first."""
    ranks = {u: r + 1 for r, u in enumerate(sorted(u[0] for u in truth["users"]))}
    age_code = int(np.searchsorted(AGE_BOUNDS, float(age), side="right")) + 1
    codes = [ranks.get(user, 0), age_code, COUNTRIES.index(country) + 1]
    with torch.no_grad():
        vector = truth["tower"](torch.tensor([codes])).double().numpy()[0]
    scores = truth["items"] @ vector
    order = [int(truth["item_ids"][j]) for j in np.argsort(-scores, kind="stable")]
    return [i for i in order if i not in seen]


@pytest.mark.parametrize("program_format", ["torchscript", "export"])
def test_a_user_tower_serves_recommend_from_the_users_features(
    tmp_path: Path, program_format: str
) -> None:
    files, truth = make_files(tmp_path, program_format)
    repo = tmp_path / "repo"
    package_two_tower(files, repo, "towers")
    with serving(repo) as running, Client(f"127.0.0.1:{running.port}", timeout=10) as client:
        (info,), _ = client.list_models()
        assert info.family == "user_tower" and info.program_format == program_format
        for user, age, country in truth["users"]:
            seen = {i for u, i in truth["pairs"] if u == user}
            answer = client.recommend(user, k=5, model="towers")
            assert [i.item_id for i in answer.items] == reference(truth, user, age, country, seen)[
                :5
            ]
            # the request's features change the vector, at once
            moved = client.recommend(user, k=5, model="towers", user_features={"country": "de"})
            assert [i.item_id for i in moved.items] == reference(truth, user, age, "de", seen)[:5]
        # an unknown user with features is served by the tower, without them by popularity
        cold = client.recommend(
            999, k=4, model="towers", user_features={"age": "30", "country": "fr"}
        )
        assert cold.cold_start_user
        assert [i.item_id for i in cold.items] == reference(truth, None, "30", "fr", set())[:4]
        with pytest.raises(RecserveError, match="unknown user feature 'zip'") as refused:
            client.recommend(user, k=3, model="towers", user_features={"zip": "1"})
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


class WrongWidth(nn.Module):
    def forward(self, user: torch.Tensor) -> torch.Tensor:
        return torch.zeros(user.shape[0], 7)  # the items have 6 dimensions


def wrong_width(folder: Path) -> TwoTowerFiles:
    return make_files(folder, tower=WrongWidth())[0]


def items_in_schema(folder: Path) -> TwoTowerFiles:
    files = make_files(folder)[0]
    (folder / "both.toml").write_text(FEATURES + '\n[[item]]\nname = "item_id"\nkind = "id"\n')
    return replace(files, user_features=folder / "both.toml")


def no_schema(folder: Path) -> TwoTowerFiles:
    return replace(make_files(folder)[0], user_features=None)


def both_user_sides(folder: Path) -> TwoTowerFiles:
    files = make_files(folder)[0]
    np.save(folder / "users.npy", np.ones((12, DIM), np.float32))
    return replace(files, user_embeddings=folder / "users.npy")


@pytest.mark.parametrize(
    ("breaks", "message"),
    [
        (wrong_width, r"returns shape \[8, 7\] .*expected \[8, 6\], one 6-dimensional vector"),
        (items_in_schema, r"unknown key 'item'; this schema has \[\[user\]\]"),
        (no_schema, r"needs its feature schema \(--user-features\)"),
        (both_user_sides, r"give the user side once"),
    ],
)
def test_bad_user_towers_are_refused_and_nothing_is_written(
    tmp_path: Path, breaks, message: str
) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(PackageError, match=message):
        package_two_tower(breaks(tmp_path), repo, "towers")
    assert not repo.exists() or not any(repo.rglob("*"))


def test_the_command_packages_a_user_tower(tmp_path: Path, run_recserve) -> None:
    files, _ = make_files(tmp_path, "export")
    args = ["package", "two-tower", "--items", str(files.items), "--users", str(files.users)]
    args += ["--item-embeddings", str(files.item_embeddings), "--name", "towers"]
    args += ["--model-repo", str(tmp_path / "repo"), "--user-tower", str(files.user_tower)]
    done = run_recserve(*args, "--user-features", str(files.user_features))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "repo" / "towers" / "1" / "user_tower.pt2").exists()
    refused = run_recserve(*args)  # the tower without its schema
    assert refused.returncode == 2 and "--user-features" in refused.stderr
