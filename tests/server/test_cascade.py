"""Recommend as a cascade: a sequence model retrieves, a DNN ranker orders, one request."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.sequences import SMALL_SEQUENCE

from recserve import Client, RecserveError
from recserve.engine.errors import ModelNotFound
from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.training import topn
from recserve.training.data import InteractionData


@pytest.fixture(scope="module")
def cascade_server(
    tmp_path_factory: pytest.TempPathFactory, model_repo: Path, synthetic_data: InteractionData
) -> Iterator[RunningServer]:
    torch.set_num_threads(1)
    repo = tmp_path_factory.mktemp("cascade-repo")
    shutil.copytree(model_repo / "deepfm", repo / "deepfm")
    topn.train_sequence(synthetic_data, topn.SequenceConfig(**SMALL_SEQUENCE)).export(
        repo, "gru4rec", "synthetic"
    )
    running = build_server(
        ServeOptions(model_repo=repo, port=0, metrics_port=-1, default_model="gru4rec")
    )
    running.repository.load_all()
    running.set_serving(True)
    yield running
    running.stop(0)


@pytest.fixture
def client(cascade_server: RunningServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{cascade_server.port}", timeout=10) as c:
        yield c


def cascade(client: Client, user: int, k: int, **fields):
    return client.recommend(user, k, model="gru4rec", rank_with="deepfm", **fields)


def test_cascade_equals_retrieve_then_rank(client: Client) -> None:
    response = cascade(client, 3, 5, retrieve_n=40)
    assert (response.model_name, response.ranked_by_name) == ("gru4rec", "deepfm")
    assert response.ranked_by_version == 1 and len(response.items) == 5
    retrieved = client.recommend(3, k=40, model="gru4rec")
    ranked = client.rank(3, [i.item_id for i in retrieved.items], k=5, model="deepfm")
    assert [(i.item_id, i.score) for i in response.items] == [
        (i.item_id, i.score) for i in ranked.items
    ]


def test_a_click_in_the_request_changes_the_cascade(client: Client) -> None:
    before = cascade(client, 4, 10)
    clicked = before.items[0].item_id
    after = cascade(client, 4, 10, recent_item_ids=[clicked])
    assert clicked not in [i.item_id for i in after.items]
    retrieved_before = client.recommend(4, k=100, model="gru4rec")
    retrieved_after = client.recommend(4, k=100, model="gru4rec", recent_item_ids=[clicked])
    assert [i.item_id for i in retrieved_after.items] != [
        i.item_id for i in retrieved_before.items if i.item_id != clicked
    ]


def test_cascade_user_features_go_to_the_ranker(client: Client) -> None:
    young = cascade(client, 10**9, 5, user_features={"age": "18"})
    old = cascade(client, 10**9, 5, user_features={"age": "70"})
    assert young.cold_start_user and old.cold_start_user
    assert [i.score for i in young.items] != [i.score for i in old.items]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(retrieve_n=3), "retrieve_n must be between k"),
        (dict(retrieve_n=5000), "retrieve_n must be between k"),
    ],
)
def test_bad_cascades_are_invalid_argument(client: Client, fields, message: str) -> None:
    with pytest.raises(RecserveError, match=message) as err:
        cascade(client, 1, 5, **fields)
    assert err.value.code.name == "INVALID_ARGUMENT"


def test_rank_with_a_retrieval_model_is_invalid(client: Client) -> None:
    with pytest.raises(RecserveError, match="not a ranker") as err:
        client.recommend(1, 5, rank_with="gru4rec")
    assert err.value.code.name == "INVALID_ARGUMENT"
    assert not client.recommend(1, 5).ranked_by_name  # no cascade, no ranker


def test_a_cascade_with_nothing_left_to_retrieve_is_an_empty_answer(
    client: Client, cascade_server: RunningServer
) -> None:
    every_item = cascade_server.repository.get("gru4rec").pipeline.item_ids.tolist()
    answer = cascade(client, 3, 5, recent_item_ids=every_item)
    assert answer.items == [] and answer.ranked_by_name == "deepfm"


def test_the_default_recommend_is_the_servers_default_cascade(
    cascade_server: RunningServer,
) -> None:
    """--default-rank-with makes a Recommend that names no model the cascade; naming a
    model (or a ranker) still gets exactly what was named."""
    repo = cascade_server.repository.root
    running = build_server(
        ServeOptions(
            model_repo=repo,
            port=0,
            metrics_port=-1,
            default_model="gru4rec",
            default_rank_with="deepfm",
        )
    )
    running.repository.load_all()
    running.set_serving(True)
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=10) as c:
            assert c.default_recommend() == ("gru4rec", "deepfm")
            default = c.recommend(3, k=5, recent_item_ids=[2])
            named = c.recommend(3, k=5, recent_item_ids=[2], model="gru4rec", rank_with="deepfm")
            assert (default.model_name, default.ranked_by_name) == ("gru4rec", "deepfm")
            assert [(i.item_id, i.score) for i in default.items] == [
                (i.item_id, i.score) for i in named.items
            ]
            alone = c.recommend(3, k=5, model="gru4rec")
            assert not alone.ranked_by_name
    finally:
        running.stop(0)


def test_the_plain_default_recommend_is_no_cascade(client: Client) -> None:
    assert client.default_recommend() == ("gru4rec", "")
    assert not client.recommend(3, k=5).ranked_by_name


@pytest.mark.parametrize(
    ("ranker", "message"),
    [
        ("nope", "--default-rank-with 'nope' is not among the loaded models"),
        ("gru4rec", "--default-rank-with 'gru4rec' is a 'sequence' model, not a ranker"),
    ],
)
def test_a_default_ranker_that_cannot_rank_stops_the_start(
    cascade_server: RunningServer, ranker: str, message: str
) -> None:
    running = build_server(
        ServeOptions(
            model_repo=cascade_server.repository.root,
            port=0,
            metrics_port=-1,
            default_model="gru4rec",
            default_rank_with=ranker,
        )
    )
    try:
        with pytest.raises(ModelNotFound, match=message):
            running.repository.load_all()
    finally:
        running.stop(0)
