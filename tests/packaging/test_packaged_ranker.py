"""`recserve package ranker`: a ranker written in plain PyTorch, checked, written, served by
Rank (with explanations) and as a cascade's rank_with, in both program formats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.metrics import sample_value, scrape
from helpers.packages import data_rows, write_csv
from helpers.serving import serving
from torch import nn

from recserve import Client
from recserve.engine.artifact import load_artifact
from recserve.engine.programs import (
    export_program,
    save_program,
    torchscript_deprecation_silenced,
)
from recserve.packaging import (
    PackageError,
    RankerFiles,
    TwoTowerFiles,
    package_ranker,
    package_two_tower,
)

GENRES = ["Action", "Comedy", "Drama", "Horror"]
GENDERS = ["F", "M"]
AGE_BOUNDS = [18.0, 30.0, 50.0]
YEAR_BOUNDS = [1980.0, 1995.0]
FEATURES_TOML = """
[[user]]
name = "user_id"
kind = "id"

[[user]]
name = "age"
kind = "bucket"
boundaries = [18, 30, 50]

[[user]]
name = "gender"
kind = "token"
vocabulary = ["F", "M"]

[[item]]
name = "item_id"
kind = "id"

[[item]]
name = "year"
kind = "bucket"
boundaries = [1980, 1995]

[[item]]
name = "genres"
kind = "token"
vocabulary = ["Action", "Comedy", "Drama", "Horror"]
max_values = 2
"""


class DotRanker(nn.Module):
    """A team's own ranker: one table of field vectors (offsets per input column), the
    summed user side dotted with the summed item side, plus a per-column item bias; one
    logit per candidate as [B, 1]."""

    def __init__(self, cardinalities: list[int], n_user: int, dim: int = 5) -> None:
        super().__init__()
        offsets = np.concatenate([[0], np.cumsum(cardinalities)[:-1]])
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64))
        self.vectors = nn.Embedding(int(sum(cardinalities)), dim)
        self.bias = nn.Embedding(int(sum(cardinalities)), 1)
        self.n_user = n_user

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, item_multi: torch.Tensor
    ) -> torch.Tensor:
        codes = torch.cat([user, item, item_multi], dim=1) + self.offsets
        vectors = self.vectors(codes)  # [B, C, d]
        user_side = vectors[:, : self.n_user].sum(dim=1)
        item_side = vectors[:, self.n_user :].sum(dim=1)
        bias = self.bias(codes[:, self.n_user :]).sum(dim=(1, 2))
        return ((user_side * item_side).sum(dim=1) + bias).unsqueeze(1)  # [B, 1]: allowed


def script(module: nn.Module) -> torch.jit.ScriptModule:
    with torchscript_deprecation_silenced():
        return torch.jit.script(module.eval())


def make_files(folder: Path, program_format: str = "torchscript", seed: int = 0):
    """Ids in no order, an unknown-valued cell or two, and the program saved as asked."""
    rng = np.random.default_rng(seed)
    item_ids = rng.permutation(np.arange(300, 400))[:23]
    user_ids = rng.permutation(np.arange(10, 40))[:9]
    items = []
    for i in item_ids:
        genres = "|".join(sorted(rng.choice(GENRES, size=rng.integers(0, 3), replace=False)))
        year = "" if i % 7 == 0 else str(int(rng.integers(1970, 2005)))
        items.append([int(i), f"film {i}", year, genres])
    users = [[int(u), str(int(rng.integers(12, 70))), str(rng.choice(GENDERS))] for u in user_ids]
    pairs = [[int(user_ids[u]), int(item_ids[i])] for u, i in rng.integers(0, [9, 23], (15, 2))]
    torch.manual_seed(seed)
    # cardinalities: user_id, age, gender | item_id, year | genres x 2
    cards = [9 + 1, 5, 3, 23 + 1, 4, 5, 5]
    model = DotRanker(cards, n_user=3).eval()
    program_path = folder / ("ranker.pt2" if program_format == "export" else "ranker.pt")
    if program_format == "export":
        example = tuple(torch.ones(2, w, dtype=torch.int64) for w in (3, 2, 2))
        save_program(export_program(model, example, [0, 0, 0]), program_path)
    else:
        save_program(script(model), program_path)
    (folder / "features.toml").write_text(FEATURES_TOML)
    files = RankerFiles(
        program=program_path,
        features=folder / "features.toml",
        items=write_csv(folder / "items.csv", ["id", "title", "year", "genres"], items),
        users=write_csv(folder / "users.csv", ["id", "age", "gender"], users),
        interactions=write_csv(folder / "log.csv", ["user_id", "item_id"], pairs),
    )
    truth = dict(model=model, items=items, users=users, pairs=pairs)
    return files, truth


def _bucket(value: str, bounds: list[float]) -> int:
    if not value or float(value) <= 0:
        return 0
    return int(np.searchsorted(bounds, float(value), side="right")) + 1


def reference_logits(truth: dict, user_id: int, candidates: list[int]) -> np.ndarray:
    """The program on inputs encoded here, independently of recserve: float64 logits."""
    user_rank = {u: r + 1 for r, u in enumerate(sorted(u[0] for u in truth["users"]))}
    item_rank = {i: r + 1 for r, i in enumerate(sorted(i[0] for i in truth["items"]))}
    by_user = {u[0]: u for u in truth["users"]}
    by_item = {i[0]: i for i in truth["items"]}
    _, age, gender = by_user[user_id]
    user = [user_rank[user_id], _bucket(age, AGE_BOUNDS), GENDERS.index(gender) + 1]
    rows, multi = [], []
    for i in candidates:
        _, _, year, genres = by_item[i]
        codes = [GENRES.index(g) + 1 for g in genres.split("|") if g]
        rows.append([item_rank[i], _bucket(year, YEAR_BOUNDS)])
        multi.append(codes + [0] * (2 - len(codes)))
    n = len(candidates)
    model = truth["model"].double()
    with torch.no_grad():
        logits = model(
            torch.tensor([user] * n), torch.tensor(rows), torch.tensor(multi, dtype=torch.int64)
        ).reshape(-1)
    truth["model"].float()
    return logits.numpy()


@pytest.mark.parametrize("program_format", ["torchscript", "export"])
def test_a_packaged_ranker_answers_rank_as_its_program_says(
    tmp_path: Path, program_format: str
) -> None:
    files, truth = make_files(tmp_path, program_format)
    repo = tmp_path / "repo"
    version = package_ranker(files, repo, "ranker")
    assert version == repo / "ranker" / "1"
    with serving(repo) as running, Client(f"127.0.0.1:{running.port}", timeout=10) as client:
        (info,), _ = client.list_models()
        assert info.family == "packaged_ranker" and info.program_format == program_format
        candidates = [*(int(i[0]) for i in truth["items"][::2]), 999_999]  # one unknown
        for user in (int(u[0]) for u in truth["users"]):
            answer = client.rank(user, candidates, k=7, model="ranker")
            known = candidates[:-1]
            logits = reference_logits(truth, user, known)
            order = np.argsort(-logits, kind="stable")[:7]
            assert [i.item_id for i in answer.items] == [known[j] for j in order]
            np.testing.assert_allclose(
                [i.score for i in answer.items], 1 / (1 + np.exp(-logits[order])), rtol=1e-5
            )
            assert answer.unknown_item_ids == [999_999]
        assert answer.items[0].title == f"film {answer.items[0].item_id}"
        explained = client.rank(user, known[:3], model="ranker", explain=True)
        logits = dict(zip(known[:3], reference_logits(truth, user, known[:3]), strict=True))
        for item in explained.items:
            e = item.explanation
            total = e.baseline + sum(f.contribution for f in e.fields)
            assert total == pytest.approx(logits[item.item_id], abs=1e-4)
            assert [f.feature for f in e.fields] == [
                "user_id", "age", "gender", "item_id", "year", "genres",
            ]  # fmt: skip


def test_a_packaged_rankers_requests_are_counted_and_timed_like_any_rankers(
    tmp_path: Path,
) -> None:
    files, truth = make_files(tmp_path)
    repo = tmp_path / "repo"
    package_ranker(files, repo, "ranker")
    candidates = [int(i[0]) for i in truth["items"]]
    with (
        serving(repo, metrics_port=0) as running,
        Client(f"127.0.0.1:{running.port}", timeout=10) as client,
    ):
        for user in (int(u[0]) for u in truth["users"][:3]):
            client.rank(user, candidates, k=5, model="ranker")
        families = scrape(running.metrics_port)
    ok = dict(rpc="Rank", model="ranker", version="1", code="OK")
    assert sample_value(families["recserve_requests"], "recserve_requests_total", **ok) == 3
    stages = families["recserve_stage_seconds"]
    for stage in ("feature", "head", "topk"):
        assert sample_value(stages, "recserve_stage_seconds_count", stage=stage) == 3, stage
    # each request's candidates are one call of the program; requests are not merged
    batches = families["recserve_batch_size"]
    assert sample_value(batches, "recserve_batch_size_count", model="ranker") == 0
    loaded = families["recserve_model_loaded"]
    assert sample_value(loaded, "recserve_model_loaded", model="ranker", version="1") == 1


def test_a_packaged_ranker_ranks_a_retrievers_items_in_a_cascade(tmp_path: Path) -> None:
    """A packaged two-tower retrieves, the packaged ranker orders: the answer is the
    ranker's order of the unseen items (the catalog is smaller than the retrieval)."""
    files, truth = make_files(tmp_path)
    repo = tmp_path / "repo"
    package_ranker(files, repo, "ranker")
    rng = np.random.default_rng(1)
    np.save(tmp_path / "iv.npy", rng.normal(size=(len(truth["items"]), 4)))
    np.save(tmp_path / "uv.npy", rng.normal(size=(len(truth["users"]), 4)))
    towers = TwoTowerFiles(
        files.items, tmp_path / "iv.npy", files.users, tmp_path / "uv.npy", files.interactions
    )
    package_two_tower(towers, repo, "towers")
    with serving(repo) as running, Client(f"127.0.0.1:{running.port}", timeout=10) as client:
        for user in (int(u[0]) for u in truth["users"][:4]):
            seen = {i for u, i in truth["pairs"] if u == user}
            unseen = [int(i[0]) for i in truth["items"] if i[0] not in seen]
            logits = reference_logits(truth, user, unseen)
            expected = [unseen[j] for j in np.argsort(-logits, kind="stable")[:5]]
            answer = client.recommend(user, k=5, model="towers", rank_with="ranker")
            assert [i.item_id for i in answer.items] == expected


BadFiles = Callable[[Path, RankerFiles], RankerFiles]


def extra_user_feature(folder: Path, files: RankerFiles) -> RankerFiles:
    """A fourth user column the program does not read."""
    text = files.features.read_text() + '\n[[user]]\nname = "zip"\nkind = "bucket"\n'
    (folder / "more.toml").write_text(text + "boundaries = [1, 2]\n")
    rows = [[*row, "1"] for row in data_rows(files.users)]
    users = write_csv(folder / "u.csv", ["id", "age", "gender", "zip"], rows)
    return replace(files, features=folder / "more.toml", users=users)


def larger_vocabulary(folder: Path, files: RankerFiles) -> RankerFiles:
    """One more genre than the program's table has rows for."""
    text = files.features.read_text().replace('"Horror"]', '"Horror", "Western"]')
    (folder / "wide.toml").write_text(text)
    return replace(files, features=folder / "wide.toml")


def duplicate_item(folder: Path, files: RankerFiles) -> RankerFiles:
    rows = data_rows(files.items)
    rows[4][0] = rows[1][0]
    return replace(
        files, items=write_csv(folder / "dup.csv", ["id", "title", "year", "genres"], rows)
    )


class IntegerScores(nn.Module):
    def forward(self, user: torch.Tensor, item: torch.Tensor, multi: torch.Tensor) -> torch.Tensor:
        return item[:, 0] * 2


class TwoScores(nn.Module):
    def forward(self, user: torch.Tensor, item: torch.Tensor, multi: torch.Tensor) -> torch.Tensor:
        return torch.zeros(item.shape[0], 2)


class Raises(nn.Module):
    def forward(self, user: torch.Tensor, item: torch.Tensor, multi: torch.Tensor) -> torch.Tensor:
        if bool((item[:, 1] > 2).any()):
            raise ValueError("year bucket out of range")
        return item[:, 0].float()


def program(module: nn.Module) -> Callable[[Path, RankerFiles], RankerFiles]:
    def swap(folder: Path, files: RankerFiles) -> RankerFiles:
        path = folder / f"{type(module).__name__}.pt"
        save_program(script(module), path)
        return replace(files, program=path)

    return swap


def static_batch(folder: Path, files: RankerFiles) -> RankerFiles:
    """A .pt2 exported without dynamic_shapes: its batch is fixed at the example's 8."""
    model = DotRanker([9 + 1, 5, 3, 23 + 1, 4, 5, 5], n_user=3).eval()
    example = tuple(torch.ones(8, w, dtype=torch.int64) for w in (3, 2, 2))
    save_program(torch.export.export(model, example), folder / "static.pt2")
    return replace(files, program=folder / "static.pt2")


def pickled_state_dict(folder: Path, files: RankerFiles) -> RankerFiles:
    torch.save({"weight": torch.ones(3)}, folder / "state.pt")
    return replace(files, program=folder / "state.pt")


def text_year(folder: Path, files: RankerFiles) -> RankerFiles:
    rows = data_rows(files.items)
    rows[2][2] = "nineteen"
    return replace(
        files, items=write_csv(folder / "y.csv", ["id", "title", "year", "genres"], rows)
    )


def unknown_genre(folder: Path, files: RankerFiles) -> RankerFiles:
    rows = data_rows(files.items)
    rows[5][3] = "Musical"
    return replace(
        files, items=write_csv(folder / "g.csv", ["id", "title", "year", "genres"], rows)
    )


def missing_items(folder: Path, files: RankerFiles) -> RankerFiles:
    return replace(files, items=folder / "absent.csv")


def missing_column(folder: Path, files: RankerFiles) -> RankerFiles:
    rows = [r[:3] for r in data_rows(files.items)]
    return replace(files, items=write_csv(folder / "c.csv", ["id", "title", "year"], rows))


def unsorted_vocabulary(folder: Path, files: RankerFiles) -> RankerFiles:
    text = files.features.read_text().replace('["F", "M"]', '["M", "F"]')
    (folder / "unsorted.toml").write_text(text)
    return replace(files, features=folder / "unsorted.toml")


def huge_id(folder: Path, files: RankerFiles) -> RankerFiles:
    rows = data_rows(files.items)
    rows[1][0] = "9" * 23
    return replace(
        files, items=write_csv(folder / "h.csv", ["id", "title", "year", "genres"], rows)
    )


def short_row(folder: Path, files: RankerFiles) -> RankerFiles:
    rows = data_rows(files.items)
    rows[2] = rows[2][:2]
    return replace(
        files, items=write_csv(folder / "s.csv", ["id", "title", "year", "genres"], rows)
    )


def no_users_table(folder: Path, files: RankerFiles) -> RankerFiles:
    return replace(files, users=None)


@pytest.mark.parametrize(
    ("breaks", "message"),
    [
        (extra_user_feature, r"sample forward pass failed .*Does the feature schema match"),
        (larger_vocabulary, r"failed on every column at its largest index"),
        (duplicate_item, r"duplicate 'id' values"),
        (program(IntegerScores()), r"returns dtype torch\.int64 .*expected a float dtype"),
        (program(TwoScores()), r"returns shape \[8, 2\] .*expected \[8\] or \[8, 1\]"),
        (program(Raises()), r"sample forward pass failed on .*: .*year bucket out of range"),
        (pickled_state_dict, r"is not a TorchScript program"),
        (static_batch, r"failed on one row .*must be exported with a dynamic batch dimension"),
        (text_year, r"'year' of data row 3 is 'nineteen', not a number"),
        (unknown_genre, r"'genres' of data row 6: 'Musical' is not in the vocabulary"),
        (missing_items, r"absent\.csv does not exist"),
        (missing_column, r"has no column 'genres' in its header"),
        (unsorted_vocabulary, r"'gender': 'vocabulary' must be sorted"),
        (no_users_table, r"user id feature needs the users table"),
        (huge_id, r"'id' of data row 2 is '9{23}', not an integer id"),
        (short_row, r"data row 3 has 2 fields; the header has 4"),
    ],
)
def test_bad_packages_are_refused_by_name_and_nothing_is_written(
    tmp_path: Path, breaks: BadFiles, message: str
) -> None:
    files, _ = make_files(tmp_path)
    repo = tmp_path / "repo"
    with pytest.raises(PackageError, match=message):
        package_ranker(breaks(tmp_path, files), repo, "ranker")
    assert not repo.exists() or not any(repo.rglob("*"))


def test_the_command_packages_and_refuses_with_exit_status_2(tmp_path: Path, run_recserve) -> None:
    files, _ = make_files(tmp_path)
    args = ["package", "ranker", "--program", str(files.program), "--items", str(files.items)]
    args += ["--users", str(files.users), "--name", "ranker", "--model-repo", str(tmp_path / "r")]
    done = run_recserve(*args, "--features", str(files.features))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "ranker" / "1" / "manifest.json").exists()
    bad = larger_vocabulary(tmp_path, files)
    refused = run_recserve(*args, "--features", str(bad.features))
    assert refused.returncode == 2
    assert "largest index" in refused.stderr and "nothing was written" in refused.stderr
    assert not (tmp_path / "r" / "ranker" / "2").exists()


@pytest.mark.slow
def test_a_pt2_packaged_with_an_aoti_target_serves_its_stored_compilation(
    tmp_path: Path, run_recserve
) -> None:
    """`--aoti-target x86-64-v3` stores the compiled program; a server told to trust it
    (`--compile-programs aoti-stored`) loads it instead of compiling, and answers Rank as
    the program says, scores within 1e-5."""
    files, truth = make_files(tmp_path, "export")
    repo = tmp_path / "repo"
    done = run_recserve(
        "package", "ranker", "--program", str(files.program), "--features", str(files.features),
        "--items", str(files.items), "--users", str(files.users), "--name", "ranker",
        "--model-repo", str(repo), "--aoti-target", "x86-64-v3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert load_artifact(repo / "ranker" / "1").compiled["model"].target == "x86-64-v3"
    with (
        serving(repo, compile_programs="aoti-stored") as running,
        Client(f"127.0.0.1:{running.port}", timeout=10) as client,
    ):
        (model,) = running.repository.served()
        compiled = model.pipeline.compiled["model"]
        assert compiled.how == "stored compilation for x86-64-v3" and compiled.served
        known = [int(i[0]) for i in truth["items"]]
        for user in (int(u[0]) for u in truth["users"]):
            answer = client.rank(user, known, k=5, model="ranker")
            logits = reference_logits(truth, user, known)
            scores = dict(zip(known, 1 / (1 + np.exp(-logits)), strict=True))
            np.testing.assert_allclose(
                [i.score for i in answer.items], [scores[i.item_id] for i in answer.items],
                rtol=1e-5,
            )  # fmt: skip
            assert [i.score for i in answer.items] == sorted(
                (i.score for i in answer.items), reverse=True
            )


def test_an_aoti_target_for_a_torchscript_program_is_refused(tmp_path: Path) -> None:
    files, _ = make_files(tmp_path)
    repo = tmp_path / "repo"
    with pytest.raises(PackageError, match=r"ranker\.pt is not a \.pt2; AOTInductor compiles"):
        package_ranker(files, repo, "ranker", aoti_target="x86-64-v3")
    assert not repo.exists()


def test_parquet_tables_package_as_their_csv_twins(tmp_path: Path) -> None:
    """The same items and users as Parquet (ids as integers, years as numbers with a
    null, genres as a list column): the same tables, byte for byte."""
    import pyarrow as pa
    from pyarrow import parquet

    files, truth = make_files(tmp_path)
    items = truth["items"]
    parquet.write_table(
        pa.table(
            {
                "id": [int(i[0]) for i in items],
                "title": [i[1] for i in items],
                "year": [float(i[2]) if i[2] else None for i in items],
                "genres": [[g for g in i[3].split("|") if g] for i in items],
            }
        ),
        tmp_path / "items.parquet",
    )
    users = truth["users"]
    parquet.write_table(
        pa.table(
            {
                "id": [u[0] for u in users],
                "age": [int(u[1]) for u in users],
                "gender": [u[2] for u in users],
            }
        ),
        tmp_path / "users.parquet",
    )
    from_csv = load_artifact(package_ranker(files, tmp_path / "repo", "csv"))
    as_parquet = replace(files, items=tmp_path / "items.parquet", users=tmp_path / "users.parquet")
    from_parquet = load_artifact(package_ranker(as_parquet, tmp_path / "repo", "parquet"))
    for key in (
        "user_ids",
        "user_features",
        "item_ids",
        "item_features",
        "item_multi",
        "item_titles",
    ):
        np.testing.assert_array_equal(from_parquet.tables[key], from_csv.tables[key])


def test_a_list_in_a_single_valued_column_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    from pyarrow import parquet

    files, truth = make_files(tmp_path)
    ids = [int(i[0]) for i in truth["items"]]
    parquet.write_table(
        pa.table({"id": ids, "year": [["1990"]] * len(ids), "genres": [["Drama"]] * len(ids)}),
        tmp_path / "items.parquet",
    )
    with pytest.raises(PackageError, match=r"'year' of data row 1 holds a list"):
        package_ranker(replace(files, items=tmp_path / "items.parquet"), tmp_path / "r", "x")


def test_without_a_users_table_every_user_is_served_from_the_request(tmp_path: Path) -> None:
    """A schema with user features but no user id, and no users table: the features a
    request sends are what the program reads."""

    class AgeRanker(nn.Module):
        def forward(
            self, user: torch.Tensor, item: torch.Tensor, multi: torch.Tensor
        ) -> torch.Tensor:
            return (user[:, 0] * item[:, 0]).float()  # prefers high item codes when age known

    files, truth = make_files(tmp_path)
    (tmp_path / "ages.toml").write_text(
        '[[user]]\nname = "age"\nkind = "bucket"\nboundaries = [18, 30, 50]\n\n'
        '[[item]]\nname = "item_id"\nkind = "id"\n'
    )
    files = replace(
        program(AgeRanker())(tmp_path, files),
        features=tmp_path / "ages.toml", users=None, interactions=None,
    )  # fmt: skip
    package_ranker(files, tmp_path / "repo", "ranker")
    candidates = sorted(int(i[0]) for i in truth["items"])[:5]
    with serving(tmp_path / "repo") as running, Client(f"127.0.0.1:{running.port}") as client:
        answer = client.rank(7, candidates, model="ranker", user_features={"age": "40"})
        assert answer.cold_start_user
        assert [i.item_id for i in answer.items] == candidates[::-1]
