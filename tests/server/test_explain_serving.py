"""Rank with explain = true through a live loopback server: one explanation per item,
named like ModelInfo's features, equal to the pipeline-level computation; the limits."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from recserve import Client, RecserveError, cli
from recserve.engine.explain import explain_rows
from recserve.engine.pipeline import RankerPipeline
from recserve.server.app import RunningServer
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MAX_EXPLAIN_K = 100  # the server's default --max-explain-k (conftest's live_server)


def pipeline_of(live_server: RunningServer) -> RankerPipeline:
    pipeline = live_server.repository.get().pipeline
    assert isinstance(pipeline, RankerPipeline)
    return pipeline


def known_items(live_server: RunningServer, n: int) -> list[int]:
    return pipeline_of(live_server).item_ids[:n].tolist()


@pytest.fixture
def stub(live_server: RunningServer) -> Iterator[pb_grpc.RecommenderStub]:
    with grpc.insecure_channel(f"127.0.0.1:{live_server.port}") as channel:
        yield pb_grpc.RecommenderStub(channel)


def test_rank_with_explain_matches_the_pipeline(client: Client, live_server) -> None:
    candidates = known_items(live_server, 30)[::-1]
    context = {"age": "33", "occupation": "engineer"}
    answer = client.rank(7, candidates, k=10, user_features=context, explain=True)
    names = [f.name for f in client.model_info().features]
    assert len(answer.items) == 10 and len(names) == 7
    pipeline = pipeline_of(live_server)
    user, _ = pipeline.encode_user(7, context)
    rows = np.searchsorted(pipeline.item_ids, [i.item_id for i in answer.items])
    expected = explain_rows(pipeline, user, rows)
    for item, reference in zip(answer.items, expected, strict=True):
        e = item.explanation
        assert e is not None and [f.feature for f in e.fields] == names
        # float32 on the wire: the float64 values, rounded once
        assert e.baseline == pytest.approx(reference.baseline, rel=1e-6, abs=1e-7)
        got = [f.contribution for f in e.fields]
        want = [f.contribution for f in reference.fields]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert item.score == pytest.approx(1 / (1 + np.exp(-e.logit)), abs=1e-5)
    assert np.ptp([f.contribution for f in answer.items[0].explanation.fields]) > 0


def test_rank_without_explain_has_no_explanations(client: Client, live_server) -> None:
    answer = client.rank(7, known_items(live_server, 10), k=5)
    assert len(answer.items) == 5 and all(i.explanation is None for i in answer.items)
    explained = client.rank(7, known_items(live_server, 10), k=5, explain=True)
    assert [i.item_id for i in explained.items] == [i.item_id for i in answer.items]
    assert [i.score for i in explained.items] == [i.score for i in answer.items]


def test_explain_is_timed_as_its_own_stage(stub, live_server) -> None:
    request = pb.RankRequest(user_id=1, candidate_item_ids=known_items(live_server, 20), k=5)
    for explain in (False, True):
        request.explain = explain
        response, call = stub.Rank.with_call(request, timeout=5)
        assert all(i.HasField("explanation") == explain for i in response.items)
        timing = dict(call.trailing_metadata())["recserve-timing-ms"]
        stages = dict(part.split("=") for part in timing.split(","))
        assert ("explain" in stages) == explain


@pytest.mark.parametrize(
    ("k", "n_candidates", "message"),
    [
        (MAX_EXPLAIN_K + 1, 20, "--max-explain-k \\(100\\); got k = 101"),
        (0, MAX_EXPLAIN_K + 1, "k = 0 would explain all 101 known candidates.*--max-explain-k"),
    ],
)
def test_explain_above_max_explain_k_is_invalid(
    client: Client, live_server, k: int, n_candidates: int, message: str
) -> None:
    candidates = known_items(live_server, n_candidates)
    with pytest.raises(RecserveError, match=message) as error:
        client.rank(1, candidates, k=k, explain=True)
    assert error.value.code == INVALID
    # The limit counts known candidates: unknown ones do not count against it.
    answer = client.rank(1, [*known_items(live_server, MAX_EXPLAIN_K), 424_242], explain=True)
    assert len(answer.items) == MAX_EXPLAIN_K and answer.unknown_item_ids == [424_242]
    assert all(i.explanation is not None for i in answer.items)


def test_cli_rank_explain(live_server, capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{live_server.port}"
    items = ",".join(str(i) for i in known_items(live_server, 5))
    args = ["rank", "--user", "1", "--items", items, "-k", "2", "--explain", "--target", target]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert text.count("baseline ") == 2 and text.count("largest: ") == 2
    assert cli.main([*args, "--json"]) == 0
    items_out = json.loads(capsys.readouterr().out)["items"]
    assert len(items_out) == 2
    for item in items_out:
        fields = item["explanation"]["fields"]
        assert [f["feature"] for f in fields][:2] == ["user_id", "age"] and len(fields) == 7
    assert cli.main([*args[:-3], "--target", target]) == 0  # without --explain: no lines
    assert "baseline" not in capsys.readouterr().out
