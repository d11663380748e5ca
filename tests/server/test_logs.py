"""JSON log lines carry the request id of the request they are about."""

from __future__ import annotations

import json
import logging
import sys

import grpc
import pytest

from recserve.server.logs import JsonFormatter
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc


def test_json_lines_have_the_extra_fields_and_the_exception() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "recserve.server", logging.ERROR, __file__, 1, "Rank %s", ("failed",), sys.exc_info()
        )
    record.request_id = "abc"
    record.code = "INTERNAL"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "Rank failed" and entry["level"] == "ERROR"
    assert entry["request_id"] == "abc" and entry["code"] == "INTERNAL"
    assert entry["time"].endswith("Z") and "RuntimeError: boom" in entry["exception"]


def test_a_failed_request_is_logged_with_its_request_id(live_server, monkeypatch, caplog) -> None:
    pipeline = live_server.repository.get().pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(pipeline, "prepare_recommend", broken)
    with grpc.insecure_channel(f"127.0.0.1:{live_server.port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Recommend(pb.RecommendRequest(user_id=1, request_id="trace-7"), timeout=5)
    records = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-7"]
    assert records and records[0].code == "INTERNAL" and records[0].rpc == "Recommend"
    assert "secret detail" in json.loads(JsonFormatter().format(records[0]))["exception"]
