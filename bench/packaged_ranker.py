"""Rank latency of a packaged ranker against the same model trained by recserve, both
served by one server, without the fused crossing path.

The model is a ranker of a model repository (by default ``deepfm``, what
``scripts/start.sh`` trains). Its ``model`` program and tables are served two ways:

- ``trained``: recserve's own artifact without its crossing block (the whole program);
- ``packaged``: the same program file, with a feature schema (TOML) and item, user and
  interaction CSV tables written from the artifact, through ``recserve package ranker``.

The two must encode every table identically and answer every Rank alike; the bench
checks both before it measures. Then a closed loop of ``recserve bench --rpc rank``
measures each at each concurrency, the models alternating within every round, and the
ratios of the means (packaged / trained: above 1, the packaged ranker is slower).

    recserve train --model deepfm --data ml-100k
    python bench/packaged_ranker.py                        # 1000 candidates, c = 1 and 8
    python bench/packaged_ranker.py --concurrency 1,8,32 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import (
    ServerConfig,
    closed_loop_point,
    machine,
    newest_version,
    print_point,
    print_ratios,
    running,
)

from recserve import Client
from recserve.core import kernels
from recserve.engine.artifact import (
    RANKER_FAMILIES,
    Artifact,
    load_artifact,
    save_artifact,
)
from recserve.engine.schema import FeatureSpec
from recserve.packaging import RankerFiles, package_ranker

TABLES = ("user_ids", "user_features", "item_ids", "item_features", "item_multi", "item_titles")
SEEN = ("seen_indptr", "seen_items")


def raw_value(spec: FeatureSpec, code: int) -> str:
    """A CSV value that the schema encodes as ``code`` (0: the empty, unknown value)."""
    if code == 0:
        return ""
    if spec.kind == "token":
        return spec.vocabulary[code - 1]
    if code == 1:  # below the first boundary
        if spec.boundaries[0] <= 0:
            raise ValueError(f"{spec.name}: no positive number falls below {spec.boundaries[0]}")
        return repr(spec.boundaries[0] / 2)
    return repr(spec.boundaries[code - 2])


def toml_value(value: object) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def package_inputs(artifact: Artifact, folder: Path) -> RankerFiles:
    """The files ``recserve package ranker`` takes, written from a ranker artifact: its
    program file, its schema as TOML and its tables as CSV of raw values."""
    schema, t = artifact.schema, artifact.tables
    lines = []
    for spec in schema.features:
        lines += [f"[[{spec.side}]]", f"name = {toml_value(spec.name)}", f'kind = "{spec.kind}"']
        if spec.kind == "token":
            lines.append(f"vocabulary = {toml_value(spec.vocabulary)}")
        if spec.kind == "bucket":
            lines.append(f"boundaries = {toml_value(spec.boundaries)}")
        if spec.multi_valued:
            lines.append(f"max_values = {spec.max_values}")
        lines.append("")
    (folder / "features.toml").write_text("\n".join(lines))

    def side_rows(side: str, single: np.ndarray, multi: np.ndarray | None) -> tuple[list, list]:
        singles, multis = schema.single_valued(side), schema.multi_valued(side)
        header = [s.name for s in singles if s.kind != "id"] + [s.name for s in multis]
        rows = []
        for r in range(single.shape[0]):
            row = [raw_value(s, int(single[r, c])) for c, s in enumerate(singles) if s.kind != "id"]
            start = 0
            for s in multis:
                codes = multi[r, start : start + s.max_values]
                row.append("|".join(raw_value(s, int(c)) for c in codes if c > 0))
                start += s.max_values
            rows.append(row)
        return header, rows

    header, rows = side_rows("item", t["item_features"], t["item_multi"])
    write_csv(
        folder / "items.csv",
        ["id", "title", *header],
        [[int(i), str(title), *row] for i, title, row in zip(t["item_ids"], t["item_titles"], rows, strict=True)],
    )  # fmt: skip
    header, rows = side_rows("user", t["user_features"], None)
    write_csv(
        folder / "users.csv",
        ["id", *header],
        [[int(u), *row] for u, row in zip(t["user_ids"], rows, strict=True)],
    )
    users = np.repeat(t["user_ids"], np.diff(t["seen_indptr"]))
    write_csv(
        folder / "interactions.csv",
        ["user_id", "item_id"],
        np.stack([users, t["item_ids"][t["seen_items"]]], axis=1).tolist(),
    )
    program = folder / "model.pt"
    program.write_bytes((artifact.path / "model.pt").read_bytes())
    return RankerFiles(
        program,
        folder / "features.toml",
        folder / "items.csv",
        folder / "users.csv",
        folder / "interactions.csv",
    )


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])


def prepare(artifact: Artifact, repo: Path, work: Path) -> None:
    """``trained`` and ``packaged`` in ``repo``; raises ValueError if they differ."""
    save_artifact(
        repo,
        "trained",
        family=artifact.family,
        schema=artifact.schema,
        modules={"model": artifact.modules["model"]},
        tables={k: artifact.tables[k] for k in (*TABLES, *SEEN)},
    )
    packaged = load_artifact(package_ranker(package_inputs(artifact, work), repo, "packaged"))
    if packaged.schema != artifact.schema:
        raise ValueError("the packaged schema differs from the trained one")
    for key in (*TABLES, *SEEN):
        if not np.array_equal(packaged.tables[key], artifact.tables[key]):
            raise ValueError(f"the packaged table {key} differs from the trained one")


def check_answers(target: str, artifact: Artifact, candidates: int) -> None:
    rng = np.random.default_rng(0)
    with Client(target, timeout=10) as client:
        for user in rng.choice(artifact.tables["user_ids"], size=5):
            items = rng.choice(artifact.tables["item_ids"], size=candidates, replace=False)
            a = client.rank(int(user), items.tolist(), k=10, model="trained")
            b = client.rank(int(user), items.tolist(), k=10, model="packaged")
            if [(i.item_id, i.score) for i in a.items] != [(i.item_id, i.score) for i in b.items]:
                raise ValueError(f"user {user}: the two answers differ")


def measure(target: str, model: str, concurrency: int, args: argparse.Namespace) -> dict:
    return closed_loop_point(
        target, model, concurrency, rpc="rank", processes=args.processes,
        duration=args.duration, warmup=1.0, candidates=args.candidates, k=10, seed=args.seed,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--model", default="deepfm")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1, help="generator processes")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    version = newest_version(args.model_repo, args.model)
    if version is None:
        return 2
    artifact = load_artifact(version)
    if artifact.family not in RANKER_FAMILIES or artifact.program_format != "torchscript":
        print(f"error: {args.model} is not a TorchScript ranker", file=sys.stderr)
        return 2
    host = machine()
    print(f"machine: {host['cpu']}, {host['cores']} cores, recserve SIMD level "
          f"{kernels.SIMD_LEVEL}, torch {host['torch']}")  # fmt: skip
    print(f"Rank, {args.candidates} candidates, k = 10, closed loop, {args.duration:g} s per "
          f"point, {args.processes} generator process(es); {artifact.name} v{artifact.version}")  # fmt: skip
    rows = []
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        repo, work = Path(tmp) / "repo", Path(tmp) / "work"
        work.mkdir()
        prepare(artifact, repo, work)
        argv_serve = [sys.executable, "-m", "recserve.cli", "serve", "--model-repo", str(repo),
                      "--host", "127.0.0.1", "--grace", "0", "--poll-seconds", "0"]  # fmt: skip
        with running(ServerConfig("recserve", "recserve", argv_serve), Path(tmp)) as started:
            check_answers(started.target, artifact, min(args.candidates, 200))
            print("tables and answers of the two are identical")
            print("| model | concurrency | round | answers/s | p50 ms | p99 ms | errors |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for round_ in range(1, args.rounds + 1):
                for concurrency in levels:
                    for model in ("trained", "packaged"):
                        rows.append(measure(started.target, model, concurrency, args))
                        print_point(rows[-1], round_)
    print_ratios(rows, "packaged", "trained", levels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
