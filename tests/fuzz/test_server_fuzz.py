"""Property-based fuzzing of the gRPC contract against a live server (hypothesis).

Each example is a burst of arbitrary requests: ids over the whole int64 range mixed
with known ones, duplicates, empty and oversized lists, NaN/inf/unicode feature values,
k over the whole int32 range, odd model names and versions, cascades, and raw garbage
bytes in place of a serialized message. Every reply must carry a status documented for
that RPC (never INTERNAL: a client input is never a server fault), every OK answer must
be well-formed, and after each burst a fixed request must get the answer it got before
the fuzzing began. Runs are reproducible: ``derandomize=True`` and no example database.
Reproduce: ``python -m pytest tests/fuzz/test_server_fuzz.py -q -s`` (the counts print).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recserve.kserve import grpc_predict_v2_pb2 as kpb
from recserve.kserve import grpc_predict_v2_pb2_grpc as kpb_grpc
from recserve.server.app import RunningServer
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

MAX_CANDIDATES = 500  # the live_server fixture's --max-candidates
MAX_K = 1000  # the server's default --max-k
TIMEOUT = 30.0
INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
DOCUMENTED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    }
)
DOCUMENTED_NUMBERS = frozenset(code.value[0] for code in DOCUMENTED)
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
METHODS = {
    "/recserve.v1.Recommender/Rank": pb.RankRequest,
    "/recserve.v1.Recommender/Recommend": pb.RecommendRequest,
    "/recserve.v1.Recommender/GetModelInfo": pb.GetModelInfoRequest,
    "/inference.GRPCInferenceService/ModelInfer": kpb.ModelInferRequest,
    "/inference.GRPCInferenceService/ModelMetadata": kpb.ModelMetadataRequest,
}

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
COUNTS: Counter[str] = Counter()  # (property, status) -> replies, printed at the end

# -- strategies -------------------------------------------------------------------------

# Strings protobuf accepts (valid UTF-8: no lone surrogates).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
ODD_NAMES = ["", "deepfm", "DeepFM", "nope", "../x", "..", "/etc/passwd", "deepfm/../deepfm",
             "deepfm\x00", "a" * 300, "ünï", "deepfm "]  # fmt: skip
ODD_VALUES = ["nan", "NaN", "inf", "-inf", "1e309", "-1e309", "25", "-3", "0x10", "1_000",
              " 25 ", "", "F", "M", "student", "☃", "\x00", "9" * 400]  # fmt: skip
FEATURE_NAMES = ["age", "gender", "occupation", "user_id", "item_id", "genres",
                 "release_year", "zip", ""]  # fmt: skip


@dataclass(frozen=True)
class Catalog:
    user_ids: list[int]
    item_ids: list[int]


@st.composite
def ids(draw: st.DrawFn, catalog: Catalog) -> int:
    return draw(
        st.one_of(
            INT64,
            st.sampled_from(catalog.item_ids),
            st.integers(-3, 3000),
            st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**31, 2**32 + 1]),
        )
    )


@st.composite
def id_lists(draw: st.DrawFn, catalog: Catalog) -> list[int]:
    """Short lists drawn id by id (duplicates come naturally), or long ones around
    --max-candidates built from a seed (drawing 500 ids one by one is slow)."""
    if draw(st.integers(0, 5)) > 0:
        return draw(st.lists(ids(catalog), max_size=24))
    size = draw(st.integers(MAX_CANDIDATES - 20, MAX_CANDIDATES + 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    known = rng.choice(catalog.item_ids, size=size)
    wild = rng.integers(-(2**63), 2**63 - 1, size=size, dtype=np.int64, endpoint=True)
    mixed = np.where(rng.random(size) < draw(st.floats(0, 1)), known, wild)
    if draw(st.booleans()):
        mixed = np.unique(np.abs(mixed[mixed != -(2**63)]))
    return [int(i) for i in mixed]


def user_features() -> st.SearchStrategy[dict[str, str]]:
    names = st.one_of(st.sampled_from(FEATURE_NAMES), TEXT)
    values = st.one_of(st.sampled_from(ODD_VALUES), TEXT, st.floats().map(repr))
    return st.dictionaries(names, values, max_size=4)


def model_specs() -> st.SearchStrategy[pb.ModelSpec]:
    return st.builds(
        pb.ModelSpec,
        name=st.one_of(st.sampled_from(ODD_NAMES), TEXT),
        version=st.one_of(st.sampled_from([0, 0, 1, 2, -1]), INT64),
    )


def ks() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, 30), INT32, st.sampled_from([MAX_K, MAX_K + 1, 100, 101]))


@st.composite
def tame_or_wild(draw: st.DrawFn, tame: st.SearchStrategy, wild: st.SearchStrategy):
    """Mostly a well-formed value, so that most requests get past the checks and the
    wild values of the other fields reach the model; sometimes an arbitrary one."""
    return draw(tame if draw(st.integers(0, 4)) > 0 else wild)


def tame_features() -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "age": st.one_of(st.sampled_from(ODD_VALUES[:8]), st.floats().map(repr)),
            "gender": st.sampled_from(["F", "M", "X", "", "☃"]),
            "occupation": st.one_of(st.sampled_from(["student", "writer", "none"]), TEXT),
        },
    )


@st.composite
def tame_ids(draw: st.DrawFn, catalog: Catalog) -> list[int]:
    """Unique non-negative candidates, known ones mixed with unknown ones."""
    known = draw(st.lists(st.sampled_from(catalog.item_ids), max_size=30, unique=True))
    unknown = draw(st.lists(st.integers(0, 2**63 - 1), max_size=3))
    mixed = list(dict.fromkeys(known + [i for i in unknown if i not in set(catalog.item_ids)]))
    return draw(st.permutations(mixed)) if mixed else [catalog.item_ids[0]]


def tame_model() -> st.SearchStrategy[pb.ModelSpec]:
    return st.sampled_from([pb.ModelSpec(), pb.ModelSpec(name="deepfm"),
                            pb.ModelSpec(name="deepfm", version=1)])  # fmt: skip


def rank_requests(catalog: Catalog) -> st.SearchStrategy[pb.RankRequest]:
    users = st.one_of(st.sampled_from(catalog.user_ids), st.integers(0, 2**63 - 1))
    return st.builds(
        pb.RankRequest,
        model=tame_or_wild(tame_model(), model_specs()),
        user_id=tame_or_wild(users, INT64),
        user_features=tame_or_wild(tame_features(), user_features()),
        candidate_item_ids=tame_or_wild(tame_ids(catalog), id_lists(catalog)),
        k=tame_or_wild(st.integers(0, 30), ks()),
        explain=st.booleans(),
        request_id=TEXT,
    )


def recommend_requests(catalog: Catalog) -> st.SearchStrategy[pb.RecommendRequest]:
    users = st.one_of(st.sampled_from(catalog.user_ids), st.integers(0, 2**63 - 1))
    return st.builds(
        pb.RecommendRequest,
        model=tame_or_wild(tame_model(), model_specs()),
        user_id=tame_or_wild(users, INT64),
        user_features=tame_or_wild(tame_features(), user_features()),
        recent_item_ids=tame_or_wild(tame_ids(catalog), id_lists(catalog)),
        k=tame_or_wild(st.integers(0, 30), ks()),
        include_seen=st.booleans(),
        rank_with=st.one_of(st.just(pb.ModelSpec()), tame_model(), model_specs()),
        retrieve_n=st.one_of(st.just(0), st.integers(0, 1200), INT32),
        request_id=TEXT,
    )


@st.composite
def kserve_requests(draw: st.DrawFn, catalog: Catalog) -> kpb.ModelInferRequest:
    """Mostly the documented inputs (user_id, then candidates or recent items, k) with
    fuzzed values; now and then a wrong shape, datatype, raw byte count or name."""

    def rarely(wild: st.SearchStrategy, tame: st.SearchStrategy):
        return draw(wild if draw(st.integers(0, 11)) == 0 else tame)

    tensor = kpb.ModelInferRequest.InferInputTensor
    others = st.lists(st.sampled_from(["candidate_item_ids", "k", "recent_item_ids"]),
                      unique=True, max_size=2)  # fmt: skip
    names = rarely(st.lists(TEXT, max_size=3), others.map(lambda n: ["user_id", *n]))
    if draw(st.integers(0, 11)) == 0:
        names = draw(st.permutations(names + draw(st.lists(st.sampled_from(["user_id", "k"])))))
    use_raw = draw(st.booleans())
    inputs, raw = [], []
    for name in names:
        if name in ("user_id", "k"):
            scalar = st.one_of(st.sampled_from(catalog.user_ids), st.integers(0, 20), INT64)
            values = rarely(id_lists(catalog), scalar.map(lambda v: [v]))
        else:
            values = rarely(id_lists(catalog), tame_ids(catalog))
        shape = rarely(st.lists(INT64, max_size=3), st.just([len(values)]))
        datatype = rarely(
            st.sampled_from(["INT32", "FP32", "BYTES", "", "int64"]), st.just("INT64")
        )
        t = tensor(name=name, datatype=datatype, shape=shape)
        if use_raw:
            data = np.asarray(values, dtype="<i8").tobytes()
            raw.append(rarely(st.binary(max_size=40), st.just(data)))
        else:
            t.contents.int64_contents.extend(values)
        inputs.append(t)
    wanted = ["item_ids", "scores", "unknown_item_ids"]
    outputs = [
        kpb.ModelInferRequest.InferRequestedOutputTensor(name=n)
        for n in rarely(
            st.lists(st.sampled_from([*wanted, "x"])), st.lists(st.sampled_from(wanted))
        )
    ]
    versions = st.sampled_from(["1.0", "²", "٣", " 1", "-1", "2", "9" * 5000, "0" * 20 + "1"])
    return kpb.ModelInferRequest(
        model_name=rarely(st.sampled_from(ODD_NAMES), st.sampled_from(["", "deepfm"])),
        model_version=rarely(st.one_of(versions, TEXT), st.sampled_from(["", "1"])),
        id=draw(TEXT),
        inputs=inputs,
        outputs=outputs,
        raw_input_contents=raw,
    )


# -- checks -----------------------------------------------------------------------------


def status_of(call) -> tuple[grpc.StatusCode, object]:
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as err:
        return err.code(), err.details()


def assert_documented(prop: str, code: grpc.StatusCode, details: object, request) -> None:
    COUNTS[f"{prop} {code.name}"] += 1
    assert code in DOCUMENTED, f"{prop}: {code.name} ({details!r}) for {request!r}"


def assert_sorted_unique(items) -> None:
    scores = [i.score for i in items]
    assert all(not math.isnan(s) for s in scores), scores
    assert scores == sorted(scores, reverse=True), scores
    ids_ = [i.item_id for i in items]
    assert len(set(ids_)) == len(ids_), ids_


def check_rank_answer(request: pb.RankRequest, answer: pb.RankResponse, catalog: Catalog) -> None:
    candidates = list(request.candidate_item_ids)
    assert len(set(candidates)) == len(candidates) and 0 < len(candidates) <= MAX_CANDIDATES
    assert 0 <= request.k <= MAX_K and request.user_id >= 0
    known = set(catalog.item_ids)
    assert list(answer.unknown_item_ids) == [i for i in candidates if i not in known]
    ranked = [i.item_id for i in answer.items]
    assert set(ranked) <= set(candidates) & known
    n_known = len(candidates) - len(answer.unknown_item_ids)
    assert len(ranked) == (min(request.k, n_known) if request.k else n_known)
    assert_sorted_unique(answer.items)
    assert all(bool(i.explanation.fields) == request.explain for i in answer.items)
    assert answer.cold_start_user == (request.user_id not in set(catalog.user_ids))
    if request.request_id:
        assert answer.request_id == request.request_id


def check_recommend_answer(
    request: pb.RecommendRequest, answer: pb.RecommendResponse, catalog: Catalog
) -> None:
    k = request.k or 10
    assert 0 <= request.k <= MAX_K and request.user_id >= 0
    assert len(answer.items) <= min(k, len(catalog.item_ids))
    assert {i.item_id for i in answer.items} <= set(catalog.item_ids)
    assert_sorted_unique(answer.items)
    if not request.include_seen:
        assert not {i.item_id for i in answer.items} & set(request.recent_item_ids)
    known = set(catalog.item_ids)
    assert list(answer.unknown_item_ids) == [i for i in request.recent_item_ids if i not in known]


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(live_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{live_server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.RecommenderStub:
    return pb_grpc.RecommenderStub(channel)


@pytest.fixture(scope="module")
def catalog(stub: pb_grpc.RecommenderStub) -> Catalog:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(include_ids=True), timeout=TIMEOUT)
    return Catalog(user_ids=list(info.user_ids), item_ids=list(info.item_ids))


@pytest.fixture(scope="module")
def canary(stub: pb_grpc.RecommenderStub, catalog: Catalog):
    """A fixed well-formed Rank and Recommend, and their answers before any fuzzing."""
    rank = pb.RankRequest(user_id=catalog.user_ids[0], candidate_item_ids=catalog.item_ids[:20],
                          k=5, request_id="canary")  # fmt: skip
    recommend = pb.RecommendRequest(user_id=catalog.user_ids[1], k=5, request_id="canary")
    before = (stub.Rank(rank, timeout=TIMEOUT), stub.Recommend(recommend, timeout=TIMEOUT))

    def still_answers() -> None:
        after = (stub.Rank(rank, timeout=TIMEOUT), stub.Recommend(recommend, timeout=TIMEOUT))
        assert after == before, "the fixed request's answer changed after a fuzz burst"

    return still_answers


@pytest.fixture(scope="module", autouse=True)
def print_counts() -> Iterator[None]:
    yield
    print("\nserver fuzz replies by property and status:")
    for key, n in sorted(COUNTS.items()):
        print(f"  {key}: {n}")


# -- properties -------------------------------------------------------------------------


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_rank_fuzz(data, stub, catalog: Catalog, canary) -> None:
    for request in data.draw(st.lists(rank_requests(catalog), min_size=1, max_size=3)):
        code, answer = status_of(lambda r=request: stub.Rank(r, timeout=TIMEOUT))
        assert_documented("Rank", code, answer, request)
        if code is grpc.StatusCode.OK:
            check_rank_answer(request, answer, catalog)
    canary()


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_recommend_fuzz(data, stub, catalog: Catalog, canary) -> None:
    for request in data.draw(st.lists(recommend_requests(catalog), min_size=1, max_size=3)):
        code, answer = status_of(lambda r=request: stub.Recommend(r, timeout=TIMEOUT))
        assert_documented("Recommend", code, answer, request)
        if code is grpc.StatusCode.OK:
            check_recommend_answer(request, answer, catalog)
    canary()


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_rank_stream_fuzz(data, stub, catalog: Catalog, canary) -> None:
    """Mixed good and bad requests on one stream: one reply each, with a documented
    error_code or a well-formed response; the stream itself ends OK."""
    good = st.builds(
        pb.RankRequest,
        user_id=st.sampled_from(catalog.user_ids),
        candidate_item_ids=st.lists(
            st.sampled_from(catalog.item_ids), min_size=1, max_size=20, unique=True
        ),
        k=st.integers(0, 10),
    )
    requests = data.draw(st.lists(st.one_of(good, rank_requests(catalog)), max_size=8))
    for n, r in enumerate(requests):
        r.request_id = f"s{n}"  # to match replies to requests
    replies = list(stub.RankStream(iter(requests), timeout=TIMEOUT))
    COUNTS["RankStream stream OK"] += 1
    by_id = {r.request_id: r for r in requests}
    assert sorted(r.request_id for r in replies) == sorted(by_id)
    for reply in replies:
        COUNTS[f"RankStream reply {CODE_NAMES.get(reply.error_code, reply.error_code)}"] += 1
        assert reply.error_code in DOCUMENTED_NUMBERS, (reply, by_id[reply.request_id])
        if reply.error_code == 0:
            assert reply.HasField("response")
            check_rank_answer(by_id[reply.request_id], reply.response, catalog)
        else:
            assert reply.error_message and not reply.HasField("response")
    canary()


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_kserve_model_infer_fuzz(data, channel, catalog: Catalog, canary) -> None:
    kserve = kpb_grpc.GRPCInferenceServiceStub(channel)
    for request in data.draw(st.lists(kserve_requests(catalog), min_size=1, max_size=3)):
        metadata = kpb.ModelMetadataRequest(name=request.model_name, version=request.model_version)
        code, answer = status_of(lambda r=metadata: kserve.ModelMetadata(r, timeout=TIMEOUT))
        assert_documented("ModelMetadata", code, answer, metadata)
        code, answer = status_of(lambda r=request: kserve.ModelInfer(r, timeout=TIMEOUT))
        assert_documented("ModelInfer", code, answer, request)
        if code is grpc.StatusCode.OK:
            for n, tensor in enumerate(request.inputs):  # the data matched the shape
                size = (
                    len(request.raw_input_contents[n]) // 8
                    if request.raw_input_contents
                    else (len(tensor.contents.int64_contents))
                )
                assert math.prod(tensor.shape) == size, tensor
            outputs = {o.name: i for i, o in enumerate(answer.outputs)}
            assert len(answer.raw_output_contents) == len(answer.outputs)
            if "scores" in outputs:
                scores = np.frombuffer(answer.raw_output_contents[outputs["scores"]], "<f4")
                assert list(scores) == sorted(scores, reverse=True)
            if "item_ids" in outputs:
                items = np.frombuffer(answer.raw_output_contents[outputs["item_ids"]], "<i8")
                assert len(set(items.tolist())) == items.size
                assert set(items.tolist()) <= set(catalog.item_ids)
    canary()


@settings(FUZZ, max_examples=150)
@given(
    method=st.sampled_from(sorted(METHODS)),
    payload=st.one_of(
        st.binary(max_size=200),
        st.builds(lambda b: b"\x22" + bytes([len(b) % 128]) + b, st.binary(max_size=60)),
        st.sampled_from([b"", b"\xff\xff\xff\x0f garbage", b"\x08" + b"\xff" * 10, b"\x0a\x05"]),
    ),
)
def test_garbage_bytes_fuzz(method: str, payload: bytes, channel, canary) -> None:
    """Random bytes in place of a serialized request: a documented status (bytes that
    happen to parse are an ordinary request), never INTERNAL."""
    raw = channel.unary_unary(method)
    code, details = status_of(lambda: raw(payload, timeout=TIMEOUT))
    assert_documented("garbage " + method.rsplit("/", 1)[1], code, details, payload)
    canary()


@settings(FUZZ, max_examples=60)
@given(payloads=st.lists(st.binary(max_size=80), min_size=1, max_size=5))
def test_garbage_stream_fuzz(payloads: list[bytes], channel, canary) -> None:
    """Random bytes as the messages of a RankStream: the call ends with a documented
    status, and every reply it gave before has a documented error_code."""
    raw = channel.stream_stream("/recserve.v1.Recommender/RankStream")
    replies: list[bytes] = []

    def consume() -> None:
        replies.extend(raw(iter(payloads), timeout=TIMEOUT))

    code, details = status_of(consume)
    assert_documented("garbage RankStream", code, details, payloads)
    for reply in replies:
        assert pb.RankStreamResponse.FromString(reply).error_code in DOCUMENTED_NUMBERS
    canary()
