"""Load MovieLens-1M from the GroupLens layout (the files of ``ml-1m.zip``).

- ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``.
- ``users.dat``: ``UserID::Gender::Age::Occupation::Zip-code``. Age is a group code
  (1, 18, 25, 35, 45, 50, 56) and is stored as given: the group's lower bound in years,
  except 1, which means "under 18". Occupation is a code 0-20, stored as its name from
  the ML-1M README (``OCCUPATIONS_1M``). The zip code is not read.
- ``movies.dat`` (latin-1): ``MovieID::Title (Year)::Genre|Genre|...``. The title is kept
  as written, year included, as in MovieLens-100k; the release year is parsed from its
  trailing ``(YYYY)`` (0 when there is none).

MovieLens' licence forbids redistributing the data, and no copy of ML-1M is reachable
through the package index, so recserve cannot fetch it: each user downloads ``ml-1m.zip``
from the GroupLens site and unpacks it into the data folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .types import InteractionData, Items, Users

DATASET_NAME_1M = "ml-1m"
GROUPLENS_1M_FILES = ("ratings.dat", "users.dat", "movies.dat")
DOWNLOAD_URL_1M = "https://grouplens.org/datasets/movielens/1m/"
SEPARATOR_1M = "::"

AGE_GROUPS_1M = (1, 18, 25, 35, 45, 50, 56)
"""The age codes of ``users.dat``: the lower bound of each group in years; 1 is "under 18"."""

OCCUPATIONS_1M = (
    "other or not specified",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
"""The 21 occupations of MovieLens-1M; the code in ``users.dat`` is the index."""

_TRAILING_YEAR = re.compile(r"\((\d{4})\)\s*$")


def load_movielens_1m(path: str | Path) -> InteractionData:
    """Load MovieLens-1M from ``path`` (GroupLens ``ratings.dat``/``users.dat``/``movies.dat``).

    Args:
        path: the directory holding the three files, or its parent if they are in an
            ``ml-1m/`` subfolder (as ``ml-1m.zip`` unpacks).

    Returns:
        The interactions in file order, with the user and item tables; named ``"ml-1m"``.

    Raises:
        FileNotFoundError: the files are not there; the message says where to get them.
        ValueError: a file is malformed; the message names the file and line.
    """
    directory = find_movielens_1m(path)
    ratings, users, movies = (directory / name for name in GROUPLENS_1M_FILES)
    user_ids, item_ids, values, timestamps = [], [], [], []
    for number, fields in _read_rows(ratings, 4):
        user_ids.append(_parse_int(ratings, number, "UserID", fields[0]))
        item_ids.append(_parse_int(ratings, number, "MovieID", fields[1]))
        values.append(_parse_float(ratings, number, "Rating", fields[2]))
        timestamps.append(_parse_int(ratings, number, "Timestamp", fields[3]))
    return InteractionData(
        name=DATASET_NAME_1M,
        user_id=np.array(user_ids, dtype=np.int64),
        item_id=np.array(item_ids, dtype=np.int64),
        rating=np.array(values, dtype=np.float32),
        timestamp=np.array(timestamps, dtype=np.int64),
        users=_load_users(users),
        items=_load_movies(movies),
    )


def find_movielens_1m(path: str | Path) -> Path:
    """Return the directory holding MovieLens-1M: ``path`` itself, else ``path / "ml-1m"``."""
    root = Path(path)
    for directory in (root, root / DATASET_NAME_1M):
        if all((directory / name).is_file() for name in GROUPLENS_1M_FILES):
            return directory
    raise FileNotFoundError(
        f"MovieLens-1M not found in {root} or {root / DATASET_NAME_1M}: expected the GroupLens "
        f"files {', '.join(GROUPLENS_1M_FILES)}. recserve cannot download it for you (its "
        f"licence forbids redistribution): download ml-1m.zip from {DOWNLOAD_URL_1M}, "
        f"unzip it so that {root / DATASET_NAME_1M} holds those files, and run again."
    )


def release_year_from_title(title: str) -> int:
    """``"Toy Story (1995)"`` -> 1995; 0 when the title does not end with ``(YYYY)``."""
    match = _TRAILING_YEAR.search(title)
    return int(match.group(1)) if match else 0


# --- helpers -----------------------------------------------------------------------------


def _malformed(file: Path, number: int, problem: str) -> ValueError:
    return ValueError(
        f"{file}:{number}: {problem}; the file looks damaged, unzip ml-1m.zip from "
        f"{DOWNLOAD_URL_1M} again"
    )


def _read_rows(file: Path, n_fields: int) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for every non-empty line of a ``::``-separated file."""
    with file.open(encoding="latin-1", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split(SEPARATOR_1M)
            if len(fields) != n_fields:
                raise _malformed(
                    file, number, f"expected {n_fields} '::'-separated fields, got {len(fields)}"
                )
            yield number, fields


def _parse_int(file: Path, number: int, column: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _malformed(file, number, f"{column} {text!r} is not an integer") from None


def _parse_float(file: Path, number: int, column: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _malformed(file, number, f"{column} {text!r} is not a number") from None


def _load_users(file: Path) -> Users:
    user_ids, ages, genders, occupations = [], [], [], []
    for number, (user, gender, age, occupation, _zip_code) in _read_rows(file, 5):
        user_ids.append(_parse_int(file, number, "UserID", user))
        if gender not in ("M", "F"):
            raise _malformed(file, number, f"Gender must be M or F, got {gender!r}")
        genders.append(gender)
        age_code = _parse_int(file, number, "Age", age)
        if age_code not in AGE_GROUPS_1M:
            raise _malformed(file, number, f"Age must be one of {AGE_GROUPS_1M}, got {age_code}")
        ages.append(age_code)
        code = _parse_int(file, number, "Occupation", occupation)
        if not 0 <= code < len(OCCUPATIONS_1M):
            raise _malformed(file, number, f"Occupation must be a code 0-20, got {code}")
        occupations.append(OCCUPATIONS_1M[code])
    return Users(
        user_id=np.array(user_ids, dtype=np.int64),
        age=np.array(ages, dtype=np.int64),
        gender=np.array(genders, dtype=np.str_),
        occupation=np.array(occupations, dtype=np.str_),
    )


def _load_movies(file: Path) -> Items:
    item_ids, titles, years, genres = [], [], [], []
    for number, (item, title, item_genres) in _read_rows(file, 3):
        item_ids.append(_parse_int(file, number, "MovieID", item))
        title = title.strip()
        titles.append(title)
        years.append(release_year_from_title(title))
        genres.append(tuple(genre for genre in item_genres.split("|") if genre))
    return Items(
        item_id=np.array(item_ids, dtype=np.int64),
        title=np.array(titles, dtype=np.str_),
        release_year=np.array(years, dtype=np.int64),
        genres=tuple(genres),
    )
