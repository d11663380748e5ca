"""`recserve package two-tower`: a retriever trained elsewhere, checked, written, served."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers.packages import data_rows, write_csv
from helpers.serving import serving

from recserve import Client
from recserve.engine.artifact import load_artifact
from recserve.packaging import PackageError, TwoTowerFiles, package_two_tower


def make_files(folder: Path, seed: int = 0, d: int = 7) -> tuple[TwoTowerFiles, dict]:
    """Ids in no particular order, vectors of an awkward width, a few interactions."""
    rng = np.random.default_rng(seed)
    item_ids = rng.permutation(np.arange(100, 160))[:37]
    user_ids = rng.permutation(np.arange(5, 30))[:11]
    items = rng.normal(size=(item_ids.size, d))  # float64: cast on packaging
    users = rng.normal(size=(user_ids.size, d)).astype(np.float32)
    pairs = [(int(user_ids[u]), int(item_ids[i])) for u, i in rng.integers(0, [11, 37], (40, 2))]
    np.save(folder / "items.npy", items)
    np.save(folder / "users.npy", users)
    files = TwoTowerFiles(
        write_csv(folder / "items.csv", ["id", "title"], [[i, f"film {i}"] for i in item_ids]),
        folder / "items.npy",
        write_csv(folder / "users.csv", ["id", "country"], [[u, "x"] for u in user_ids]),
        folder / "users.npy",
        write_csv(folder / "log.csv", ["user_id", "item_id"], pairs),
    )
    truth = dict(item_ids=item_ids, user_ids=user_ids, items=items, users=users, pairs=pairs)
    return files, truth


def test_a_packaged_two_tower_answers_recommend_and_rank_as_its_vectors_say(
    tmp_path: Path,
) -> None:
    files, truth = make_files(tmp_path)
    repo = tmp_path / "repo"
    package_two_tower(files, repo, "towers")
    with serving(repo) as running, Client(f"127.0.0.1:{running.port}", timeout=10) as client:
        for u in range(truth["user_ids"].size):
            user = int(truth["user_ids"][u])
            seen = {i for uu, i in truth["pairs"] if uu == user}
            # float64 reference: every unseen item by inner product, best first
            scores = truth["items"] @ truth["users"][u].astype(np.float64)
            order = [int(truth["item_ids"][j]) for j in np.argsort(-scores, kind="stable")]
            expected = [i for i in order if i not in seen][:5]
            answer = client.recommend(user, k=5, model="towers")
            assert [i.item_id for i in answer.items] == expected
            assert answer.items[0].title == f"film {expected[0]}"
        ranked = client.rank(user, expected[::-1], model="towers")  # the last user's
        assert [i.item_id for i in ranked.items] == expected


BadFiles = Callable[[Path, TwoTowerFiles], TwoTowerFiles]


def duplicate_item(folder: Path, files: TwoTowerFiles) -> TwoTowerFiles:
    rows = data_rows(files.items)
    rows[3][0] = rows[1][0]
    return replace(files, items=write_csv(folder / "dup.csv", ["id", "title"], rows))


def integer_vectors(folder: Path, files: TwoTowerFiles) -> TwoTowerFiles:
    np.save(folder / "int.npy", np.load(files.user_embeddings).astype(np.int64))
    return replace(files, user_embeddings=folder / "int.npy")


def pickled_vectors(folder: Path, files: TwoTowerFiles) -> TwoTowerFiles:
    np.save(folder / "obj.npy", np.array([{"a": 1}] * 11, dtype=object), allow_pickle=True)
    return replace(files, user_embeddings=folder / "obj.npy")


def fewer_rows(folder: Path, files: TwoTowerFiles) -> TwoTowerFiles:
    np.save(folder / "short.npy", np.load(files.item_embeddings)[:-1])
    return replace(files, item_embeddings=folder / "short.npy")


def other_width(folder: Path, files: TwoTowerFiles) -> TwoTowerFiles:
    np.save(folder / "wide.npy", np.ones((11, 8), np.float32))
    return replace(files, user_embeddings=folder / "wide.npy")


def not_finite(folder: Path, files: TwoTowerFiles) -> TwoTowerFiles:
    vectors = np.load(files.item_embeddings)
    vectors[4, 2] = np.nan
    np.save(folder / "nan.npy", vectors)
    return replace(files, item_embeddings=folder / "nan.npy")


def unknown_user(folder: Path, files: TwoTowerFiles) -> TwoTowerFiles:
    rows = [*data_rows(files.interactions), ["999", data_rows(files.items)[0][0]]]
    return replace(files, interactions=write_csv(folder / "log2.csv", ["user_id", "item_id"], rows))


def no_id_column(folder: Path, files: TwoTowerFiles) -> TwoTowerFiles:
    return replace(files, users=write_csv(folder / "u.csv", ["user"], [[1]] * 11))


def missing_table(folder: Path, files: TwoTowerFiles) -> TwoTowerFiles:
    return replace(files, item_embeddings=folder / "absent.npy")


def text_id(folder: Path, files: TwoTowerFiles) -> TwoTowerFiles:
    rows = data_rows(files.items)
    rows[2][0] = "abc"
    return replace(files, items=write_csv(folder / "text.csv", ["id", "title"], rows))


@pytest.mark.parametrize(
    ("breaks", "message"),
    [
        (duplicate_item, "duplicate 'id' values"),
        (integer_vectors, "has dtype int64; expected float16, float32 or float64"),
        (pickled_vectors, "is not a plain numeric .npy array"),
        (fewer_rows, "has 36 rows but its id table has 37 ids"),
        (other_width, "user embeddings have dimension 8 but item embeddings 7"),
        (not_finite, r"nan.npy: the vector of id \d+ has a value that is not finite"),
        (unknown_user, "user_id 999 of data row 41 is not in the users table"),
        (no_id_column, "has no column 'id' in its header"),
        (missing_table, "absent.npy does not exist"),
        (text_id, "'id' of data row 3 is 'abc', not an integer id"),
    ],
)
def test_bad_files_are_refused_by_name_and_nothing_is_written(
    tmp_path: Path, breaks: BadFiles, message: str
) -> None:
    files, _ = make_files(tmp_path)
    repo = tmp_path / "repo"
    with pytest.raises(PackageError, match=message):
        package_two_tower(breaks(tmp_path, files), repo, "towers")
    assert not repo.exists() or not any(repo.rglob("*"))


def test_the_command_packages_and_refuses_with_exit_status_2(tmp_path: Path, run_recserve) -> None:
    files, _ = make_files(tmp_path)
    args = ["package", "two-tower", "--items", str(files.items), "--users", str(files.users)]
    args += ["--item-embeddings", str(files.item_embeddings), "--name", "towers"]
    args += ["--model-repo", str(tmp_path / "repo")]
    done = run_recserve(*args, "--user-embeddings", str(files.user_embeddings))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "repo" / "towers" / "1" / "manifest.json").exists()
    refused = run_recserve(*args, "--user-embeddings", str(files.item_embeddings))
    assert refused.returncode == 2
    assert "user embeddings" in refused.stderr and "nothing was written" in refused.stderr
    assert not (tmp_path / "repo" / "towers" / "2").exists()


def vector_table(path: Path, ids: np.ndarray, vectors: np.ndarray, order: np.ndarray) -> Path:
    """A CSV embeddings table: id and the vector as numbers separated by spaces, the rows
    in ``order``."""
    rows = [[int(ids[r]), " ".join(repr(float(v)) for v in vectors[r])] for r in order]
    return write_csv(path, ["id", "vector"], rows)


def test_embedding_tables_package_as_their_npy_twins(tmp_path: Path) -> None:
    """Item vectors as a CSV table in another row order, user vectors as a Parquet list
    column: matched by id, the same tables as the .npy files give, byte for byte."""
    import pyarrow as pa
    from pyarrow import parquet

    files, truth = make_files(tmp_path)
    reversed_rows = np.arange(truth["item_ids"].size)[::-1]
    items = vector_table(tmp_path / "iv.csv", truth["item_ids"], truth["items"], reversed_rows)
    users = tmp_path / "uv.parquet"
    parquet.write_table(
        pa.table(
            {
                "id": truth["user_ids"].tolist(),
                "vector": pa.array(truth["users"].tolist(), pa.list_(pa.float32())),
            }
        ),
        users,
    )
    from_npy = load_artifact(package_two_tower(files, tmp_path / "repo", "npy"))
    as_tables = replace(files, item_embeddings=items, user_embeddings=users)
    from_tables = load_artifact(package_two_tower(as_tables, tmp_path / "repo", "tables"))
    for key in ("item_ids", "user_ids", "item_vectors", "user_vectors"):
        assert from_tables.tables[key].tobytes() == from_npy.tables[key].tobytes(), key


def table_missing_an_id(folder: Path, files: TwoTowerFiles, truth: dict) -> TwoTowerFiles:
    order = np.arange(1, truth["item_ids"].size)  # the first id left out
    table = vector_table(folder / "t.csv", truth["item_ids"], truth["items"], order)
    return replace(files, item_embeddings=table)


def table_with_an_extra_id(folder: Path, files: TwoTowerFiles, truth: dict) -> TwoTowerFiles:
    ids = np.append(truth["user_ids"], 999)
    vectors = np.vstack([truth["users"], np.ones((1, truth["users"].shape[1]))])
    table = vector_table(folder / "t.csv", ids, vectors, np.arange(ids.size))
    return replace(files, user_embeddings=table)


def table_with_a_short_vector(folder: Path, files: TwoTowerFiles, truth: dict) -> TwoTowerFiles:
    order = np.arange(truth["item_ids"].size)
    table = vector_table(folder / "t.csv", truth["item_ids"], truth["items"], order)
    rows = data_rows(table)
    rows[5][1] = " ".join(rows[5][1].split()[:-1])
    return replace(files, item_embeddings=write_csv(folder / "t2.csv", ["id", "vector"], rows))


def table_with_text(folder: Path, files: TwoTowerFiles, truth: dict) -> TwoTowerFiles:
    order = np.arange(truth["item_ids"].size)
    table = vector_table(folder / "t.csv", truth["item_ids"], truth["items"], order)
    rows = data_rows(table)
    rows[2][1] = "0.5 high 0.1"
    return replace(files, item_embeddings=write_csv(folder / "t2.csv", ["id", "vector"], rows))


def table_with_a_repeated_id(folder: Path, files: TwoTowerFiles, truth: dict) -> TwoTowerFiles:
    order = np.append(np.arange(truth["item_ids"].size), 0)
    table = vector_table(folder / "t.csv", truth["item_ids"], truth["items"], order)
    return replace(files, item_embeddings=table)


def table_without_vectors(folder: Path, files: TwoTowerFiles, truth: dict) -> TwoTowerFiles:
    rows = [[int(i)] for i in truth["user_ids"]]
    return replace(files, user_embeddings=write_csv(folder / "t.csv", ["id"], rows))


@pytest.mark.parametrize(
    ("breaks", "message"),
    [
        (table_missing_an_id, r"t.csv has no vector for id \d+ \(1 ids of the id table"),
        (table_with_an_extra_id, "has a vector for id 999, which the id table does not list"),
        (
            table_with_a_short_vector,
            r"t2.csv: 'vector' of data row 6 has 6 numbers; every vector .*\(the first has 7\)",
        ),
        (table_with_text, "'vector' of data row 3 is '0.5 high 0.1', not numbers"),
        (table_with_a_repeated_id, "duplicate 'id' values"),
        (table_without_vectors, "has no column 'vector' in its header"),
    ],
)
def test_bad_embedding_tables_are_refused_by_name_and_nothing_is_written(
    tmp_path: Path, breaks: Callable[[Path, TwoTowerFiles, dict], TwoTowerFiles], message: str
) -> None:
    files, truth = make_files(tmp_path)
    repo = tmp_path / "repo"
    with pytest.raises(PackageError, match=message):
        package_two_tower(breaks(tmp_path, files, truth), repo, "towers")
    assert not repo.exists() or not any(repo.rglob("*"))
