"""A small synthetic MovieLens-100k look-alike with planted structure, for fast tests.

The data has MovieLens-100k's schema (ages 7-73, gender M/F, the 21 occupations, release
years 1930-1998, one to three of its genres, integer ratings 1-5, Unix timestamps from
the ML-100k period) and structure a model can learn:

- each user has a favourite genre, usually the one typical of their (occupation, gender)
  group, else a random one;
- each item has a quality ~ N(0, 0.5);
- ``rating = clip(round(2.5 + 1.5 * [item has the user's favourite genre] + quality + noise),
  1, 5)`` with noise ~ N(0, 0.5);
- item popularity is Zipf-like, and users pick favourite-genre items three times as often.

Every user has at least five interactions, each (user, item) pair occurs at most once, and
the log is sorted by time. ``write_grouplens`` and ``write_atomic`` write any data set in
the two on-disk layouts that ``load_movielens_100k`` reads, byte-for-byte in the real
files' format; ``write_movielens_1m`` writes the layout ``load_movielens_1m`` reads, and
``write_interaction_log`` a CSV log with a schema file for ``load_interaction_log``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .movielens import ATOMIC_FILES, GENRES
from .movielens_1m import AGE_GROUPS_1M, GROUPLENS_1M_FILES, OCCUPATIONS_1M, SEPARATOR_1M
from .types import InteractionData, Items, Users

OCCUPATIONS = (
    "administrator",
    "artist",
    "doctor",
    "educator",
    "engineer",
    "entertainment",
    "executive",
    "healthcare",
    "homemaker",
    "lawyer",
    "librarian",
    "marketing",
    "none",
    "other",
    "programmer",
    "retired",
    "salesman",
    "scientist",
    "student",
    "technician",
    "writer",
)
"""The 21 occupations of MovieLens-100k."""

MIN_INTERACTIONS_PER_USER = 5

# Genres an item can have (all but "unknown"), drawn with ML-100k's genre frequencies.
_CONTENT_GENRES = GENRES[1:]
_GENRE_COUNTS = np.array(
    [251, 135, 42, 122, 505, 109, 50, 725, 22, 24, 92, 56, 61, 247, 101, 251, 71, 27], dtype=float
)
_GENRE_PROBABILITIES = _GENRE_COUNTS / _GENRE_COUNTS.sum()

_SHARE_MALE = 0.71  # as in ML-100k
_SHARE_TYPICAL_FAVOURITE = 0.7  # users whose favourite is their group's typical genre
_FAVOURITE_GENRE_BONUS = 1.5  # rating points
_FAVOURITE_PICK_FACTOR = 3.0  # how much more often a user picks a favourite-genre item
_ZIPF_EXPONENT = 1.0
_FIRST_TIMESTAMP = 874_724_710  # the first and last timestamps of ML-100k
_LAST_TIMESTAMP = 893_286_638
_TITLE_WORDS = (
    "Amélie",
    "Blue",
    "Café",
    "Dawn",
    "Echoes",
    "Frontier",
    "Garçon",
    "Harbour",
    "Island",
    "Jour de fête",
    "Kingdom",
    "Noël",
    "Outlaws",
    "Señor",
    "Winter",
)


@dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """The planted structure of a synthetic data set.

    Args:
        favourite_genre: each user's favourite genre, aligned with ``users.user_id``.
        item_quality: each item's quality in rating points, aligned with ``items.item_id``.
        item_popularity: each item's Zipf-like pick probability before the genre bias.
    """

    favourite_genre: np.ndarray
    item_quality: np.ndarray
    item_popularity: np.ndarray


def make_synthetic_movielens(
    n_users: int = 200, n_items: int = 150, n_interactions: int = 6000, seed: int = 0
) -> InteractionData:
    """A synthetic MovieLens-100k look-alike, the same for the same arguments.

    Example::

        >>> data = make_synthetic_movielens(n_users=20, n_items=30, n_interactions=200)
        >>> len(data), len(data.users), len(data.items)
        (200, 20, 30)
    """
    data, _ = make_synthetic_movielens_with_truth(n_users, n_items, n_interactions, seed)
    return data


def make_synthetic_movielens_with_truth(
    n_users: int = 200, n_items: int = 150, n_interactions: int = 6000, seed: int = 0
) -> tuple[InteractionData, SyntheticTruth]:
    """Like ``make_synthetic_movielens``, and also return the planted structure."""
    if n_users < 1 or n_items < MIN_INTERACTIONS_PER_USER:
        raise ValueError(
            f"need n_users >= 1 and n_items >= {MIN_INTERACTIONS_PER_USER}, "
            f"got n_users={n_users}, n_items={n_items}"
        )
    if not MIN_INTERACTIONS_PER_USER * n_users <= n_interactions <= n_users * n_items:
        raise ValueError(
            f"n_interactions must lie between {MIN_INTERACTIONS_PER_USER} per user "
            f"({MIN_INTERACTIONS_PER_USER * n_users}) and one per (user, item) pair "
            f"({n_users * n_items}), got {n_interactions}"
        )
    rng = np.random.default_rng(seed)
    users, favourite = _make_users(rng, n_users)
    items, item_genres = _make_items(rng, n_items)
    quality = rng.normal(0.0, 0.5, n_items)
    popularity = 1.0 / (1.0 + rng.permutation(n_items)) ** _ZIPF_EXPONENT
    popularity /= popularity.sum()

    likes = item_genres[:, favourite].T  # (n_users, n_items): item has the user's favourite
    counts = _interactions_per_user(rng, n_users, n_items, n_interactions)
    user_index = np.repeat(np.arange(n_users), counts)
    item_index = np.empty(n_interactions, dtype=np.int64)
    timestamp = np.empty(n_interactions, dtype=np.int64)
    start = 0
    for user, count in enumerate(counts):
        weights = popularity * np.where(likes[user], _FAVOURITE_PICK_FACTOR, 1.0)
        chosen = rng.choice(n_items, size=count, replace=False, p=weights / weights.sum())
        first = rng.integers(_FIRST_TIMESTAMP, _LAST_TIMESTAMP)
        times = np.sort(rng.integers(first, _LAST_TIMESTAMP + 1, size=count))
        item_index[start : start + count] = chosen
        timestamp[start : start + count] = times
        start += count

    liked = likes[user_index, item_index]
    noise = rng.normal(0.0, 0.5, n_interactions)
    rating = np.clip(
        np.rint(2.5 + _FAVOURITE_GENRE_BONUS * liked + quality[item_index] + noise), 1, 5
    )

    order = np.lexsort((item_index, user_index, timestamp))
    data = InteractionData(
        name=f"synthetic-ml-100k-seed{seed}",
        user_id=users.user_id[user_index[order]],
        item_id=items.item_id[item_index[order]],
        rating=rating[order].astype(np.float32),
        timestamp=timestamp[order],
        users=users,
        items=items,
    )
    truth = SyntheticTruth(
        favourite_genre=np.array([_CONTENT_GENRES[genre] for genre in favourite], dtype=np.str_),
        item_quality=quality,
        item_popularity=popularity,
    )
    return data, truth


def _make_users(rng: np.random.Generator, n_users: int) -> tuple[Users, np.ndarray]:
    """The user table and each user's favourite genre (index into _CONTENT_GENRES)."""
    age = rng.integers(7, 74, n_users)
    is_female = rng.random(n_users) >= _SHARE_MALE
    occupation = rng.integers(0, len(OCCUPATIONS), n_users)
    typical = rng.choice(len(_CONTENT_GENRES), size=(len(OCCUPATIONS), 2), p=_GENRE_PROBABILITIES)
    anything = rng.choice(len(_CONTENT_GENRES), size=n_users, p=_GENRE_PROBABILITIES)
    follows_group = rng.random(n_users) < _SHARE_TYPICAL_FAVOURITE
    favourite = np.where(follows_group, typical[occupation, is_female.astype(int)], anything)
    users = Users(
        user_id=np.arange(1, n_users + 1, dtype=np.int64),
        age=age,
        gender=np.where(is_female, "F", "M"),
        occupation=np.array(OCCUPATIONS)[occupation],
    )
    return users, favourite


def _make_items(rng: np.random.Generator, n_items: int) -> tuple[Items, np.ndarray]:
    """The item table and its genre matrix (n_items, len(_CONTENT_GENRES)) of bools."""
    item_genres = np.zeros((n_items, len(_CONTENT_GENRES)), dtype=bool)
    for item, n_genres in enumerate(rng.integers(1, 4, n_items)):
        chosen = rng.choice(
            len(_CONTENT_GENRES), size=n_genres, replace=False, p=_GENRE_PROBABILITIES
        )
        item_genres[item, chosen] = True
    words = rng.integers(0, len(_TITLE_WORDS), n_items)
    items = Items(
        item_id=np.arange(1, n_items + 1, dtype=np.int64),
        title=np.array([f"{_TITLE_WORDS[word]} {item + 1}" for item, word in enumerate(words)]),
        release_year=rng.integers(1930, 1999, n_items),
        genres=tuple(
            tuple(genre for genre, has in zip(_CONTENT_GENRES, row, strict=True) if has)
            for row in item_genres
        ),
    )
    return items, item_genres


def _interactions_per_user(
    rng: np.random.Generator, n_users: int, n_items: int, n_interactions: int
) -> np.ndarray:
    """Heavy-tailed counts, each between MIN_INTERACTIONS_PER_USER and n_items, summing up."""
    activity = rng.lognormal(0.0, 1.0, n_users)
    extra = n_interactions - MIN_INTERACTIONS_PER_USER * n_users
    counts = MIN_INTERACTIONS_PER_USER + rng.multinomial(extra, activity / activity.sum())
    while np.any(counts > n_items):
        excess = int(np.sum(counts - n_items, where=counts > n_items))
        counts = np.minimum(counts, n_items)
        room = n_items - counts
        counts += rng.multinomial(excess, room / room.sum())
    return counts


# --- writers -----------------------------------------------------------------------------


def _format_rating(rating: float) -> str:
    return str(int(rating)) if float(rating).is_integer() else repr(float(rating))


def _check_no_separator(field: str, values: np.ndarray, separators: str, layout: str) -> None:
    for value in values.tolist():
        if any(separator in value for separator in separators):
            raise ValueError(
                f"{field} {value!r} contains one of {list(separators)}, which the {layout} "
                "layout uses as a separator; clean the value before writing"
            )


def _write_lines(path: Path, lines: list[str], encoding: str) -> None:
    try:
        payload = "".join(f"{line}\n" for line in lines).encode(encoding)
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{path.name} must be {encoding}-encoded, but {error.object[error.start : error.end]!r} "
            f"cannot be; replace that character before writing"
        ) from None
    path.write_bytes(payload)


def _write_rows(
    path: Path, separator: str, columns: list[list], encoding: str, header: str | None = None
) -> None:
    """One line per row of ``columns`` (lists of equal length), fields joined by
    ``separator``, after an optional header line."""
    rows = [separator.join(map(str, row)) for row in zip(*columns, strict=True)]
    _write_lines(path, ([header] if header is not None else []) + rows, encoding)


def _rating_columns(data: InteractionData) -> list[list]:
    """user, item, rating, timestamp: the ratings file of every layout."""
    ratings = [_format_rating(rating) for rating in data.rating.tolist()]
    return [data.user_id.tolist(), data.item_id.tolist(), ratings, data.timestamp.tolist()]


def write_grouplens(data: InteractionData, directory: str | Path) -> Path:
    """Write ``data`` as GroupLens ``u.data``, ``u.user`` and ``u.item`` into ``directory``.

    The release date is written as ``01-Jan-<year>`` (empty when unknown), the video
    release date is empty, the IMDb URL is made from the title, and the zip code is a
    placeholder (``00000``); the loader reads none of these back. Returns ``directory``.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    users, items = data.users, data.items
    _check_no_separator("occupation", users.occupation, "|\n\r", "GroupLens")
    _check_no_separator("title", items.title, "|\n\r", "GroupLens")
    unknown = sorted({genre for genres in items.genres for genre in genres} - set(GENRES))
    if unknown:
        raise ValueError(f"GroupLens u.item has flags only for {GENRES}; got genres {unknown}")

    _write_rows(target / "u.data", "\t", _rating_columns(data), "latin-1")
    zip_codes = ["00000"] * users.user_id.size
    user_columns = [users.user_id.tolist(), users.age.tolist(), users.gender.tolist()]
    user_columns += [users.occupation.tolist(), zip_codes]
    _write_rows(target / "u.user", "|", user_columns, "latin-1")
    item_lines = []
    for item, title, year, genres in zip(
        items.item_id.tolist(),
        items.title.tolist(),
        items.release_year.tolist(),
        items.genres,
        strict=True,
    ):
        date = f"01-Jan-{year}" if year else ""
        url = f"http://us.imdb.com/M/title-exact?{quote(title, safe='()', encoding='latin-1')}"
        flags = "|".join("1" if genre in genres else "0" for genre in GENRES)
        item_lines.append(f"{item}|{title}|{date}||{url if year else ''}|{flags}")
    _write_lines(target / "u.item", item_lines, "latin-1")
    return target


def write_atomic(data: InteractionData, directory: str | Path) -> Path:
    """Write ``data`` as RecBole atomic files ``ml-100k.{inter,user,item}`` into ``directory``.

    The headers are the real files' headers; an unknown release year is written empty and
    the zip code is a placeholder (``00000``). Returns ``directory``.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    users, items = data.users, data.items
    _check_no_separator("occupation", users.occupation, "\t\n\r", "atomic")
    _check_no_separator("title", items.title, "\t\n\r", "atomic")
    for genres in items.genres:
        _check_no_separator("genre", np.array(genres, dtype=np.str_), " \t\n\r", "atomic")

    inter_file, user_file, item_file = (target / name for name in ATOMIC_FILES)
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    _write_rows(inter_file, "\t", _rating_columns(data), "utf-8", header)
    header = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"
    zip_codes = ["00000"] * users.user_id.size
    user_columns = [users.user_id.tolist(), users.age.tolist(), users.gender.tolist()]
    user_columns += [users.occupation.tolist(), zip_codes]
    _write_rows(user_file, "\t", user_columns, "utf-8", header)
    header = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
    years = [year if year else "" for year in items.release_year.tolist()]
    classes = [" ".join(genres) for genres in items.genres]
    item_columns = [items.item_id.tolist(), items.title.tolist(), years, classes]
    _write_rows(item_file, "\t", item_columns, "utf-8", header)
    return target


def age_group_1m(age: np.ndarray) -> np.ndarray:
    """Ages in years -> MovieLens-1M age codes (1 = under 18, else the group's lower bound)."""
    age = np.asarray(age, dtype=np.int64)
    if np.any(age <= 0):
        raise ValueError("MovieLens-1M has no unknown age; every age must be > 0 years")
    bounds = np.array(AGE_GROUPS_1M, dtype=np.int64)
    return bounds[np.searchsorted(bounds, age, side="right") - 1]


def write_movielens_1m(data: InteractionData, directory: str | Path) -> Path:
    """Write ``data`` as MovieLens-1M ``ratings.dat``, ``users.dat``, ``movies.dat``.

    The files are latin-1 with ``::`` separators, as in ``ml-1m.zip``. Ages are written as
    their age-group code (``age_group_1m``), so they load back as the group's lower bound;
    occupations must be names from ``OCCUPATIONS_1M`` and genders ``M`` or ``F`` (ML-1M has
    no unknowns). A title gets `` (YYYY)`` appended unless it already ends with its release
    year (nothing when the year is unknown); the zip code is a placeholder. Returns
    ``directory``.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    users, items = data.users, data.items
    _check_no_separator("title", items.title, "\n\r", "MovieLens-1M")
    for title in items.title.tolist():
        if SEPARATOR_1M in title or title.startswith(":") or title.rstrip().endswith(":"):
            raise ValueError(
                f"title {title!r} would run into the '::' separator of MovieLens-1M; "
                "clean the title before writing"
            )
    for genres in items.genres:
        _check_no_separator("genre", np.array(genres, dtype=np.str_), "|:\n\r", "MovieLens-1M")
    unknown_occupations = sorted(set(users.occupation.tolist()) - set(OCCUPATIONS_1M))
    if unknown_occupations:
        raise ValueError(
            f"MovieLens-1M has codes only for the occupations {OCCUPATIONS_1M}; got "
            f"{unknown_occupations[:5]}; map them to those names before writing"
        )
    if not set(users.gender.tolist()) <= {"M", "F"}:
        raise ValueError("MovieLens-1M has no unknown gender; every gender must be M or F")
    occupation_code = {name: code for code, name in enumerate(OCCUPATIONS_1M)}

    ratings_file, users_file, movies_file = (target / name for name in GROUPLENS_1M_FILES)
    sep = SEPARATOR_1M
    _write_rows(ratings_file, sep, _rating_columns(data), "latin-1")
    occupations = [occupation_code[occupation] for occupation in users.occupation.tolist()]
    zip_codes = ["00000"] * users.user_id.size
    user_columns = [users.user_id.tolist(), users.gender.tolist()]
    user_columns += [age_group_1m(users.age).tolist(), occupations, zip_codes]
    _write_rows(users_file, sep, user_columns, "latin-1")
    movie_lines = []
    for item, title, year, genres in zip(
        items.item_id.tolist(),
        items.title.tolist(),
        items.release_year.tolist(),
        items.genres,
        strict=True,
    ):
        if year and not title.rstrip().endswith(f"({year})"):
            title = f"{title} ({year})"
        movie_lines.append(f"{item}{sep}{title}{sep}{'|'.join(genres)}")
    _write_lines(movies_file, movie_lines, "latin-1")
    return target


def write_interaction_log(
    data: InteractionData, directory: str | Path, schema_suffix: str = ".toml"
) -> Path:
    """Write ``data`` as a CSV interaction log with user and item tables and a schema file.

    Writes ``interactions.csv`` (``user_id,item_id,rating,timestamp``), ``users.csv``
    (``user_id,age,gender,occupation``), ``items.csv`` (``item_id,title,release_year,
    genres``; genres joined by ``|``, fields quoted where needed) and ``<name>.toml`` (or
    ``.json``, by ``schema_suffix``). Unknown values are written empty. Returns the schema
    file's path.
    """
    if schema_suffix not in (".toml", ".json"):
        raise ValueError(f"schema_suffix must be '.toml' or '.json', got {schema_suffix!r}")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    users, items = data.users, data.items
    for genres in items.genres:
        _check_no_separator("genre", np.array(genres, dtype=np.str_), "|", "CSV log")
    tables = {
        "interactions.csv": (
            ("user_id", "item_id", "rating", "timestamp"),
            zip(*_rating_columns(data), strict=True),
        ),
        "users.csv": (
            ("user_id", "age", "gender", "occupation"),
            zip(
                users.user_id.tolist(),
                [age or "" for age in users.age.tolist()],
                users.gender.tolist(),
                users.occupation.tolist(),
                strict=True,
            ),
        ),
        "items.csv": (
            ("item_id", "title", "release_year", "genres"),
            zip(
                items.item_id.tolist(),
                items.title.tolist(),
                [year or "" for year in items.release_year.tolist()],
                ["|".join(genres) for genres in items.genres],
                strict=True,
            ),
        ),
    }
    for name, (header, rows) in tables.items():
        with (target / name).open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    schema = {
        "name": data.name,
        "interactions": {
            "file": "interactions.csv",
            "user": "user_id",
            "item": "item_id",
            "rating": "rating",
            "timestamp": "timestamp",
        },
        "users": {
            "file": "users.csv",
            "id": "user_id",
            "age": "age",
            "gender": "gender",
            "occupation": "occupation",
        },
        "items": {
            "file": "items.csv",
            "id": "item_id",
            "title": "title",
            "release_year": "release_year",
            "genres": "genres",
            "genre_separator": "|",
        },
    }
    schema_file = target / f"{data.name}{schema_suffix}"
    if schema_suffix == ".json":
        schema_file.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    else:
        schema_file.write_text(_as_toml(schema), encoding="utf-8")
    return schema_file


def _as_toml(schema: dict[str, object]) -> str:
    """A flat TOML document: top-level strings, then one table per dict of strings."""
    lines = [
        f"{key} = {json.dumps(value)}" for key, value in schema.items() if isinstance(value, str)
    ]
    for section, table in schema.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"]
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"
