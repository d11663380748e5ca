"""A typed Python client for the recserve gRPC contract.

Example::

    from recserve import Client

    with Client("127.0.0.1:50051") as client:
        for item in client.recommend(user_id=196, k=10).items:
            print(item.item_id, item.title, round(item.score, 3))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .results import ScoredItem
from .v1 import recserve_pb2 as pb
from .v1 import recserve_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the server's default; see `recserve serve --help`


class RecserveError(Exception):
    """A call failed; ``code`` is the gRPC status, the message says what to do."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Answer:
    """Items best first, plus what the server noticed about the request."""

    items: list[ScoredItem]
    model_name: str
    model_version: int
    cold_start_user: bool = False
    unknown_item_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    side: str
    cardinality: int
    multi_valued: bool
    vocabulary: list[str]
    boundaries: list[float]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    family: str
    program_format: str
    features: list[FeatureInfo]
    metrics: dict[str, float]
    num_users: int
    num_items: int
    loaded_versions: list[int]
    created_at: str


def _answer(response: pb.RankResponse | pb.RecommendResponse) -> Answer:
    return Answer(
        items=[ScoredItem(i.item_id, i.score, i.title) for i in response.items],
        model_name=response.model.name,
        model_version=response.model.version,
        cold_start_user=response.cold_start_user,
        unknown_item_ids=list(response.unknown_item_ids),
    )


def _model_info(info: pb.ModelInfo) -> ModelInfo:
    sides = {pb.Feature.USER: "user", pb.Feature.ITEM: "item"}
    return ModelInfo(
        name=info.model.name,
        version=info.model.version,
        family=info.family,
        program_format=info.program_format,
        features=[
            FeatureInfo(
                f.name,
                sides.get(f.side, "unspecified"),
                f.cardinality,
                f.multi_valued,
                list(f.vocabulary),
                list(f.boundaries),
            )
            for f in info.features
        ],
        metrics=dict(info.metrics),
        num_users=info.num_users,
        num_items=info.num_items,
        loaded_versions=list(info.loaded_versions),
        created_at=info.created_at,
    )


class Client:
    """Calls one recserve server. Use as a context manager or call ``close()``.

    Args:
        target: ``host:port`` of the server.
        timeout: deadline of each call in seconds.
        max_message_bytes: largest message sent or received; match the server's
            ``--max-message-bytes``.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float = 10.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self._stub = pb_grpc.RecommenderStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise RecserveError(exc.code(), exc.details() or "") from None

    def rank(
        self,
        user_id: int,
        item_ids: Iterable[int],
        k: int = 0,
        *,
        user_features: Mapping[str, str] | None = None,
        model: str = "",
        version: int = 0,
    ) -> Answer:
        """The best ``k`` of ``item_ids`` for the user (0 = all), best first."""
        request = pb.RankRequest(
            model=pb.ModelSpec(name=model, version=version),
            user_id=user_id,
            user_features=dict(user_features or {}),
            candidate_item_ids=list(item_ids),
            k=k,
        )
        return _answer(self._call(self._stub.Rank, request))

    def recommend(
        self,
        user_id: int,
        k: int = 0,
        *,
        recent_item_ids: Iterable[int] = (),
        include_seen: bool = False,
        user_features: Mapping[str, str] | None = None,
        model: str = "",
        version: int = 0,
    ) -> Answer:
        """The best ``k`` items of the catalog for the user (0 = the server's default, 10)."""
        request = pb.RecommendRequest(
            model=pb.ModelSpec(name=model, version=version),
            user_id=user_id,
            user_features=dict(user_features or {}),
            recent_item_ids=list(recent_item_ids),
            k=k,
            include_seen=include_seen,
        )
        return _answer(self._call(self._stub.Recommend, request))

    def model_info(self, model: str = "", version: int = 0) -> ModelInfo:
        request = pb.GetModelInfoRequest(model=pb.ModelSpec(name=model, version=version))
        return _model_info(self._call(self._stub.GetModelInfo, request))

    def list_models(self) -> tuple[list[ModelInfo], str]:
        """Every loaded model, and the name of the default one."""
        response = self._call(self._stub.ListModels, pb.ListModelsRequest())
        return [_model_info(m) for m in response.models], response.default_model

    def is_serving(self) -> bool:
        """True when the server's health check says SERVING."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(), timeout=self.timeout)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
