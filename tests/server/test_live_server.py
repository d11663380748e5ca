"""Every status of the contract, against a real server on a loopback port."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recserve import Client, RecserveError
from recserve.engine.errors import ModelNotFound
from recserve.server.app import SERVICE_NAME, RunningServer, ServeOptions, build_server
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def known_items(client: Client, n: int) -> list[int]:
    return [i.item_id for i in client.recommend(1, k=n, include_seen=True).items]


def test_recommend_and_rank(client: Client, live_server: RunningServer) -> None:
    answer = client.recommend(1, k=7)
    assert len(answer.items) == 7
    assert (answer.model_name, answer.model_version) == ("deepfm", 1)
    assert all(item.title for item in answer.items)
    candidates = known_items(client, 5)[::-1]
    ranked = client.rank(1, candidates, k=3)
    assert len(ranked.items) == 3
    assert {i.item_id for i in ranked.items} <= set(candidates)
    assert [i.score for i in ranked.items] == sorted((i.score for i in ranked.items), reverse=True)


def test_model_info_and_list(client: Client) -> None:
    info = client.model_info()
    assert info.family == "deepfm" and info.program_format == "torchscript"
    assert [f.name for f in info.features] == [
        "user_id",
        "age",
        "gender",
        "occupation",
        "item_id",
        "release_year",
        "genres",
    ]
    assert info.features[2].vocabulary == ["F", "M"]
    assert "test_auc" in info.metrics and info.loaded_versions == [1]
    models, default = client.list_models()
    assert default == "deepfm" and [m.name for m in models] == ["deepfm"]


def test_cold_start_and_unknown_items_are_answers_not_errors(client: Client) -> None:
    candidates = known_items(client, 3)
    answer = client.rank(10**12, [*candidates, 424_242], user_features={"age": "41"})
    assert answer.cold_start_user
    assert answer.unknown_item_ids == [424_242]
    assert len(answer.items) == 3
    assert client.recommend(10**12, k=3, recent_item_ids=[777_777]).unknown_item_ids == [777_777]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.rank(1, []), "candidate_item_ids is empty"),
        (lambda c: c.rank(1, [1], k=-1), "k must be between 0 and 1000"),
        (lambda c: c.rank(1, [1], k=1001), "k must be between 0 and 1000"),
        (lambda c: c.recommend(1, k=5000), "k must be between 0 and 1000"),
        (lambda c: c.rank(1, [3, 4, 3]), "duplicates"),
        (lambda c: c.rank(1, [3, -4]), "non-negative"),
        (lambda c: c.rank(-1, [3]), "user_id must be non-negative"),
        (lambda c: c.recommend(1, recent_item_ids=[-9]), "recent_item_ids must be non-negative"),
        (lambda c: c.rank(1, list(range(501))), "exceed the limit of 500"),
        (lambda c: c.recommend(1, user_features={"zip": "1"}), "unknown user feature 'zip'"),
    ],
)
def test_bad_requests_are_invalid_argument(client: Client, call, message: str) -> None:
    with pytest.raises(RecserveError, match=message) as err:
        call(client)
    assert err.value.code == INVALID


def test_negative_version_is_invalid_argument(client: Client) -> None:
    with pytest.raises(RecserveError, match="version must be positive") as err:
        client.recommend(1, version=-1)
    assert err.value.code == INVALID


def test_seen_items_over_the_wire(client: Client, live_server: RunningServer) -> None:
    pipeline = live_server.repository.get().pipeline
    user = int(pipeline.user_ids[0])
    seen = set(pipeline.item_ids[pipeline.seen_rows(0)].tolist())
    everything = client.recommend(user, k=pipeline.num_items, include_seen=True)
    assert len(everything.items) == pipeline.num_items
    unseen = client.recommend(user, k=pipeline.num_items)
    assert {i.item_id for i in unseen.items} == {i.item_id for i in everything.items} - seen
    recent = [unseen.items[0].item_id]
    after_click = client.recommend(user, k=5, recent_item_ids=recent)
    assert recent[0] not in {i.item_id for i in after_click.items}


def test_unknown_model_or_version_is_not_found(client: Client) -> None:
    for call in (
        lambda: client.recommend(1, model="nope"),
        lambda: client.rank(1, [1], version=7),
        lambda: client.model_info(model="nope"),
    ):
        with pytest.raises(RecserveError) as err:
            call()
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        assert "loaded" in err.value.message


def test_unexpected_failure_is_internal_with_a_generic_message(
    client: Client, live_server: RunningServer, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    pipeline = live_server.repository.get().pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(pipeline, "prepare_recommend", broken)
    with pytest.raises(RecserveError) as err:
        client.recommend(1)
    assert err.value.code == grpc.StatusCode.INTERNAL
    assert "secret" not in err.value.message
    assert "secret detail" in caplog.text  # logged for the operator


def test_health_and_reflection(live_server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{live_server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert {"recserve.v1.Recommender", "grpc.health.v1.Health"} <= names


def test_garbage_bytes_get_a_status_and_the_server_stays_up(client: Client, live_server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{live_server.port}") as channel:
        raw = channel.unary_unary("/recserve.v1.Recommender/Rank")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\x0f garbage", timeout=5)
        assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
        stub = pb_grpc.RecommenderStub(channel)
        assert len(stub.Recommend(pb.RecommendRequest(user_id=1, k=2), timeout=5).items) == 2


def test_before_a_model_loads_requests_are_unavailable(tmp_path: Path) -> None:
    running = build_server(ServeOptions(model_repo=tmp_path, port=0, metrics_port=-1))
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=5) as c:
            assert not c.is_serving()
            with pytest.raises(RecserveError) as err:
                c.recommend(1)
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)


def test_a_broken_newest_version_is_skipped(model_repo: Path, tmp_path: Path, caplog) -> None:
    import shutil

    shutil.copytree(model_repo / "deepfm" / "1", tmp_path / "deepfm" / "1")
    shutil.copytree(model_repo / "deepfm" / "1", tmp_path / "deepfm" / "2")
    manifest = json.loads((tmp_path / "deepfm" / "2" / "manifest.json").read_text())
    (tmp_path / "deepfm" / "2" / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
    (tmp_path / "deepfm" / "2" / "model.pt").write_bytes(b"half a model")
    running = build_server(ServeOptions(model_repo=tmp_path, port=0, metrics_port=-1))
    try:
        loaded = running.repository.load_all()
        assert [(m.name, m.version) for m in loaded] == [("deepfm", 1)]
        assert "not serving deepfm/2: " in caplog.text and "checksum mismatch" in caplog.text
    finally:
        running.stop(0)


def test_concurrent_requests_get_the_same_answers_as_sequential_ones(client: Client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    users = list(range(1, 25))
    expected = {u: client.recommend(u, k=5).items for u in users}
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda u: (u, client.recommend(u, k=5).items), users * 4))
    for user, items in answers:
        assert items == expected[user]


def test_a_default_model_that_is_not_loaded_stops_the_start(model_repo: Path) -> None:
    running = build_server(
        ServeOptions(model_repo=model_repo, port=0, metrics_port=-1, default_model="nope")
    )
    try:
        with pytest.raises(ModelNotFound, match="--default-model 'nope' is not among"):
            running.repository.load_all()
    finally:
        running.stop(0)


def test_a_version_that_fails_unexpectedly_is_skipped(
    model_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import shutil

    from recserve.server import repository

    shutil.copytree(model_repo / "deepfm" / "1", tmp_path / "deepfm" / "1")
    shutil.copytree(model_repo / "deepfm" / "1", tmp_path / "other" / "1")
    manifest = json.loads((tmp_path / "other" / "1" / "manifest.json").read_text())
    (tmp_path / "other" / "1" / "manifest.json").write_text(
        json.dumps({**manifest, "name": "other"})
    )
    real = repository.make_pipeline

    def flaky(artifact, *args, **kwargs):
        if artifact.name == "other":
            raise IndexError("index 99 is out of bounds")
        return real(artifact, *args, **kwargs)

    monkeypatch.setattr(repository, "make_pipeline", flaky)
    running = build_server(ServeOptions(model_repo=tmp_path, port=0, metrics_port=-1))
    try:
        loaded = running.repository.load_all()
        assert [(m.name, m.version) for m in loaded] == [("deepfm", 1)]
        assert "not serving other/1: index 99 is out of bounds" in caplog.text
    finally:
        running.stop(0)
