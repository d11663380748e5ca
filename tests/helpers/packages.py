"""The plain CSV files a package is made of, and the MovieLens-100k slice the examples
train on: shared by the packaging tests (tests/packaging) and the examples' tests
(tests/clients)."""

from __future__ import annotations

import csv
from pathlib import Path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def data_rows(path: Path) -> list[list[str]]:
    """A CSV file's rows after its header."""
    with path.open(newline="") as f:
        return list(csv.reader(f))[1:]


def movielens_slice(folder: Path, run_recserve, users: int) -> tuple[Path, Path]:
    """The training split of MovieLens-100k as `recserve evaluate --make-split` writes it
    (the examples' first step), and its interactions cut to those of its first ``users``
    users as ``folder``/log.csv: (the log, the split's train folder with users.csv and
    items.csv whole)."""
    split = folder / "split"
    data = Path(__file__).resolve().parents[2] / "data"
    made = run_recserve(
        "evaluate", "--make-split", str(split), "--data", "ml-100k", "--data-dir", str(data)
    )
    assert made.returncode == 0, made.stderr
    train = split / "train"
    with (train / "interactions.csv").open(newline="") as f:
        rows = [
            [r["user_id"], r["item_id"]] for r in csv.DictReader(f) if int(r["user_id"]) <= users
        ]
    return write_csv(folder / "log.csv", ["user_id", "item_id"], rows), train
