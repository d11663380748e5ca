"""Load MovieLens-100k from either of its two common on-disk layouts.

- GroupLens (the original zip): ``u.data`` (tab-separated ``user item rating timestamp``),
  ``u.user`` (``id|age|gender|occupation|zip``) and ``u.item`` (latin-1,
  ``id|title|release date|video release date|IMDb URL|`` then 19 genre flags).
- RecBole atomic files (what ``recserve data fetch ml-100k`` writes): ``ml-100k.inter``,
  ``ml-100k.user`` and ``ml-100k.item``, tab-separated UTF-8 with a ``name:type`` header;
  columns are read by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .types import InteractionData, Items, Users

DATASET_NAME = "ml-100k"

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""The 19 MovieLens-100k genres, in the order of the genre flags in ``u.item``."""

GROUPLENS_FILES = ("u.data", "u.user", "u.item")
ATOMIC_FILES = (f"{DATASET_NAME}.inter", f"{DATASET_NAME}.user", f"{DATASET_NAME}.item")


def load_movielens_100k(path: str | Path) -> InteractionData:
    """Load MovieLens-100k from ``path``, in the GroupLens or the RecBole atomic layout.

    Args:
        path: a directory holding the files of one layout, or its parent if the files are
            in an ``ml-100k/`` subfolder.

    Returns:
        The interactions in file order, with the user and item tables.

    Raises:
        FileNotFoundError: neither layout is found; the message lists the expected files.
        ValueError: a file is malformed; the message names the file and line.
    """
    directory, layout = find_movielens_100k(path)
    if layout == "atomic":
        return _load_atomic(directory)
    return _load_grouplens(directory)


def find_movielens_100k(path: str | Path) -> tuple[Path, str]:
    """Return the directory holding MovieLens-100k and its layout, ``"atomic"`` or ``"grouplens"``.

    ``path`` itself is tried first, then ``path / "ml-100k"``. Where both layouts are
    present, the atomic one wins.
    """
    root = Path(path)
    for directory in (root, root / DATASET_NAME):
        for layout, names in (("atomic", ATOMIC_FILES), ("grouplens", GROUPLENS_FILES)):
            if all((directory / name).is_file() for name in names):
                return directory, layout
    raise FileNotFoundError(
        f"MovieLens-100k not found in {root} or {root / DATASET_NAME}: expected either the "
        f"RecBole atomic files {', '.join(ATOMIC_FILES)} or the GroupLens files "
        f"{', '.join(GROUPLENS_FILES)}. Download it with `recserve data fetch ml-100k` "
        "(or unpack ml-100k.zip from grouplens.org) and pass that directory."
    )


# --- helpers -----------------------------------------------------------------------------


def _read_rows(file: Path, separator: str, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for every non-empty line."""
    with file.open(encoding=encoding, newline="") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if line:
                yield number, line.split(separator)


def _malformed(file: Path, number: int, problem: str) -> ValueError:
    return ValueError(
        f"{file}:{number}: {problem}; the file looks damaged, fetch it again "
        "(`recserve data fetch ml-100k`)"
    )


def _parse_int(file: Path, number: int, column: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise _malformed(file, number, f"{column} {text!r} is not a number") from None
        if not value.is_integer():
            raise _malformed(file, number, f"{column} {text!r} is not a whole number") from None
        return int(value)


def _parse_float(file: Path, number: int, column: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _malformed(file, number, f"{column} {text!r} is not a number") from None


def _parse_year(text: str) -> int:
    """A four-digit year, or 0 for empty or unreadable values (e.g. 'unkonwn' in ml-100k)."""
    text = text.strip()
    return int(text) if text.isdigit() else 0


def _interactions(
    name: str,
    columns: tuple[list[int], list[int], list[float], list[int]],
    users: Users,
    items: Items,
) -> InteractionData:
    user_ids, item_ids, ratings, timestamps = columns
    return InteractionData(
        name=name,
        user_id=np.array(user_ids, dtype=np.int64),
        item_id=np.array(item_ids, dtype=np.int64),
        rating=np.array(ratings, dtype=np.float32),
        timestamp=np.array(timestamps, dtype=np.int64),
        users=users,
        items=items,
    )


# --- GroupLens layout --------------------------------------------------------------------


def _load_grouplens(directory: Path) -> InteractionData:
    columns: tuple[list[int], list[int], list[float], list[int]] = ([], [], [], [])
    file = directory / "u.data"
    for number, fields in _read_rows(file, "\t", "latin-1"):
        if len(fields) != 4:
            raise _malformed(file, number, f"expected 4 tab-separated fields, got {len(fields)}")
        columns[0].append(_parse_int(file, number, "user id", fields[0]))
        columns[1].append(_parse_int(file, number, "item id", fields[1]))
        columns[2].append(_parse_float(file, number, "rating", fields[2]))
        columns[3].append(_parse_int(file, number, "timestamp", fields[3]))
    return _interactions(
        DATASET_NAME, columns, _load_grouplens_users(directory), _load_grouplens_items(directory)
    )


def _load_grouplens_users(directory: Path) -> Users:
    file = directory / "u.user"
    user_ids, ages, genders, occupations = [], [], [], []
    for number, fields in _read_rows(file, "|", "latin-1"):
        if len(fields) != 5:
            raise _malformed(file, number, f"expected 5 '|'-separated fields, got {len(fields)}")
        user_ids.append(_parse_int(file, number, "user id", fields[0]))
        ages.append(_parse_int(file, number, "age", fields[1]) if fields[1] else 0)
        genders.append(fields[2])
        occupations.append(fields[3])
    return Users(
        user_id=np.array(user_ids, dtype=np.int64),
        age=np.array(ages, dtype=np.int64),
        gender=np.array(genders, dtype=np.str_),
        occupation=np.array(occupations, dtype=np.str_),
    )


def _release_year_from_date(text: str) -> int:
    """'01-Jan-1995' -> 1995; '' -> 0."""
    return _parse_year(text.rsplit("-", 1)[-1])


def _load_grouplens_items(directory: Path) -> Items:
    file = directory / "u.item"
    n_fixed = 3 + len(GENRES)  # release date, video release date, URL, genre flags
    item_ids, titles, years, genres = [], [], [], []
    for number, fields in _read_rows(file, "|", "latin-1"):
        if len(fields) < 2 + n_fixed:
            raise _malformed(
                file, number, f"expected {2 + n_fixed} '|'-separated fields, got {len(fields)}"
            )
        flags = fields[-len(GENRES) :]
        if any(flag not in ("0", "1") for flag in flags):
            raise _malformed(file, number, f"genre flags must be 0 or 1, got {flags}")
        item_ids.append(_parse_int(file, number, "item id", fields[0]))
        titles.append("|".join(fields[1:-n_fixed]))  # a '|' inside a title stays in it
        years.append(_release_year_from_date(fields[-n_fixed]))
        genres.append(
            tuple(genre for genre, flag in zip(GENRES, flags, strict=True) if flag == "1")
        )
    return Items(
        item_id=np.array(item_ids, dtype=np.int64),
        title=np.array(titles, dtype=np.str_),
        release_year=np.array(years, dtype=np.int64),
        genres=tuple(genres),
    )


# --- RecBole atomic layout ---------------------------------------------------------------


def _read_atomic(file: Path, required: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, values of ``required`` columns) for each data row of ``file``."""
    rows = _read_rows(file, "\t", "utf-8")
    header = next(rows, None)
    if header is None:
        raise _malformed(file, 1, "the file is empty")
    names = [field.split(":", 1)[0] for field in header[1]]
    missing = [column for column in required if column not in names]
    if missing:
        raise _malformed(file, 1, f"header {header[1]} lacks the columns {missing}")
    positions = [names.index(column) for column in required]
    for number, fields in rows:
        if len(fields) > len(names):
            raise _malformed(
                file, number, f"expected {len(names)} tab-separated fields, got {len(fields)}"
            )
        fields += [""] * (len(names) - len(fields))  # trailing empty fields may be cut
        yield number, [fields[position] for position in positions]


def _load_atomic(directory: Path) -> InteractionData:
    columns: tuple[list[int], list[int], list[float], list[int]] = ([], [], [], [])
    file = directory / ATOMIC_FILES[0]
    required = ("user_id", "item_id", "rating", "timestamp")
    for number, (user, item, rating, timestamp) in _read_atomic(file, required):
        columns[0].append(_parse_int(file, number, "user_id", user))
        columns[1].append(_parse_int(file, number, "item_id", item))
        columns[2].append(_parse_float(file, number, "rating", rating))
        columns[3].append(_parse_int(file, number, "timestamp", timestamp))
    return _interactions(
        DATASET_NAME, columns, _load_atomic_users(directory), _load_atomic_items(directory)
    )


def _load_atomic_users(directory: Path) -> Users:
    file = directory / ATOMIC_FILES[1]
    user_ids, ages, genders, occupations = [], [], [], []
    required = ("user_id", "age", "gender", "occupation")
    for number, (user, age, gender, occupation) in _read_atomic(file, required):
        user_ids.append(_parse_int(file, number, "user_id", user))
        ages.append(_parse_int(file, number, "age", age) if age else 0)
        genders.append(gender)
        occupations.append(occupation)
    return Users(
        user_id=np.array(user_ids, dtype=np.int64),
        age=np.array(ages, dtype=np.int64),
        gender=np.array(genders, dtype=np.str_),
        occupation=np.array(occupations, dtype=np.str_),
    )


def _load_atomic_items(directory: Path) -> Items:
    file = directory / ATOMIC_FILES[2]
    item_ids, titles, years, genres = [], [], [], []
    required = ("item_id", "movie_title", "release_year", "class")
    for number, (item, title, year, classes) in _read_atomic(file, required):
        item_ids.append(_parse_int(file, number, "item_id", item))
        titles.append(title)
        years.append(_parse_year(year))
        genres.append(tuple(classes.split()))
    return Items(
        item_id=np.array(item_ids, dtype=np.int64),
        title=np.array(titles, dtype=np.str_),
        release_year=np.array(years, dtype=np.int64),
        genres=tuple(genres),
    )
