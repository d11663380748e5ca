"""Retrieval pipelines (families "embedding", "sequence", "generator"): export round trip,
exclusion, real-time history, cold start, request checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.sequences import SMALL_SEQUENCE

from recserve.core import kernels
from recserve.engine.artifact import load_artifact
from recserve.engine.dispatch import make_pipeline
from recserve.engine.errors import InvalidRequest
from recserve.engine.retrieval import (
    EmbeddingPipeline,
    GeneratorPipeline,
    SequencePipeline,
    merge_recent,
)
from recserve.engine.validation import Limits
from recserve.training import gan, topn
from recserve.training.data import make_synthetic_movielens

SMALL_CFGAN = dict(epochs=2, generator_hidden=[8], discriminator_hidden=[8], num_threads=1)


@pytest.fixture(scope="module")
def trained() -> dict[str, topn.TrainedTopN]:
    torch.set_num_threads(1)
    data = make_synthetic_movielens(n_users=60, n_items=40, n_interactions=900, seed=1)
    return {
        "pop": topn.train_popularity(data, topn.PopConfig()),
        "bpr": topn.train_bpr(data, topn.BPRConfig(epochs=2, embedding_dim=8)),
        "gru4rec": topn.train_sequence(data, topn.SequenceConfig(**SMALL_SEQUENCE)),
        "lstm": topn.train_sequence(data, topn.LSTMConfig(**SMALL_SEQUENCE)),
        "sasrec": topn.train_sequence(data, topn.SASRecConfig(**SMALL_SEQUENCE)),
        "cfgan": gan.train_cfgan(data, gan.CFGANConfig(**SMALL_CFGAN)),
    }


@pytest.fixture(scope="module")
def pipelines(
    tmp_path_factory: pytest.TempPathFactory, trained: dict[str, topn.TrainedTopN]
) -> dict[str, EmbeddingPipeline | SequencePipeline | GeneratorPipeline]:
    repo = tmp_path_factory.mktemp("topn-repo")
    out = {}
    for name, model in trained.items():
        path = model.export(repo, name, "synthetic")
        assert path == Path(repo) / name / "1"
        out[name] = make_pipeline(load_artifact(path), Limits(max_candidates=50, max_k=100))
    return out


def test_families_dispatch(pipelines) -> None:
    assert isinstance(pipelines["pop"], EmbeddingPipeline)
    assert isinstance(pipelines["bpr"], EmbeddingPipeline)
    assert isinstance(pipelines["gru4rec"], SequencePipeline)
    assert pipelines["lstm"].artifact.family == "sequence"
    assert isinstance(pipelines["cfgan"], GeneratorPipeline)
    assert pipelines["cfgan"].artifact.family == "generator"
    assert pipelines["bpr"].artifact.metrics["test_ndcg@10"] >= 0
    assert [f.name for f in pipelines["bpr"].schema.features] == ["user_id", "item_id"]


@pytest.mark.parametrize("name", ["pop", "bpr"])
def test_embedding_round_trip_scores(trained, pipelines, name: str) -> None:
    model, pipeline = trained[name].model, pipelines[name]
    users = torch.arange(pipeline.num_users)
    with torch.no_grad():
        want = model(users).numpy()
    for row in (0, 7, pipeline.num_users - 1):
        vector, got_row = pipeline.encode_user(int(pipeline.user_ids[row]), {})
        assert got_row == row
        np.testing.assert_allclose(pipeline.score_rows(vector, None), want[row], atol=1e-5)


@pytest.mark.parametrize("name", ["gru4rec", "lstm", "sasrec"])
def test_sequence_round_trip_scores(trained, pipelines, name: str) -> None:
    model, pipeline = trained[name].model, pipelines[name]
    for row in (0, 11):
        history = pipeline.history_rows(row)
        with torch.no_grad():
            want = model.scores(model(topn.pad_right([history], 10)))[0].numpy()
        vector, _ = pipeline.encode_user(int(pipeline.user_ids[row]), {})
        np.testing.assert_allclose(pipeline.score_rows(vector, None), want, atol=1e-6)


def test_generator_round_trip_scores(trained, pipelines) -> None:
    model, pipeline = trained["cfgan"].model, pipelines["cfgan"]
    for row in (0, 11, pipeline.num_users - 1):
        purchases = gan.purchase_vectors([pipeline.seen_rows(row)], pipeline.num_items)
        with torch.no_grad():
            want = model(purchases)[0].numpy()
        vector, got_row = pipeline.encode_user(int(pipeline.user_ids[row]), {})
        assert got_row == row
        np.testing.assert_array_equal(pipeline.score_rows(vector, None), want)


@pytest.mark.parametrize("name", ["pop", "bpr", "gru4rec", "cfgan"])
def test_recommend_is_brute_force_top_k_without_seen(pipelines, name: str) -> None:
    pipeline = pipelines[name]
    user_id = int(pipeline.user_ids[3])
    vector, row = pipeline.encode_user(user_id, {})
    scores = pipeline.score_rows(vector, None).astype(np.float64)
    seen = set(pipeline.seen_rows(row).tolist())
    order = [r for r in np.argsort(-scores, kind="stable") if r not in seen][:5]
    answer = pipeline.recommend(user_id, k=5)
    assert not answer.cold_start_user
    assert [i.item_id for i in answer.items] == pipeline.item_ids[order].tolist()
    np.testing.assert_allclose([i.score for i in answer.items], scores[order], rtol=1e-5)
    assert all(i.title for i in answer.items)
    with_seen = pipeline.recommend(user_id, k=pipeline.num_items, include_seen=True)
    assert len(with_seen.items) == pipeline.num_items


def test_recent_click_changes_sequence_answer_at_once(pipelines) -> None:
    pipeline = pipelines["gru4rec"]
    user_id = int(pipeline.user_ids[5])
    before = pipeline.recommend(user_id, k=10)
    clicked = before.items[0].item_id
    after = pipeline.recommend(user_id, k=10, recent_item_ids=[clicked, 99_999])
    assert after.unknown_item_ids == [99_999]
    assert clicked not in [i.item_id for i in after.items]
    # the stored history plus the click, encoded: the new state scores the catalog
    row = int(np.searchsorted(pipeline.item_ids, clicked))
    state = pipeline.user_vector(5, np.array([row]))
    assert not np.allclose(state, pipeline.user_vector(5, np.empty(0, dtype=np.int64)))
    values, _ = kernels.topk_inner_product(
        state, pipeline.item_vectors, 10, [np.append(pipeline.seen_rows(5), row)], backend="cpu"
    )
    np.testing.assert_allclose([i.score for i in after.items], values, rtol=1e-6)


def merged_by_brute_force(history: list[int], recent: list[int]) -> list[int]:
    overlap = max(
        (n for n in range(1, min(len(history), len(recent)) + 1) if history[-n:] == recent[:n]),
        default=0,
    )
    return history + recent[overlap:]


def test_merge_recent_appends_only_what_the_history_does_not_end_with() -> None:
    rng = np.random.default_rng()
    for _ in range(3000):  # few distinct values, so that overlaps are common
        history = rng.integers(0, 3, rng.integers(0, 14)).tolist()
        recent = rng.integers(0, 3, rng.integers(0, 14)).tolist()
        merged = merge_recent(np.array(history, np.int64), np.array(recent, np.int64))
        assert merged.dtype == np.int64
        assert merged.tolist() == merged_by_brute_force(history, recent), (history, recent)
    assert merge_recent(np.array([1, 2, 3]), np.array([2, 3, 4])).tolist() == [1, 2, 3, 4]
    assert merge_recent(np.array([1, 2, 3]), np.array([1, 2])).tolist() == [1, 2, 3, 1, 2]


def test_recent_items_the_history_ends_with_are_not_appended_again(pipelines) -> None:
    pipeline = pipelines["gru4rec"]
    user_row = 5
    user_id = int(pipeline.user_ids[user_row])
    tail = pipeline.item_ids[pipeline.history_rows(user_row)[-3:]].tolist()
    assert len(tail) == 3
    for include_seen in (False, True):
        alone = pipeline.recommend(user_id, k=10, include_seen=include_seen)
        resent = pipeline.recommend(user_id, k=10, recent_item_ids=tail, include_seen=include_seen)
        assert resent.items == alone.items
    # the tail sent again with a new click: the same answer as the new click alone
    clicked = pipeline.recommend(user_id, k=1).items[0].item_id
    once = pipeline.recommend(user_id, k=10, recent_item_ids=[clicked])
    with_tail = pipeline.recommend(user_id, k=10, recent_item_ids=[*tail, clicked])
    assert with_tail.items == once.items


def test_recent_click_changes_generator_answer_at_once(pipelines) -> None:
    pipeline = pipelines["cfgan"]
    user_id = int(pipeline.user_ids[5])
    before = pipeline.recommend(user_id, k=10)
    clicked = before.items[0].item_id
    after = pipeline.recommend(user_id, k=10, recent_item_ids=[clicked, 99_999])
    assert after.unknown_item_ids == [99_999]
    assert clicked not in [i.item_id for i in after.items]
    row = int(np.searchsorted(pipeline.item_ids, clicked))
    purchases = np.append(pipeline.seen_rows(5), row)
    with torch.no_grad():
        scores = pipeline.generator(gan.purchase_vectors([purchases], pipeline.num_items))[0]
    assert not np.allclose(scores.numpy(), pipeline.user_vector(5, np.empty(0, np.int64)))
    values, rows = kernels.topk_scores(scores.numpy(), 10, [purchases], backend="cpu")
    assert [i.item_id for i in after.items] == pipeline.item_ids[rows].tolist()
    np.testing.assert_allclose([i.score for i in after.items], values, rtol=1e-6)


@pytest.mark.parametrize("name", ["bpr", "gru4rec", "cfgan"])
def test_cold_start_is_training_popularity(pipelines, name: str) -> None:
    pipeline = pipelines[name]
    answer = pipeline.recommend(10**9, k=5)
    assert answer.cold_start_user
    order = np.argsort(-pipeline.popularity.astype(np.float64), kind="stable")[:5]
    assert [i.item_id for i in answer.items] == pipeline.item_ids[order].tolist()


def test_cold_start_user_with_recent_items_gets_a_sequence_state(pipelines) -> None:
    pipeline = pipelines["gru4rec"]
    recent = pipeline.item_ids[[3, 8]].tolist()
    answer = pipeline.recommend(10**9, k=5, recent_item_ids=recent)
    assert answer.cold_start_user
    state = pipeline.user_vector(-1, np.array([3, 8]))
    _, rows = kernels.topk_inner_product(state, pipeline.item_vectors, 5, [[3, 8]], backend="cpu")
    assert [i.item_id for i in answer.items] == pipeline.item_ids[rows].tolist()


@pytest.mark.parametrize("name", ["pop", "bpr", "gru4rec", "cfgan"])
def test_rank_orders_candidates(pipelines, name: str) -> None:
    pipeline = pipelines[name]
    user_id = int(pipeline.user_ids[2])
    candidates = [*pipeline.item_ids[[9, 1, 4, 30]].tolist(), 77_777]
    answer = pipeline.rank(user_id, candidates, k=3)
    assert answer.unknown_item_ids == [77_777] and len(answer.items) == 3
    vector, _ = pipeline.encode_user(user_id, {})
    scores = pipeline.score_rows(vector, np.array([9, 1, 4, 30]))
    best = np.argsort(-scores.astype(np.float64), kind="stable")[:3]
    assert [i.item_id for i in answer.items] == [candidates[b] for b in best]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.rank(1, []), "candidate_item_ids is empty"),
        (lambda p: p.rank(1, [3, 4, 3]), "duplicates"),
        (lambda p: p.rank(1, [3, -4]), "non-negative"),
        (lambda p: p.rank(1, list(range(51))), "exceed the limit of 50"),
        (lambda p: p.rank(-1, [3]), "user_id must be non-negative"),
        (lambda p: p.recommend(1, k=101), "k must be between 0 and 100"),
        (lambda p: p.recommend(1, recent_item_ids=[-9]), "recent_item_ids must be non-negative"),
        (lambda p: p.recommend(1, context={"zip": "1"}), "unknown user feature 'zip'"),
        (lambda p: p.recommend(1, context={"user_id": "1"}), "send it as user_id"),
    ],
)
@pytest.mark.parametrize("name", ["bpr", "gru4rec", "cfgan"])
def test_bad_requests(pipelines, name: str, call, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        call(pipelines[name])
