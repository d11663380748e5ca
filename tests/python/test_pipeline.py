from __future__ import annotations

import numpy as np
import pytest
import torch

from recserve.engine.errors import InvalidRequest
from recserve.engine.pipeline import RankerPipeline
from recserve.engine.validation import Limits


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
    with pytest.raises(InvalidRequest, match="51 recent_item_ids exceed the limit of 50"):
        pipeline.recommend(user, recent_item_ids=list(range(51)))


# --- the fused crossing path against the whole TorchScript program ---------------------


@pytest.fixture(scope="module")
def program_pipeline(artifact) -> RankerPipeline:
    return RankerPipeline(artifact, Limits(max_candidates=50, max_k=20), use_crossing=False)


def test_artifact_is_served_through_the_crossing_kernel(pipeline, program_pipeline) -> None:
    assert pipeline.crossing is not None and program_pipeline.crossing is None
    assert pipeline.crossing.bytes_per_item == 4 * (8 + 1 + 32)  # SMALL_CONFIG: d 8, H1 32


def test_crossing_scores_equal_the_model_program(pipeline: RankerPipeline, artifact) -> None:
    """Every item for many users (cold start and context too): within 1e-5 relative."""
    module = artifact.modules["model"]
    items = torch.from_numpy(artifact.tables["item_features"])
    multi = torch.from_numpy(artifact.tables["item_multi"])
    users = list(pipeline.user_features)  # every user
    users += [pipeline.encode_user(10**9, {"gender": "F", "age": "30"})[0], np.zeros(4, np.int64)]
    assert len(users) > 50
    for user in users:
        with torch.inference_mode():
            logits = module(torch.from_numpy(user).expand(items.shape[0], -1), items, multi)
            expected = torch.sigmoid(logits).numpy()
            logits = logits.numpy()
        np.testing.assert_allclose(pipeline.score_rows(user, None), expected, rtol=1e-5, atol=0)
        np.testing.assert_allclose(
            pipeline.crossing.logits(user, None),
            logits,
            rtol=1e-5,
            atol=1e-5 * np.abs(logits).max(),
        )
        rows = np.array([3, 0, pipeline.num_items - 1, 3])
        np.testing.assert_allclose(pipeline.score_rows(user, rows), expected[rows], rtol=1e-5)


def same_ranking(fused, program, scores_by_id: dict[int, float]) -> None:
    """Same ids in the same order, except where two items' scores tie within 1e-5."""
    assert len(fused.items) == len(program.items)
    for a, b in zip(fused.items, program.items, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5)
        if a.item_id != b.item_id:
            assert scores_by_id[a.item_id] == pytest.approx(scores_by_id[b.item_id], rel=1e-5)


def test_rank_and_recommend_give_the_same_ids_through_both_paths(
    pipeline: RankerPipeline, program_pipeline: RankerPipeline
) -> None:
    rng = np.random.default_rng(0)
    for user in [*pipeline.user_ids[:: max(1, pipeline.num_users // 20)].tolist(), 10**9]:
        features, _ = pipeline.encode_user(user, {})
        scores = program_pipeline.score_rows(features, None)
        by_id = dict(zip(pipeline.item_ids.tolist(), scores.tolist(), strict=True))
        candidates = rng.choice(pipeline.item_ids, 50, replace=False).tolist()
        for k in (0, 5):
            same_ranking(
                pipeline.rank(user, candidates, k=k),
                program_pipeline.rank(user, candidates, k=k),
                by_id,
            )
        same_ranking(pipeline.recommend(user, k=20), program_pipeline.recommend(user, k=20), by_id)
        same_ranking(
            pipeline.recommend(user, k=20, include_seen=True),
            program_pipeline.recommend(user, k=20, include_seen=True),
            by_id,
        )
