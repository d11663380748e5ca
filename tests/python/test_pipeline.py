from __future__ import annotations

import numpy as np
import pytest

from recserve.errors import InvalidRequest
from recserve.pipeline import Limits, RankerPipeline


@pytest.fixture(scope="module")
def pipeline(artifact) -> RankerPipeline:
    return RankerPipeline(artifact, Limits(max_candidates=50, max_k=20))


def user_with_history(pipeline: RankerPipeline) -> int:
    return int(pipeline.user_ids[3])


def test_rank_orders_candidates_by_model_score(pipeline: RankerPipeline) -> None:
    user = user_with_history(pipeline)
    candidates = pipeline.item_ids[[5, 1, 30, 12, 7]].tolist()
    ranking = pipeline.rank(user, candidates)
    features, _ = pipeline.encode_user(user, {})
    rows = np.searchsorted(pipeline.item_ids, candidates)
    scores = pipeline.score_rows(features, rows)
    expected = [candidates[i] for i in np.argsort(-scores, kind="stable")]
    assert [i.item_id for i in ranking.items] == expected
    assert [i.score for i in ranking.items] == pytest.approx(sorted(scores, reverse=True))
    assert not ranking.cold_start_user
    assert ranking.items[0].title == str(pipeline.item_titles[rows[np.argmax(scores)]])


def test_rank_k_and_unknown_candidates(pipeline: RankerPipeline) -> None:
    user = user_with_history(pipeline)
    known = pipeline.item_ids[:4].tolist()
    ranking = pipeline.rank(user, [*known, 10**12, 999_999], k=2)
    assert len(ranking.items) == 2
    assert ranking.unknown_item_ids == [10**12, 999_999]
    assert len(pipeline.rank(user, known, k=20).items) == 4  # k > candidates: all of them
    assert pipeline.rank(user, [999_999]).items == []


def test_recommend_excludes_what_the_user_has_seen(pipeline: RankerPipeline) -> None:
    user = user_with_history(pipeline)
    _, row = pipeline.encode_user(user, {})
    seen = set(pipeline.item_ids[pipeline.seen_rows(row)].tolist())
    assert seen
    recent = [int(i) for i in pipeline.item_ids if int(i) not in seen][:2]
    answer = pipeline.recommend(user, k=20, recent_item_ids=recent)
    ids = [i.item_id for i in answer.items]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert not (set(ids) & seen) and not (set(ids) & set(recent))
    scores = [i.score for i in answer.items]
    assert scores == sorted(scores, reverse=True)
    everything = pipeline.recommend(user, k=20, include_seen=True)
    features, _ = pipeline.encode_user(user, {})
    best = np.sort(pipeline.score_rows(features, None))[::-1][:20]
    np.testing.assert_allclose([i.score for i in everything.items], best)


def test_recommend_default_k_and_unknown_recent_ids(pipeline: RankerPipeline) -> None:
    answer = pipeline.recommend(user_with_history(pipeline), recent_item_ids=[123_456_789])
    assert len(answer.items) == 10
    assert answer.unknown_item_ids == [123_456_789]


def test_cold_start_user_and_context(pipeline: RankerPipeline) -> None:
    cold = pipeline.recommend(10**9, k=5)
    assert cold.cold_start_user and len(cold.items) == 5
    candidates = pipeline.item_ids[:10].tolist()
    plain = pipeline.rank(10**9, candidates)
    with_context = pipeline.rank(10**9, candidates, context={"gender": "F", "age": "30"})
    assert [i.score for i in plain.items] != [i.score for i in with_context.items]
    features, _ = pipeline.encode_user(10**9, {"occupation": "no-such-job"})
    assert features.tolist() == [0, 0, 0, 0]  # unknown value -> the unknown index


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(candidate_item_ids=[]), "empty"),
        (dict(candidate_item_ids=list(range(1, 52))), "exceed the limit of 50"),
        (dict(candidate_item_ids=[1, 2, 1]), "duplicates, e.g. 1"),
        (dict(candidate_item_ids=[1, -5]), "non-negative; got -5"),
        (dict(candidate_item_ids=[1], k=-1), "between 0 and 20"),
        (dict(candidate_item_ids=[1], k=21), "between 0 and 20"),
        (dict(candidate_item_ids=[1], context={"zip": "1"}), "unknown user feature 'zip'"),
        (dict(candidate_item_ids=[1], context={"user_id": "1"}), "send it as user_id"),
        (dict(candidate_item_ids=[1], context={"age": "old"}), "takes a number"),
        (dict(user_id=-1, candidate_item_ids=[1]), "user_id must be non-negative"),
    ],
)
def test_rank_rejects_bad_requests(pipeline: RankerPipeline, kwargs: dict, message: str) -> None:
    kwargs = {"user_id": user_with_history(pipeline), **kwargs}
    with pytest.raises(InvalidRequest, match=message):
        pipeline.rank(**kwargs)


def test_recommend_rejects_bad_requests(pipeline: RankerPipeline) -> None:
    user = user_with_history(pipeline)
    with pytest.raises(InvalidRequest, match="recent_item_ids must be non-negative"):
        pipeline.recommend(user, recent_item_ids=[3, -2])
    with pytest.raises(InvalidRequest, match="between 0 and 20"):
        pipeline.recommend(user, k=1000)
