"""Tell which MovieLens data set a directory holds, and load it."""

from __future__ import annotations

from pathlib import Path

from .movielens import find_movielens_100k, load_movielens_100k
from .movielens_1m import find_movielens_1m, load_movielens_1m
from .types import InteractionData


def load_movielens(path: str | Path) -> InteractionData:
    """Load MovieLens-100k (either layout) or MovieLens-1M from ``path``, whichever it holds.

    ``path`` may be the data set's directory or its parent (with an ``ml-100k/`` or
    ``ml-1m/`` folder).

    Raises:
        FileNotFoundError: neither data set is there, or a parent holds both (then pass
            the one folder you mean); the message lists the files each one needs.
    """
    found = {}
    problems = []
    for name, find in (("ml-100k", find_movielens_100k), ("ml-1m", find_movielens_1m)):
        try:
            find(path)
            found[name] = True
        except FileNotFoundError as error:
            problems.append(str(error))
    if len(found) == 2:
        raise FileNotFoundError(
            f"{path} holds both MovieLens-100k and MovieLens-1M; pass the directory of the "
            "one to use (e.g. its ml-100k/ or ml-1m/ folder)"
        )
    if "ml-1m" in found:
        return load_movielens_1m(path)
    if "ml-100k" in found:
        return load_movielens_100k(path)
    raise FileNotFoundError(f"no MovieLens data set in {path}. " + " ".join(problems))
