"""prepare -> batch compute -> finish (recserve.engine.batch_plan): a request's answer is the same,
bit for bit, whether its batch computation runs alone or with other requests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.sequences import SMALL_SEQUENCE

from recserve import _core
from recserve.core import kernels
from recserve.engine import batch_plan
from recserve.engine.artifact import load_artifact
from recserve.engine.batch_plan import (
    HeadRows,
    InnerProductQuery,
    row_groups,
    run_head_rows,
    run_inner_products,
)
from recserve.engine.dispatch import make_pipeline
from recserve.engine.pipeline import CatalogPipeline, RankerPipeline
from recserve.engine.request_context import RequestContext
from recserve.engine.validation import Limits
from recserve.training import gan, topn
from recserve.training.data import InteractionData, make_synthetic_movielens
from recserve.training.ranker import train_ranker
from recserve.training.registry import MODELS

ONE_EPOCH = {**SMALL_SEQUENCE, "epochs": 1}

# Two hidden layers: a one-layer head of width 8 happens to round alike in any batch, so
# it would not show a batch-dependent head.
TINY = dict(epochs=1, embedding_dim=8, hidden=[32, 16], num_threads=1)
LIMITS = Limits(max_candidates=200, max_k=100)
COLD_USER = 10**12


@pytest.fixture(scope="module")
def pipelines(
    artifact, synthetic_data: InteractionData, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, CatalogPipeline]:
    torch.set_num_threads(1)
    repo = tmp_path_factory.mktemp("batch-plan-repo")
    out: dict[str, CatalogPipeline] = {
        "deepfm": RankerPipeline(artifact, LIMITS),
        "deepfm-bf16": RankerPipeline(artifact, LIMITS, head_dtype="bfloat16"),
        "deepfm-int8": RankerPipeline(artifact, LIMITS, head_dtype="int8"),
        "deepfm-program": RankerPipeline(artifact, LIMITS, use_crossing=False),
    }
    for name in ("mlp", "wide_deep", "dcnv2"):
        config = MODELS[name].config_type(**TINY)
        trained = train_ranker(name, synthetic_data, config, show_progress=False)
        ranker = load_artifact(trained.export(repo, name, "synthetic"))
        out[name] = make_pipeline(ranker, LIMITS)
        if name == "dcnv2":
            out["dcnv2-int8"] = make_pipeline(ranker, LIMITS, head_dtype="int8")
    data = make_synthetic_movielens(n_users=50, n_items=40, n_interactions=700, seed=2)
    retrieval = {
        "bpr": topn.train_bpr(data, topn.BPRConfig(epochs=1, embedding_dim=8)),
        "gru4rec": topn.train_sequence(data, topn.SequenceConfig(**ONE_EPOCH)),
        "cfgan": gan.train_cfgan(
            data, gan.CFGANConfig(epochs=1, generator_hidden=[8], discriminator_hidden=[8])
        ),
    }
    for name, trained in retrieval.items():
        out[name] = make_pipeline(load_artifact(trained.export(repo, name, "synthetic")), LIMITS)
    return out


def mixed_requests(pipeline: CatalogPipeline, n: int, seed: int) -> list[tuple[str, dict]]:
    """Rank and Recommend calls: known and cold-start users, unknown ids, assorted k."""
    rng = np.random.default_rng(seed)
    items = pipeline.item_ids
    calls = []
    for i in range(n):
        user = COLD_USER + i if i % 5 == 0 else int(rng.choice(pipeline.user_ids))
        if i % 3 == 2:
            recent = [*rng.choice(items, 2, replace=False).tolist(), 900_000 + i]
            kwargs = dict(k=int(rng.choice([0, 3, 25])), recent_item_ids=recent[: i % 4])
            calls.append(("recommend", dict(user_id=user, include_seen=i % 2 == 0, **kwargs)))
        else:
            size = int(rng.integers(1, min(150, items.size)))
            candidates = [*rng.choice(items, size, replace=False).tolist(), 800_000 + i]
            k = int(rng.choice([0, 1, 7, 100]))
            calls.append(("rank", dict(user_id=user, candidate_item_ids=candidates, k=k)))
    return calls


def prepare(pipeline: CatalogPipeline, method: str, kwargs: dict):
    return getattr(pipeline, f"prepare_{method}")(**kwargs)


RANKERS = [
    *("deepfm", "deepfm-bf16", "deepfm-int8", "deepfm-program"),
    *("mlp", "wide_deep", "dcnv2", "dcnv2-int8"),
]


@pytest.mark.parametrize("name", [*RANKERS, "bpr", "gru4rec", "cfgan"])
def test_a_batch_gives_each_request_its_unbatched_answer_bit_for_bit(pipelines, name) -> None:
    pipeline = pipelines[name]
    calls = mixed_requests(pipeline, 48, seed=len(name))
    alone = [getattr(pipeline, method)(**kwargs) for method, kwargs in calls]
    prepared = [prepare(pipeline, method, kwargs) for method, kwargs in calls]
    batched = [p for p in prepared if p.work is not None]
    # Rankers batch every request; retrieval only Recommend with a user vector, and a
    # generator's Recommend has no batch work at all.
    assert len(batched) >= {"bpr": 8, "gru4rec": 8, "cfgan": 0}.get(name, len(calls))
    outputs = iter(pipeline.compute_batch(batched) if batched else [])
    together = [p.finish(next(outputs) if p.work is not None else None) for p in prepared]
    assert any(a.cold_start_user for a in alone) and any(a.unknown_item_ids for a in alone)
    for one, other in zip(alone, together, strict=True):
        assert one == other  # ids, order, float32 scores, titles, flags: all equal


@pytest.mark.parametrize("max_rows", [batch_plan.MAX_HEAD_ROWS, 97])
@pytest.mark.parametrize(
    "name", ["deepfm", "deepfm-bf16", "deepfm-int8", "dcnv2", "dcnv2-int8", "wide_deep"]
)
def test_head_rows_in_a_batch_equal_each_request_alone(
    pipelines, name: str, max_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many row counts, so that rows land on every offset of the GEMM's blocks; the batch
    (about 4,500 rows) runs as several calls, of at most ``max_rows`` rows or of one
    request where a request has more."""
    monkeypatch.setattr(batch_plan, "MAX_HEAD_ROWS", max_rows)
    pipeline = pipelines[name]
    rng = np.random.default_rng(1)
    user, _ = pipeline.encode_user(int(pipeline.user_ids[0]), {})
    rows, _ = pipeline.crossing.head_inputs(user, np.arange(2))
    widths = [a.shape[1] for a in rows.inputs]
    works = [
        HeadRows(tuple(torch.from_numpy(rng.random((n, w), dtype=np.float32)) for w in widths))
        for n in rng.integers(1, 150, size=60)
    ]
    together = run_head_rows(pipeline.head, works)
    for work, logits in zip(works, together, strict=True):
        assert torch.equal(run_head_rows(pipeline.head, [work])[0], logits)


def test_row_groups_keep_order_and_cap_the_rows_of_a_call() -> None:
    def works(*rows: int) -> list[HeadRows]:
        return [HeadRows((torch.zeros(n, 1),)) for n in rows]

    def shape(groups: list[list[HeadRows]]) -> list[list[int]]:
        return [[w.rows for w in group] for group in groups]

    assert shape(row_groups(works(3, 4, 2, 9, 1, 1), max_rows=7)) == [[3, 4], [2], [9], [1, 1]]
    assert shape(row_groups(works(5), max_rows=2)) == [[5]]  # alone when over the cap
    assert row_groups([], max_rows=7) == []
    assert shape(row_groups(works(1000, 1000, 1000))) == [[1000, 1000], [1000]]


def test_queries_beyond_one_kernel_call_equal_each_query_alone() -> None:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((300, 24)).astype(np.float32)
    n = 2 * _core.topk_small_batch() + 3  # several chunks, the last one short
    queries = [
        InnerProductQuery(
            rng.standard_normal(24).astype(np.float32),
            int(rng.integers(0, 40)),
            rng.choice(300, int(rng.integers(0, 20)), replace=False) if i % 3 else None,
        )
        for i in range(n)
    ]
    for query, (values, rows) in zip(queries, run_inner_products(items, queries), strict=True):
        exclude = None if query.exclude is None else [query.exclude]
        want_values, want_rows = kernels.topk_inner_product(
            query.vector, items, query.k, exclude, backend="cpu"
        )
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(values, want_values)


@pytest.mark.parametrize(
    ("name", "method", "stages"),
    [
        ("deepfm", "rank", {"feature", "crossing", "head", "topk"}),
        ("deepfm", "recommend", {"feature", "crossing", "head", "topk"}),
        ("dcnv2", "rank", {"feature", "crossing", "head", "topk"}),
        ("mlp", "rank", {"feature", "head", "topk"}),
        ("deepfm-program", "recommend", {"feature", "head", "topk"}),
        ("bpr", "recommend", {"feature", "topk"}),
        ("bpr", "rank", {"feature", "head", "topk"}),
        ("gru4rec", "recommend", {"feature", "head", "topk"}),
        ("cfgan", "recommend", {"feature", "head", "topk"}),
    ],
)
def test_stage_timings(pipelines, name: str, method: str, stages: set[str]) -> None:
    pipeline = pipelines[name]
    user = int(pipeline.user_ids[1])
    context = RequestContext()
    if method == "rank":
        pipeline.rank(user, pipeline.item_ids[:9].tolist(), k=3, request_context=context)
    else:
        pipeline.recommend(user, k=3, request_context=context)
    assert set(context.timings) == stages
    assert all(seconds >= 0 for seconds in context.timings.values())
