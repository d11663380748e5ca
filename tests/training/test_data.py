from __future__ import annotations

import dataclasses
import doctest
import io
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from recserve.training.data import (
    GENRES,
    OCCUPATIONS,
    InteractionData,
    Items,
    Users,
    fetch_movielens_100k,
    find_movielens_100k,
    load_movielens_100k,
    make_synthetic_movielens,
    make_synthetic_movielens_with_truth,
    write_atomic,
    write_grouplens,
)
from recserve.training.data import synthetic as synthetic_module

WRITERS = {"atomic": write_atomic, "grouplens": write_grouplens}
ATOMIC_NAMES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")


def assert_same_data(loaded: InteractionData, expected: InteractionData) -> None:
    for field in ("user_id", "item_id", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(expected, field))
        assert getattr(loaded, field).dtype == getattr(expected, field).dtype, field
    for field in ("user_id", "age", "gender", "occupation"):
        np.testing.assert_array_equal(getattr(loaded.users, field), getattr(expected.users, field))
    for field in ("item_id", "title", "release_year"):
        np.testing.assert_array_equal(getattr(loaded.items, field), getattr(expected.items, field))
    assert loaded.items.genres == expected.items.genres


@pytest.fixture(scope="module")
def small_data() -> InteractionData:
    return make_synthetic_movielens(n_users=30, n_items=40, n_interactions=400, seed=3)


# --- loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["atomic", "grouplens"])
def test_layout_round_trips(tmp_path: Path, small_data: InteractionData, layout: str) -> None:
    WRITERS[layout](small_data, tmp_path)
    loaded = load_movielens_100k(tmp_path)
    assert loaded.name == "ml-100k"
    assert_same_data(loaded, small_data)


@pytest.mark.parametrize("layout", ["atomic", "grouplens"])
def test_unknown_release_year_round_trips(
    tmp_path: Path, small_data: InteractionData, layout: str
) -> None:
    years = small_data.items.release_year.copy()
    years[[0, 5]] = 0
    genres = ((), *small_data.items.genres[1:])
    items = dataclasses.replace(small_data.items, release_year=years, genres=genres)
    data = dataclasses.replace(small_data, items=items)
    WRITERS[layout](data, tmp_path)
    loaded = load_movielens_100k(tmp_path)
    np.testing.assert_array_equal(loaded.items.release_year, years)
    assert loaded.items.genres[0] == ()


@pytest.mark.parametrize("layout", ["atomic", "grouplens"])
def test_layout_is_detected(tmp_path: Path, small_data: InteractionData, layout: str) -> None:
    WRITERS[layout](small_data, tmp_path)
    assert find_movielens_100k(tmp_path) == (tmp_path, layout)


def test_atomic_layout_wins_when_both_are_present(
    tmp_path: Path, small_data: InteractionData
) -> None:
    write_grouplens(small_data, tmp_path)
    write_atomic(small_data, tmp_path)
    assert find_movielens_100k(tmp_path) == (tmp_path, "atomic")


@pytest.mark.parametrize("layout", ["atomic", "grouplens"])
def test_parent_directory_is_accepted(
    tmp_path: Path, small_data: InteractionData, layout: str
) -> None:
    WRITERS[layout](small_data, tmp_path / "ml-100k")
    assert find_movielens_100k(tmp_path) == (tmp_path / "ml-100k", layout)
    assert_same_data(load_movielens_100k(str(tmp_path)), small_data)


def test_missing_files_error_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n")  # one file is not a layout
    with pytest.raises(FileNotFoundError) as raised:
        load_movielens_100k(tmp_path)
    message = str(raised.value)
    for expected in (*ATOMIC_NAMES, "u.data", "u.user", "u.item", "recserve data fetch ml-100k"):
        assert expected in message


def test_atomic_columns_are_read_by_name(tmp_path: Path) -> None:
    (tmp_path / "ml-100k.inter").write_text(
        "timestamp:float\trating:float\titem_id:token\tuser_id:token\n"
        "881250949\t3\t242\t196\n"
        "891717742\t4.5\t302\t186\n"
    )
    (tmp_path / "ml-100k.user").write_text(
        "zip_code:token\toccupation:token\tgender:token\tage:token\tuser_id:token\n"
        "85711\ttechnician\tM\t49\t196\n"
        "94043\tother\tF\t\t186\n"
    )
    (tmp_path / "ml-100k.item").write_text(
        "class:token_seq\trelease_year:token\tmovie_title:token_seq\titem_id:token\textra:float\n"
        "Comedy\t1997\tKolya\t242\t0.5\n"
        "unknown\tunkonwn\tunkonwn\t302\t0.1\n",
        encoding="utf-8",
    )
    data = load_movielens_100k(tmp_path)
    np.testing.assert_array_equal(data.user_id, [196, 186])
    np.testing.assert_array_equal(data.item_id, [242, 302])
    np.testing.assert_array_equal(data.rating, np.array([3.0, 4.5], dtype=np.float32))
    np.testing.assert_array_equal(data.timestamp, [881250949, 891717742])
    np.testing.assert_array_equal(data.users.age, [49, 0])
    np.testing.assert_array_equal(data.users.occupation, ["technician", "other"])
    np.testing.assert_array_equal(data.items.title, ["Kolya", "unkonwn"])
    np.testing.assert_array_equal(data.items.release_year, [1997, 0])
    assert data.items.genres == (("Comedy",), ("unknown",))


def test_atomic_header_without_a_needed_column_is_reported(tmp_path: Path) -> None:
    write_atomic(make_synthetic_movielens(n_users=5, n_items=10, n_interactions=25), tmp_path)
    (tmp_path / "ml-100k.inter").write_text("user_id:token\titem_id:token\n1\t1\n")
    with pytest.raises(ValueError, match=r"ml-100k\.inter:1: .*\['rating', 'timestamp'\]"):
        load_movielens_100k(tmp_path)


def test_grouplens_titles_are_latin1(tmp_path: Path) -> None:
    flags_drama_musical = "|".join("1" if g in ("Drama", "Musical") else "0" for g in GENRES)
    flags_unknown = "|".join("1" if g == "unknown" else "0" for g in GENRES)
    (tmp_path / "u.item").write_bytes(
        b"543|Mis\xe9rables, Les (1995)|01-Jan-1995||"
        b"http://us.imdb.com/M/title-exact?Mis%E9rables%2C%20Les%20%281995%29|"
        + flags_drama_musical.encode()
        + b"\n267|unknown||||"
        + flags_unknown.encode()
        + b"\n"
    )
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    (tmp_path / "u.data").write_text("1\t543\t4\t881250949\n1\t267\t3\t881250950\n")
    data = load_movielens_100k(tmp_path)
    np.testing.assert_array_equal(data.items.title, ["Misérables, Les (1995)", "unknown"])
    np.testing.assert_array_equal(data.items.release_year, [1995, 0])
    assert data.items.genres == (("Drama", "Musical"), ("unknown",))


def test_grouplens_writer_encodes_latin1(tmp_path: Path, small_data: InteractionData) -> None:
    titles = small_data.items.title.copy()
    titles[0] = "Café Noël"
    data = dataclasses.replace(
        small_data, items=dataclasses.replace(small_data.items, title=titles)
    )
    write_grouplens(data, tmp_path)
    assert b"|Caf\xe9 No\xebl|" in (tmp_path / "u.item").read_bytes()
    assert load_movielens_100k(tmp_path).items.title[0] == "Café Noël"


def test_writers_refuse_separators_in_titles(tmp_path: Path, small_data: InteractionData) -> None:
    titles = small_data.items.title.copy()
    titles[0] = "A|B\tC"
    data = dataclasses.replace(
        small_data, items=dataclasses.replace(small_data.items, title=titles)
    )
    for writer in (write_grouplens, write_atomic):
        with pytest.raises(ValueError, match="separator"):
            writer(data, tmp_path)


def test_malformed_line_names_file_and_line(tmp_path: Path, small_data: InteractionData) -> None:
    write_grouplens(small_data, tmp_path)
    lines = (tmp_path / "u.data").read_text().splitlines()
    lines[1] = "1\t2\t3"
    (tmp_path / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"u\.data:2: expected 4 tab-separated fields, got 3"):
        load_movielens_100k(tmp_path)


def test_interaction_with_unknown_user_is_rejected_on_load(
    tmp_path: Path, small_data: InteractionData
) -> None:
    write_atomic(small_data, tmp_path)
    with (tmp_path / "ml-100k.inter").open("a") as handle:
        handle.write("99999\t1\t5\t881250949\n")
    with pytest.raises(ValueError, match=r"user ids .* missing from the users table .*99999"):
        load_movielens_100k(tmp_path)


# --- the synthetic generator -----------------------------------------------------------------


def test_generator_is_deterministic() -> None:
    first = make_synthetic_movielens(seed=7)
    assert_same_data(make_synthetic_movielens(seed=7), first)
    other = make_synthetic_movielens(seed=8)
    assert not np.array_equal(other.item_id, first.item_id)
    assert not np.array_equal(other.users.age, first.users.age)


def test_generator_has_the_ml100k_schema() -> None:
    data = make_synthetic_movielens(n_users=200, n_items=150, n_interactions=6000, seed=0)
    assert (len(data), len(data.users), len(data.items)) == (6000, 200, 150)
    users, items = data.users, data.items
    assert users.age.min() >= 7
    assert users.age.max() <= 73
    assert set(users.gender.tolist()) == {"M", "F"}
    assert set(users.occupation.tolist()) <= set(OCCUPATIONS)
    assert items.release_year.min() >= 1930
    assert items.release_year.max() <= 1998
    assert all(1 <= len(genres) <= 3 and set(genres) <= set(GENRES) for genres in items.genres)
    assert set(np.unique(data.rating).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    pairs = data.user_id * (items.item_id.max() + 1) + data.item_id
    assert np.unique(pairs).size == len(data)
    assert np.bincount(data.user_id)[users.user_id].min() >= 5
    assert np.all(np.diff(data.timestamp) >= 0)


def test_generator_plants_learnable_structure() -> None:
    data, truth = make_synthetic_movielens_with_truth(n_users=200, n_items=150, seed=0)
    user_row = np.searchsorted(data.users.user_id, data.user_id)
    item_row = np.searchsorted(data.items.item_id, data.item_id)
    has_favourite = np.array(
        [
            truth.favourite_genre[user] in data.items.genres[item]
            for user, item in zip(user_row, item_row, strict=True)
        ]
    )
    # planted: +1.5 rating points for the favourite genre; clipping at 5 takes some away
    margin = data.rating[has_favourite].mean() - data.rating[~has_favourite].mean()
    assert margin > 1.0
    assert np.corrcoef(truth.item_quality[item_row], data.rating)[0, 1] > 0.3
    # Zipf-like popularity: the top tenth of items gets well over a tenth of the events
    counts = np.sort(np.bincount(item_row, minlength=len(data.items)))[::-1]
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.2


def test_favourite_genre_follows_occupation_and_gender() -> None:
    data, truth = make_synthetic_movielens_with_truth(
        n_users=2000, n_items=150, n_interactions=10_000, seed=1
    )
    groups = np.char.add(data.users.occupation, data.users.gender)
    modal = 0
    for group in np.unique(groups):
        _, counts = np.unique(truth.favourite_genre[groups == group], return_counts=True)
        modal += counts.max()
    # planted: 70 % of users take their group's typical genre; independent draws from the
    # genre frequencies would give a modal share near Drama's 25 %
    assert modal / len(groups) > 0.5


@pytest.mark.parametrize(
    ("n_users", "n_items", "n_interactions"),
    [(10, 20, 49), (10, 20, 201), (10, 4, 40), (0, 20, 0)],
)
def test_generator_rejects_impossible_sizes(
    n_users: int, n_items: int, n_interactions: int
) -> None:
    with pytest.raises(ValueError, match="n_"):
        make_synthetic_movielens(n_users, n_items, n_interactions)


def test_generator_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(synthetic_module, verbose=False)
    assert tried > 0
    assert failures == 0


# --- the tables ------------------------------------------------------------------------------


def test_tables_save_without_pickle(small_data: InteractionData) -> None:
    arrays = [
        small_data.rating,
        small_data.users.gender,
        small_data.users.occupation,
        small_data.items.title,
        np.array([" ".join(genres) for genres in small_data.items.genres]),
    ]
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        buffer.seek(0)
        np.testing.assert_array_equal(np.load(buffer, allow_pickle=False), array)


def _users(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "user_id": np.array([1, 2]),
        "age": np.array([20, 0]),
        "gender": np.array(["M", ""]),
        "occupation": np.array(["student", "other"]),
    }
    return {**fields, **changes}


def _items(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "item_id": np.array([10, 11]),
        "title": np.array(["A", "B"]),
        "release_year": np.array([1995, 0]),
        "genres": (("Drama",), ()),
    }
    return {**fields, **changes}


def _interactions(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "name": "tiny",
        "user_id": np.array([1, 2, 2]),
        "item_id": np.array([10, 10, 11]),
        "rating": np.array([5.0, 3.0, 1.0]),
        "timestamp": np.array([1, 2, 3]),
        "users": Users(**_users()),
        "items": Items(**_items()),
    }
    return {**fields, **changes}


def test_valid_tables_are_accepted_and_normalised() -> None:
    data = InteractionData(**_interactions(user_id=[1, 2, 2]))
    assert data.user_id.dtype == np.int64
    assert data.rating.dtype == np.float32
    assert data.users.gender.dtype.kind == "U"
    assert len(data) == 3
    assert len(data.users) == 2
    assert len(data.items) == 2


@pytest.mark.parametrize(
    ("table", "fields", "message"),
    [
        (Users, _users(age=np.array([1, 2, 3])), "same length"),
        (Users, _users(user_id=np.array([1, 1])), r"unique.*\[1\]"),
        (Users, _users(gender=np.array(["M", "x"])), "gender"),
        (Users, _users(age=np.array([-1, 2])), "age"),
        (Users, _users(occupation=np.array([1, 2], dtype=object)), "unicode"),
        (Users, _users(user_id=np.array([1.0, 2.0])), "integers"),
        (Items, _items(item_id=np.array([10, 10])), r"unique.*\[10\]"),
        (Items, _items(genres=(("Drama",),)), "genres=1"),
        (Items, _items(title=np.array([["A", "B"]])), "1-D"),
        (InteractionData, _interactions(rating=np.array([5.0, 3.0])), "rating=2"),
        (InteractionData, _interactions(user_id=np.array([1, 2, 3])), r"user ids.*\[3\]"),
        (InteractionData, _interactions(item_id=np.array([10, 12, 13])), r"item ids.*\[12, 13\]"),
        (InteractionData, _interactions(rating=np.array([5.0, np.nan, 1.0])), "NaN"),
    ],
)
def test_inconsistent_tables_are_rejected(
    table: type, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        table(**fields)


# --- fetching --------------------------------------------------------------------------------


def _forbid_pip(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"fetch ran a command although the data was there: {args}")


def _pip_that_copies(wheel: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
        assert "recbole==1.2.1" in command
        shutil.copy(wheel, Path(command[command.index("-d") + 1]) / wheel.name)
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


@pytest.fixture(scope="module")
def ml100k_sized() -> InteractionData:
    return make_synthetic_movielens(n_users=943, n_items=1682, n_interactions=100_000, seed=5)


def _fake_wheel(directory: Path, atomic_dir: Path) -> Path:
    wheel = directory / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("recbole/__init__.py", "")
        for name in ATOMIC_NAMES:
            archive.write(atomic_dir / name, f"recbole/dataset_example/ml-100k/{name}")
    return wheel


def test_fetch_returns_existing_data_without_pip(
    tmp_path: Path, small_data: InteractionData, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_atomic(small_data, tmp_path / "ml-100k")
    monkeypatch.setattr(subprocess, "run", _forbid_pip)
    messages: list[str] = []
    assert fetch_movielens_100k(tmp_path, progress=messages.append) == tmp_path / "ml-100k"
    assert messages


def test_fetch_extracts_the_atomic_files_from_the_wheel(
    tmp_path: Path, ml100k_sized: InteractionData, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_atomic(ml100k_sized, tmp_path / "source")
    wheel = _fake_wheel(tmp_path, tmp_path / "source")
    monkeypatch.setattr(subprocess, "run", _pip_that_copies(wheel))
    target = fetch_movielens_100k(tmp_path / "data", progress=None)
    assert target == tmp_path / "data" / "ml-100k"
    assert sorted(path.name for path in target.iterdir()) == sorted(ATOMIC_NAMES)
    for name in ATOMIC_NAMES:
        assert (target / name).read_bytes() == (tmp_path / "source" / name).read_bytes()
    assert_same_data(load_movielens_100k(tmp_path / "data"), ml100k_sized)


def test_fetch_refuses_a_short_file_and_writes_nothing(
    tmp_path: Path, ml100k_sized: InteractionData, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_atomic(ml100k_sized, tmp_path / "source")
    item_file = tmp_path / "source" / "ml-100k.item"
    item_file.write_text("".join(item_file.read_text().splitlines(keepends=True)[:-1]))
    wheel = _fake_wheel(tmp_path, tmp_path / "source")
    monkeypatch.setattr(subprocess, "run", _pip_that_copies(wheel))
    with pytest.raises(RuntimeError, match=r"ml-100k\.item .* 1682 lines, expected 1683"):
        fetch_movielens_100k(tmp_path / "data", progress=None)
    assert list((tmp_path / "data" / "ml-100k").iterdir()) == []


def test_fetch_reports_pip_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match=r"(?s)No matching distribution.*package index"):
        fetch_movielens_100k(tmp_path, progress=None)


@pytest.mark.slow
def test_fetch_downloads_movielens_100k(tmp_path: Path) -> None:
    target = fetch_movielens_100k(tmp_path, progress=None)
    data = load_movielens_100k(target)
    assert (len(data), len(data.users), len(data.items)) == (100_000, 943, 1682)
    assert np.unique(data.user_id).size == 943
