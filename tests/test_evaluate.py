"""`recserve evaluate`: the held-out split, most-popular, and the scores of a live server's
answers, checked against the answers themselves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.serving import serving

from recserve import Client
from recserve.cli import main
from recserve.evaluate import (
    Request,
    evaluate_server,
    hold_out_last,
    most_popular,
    read_split,
    write_split,
)
from recserve.server.app import RunningServer
from recserve.training import topn
from recserve.training.data import InteractionData, load_interaction_log
from recserve.training.data import make_synthetic_movielens as synthetic

K = 5


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return synthetic(n_users=40, n_items=30, n_interactions=500, seed=7)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory, data: InteractionData) -> Path:
    directory = tmp_path_factory.mktemp("split")
    write_split(hold_out_last(data), directory)
    return directory


def test_the_last_interaction_of_each_user_is_held_out(data: InteractionData) -> None:
    held = hold_out_last(data)
    assert held.user_ids.tolist() == sorted(set(data.user_id.tolist()))  # all have >= 2
    assert held.train.user_id.size == data.user_id.size - held.user_ids.size
    for user, item in zip(held.user_ids.tolist(), held.item_ids.tolist(), strict=True):
        mine = np.flatnonzero(data.user_id == user)
        last = mine[np.lexsort((mine, data.timestamp[mine]))[-1]]
        assert data.item_id[last] == item
        # the training part keeps every other interaction of the user
        assert np.sum(held.train.user_id == user) == mine.size - 1


def test_a_user_with_one_interaction_is_not_held_out(data: InteractionData) -> None:
    first = int(data.user_id[0])
    keep = (data.user_id != first) | (np.arange(data.user_id.size) == 0)
    one = InteractionData(
        name="one", user_id=data.user_id[keep], item_id=data.item_id[keep],
        rating=data.rating[keep], timestamp=data.timestamp[keep],
        users=data.users, items=data.items,
    )  # fmt: skip
    held = hold_out_last(one)
    assert first not in held.user_ids.tolist()
    assert np.sum(held.train.user_id == first) == 1


def test_a_written_split_reads_back(data: InteractionData, split_dir: Path) -> None:
    held = hold_out_last(data)
    again = read_split(split_dir)
    assert again.user_ids.tolist() == held.user_ids.tolist()
    assert again.item_ids.tolist() == held.item_ids.tolist()
    assert sorted(
        zip(again.train.user_id.tolist(), again.train.item_id.tolist(), strict=True)
    ) == sorted(zip(held.train.user_id.tolist(), held.train.item_id.tolist(), strict=True))
    with pytest.raises(FileNotFoundError, match="--make-split"):
        read_split(split_dir / "missing")


def test_most_popular_is_the_frequent_unseen_items(data: InteractionData) -> None:
    answer = most_popular(data, K)
    counts: dict[int, int] = {}
    for item in data.item_id.tolist():
        counts[item] = counts.get(item, 0) + 1
    for user in data.users.user_id.tolist()[:10]:
        seen = set(data.item_id[data.user_id == user].tolist())
        expected = sorted((i for i in counts if i not in seen), key=lambda i: (-counts[i], i))
        assert answer(user) == expected[:K]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, split_dir: Path) -> Iterator[RunningServer]:
    torch.set_num_threads(1)
    train = load_interaction_log(next((split_dir / "train").glob("*.toml")))
    repo = tmp_path_factory.mktemp("evaluate-repo")
    topn.train_bpr(train, topn.BPRConfig(epochs=3, embedding_dim=8)).export(repo, "bpr", "split")
    with serving(repo) as running:
        yield running


def test_the_scores_are_those_of_the_answers(server: RunningServer, split_dir: Path) -> None:
    held = read_split(split_dir)
    with Client(f"127.0.0.1:{server.port}", timeout=10) as client:
        result = evaluate_server(client, held, Request(k=K, model="bpr"), concurrency=4)
        answers = [
            [i.item_id for i in client.recommend(user, K, model="bpr").items]
            for user in held.user_ids.tolist()
        ]
    served = result["served"]
    assert served["users"] == held.user_ids.size and served["errors"] == {}
    assert result["served_by"] == ["bpr v1"]
    ranks = [
        a.index(i) if i in a else K for a, i in zip(answers, held.item_ids.tolist(), strict=True)
    ]
    hits = [r for r in ranks if r < K]
    assert served[f"hr@{K}"] == pytest.approx(len(hits) / len(ranks))
    assert served[f"ndcg@{K}"] == pytest.approx(sum(1 / np.log2(r + 2) for r in hits) / len(ranks))
    assert served[f"mrr@{K}"] == pytest.approx(sum(1 / (r + 1) for r in hits) / len(ranks))
    answered = {i for a in answers for i in a}
    assert served["coverage"] == pytest.approx(len(answered) / len(held.train.items))
    # the held-out item is not in the server's seen items: some user gets it back
    assert served[f"hr@{K}"] > 0
    assert 0 <= result["most_popular"][f"hr@{K}"] <= 1


def test_the_command_prints_and_writes_json(
    server: RunningServer, split_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{server.port}"
    output = tmp_path / "result.json"
    args = ["evaluate", "--split", str(split_dir), "--target", target, "-k", str(K)]
    assert (
        main([*args, "--model", "bpr", "--users", "10", "--no-progress", "--output", str(output)])
        == 0
    )
    text = capsys.readouterr().out
    assert "most popular" in text and f"HR@{K}" in text and "served by bpr v1" in text
    assert json.loads(output.read_text())["served"]["users"] == 10
    assert main([*args, "--model", "nope", "--users", "3", "--no-progress", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["served"]["errors"] == {"NOT_FOUND": 3}


def test_the_command_writes_a_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--make-split", str(tmp_path / "s"), "--data", "synthetic"]) == 0
    assert "held-out users" in capsys.readouterr().out
    held = read_split(tmp_path / "s")
    assert held.user_ids.size > 0 and held.train.user_id.size > 0
