"""The top-N families ("embedding", "sequence", "generator") through a live loopback
server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.sequences import SMALL_SEQUENCE

from recserve import Client
from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.training import gan, topn
from recserve.training.data import make_synthetic_movielens

FAMILIES = {
    "pop": "embedding",
    "bpr": "embedding",
    "gru4rec": "sequence",
    "sasrec": "sequence",
    "cfgan": "generator",
}


@pytest.fixture(scope="session")
def topn_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    data = make_synthetic_movielens(n_users=50, n_items=40, n_interactions=700, seed=2)
    repo = tmp_path_factory.mktemp("topn-serving-repo")
    topn.train_popularity(data, topn.PopConfig()).export(repo, "pop", "synthetic")
    bpr = topn.train_bpr(data, topn.BPRConfig(epochs=2, embedding_dim=8))
    bpr.export(repo, "bpr", "synthetic")
    gru = topn.train_sequence(data, topn.SequenceConfig(**SMALL_SEQUENCE))
    gru.export(repo, "gru4rec", "synthetic")
    sasrec = topn.train_sequence(data, topn.SASRecConfig(**SMALL_SEQUENCE))
    sasrec.export(repo, "sasrec", "synthetic")
    cfgan = gan.train_cfgan(
        data, gan.CFGANConfig(epochs=2, generator_hidden=[8], discriminator_hidden=[8])
    )
    cfgan.export(repo, "cfgan", "synthetic")
    return repo


@pytest.fixture(scope="session")
def topn_server(topn_repo: Path) -> Iterator[RunningServer]:
    running = build_server(
        ServeOptions(model_repo=topn_repo, port=0, metrics_port=-1, max_candidates=100)
    )
    running.repository.load_all()
    running.set_serving(True)
    yield running
    running.stop(0)


@pytest.fixture
def topn_client(topn_server: RunningServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{topn_server.port}", timeout=10) as c:
        yield c


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_recommend_and_rank(topn_client: Client, name: str) -> None:
    answer = topn_client.recommend(1, k=5, model=name)
    assert (answer.model_name, answer.model_version) == (name, 1)
    assert len(answer.items) == 5 and not answer.cold_start_user
    assert all(i.title for i in answer.items)
    scores = [i.score for i in answer.items]
    assert scores == sorted(scores, reverse=True)
    candidates = [*(i.item_id for i in answer.items[::-1]), 123_456]
    ranked = topn_client.rank(1, candidates, k=3, model=name)
    assert ranked.unknown_item_ids == [123_456]
    # equal scores may come in another order; the fused kernel rounds differently
    assert [i.score for i in ranked.items] == pytest.approx(scores[:3], rel=1e-5)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_model_info(topn_client: Client, name: str) -> None:
    info = topn_client.model_info(name)
    assert info.family == FAMILIES[name]
    assert [f.name for f in info.features] == ["user_id", "item_id"]
    assert "test_ndcg@10" in info.metrics and info.num_items == 40 and info.num_users == 50


@pytest.mark.parametrize("name", ["gru4rec", "sasrec", "cfgan"])
def test_click_in_request_changes_answer(topn_client: Client, name: str) -> None:
    before = topn_client.recommend(2, k=10, model=name)
    clicked = before.items[0].item_id
    after = topn_client.recommend(2, k=10, recent_item_ids=[clicked], model=name)
    assert clicked not in [i.item_id for i in after.items]
    assert [i.score for i in after.items] != [i.score for i in before.items[1:]]


@pytest.mark.parametrize("name", ["bpr", "cfgan"])
def test_cold_start_and_bad_request(topn_client: Client, name: str) -> None:
    answer = topn_client.recommend(10**12, k=3, model=name)
    assert answer.cold_start_user and len(answer.items) == 3
    with pytest.raises(Exception, match="unknown user feature 'zip'"):
        topn_client.recommend(1, model="gru4rec", user_features={"zip": "1"})
