"""MovieLens-1M: the GroupLens ``::`` layout, read back from the synthetic writer and from
hand-written lines in the real files' format."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from recserve.training.data import (
    AGE_GROUPS_1M,
    OCCUPATIONS_1M,
    InteractionData,
    age_group_1m,
    find_movielens_1m,
    load_movielens_1m,
    make_synthetic_movielens,
    release_year_from_title,
    write_movielens_1m,
)


def as_ml1m(data: InteractionData) -> InteractionData:
    """``data`` with ML-1M occupations, age-group ages and ``Title (YYYY)`` titles."""
    rng = np.random.default_rng(0)
    occupations = np.array(OCCUPATIONS_1M)[rng.integers(0, len(OCCUPATIONS_1M), len(data.users))]
    users = dataclasses.replace(
        data.users, age=age_group_1m(data.users.age), occupation=occupations
    )
    titles = [
        f"{title} ({year})"
        for title, year in zip(
            data.items.title.tolist(), data.items.release_year.tolist(), strict=True
        )
    ]
    items = dataclasses.replace(data.items, title=np.array(titles))
    return dataclasses.replace(data, name="ml-1m", users=users, items=items)


@pytest.fixture(scope="module")
def ml1m_data() -> InteractionData:
    data = make_synthetic_movielens(n_users=25, n_items=30, n_interactions=300, seed=5)
    return as_ml1m(data)


def assert_same_data(loaded: InteractionData, expected: InteractionData) -> None:
    assert loaded.name == expected.name
    for field in ("user_id", "item_id", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(expected, field))
        assert getattr(loaded, field).dtype == getattr(expected, field).dtype, field
    for field in ("user_id", "age", "gender", "occupation"):
        np.testing.assert_array_equal(getattr(loaded.users, field), getattr(expected.users, field))
    for field in ("item_id", "title", "release_year"):
        np.testing.assert_array_equal(getattr(loaded.items, field), getattr(expected.items, field))
    assert loaded.items.genres == expected.items.genres


def test_round_trips_through_the_writer(tmp_path: Path, ml1m_data: InteractionData) -> None:
    write_movielens_1m(ml1m_data, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movies.dat", "ratings.dat", "users.dat"]
    assert_same_data(load_movielens_1m(tmp_path), ml1m_data)


def test_titles_are_latin1_and_keep_their_year(tmp_path: Path, ml1m_data: InteractionData) -> None:
    titles = ml1m_data.items.title.tolist()  # a list: a <U… copy would cut long titles
    titles[:2] = ("Misérables, Les (1995)", "Star Wars: Episode IV - A New Hope (1977)")
    years = ml1m_data.items.release_year.copy()
    years[:2] = (1995, 1977)
    items = dataclasses.replace(ml1m_data.items, title=np.array(titles), release_year=years)
    data = dataclasses.replace(ml1m_data, items=items)
    write_movielens_1m(data, tmp_path)
    raw = (tmp_path / "movies.dat").read_bytes()
    assert "Misérables".encode("latin-1") in raw and "Misérables".encode() not in raw
    assert_same_data(load_movielens_1m(tmp_path), data)


def test_writer_appends_a_missing_year_and_leaves_unknown_years_out(
    tmp_path: Path, ml1m_data: InteractionData
) -> None:
    titles = ml1m_data.items.title.tolist()
    titles[:2] = ("Noël", "Café")
    years = ml1m_data.items.release_year.copy()
    years[:2] = (1990, 0)
    items = dataclasses.replace(ml1m_data.items, title=np.array(titles), release_year=years)
    write_movielens_1m(dataclasses.replace(ml1m_data, items=items), tmp_path)
    loaded = load_movielens_1m(tmp_path)
    assert loaded.items.title[:2].tolist() == ["Noël (1990)", "Café"]
    assert loaded.items.release_year[:2].tolist() == [1990, 0]


def test_real_format_lines_decode_the_age_and_occupation_codes(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_bytes(b"1::1193::5::978300760\n2::2::3::978298413\n")
    (tmp_path / "users.dat").write_bytes(
        b"1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::0::55117\n"
    )
    (tmp_path / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "2::Misérables, Les (1995)::Drama|Musical\n"
        "3::Untitled::\n".encode("latin-1")
    )
    data = load_movielens_1m(tmp_path)
    assert data.name == "ml-1m"
    assert data.users.age.tolist() == [1, 56, 25]
    assert data.users.occupation.tolist() == ["K-12 student", "self-employed", OCCUPATIONS_1M[0]]
    assert data.users.gender.tolist() == ["F", "M", "M"]
    assert data.items.title.tolist()[1] == "Misérables, Les (1995)"
    assert data.items.release_year.tolist() == [1975, 1995, 0]
    assert data.items.genres == (("Drama",), ("Drama", "Musical"), ())
    np.testing.assert_array_equal(data.rating, np.array([5, 3], dtype=np.float32))
    np.testing.assert_array_equal(data.timestamp, [978300760, 978298413])


def test_occupation_names_are_the_readme_list() -> None:
    assert len(OCCUPATIONS_1M) == 21
    assert OCCUPATIONS_1M[0] == "other or not specified"
    assert OCCUPATIONS_1M[12] == "programmer" and OCCUPATIONS_1M[20] == "writer"


def test_age_group_maps_years_to_the_groups_lower_bound() -> None:
    ages = np.array([7, 17, 18, 24, 25, 44, 45, 49, 50, 55, 56, 80])
    assert age_group_1m(ages).tolist() == [1, 1, 18, 18, 25, 35, 45, 45, 50, 50, 56, 56]
    assert set(age_group_1m(ages).tolist()) == set(AGE_GROUPS_1M)
    with pytest.raises(ValueError, match="no unknown age"):
        age_group_1m(np.array([0, 30]))


@pytest.mark.parametrize(
    ("title", "year"),
    [("Toy Story (1995)", 1995), ("Heat (1995) ", 1995), ("City (Paris) (1962)", 1962), ("X", 0)],
)
def test_release_year_comes_from_the_trailing_year(title: str, year: int) -> None:
    assert release_year_from_title(title) == year


def test_parent_directory_with_ml1m_folder_is_accepted(
    tmp_path: Path, ml1m_data: InteractionData
) -> None:
    write_movielens_1m(ml1m_data, tmp_path / "ml-1m")
    assert find_movielens_1m(tmp_path) == tmp_path / "ml-1m"
    assert find_movielens_1m(tmp_path / "ml-1m") == tmp_path / "ml-1m"
    assert len(load_movielens_1m(tmp_path)) == len(ml1m_data)


def test_missing_files_error_says_where_to_get_them(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::1::5::1\n")
    with pytest.raises(FileNotFoundError) as caught:
        load_movielens_1m(tmp_path)
    message = str(caught.value)
    for expected in ("ratings.dat", "users.dat", "movies.dat", "grouplens.org", "licence"):
        assert expected in message
    assert str(tmp_path / "ml-1m") in message


@pytest.mark.parametrize(
    ("file", "line", "problem"),
    [
        ("users.dat", "3::M::25::21::55117", "Occupation must be a code 0-20"),
        ("users.dat", "3::M::30::1::55117", "Age must be one of"),
        ("users.dat", "3::X::25::1::55117", "Gender must be M or F"),
        ("ratings.dat", "1::1::5", "expected 4 '::'-separated fields, got 3"),
        ("ratings.dat", "1::1::five::978300760", "Rating 'five' is not a number"),
    ],
)
def test_malformed_line_names_file_and_line(
    tmp_path: Path, ml1m_data: InteractionData, file: str, line: str, problem: str
) -> None:
    write_movielens_1m(ml1m_data, tmp_path)
    path = tmp_path / file
    lines = path.read_text(encoding="latin-1").splitlines()
    lines[1] = line
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    with pytest.raises(ValueError, match=f"{file}:2: {problem}"):
        load_movielens_1m(tmp_path)


def test_writer_refuses_what_ml1m_cannot_hold(tmp_path: Path, ml1m_data: InteractionData) -> None:
    ml100k_style = make_synthetic_movielens(n_users=10, n_items=10, n_interactions=60)
    with pytest.raises(ValueError, match="codes only for the occupations"):
        write_movielens_1m(ml100k_style, tmp_path)
    titles = ml1m_data.items.title.tolist()
    titles[0] = "A::B"
    items = dataclasses.replace(ml1m_data.items, title=np.array(titles))
    with pytest.raises(ValueError, match="'::' separator"):
        write_movielens_1m(dataclasses.replace(ml1m_data, items=items), tmp_path)
