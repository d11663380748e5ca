"""`--data`: which loader each kind of value reaches, and `recserve train` on a CSV log."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recserve.training.commands import load_data
from recserve.training.data import (
    OCCUPATIONS_1M,
    InteractionData,
    age_group_1m,
    csv_log,
    load_movielens,
    make_synthetic_movielens,
    write_atomic,
    write_grouplens,
    write_interaction_log,
    write_movielens_1m,
)

needs_tomllib = pytest.mark.skipif(sys.version_info < (3, 11), reason="TOML needs Python 3.11")


@pytest.fixture(scope="module")
def small_data() -> InteractionData:
    return make_synthetic_movielens(n_users=12, n_items=15, n_interactions=100, seed=11)


def write_ml1m(data: InteractionData, directory: Path) -> Path:
    occupations = np.array(OCCUPATIONS_1M)[np.arange(len(data.users)) % len(OCCUPATIONS_1M)]
    users = dataclasses.replace(
        data.users, age=age_group_1m(data.users.age), occupation=occupations
    )
    return write_movielens_1m(dataclasses.replace(data, users=users), directory)


def test_synthetic(tmp_path: Path) -> None:
    assert load_data("synthetic", tmp_path).name.startswith("synthetic-")


def test_ml100k_already_in_the_data_dir_is_loaded_without_fetching(
    tmp_path: Path, small_data: InteractionData
) -> None:
    # the three atomic files are present, so fetch returns at once (no pip)
    write_atomic(small_data, tmp_path / "ml-100k")
    data = load_data("ml-100k", tmp_path)
    assert data.name == "ml-100k" and len(data) == len(small_data)


def test_ml1m_is_read_from_the_data_dir(tmp_path: Path, small_data: InteractionData) -> None:
    write_ml1m(small_data, tmp_path / "ml-1m")
    data = load_data("ml-1m", tmp_path)
    assert data.name == "ml-1m" and len(data) == len(small_data)


def test_missing_ml1m_exits_with_download_instructions(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        load_data("ml-1m", tmp_path)
    message = str(caught.value)
    assert message.startswith("--data ml-1m: MovieLens-1M not found")
    assert "grouplens.org" in message and "ratings.dat" in message


@pytest.mark.parametrize("suffix", [pytest.param(".toml", marks=needs_tomllib), ".json"])
def test_schema_file_loads_the_csv_log(
    tmp_path: Path, small_data: InteractionData, suffix: str
) -> None:
    schema = write_interaction_log(small_data, tmp_path, suffix)
    data = load_data(str(schema), tmp_path / "unused")
    assert data.name == small_data.name and len(data) == len(small_data)


def test_toml_on_python_310_says_to_use_json(
    tmp_path: Path, small_data: InteractionData, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = write_interaction_log(small_data, tmp_path, ".toml")
    monkeypatch.setattr(csv_log, "HAS_TOMLLIB", False)  # as on Python 3.10
    with pytest.raises(SystemExit, match=r"reading TOML needs Python >= 3.11.*as JSON"):
        load_data(str(schema), tmp_path)


def test_bad_schema_exits_with_file_and_line(tmp_path: Path, small_data: InteractionData) -> None:
    schema = write_interaction_log(small_data, tmp_path, ".json")
    with (tmp_path / "interactions.csv").open("a") as log:
        log.write("1,2\n")
    with pytest.raises(
        SystemExit, match=rf"interactions.csv:{len(small_data) + 2}: expected 4 fields"
    ):
        load_data(str(schema), tmp_path)
    with pytest.raises(SystemExit, match="does not exist"):
        load_data(str(tmp_path / "missing.toml"), tmp_path)


@pytest.mark.parametrize(
    ("write", "name"),
    [(write_grouplens, "ml-100k"), (write_atomic, "ml-100k"), (write_ml1m, "ml-1m")],
)
def test_directory_is_detected(
    tmp_path: Path, small_data: InteractionData, write, name: str
) -> None:
    write(small_data, tmp_path / "unpacked")
    assert load_data(str(tmp_path / "unpacked"), tmp_path).name == name


def test_parent_with_an_ml1m_folder_is_detected(
    tmp_path: Path, small_data: InteractionData
) -> None:
    write_ml1m(small_data, tmp_path / "ml-1m")
    assert load_movielens(tmp_path).name == "ml-1m"


def test_directory_with_both_data_sets_asks_which(
    tmp_path: Path, small_data: InteractionData
) -> None:
    write_atomic(small_data, tmp_path / "ml-100k")
    write_ml1m(small_data, tmp_path / "ml-1m")
    with pytest.raises(SystemExit, match="holds both MovieLens-100k and MovieLens-1M"):
        load_data(str(tmp_path), tmp_path)


def test_empty_directory_and_unknown_names_exit_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        load_data(str(tmp_path), tmp_path)
    assert "u.data" in str(caught.value) and "ratings.dat" in str(caught.value)
    with pytest.raises(SystemExit, match="expected 'ml-100k', 'ml-1m', 'synthetic', a schema"):
        load_data("ml-20m", tmp_path)


@needs_tomllib
def test_train_command_trains_and_exports_from_a_csv_log(tmp_path: Path) -> None:
    data = make_synthetic_movielens(n_users=30, n_items=25, n_interactions=400, seed=2)
    schema = write_interaction_log(dataclasses.replace(data, name="shop"), tmp_path / "log")
    repo = tmp_path / "repo"
    command = [sys.executable, "-m", "recserve.cli", "train", "--data", str(schema)]
    command += ["--epochs", "1", "--model", "deepfm", "--model-repo", str(repo)]
    # run in tmp_path: whatever the command writes by default (runs/...) stays there
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "training deepfm on shop: 400 interactions, 30 users, 25 items" in result.stderr
    manifests = list(repo.glob("deepfm/*/manifest.json"))
    assert len(manifests) == 1 and f"exported {manifests[0].parent}" in result.stdout
    assert json.loads(manifests[0].read_text())["config"]["data"] == "shop"
