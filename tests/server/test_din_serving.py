"""The DIN ranker as a cascade's second stage, through a live loopback server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.sequences import SMALL_DIN, SMALL_SEQUENCE

from recserve import Client, RecserveError
from recserve.engine.artifact import load_artifact
from recserve.engine.din import DinPipeline
from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.training import topn
from recserve.training.data import make_synthetic_movielens


@pytest.fixture(scope="module")
def din_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    data = make_synthetic_movielens(n_users=40, n_items=30, n_interactions=600, seed=4)
    repo = tmp_path_factory.mktemp("din-serving-repo")
    for name, config in (("sasrec", topn.SASRecConfig), ("gru4rec", topn.SequenceConfig)):
        topn.train_sequence(data, config(**SMALL_SEQUENCE)).export(repo, name, "syn")
    din = topn.train_din(data, topn.DINConfig(**SMALL_DIN), lambda line: None, False, repo)
    din.export(repo, "din", "syn")
    return repo


@pytest.fixture(scope="module")
def server(din_repo: Path) -> Iterator[RunningServer]:
    running = build_server(
        ServeOptions(
            model_repo=din_repo,
            port=0,
            metrics_port=-1,
            default_model="sasrec",
            default_rank_with="din",
        )
    )
    running.repository.load_all()
    running.set_serving(True)
    yield running
    running.stop(0)


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{server.port}", timeout=10) as c:
        yield c


def test_the_default_recommend_is_the_retriever_ranked_by_din(
    client: Client, din_repo: Path
) -> None:
    assert client.default_recommend() == ("sasrec", "din")
    answer = client.recommend(3, k=5, retrieve_n=20)
    assert (answer.model_name, answer.ranked_by_name) == ("sasrec", "din")
    retrieved = client.recommend(3, k=20, model="sasrec")
    # the same order the program gives those items, computed here without the server
    pipeline = DinPipeline(load_artifact(din_repo / "din" / "1"))
    rows = np.searchsorted(pipeline.item_ids, [i.item_id for i in retrieved.items])
    user_row = int(np.searchsorted(pipeline.user_ids, 3))
    history = pipeline.history_rows(user_row)[-pipeline.max_history :]
    scores = pipeline.score(
        user_row, history, rows, np.array([i.score for i in retrieved.items], np.float32)
    )
    best = np.argsort(-scores, kind="stable")[:5]
    assert [i.item_id for i in answer.items] == [retrieved.items[b].item_id for b in best]
    np.testing.assert_allclose([i.score for i in answer.items], scores[best], rtol=1e-6)


def test_a_click_in_the_request_reaches_the_ranker(client: Client, din_repo: Path) -> None:
    """The same retrieved items with the same scores: a recent item changes DIN's scores
    (its history input), and is merged, not repeated, when the history ends with it."""
    pipeline = DinPipeline(load_artifact(din_repo / "din" / "1"))
    user = int(pipeline.user_ids[5])
    history = pipeline.item_ids[pipeline.history_rows(5)]
    items = [int(i) for i in pipeline.item_ids if i not in set(history.tolist())][:8]
    scores = [float(-i) for i in range(len(items))]
    clicked = int(history[0])  # an old item: appended as the newest, the history changes

    def answer(recent: list[int]) -> list[tuple[int, float]]:
        ranking = pipeline.rank_retrieved(user, items, scores, k=8, recent_item_ids=recent)
        return [(i.item_id, i.score) for i in ranking.items]

    assert answer([clicked]) != answer([])
    assert answer([int(history[-1])]) == answer([])  # the history already ends with it
    before = client.recommend(user, k=10)
    after = client.recommend(user, k=10, recent_item_ids=[clicked])
    assert [(i.item_id, i.score) for i in after.items] != [
        (i.item_id, i.score) for i in before.items
    ]


def test_an_unknown_user_is_ranked_from_the_recent_items(client: Client) -> None:
    answer = client.recommend(10**9, k=5, recent_item_ids=[1, 2])
    assert answer.cold_start_user and len(answer.items) == 5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.rank(3, [1, 2, 3], model="din"), "answers only in a cascade"),
        (lambda c: c.recommend(3, k=5, model="din"), "answers only in a cascade"),
        (
            lambda c: c.recommend(3, k=5, model="gru4rec", rank_with="din"),
            "trained on the scores of retriever 'sasrec', not 'gru4rec'",
        ),
        (
            lambda c: c.recommend(3, k=5, user_features={"age": "30"}),
            "unknown user feature 'age'",
        ),
    ],
)
def test_what_din_cannot_answer_is_invalid_argument(client: Client, call, message) -> None:
    with pytest.raises(RecserveError, match=message) as err:
        call(client)
    assert err.value.code.name == "INVALID_ARGUMENT"


def test_a_default_ranker_trained_on_another_retriever_stops_the_start(din_repo: Path) -> None:
    running = build_server(
        ServeOptions(
            model_repo=din_repo,
            port=0,
            metrics_port=-1,
            default_model="gru4rec",
            default_rank_with="din",
        )
    )
    try:
        with pytest.raises(Exception, match="retriever 'sasrec', not 'gru4rec'"):
            running.repository.load_all()
    finally:
        running.stop(0)
