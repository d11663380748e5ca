"""Generic CSV/TSV interaction logs described by a TOML or JSON schema file.

Most schemas here are TOML, which needs Python >= 3.11 (tomllib); on 3.10 the JSON paths
are covered by test_data_dispatch.py.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from recserve.training.data import (
    InteractionData,
    load_interaction_log,
    make_synthetic_movielens,
    write_interaction_log,
)

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="TOML needs Python 3.11")


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def write_csv_log(data: InteractionData, directory: Path) -> Path:
    """Write ``data`` as events.csv + users.csv + items.tsv and a TOML schema; return it."""
    events = ["uid,iid,stars,when"] + [
        f"{u},{i},{r:g},{t}"
        for u, i, r, t in zip(
            data.user_id.tolist(),
            data.item_id.tolist(),
            data.rating.tolist(),
            data.timestamp.tolist(),
            strict=True,
        )
    ]
    users = ["id,job,sex,age"] + [
        f"{u},{o},{g},{a}"
        for u, a, g, o in zip(
            data.users.user_id.tolist(),
            data.users.age.tolist(),
            data.users.gender.tolist(),
            data.users.occupation.tolist(),
            strict=True,
        )
    ]
    items = ["item\tname\tyear\ttags"] + [
        f"{i}\t{t}\t{y or ''}\t{'|'.join(g)}"
        for i, t, y, g in zip(
            data.items.item_id.tolist(),
            data.items.title.tolist(),
            data.items.release_year.tolist(),
            data.items.genres,
            strict=True,
        )
    ]
    write(directory / "events.csv", "\n".join(events) + "\n")
    write(directory / "users.csv", "\n".join(users) + "\n")
    write(directory / "items.tsv", "\n".join(items) + "\n")
    return write(
        directory / "shop.toml",
        """\
name = "shop"

[interactions]
file = "events.csv"
user = "uid"
item = "iid"
rating = "stars"
timestamp = "when"

[users]
file = "users.csv"
id = "id"
age = "age"
gender = "sex"
occupation = "job"

[items]
file = "items.tsv"       # tab-delimited: from the suffix
id = "item"
title = "name"
release_year = "year"
genres = "tags"
genre_separator = "|"
""",
    )


@pytest.fixture(scope="module")
def small_data() -> InteractionData:
    return make_synthetic_movielens(n_users=15, n_items=20, n_interactions=150, seed=7)


def assert_same_data(loaded: InteractionData, expected: InteractionData) -> None:
    for field in ("user_id", "item_id", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(expected, field))
    for field in ("user_id", "age", "gender", "occupation"):
        np.testing.assert_array_equal(getattr(loaded.users, field), getattr(expected.users, field))
    for field in ("item_id", "title", "release_year"):
        np.testing.assert_array_equal(getattr(loaded.items, field), getattr(expected.items, field))
    assert loaded.items.genres == expected.items.genres


# --- loading -----------------------------------------------------------------------------


def test_explicit_log_with_feature_tables_round_trips(
    tmp_path: Path, small_data: InteractionData
) -> None:
    loaded = load_interaction_log(write_csv_log(small_data, tmp_path))
    assert loaded.name == "shop"
    assert loaded.rating.dtype == np.float32 and loaded.timestamp.dtype == np.int64
    assert_same_data(loaded, small_data)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_writer_round_trips_quotes_commas_and_unknowns(
    tmp_path: Path, small_data: InteractionData, suffix: str
) -> None:
    titles = small_data.items.title.tolist()
    titles[:3] = ("Paris, Texas", 'The "Quote"', "")
    years = small_data.items.release_year.copy()
    years[0] = 0
    items = dataclasses.replace(small_data.items, title=np.array(titles), release_year=years)
    ages = small_data.users.age.copy()
    ages[0] = 0
    genders = small_data.users.gender.copy()
    genders[1] = ""
    users = dataclasses.replace(small_data.users, age=ages, gender=genders)
    data = dataclasses.replace(small_data, users=users, items=items)
    schema = write_interaction_log(data, tmp_path, suffix)
    assert schema == tmp_path / f"{data.name}{suffix}"
    loaded = load_interaction_log(schema)
    assert loaded.name == data.name
    assert_same_data(loaded, data)


def test_json_schema_reads_like_toml(tmp_path: Path, small_data: InteractionData) -> None:
    toml_schema = write_csv_log(small_data, tmp_path)
    schema = {
        "interactions": {
            "file": "events.csv",
            "user": "uid",
            "item": "iid",
            "rating": "stars",
            "timestamp": "when",
        },
        "items": {"file": "items.tsv", "id": "item", "title": "name", "genres": "tags"},
    }
    json_schema = write(tmp_path / "shop-json.json", json.dumps(schema))
    loaded = load_interaction_log(json_schema)
    assert loaded.name == "shop-json"  # no name: the file's stem
    np.testing.assert_array_equal(loaded.rating, load_interaction_log(toml_schema).rating)
    assert loaded.items.genres == small_data.items.genres
    assert not loaded.items.release_year.any()  # not mapped: unknown
    assert not loaded.users.age.any() and set(loaded.users.gender.tolist()) == {""}


def test_implicit_tsv_without_header_or_timestamps(tmp_path: Path) -> None:
    write(tmp_path / "clicks.tsv", "7\t100\n3\t101\n\n7\t101\n")
    schema = write(
        tmp_path / "clicks.toml",
        'name = "clicks"\n[interactions]\nfile = "clicks.tsv"\nheader = false\nuser = 0\nitem = 1\n',
    )
    data = load_interaction_log(schema)
    assert data.name == "clicks"
    assert data.user_id.tolist() == [7, 3, 7] and data.item_id.tolist() == [100, 101, 101]
    np.testing.assert_array_equal(data.rating, np.ones(3, dtype=np.float32))
    assert data.timestamp.tolist() == [0, 1, 2]  # file order
    assert data.users.user_id.tolist() == [3, 7] and data.items.item_id.tolist() == [100, 101]
    assert data.users.age.tolist() == [0, 0] and data.users.occupation.tolist() == ["", ""]
    assert data.items.title.tolist() == ["", ""] and data.items.genres == ((), ())


def test_semicolon_csv_with_quotes_iso_times_and_unknown_values(tmp_path: Path) -> None:
    write(
        tmp_path / "log.csv",
        "u;i;r;t\n1;10;4.5;2000-01-01T00:00:00\n2;11;2;2000-01-01T00:00:01+01:00\n"
        "9;12;3;946684800.0\n",
    )
    write(
        tmp_path / "items.csv",
        'id;title;year;genres\n10;"Paris; Texas";1984-05-19;Drama, Road\n11;;;\n13;Orphan;;\n',
    )
    write(tmp_path / "users.csv", "uid;gender;age\n1;female;25\n2;;\n3;M;40.0\n")
    schema = write(
        tmp_path / "s.toml",
        """\
name = "mixed"
[interactions]
file = "log.csv"
delimiter = ";"
user = "u"
item = "i"
rating = "r"
timestamp = "t"
[users]
file = "users.csv"
delimiter = ";"
id = "uid"
gender = "gender"
age = "age"
[items]
file = "items.csv"
delimiter = ";"
id = "id"
title = "title"
release_year = "year"
genres = "genres"
genre_separator = ","
""",
    )
    data = load_interaction_log(schema)
    np.testing.assert_array_equal(data.rating, np.array([4.5, 2, 3], dtype=np.float32))
    assert data.timestamp.tolist() == [946684800, 946684801 - 3600, 946684800]
    # table rows in file order (3 has no interactions and stays), then log-only ids sorted
    assert data.users.user_id.tolist() == [1, 2, 3, 9]
    assert data.users.gender.tolist() == ["F", "", "M", ""]
    assert data.users.age.tolist() == [25, 0, 40, 0]
    assert data.items.item_id.tolist() == [10, 11, 13, 12]
    assert data.items.title.tolist() == ["Paris; Texas", "", "Orphan", ""]
    assert data.items.release_year.tolist() == [1984, 0, 0, 0]
    assert data.items.genres == (("Drama", "Road"), (), (), ())


def test_encoding_option_and_byte_order_mark(tmp_path: Path) -> None:
    write(tmp_path / "log.csv", "\ufeffuser,item\n1,2\n")  # utf-8 with BOM
    write(tmp_path / "items.csv", "id,title\n2,Amélie\n", encoding="latin-1")
    schema = write(
        tmp_path / "s.toml",
        '[interactions]\nfile = "log.csv"\nuser = "user"\nitem = "item"\n'
        '[items]\nfile = "items.csv"\nencoding = "latin-1"\nid = "id"\ntitle = "title"\n',
    )
    assert load_interaction_log(schema).items.title.tolist() == ["Amélie"]


# --- errors ------------------------------------------------------------------------------


def _schema(directory: Path, extra: str = "", interactions: str = "") -> Path:
    return write(
        directory / "s.toml",
        '[interactions]\nfile = "log.csv"\nuser = "user"\nitem = "item"\nrating = "rating"\n'
        + interactions
        + extra,
    )


@pytest.mark.parametrize(
    ("log", "problem"),
    [
        ("user,item,rating\n1,2,5\n1,3\n", r"log.csv:3: expected 3 fields separated by ',', got 2"),
        ("user,item,rating\n1,2,5\n1,3,good\n", r"log.csv:3: rating 'good' is not a number"),
        ("user,item,rating\n1,2,5\nu1,3,4\n", r"log.csv:3: user id 'u1' is not an integer.*int64"),
        ("user,item,rating\n", r"log.csv: no interactions"),
        ('user,item,rating\n1,2,5\n1,"3,4\n', r"log.csv:\d+: .*"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, log: str, problem: str) -> None:
    write(tmp_path / "log.csv", log)
    with pytest.raises(ValueError, match=problem):
        load_interaction_log(_schema(tmp_path))


def test_unknown_column_name_lists_the_header(tmp_path: Path) -> None:
    write(tmp_path / "log.csv", "user,item,score\n1,2,5\n")
    with pytest.raises(ValueError, match=r"log.csv:1: \[interactions\] rating = 'rating' is not"):
        load_interaction_log(_schema(tmp_path))
    with pytest.raises(ValueError, match=r"the header has \['user', 'item', 'score'\]"):
        load_interaction_log(_schema(tmp_path))


def test_column_position_past_the_row_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "log.csv", "1,2\n")
    schema = write(
        tmp_path / "s.toml",
        '[interactions]\nfile = "log.csv"\nheader = false\nuser = 0\nitem = 1\ntimestamp = 2\n',
    )
    with pytest.raises(ValueError, match=r"timestamp = 2, but the rows have only 2 fields"):
        load_interaction_log(schema)


@pytest.mark.parametrize(
    ("extra", "interactions", "error", "problem"),
    [
        ("", "usr = 'user'\n", ValueError, r"\[interactions\]: unknown keys \['usr'\]"),
        ("[films]\nfile = 'x'\n", "", ValueError, r"unknown key 'films'"),
        ("", "header = false\n", ValueError, r"'user' names column 'user', but header = false"),
        ("", "delimiter = ';;'\n", ValueError, r"'delimiter' must be one character"),
        ("[items]\nfile = 'items.csv'\n", "", ValueError, r"\[items\]: missing keys \['id'\]"),
        ("[items]\nfile = 'nope.csv'\nid = 'id'\n", "", FileNotFoundError, r"nope.csv"),
    ],
)
def test_invalid_schema_is_reported(
    tmp_path: Path, extra: str, interactions: str, error: type[Exception], problem: str
) -> None:
    write(tmp_path / "log.csv", "user,item,rating\n1,2,5\n")
    write(tmp_path / "items.csv", "id\n2\n")
    with pytest.raises(error, match=problem):
        load_interaction_log(_schema(tmp_path, extra, interactions))


def test_duplicate_ids_in_a_feature_table_name_both_lines(tmp_path: Path) -> None:
    write(tmp_path / "log.csv", "user,item,rating\n1,2,5\n")
    write(tmp_path / "users.csv", "id,age\n1,30\n4,20\n1,31\n")
    schema = _schema(tmp_path, '[users]\nfile = "users.csv"\nid = "id"\nage = "age"\n')
    with pytest.raises(ValueError, match=r"users.csv:4: id 1 was already given on line 2"):
        load_interaction_log(schema)


@pytest.mark.parametrize(
    ("row", "problem"),
    [("1,X,30", r"users.csv:2: gender 'X' must be M or F"), ("1,M,-3", r"users.csv:2: age '-3'")],
)
def test_bad_feature_values_name_file_and_line(tmp_path: Path, row: str, problem: str) -> None:
    write(tmp_path / "log.csv", "user,item,rating\n1,2,5\n")
    write(tmp_path / "users.csv", f"id,gender,age\n{row}\n")
    schema = _schema(
        tmp_path, '[users]\nfile = "users.csv"\nid = "id"\ngender = "gender"\nage = "age"\n'
    )
    with pytest.raises(ValueError, match=problem):
        load_interaction_log(schema)


def test_schema_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="schema file"):
        load_interaction_log(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match=r"bad.json:1: invalid JSON"):
        load_interaction_log(write(tmp_path / "bad.json", "{nope"))
    with pytest.raises(ValueError, match=r"bad.toml: invalid TOML"):
        load_interaction_log(write(tmp_path / "bad.toml", "[interactions\n"))
    with pytest.raises(ValueError, match=r"must end in .toml or .json"):
        load_interaction_log(write(tmp_path / "s.yaml", "a: 1\n"))
