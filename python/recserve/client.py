"""A typed Python client for the recserve gRPC contract.

Example::

    from recserve import Client

    with Client("127.0.0.1:50051") as client:
        for item in client.recommend(user_id=196, k=10).items:
            print(item.item_id, item.title, round(item.score, 3))
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .results import Explanation, FieldContribution, ScoredItem
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
    request_id: str = ""
    # In a cascade (recommend with rank_with): the ranker version that ordered the items.
    ranked_by_name: str = ""
    ranked_by_version: int = 0


@dataclass(frozen=True)
class VersionEvent:
    """What a repository scan did to one model version: loaded, refused or unloaded."""

    name: str
    version: int
    action: str
    reason: str = ""


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
    def explanation(item: pb.ScoredItem) -> Explanation | None:
        if not item.HasField("explanation"):
            return None
        e = item.explanation
        fields = [FieldContribution(f.feature, f.contribution) for f in e.fields]
        return Explanation(e.baseline, fields)

    ranked_by = getattr(response, "ranked_by", None)  # RecommendResponse only
    return Answer(
        items=[ScoredItem(i.item_id, i.score, i.title, explanation(i)) for i in response.items],
        model_name=response.model.name,
        model_version=response.model.version,
        cold_start_user=response.cold_start_user,
        unknown_item_ids=list(response.unknown_item_ids),
        request_id=response.request_id,
        ranked_by_name=ranked_by.name if ranked_by is not None else "",
        ranked_by_version=ranked_by.version if ranked_by is not None else 0,
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


def _read_file(path: str, argument: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise type(exc)(
            f"{argument} {path}: cannot read the file ({exc.strerror or exc})"
        ) from None


class _CallDetails(
    namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a channel, streams included.

    grpc's own call credentials would do the same, but only on TLS channels; this one way
    works on both (plaintext is for loopback or a network that encrypts on its own)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _intercept(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        with_token = _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
        return continuation(with_token, request)

    intercept_unary_unary = intercept_unary_stream = _intercept
    intercept_stream_unary = intercept_stream_stream = _intercept


class Client:
    """Calls one recserve server. Use as a context manager or call ``close()``.

    Args:
        target: ``host:port`` of the server.
        timeout: deadline of each call in seconds.
        max_message_bytes: largest message sent or received; match the server's
            ``--max-message-bytes``.
        tls: connect with TLS, trusting the system's CA certificates.
        root_ca: PEM file of the CA(s) to trust instead; implies ``tls``.
        client_cert, client_key: PEM certificate chain and key for a server that asks
            for client certificates (``--tls-client-ca``); both or neither; imply ``tls``.
        token: bearer token for a server run with ``--auth-tokens-file``, sent with every
            call as ``authorization: Bearer <token>``. Without TLS it crosses the network
            in clear text.

    Raises OSError when a PEM file cannot be read.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float = 10.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        *,
        tls: bool = False,
        root_ca: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        token: str | None = None,
    ) -> None:
        if bool(client_cert) != bool(client_key):
            raise ValueError("client_cert and client_key go together: pass both or neither")
        self.target = target
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls or root_ca or client_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_file(root_ca, "root_ca") if root_ca else None,
                private_key=_read_file(client_key, "client_key") if client_key else None,
                certificate_chain=_read_file(client_cert, "client_cert") if client_cert else None,
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        if token:
            self._channel = grpc.intercept_channel(self._channel, _BearerToken(token))
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
        explain: bool = False,
    ) -> Answer:
        """The best ``k`` of ``item_ids`` for the user (0 = all), best first; ``explain``:
        each item carries an ``Explanation`` (field contributions to its logit)."""
        request = pb.RankRequest(
            model=pb.ModelSpec(name=model, version=version),
            user_id=user_id,
            user_features=dict(user_features or {}),
            candidate_item_ids=list(item_ids),
            k=k,
            explain=explain,
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
        rank_with: str = "",
        rank_with_version: int = 0,
        retrieve_n: int = 0,
    ) -> Answer:
        """The best ``k`` items of the catalog for the user (0 = the server's default, 10).

        ``rank_with`` names a ranker for a cascade: ``model`` retrieves ``retrieve_n`` items
        (0 = the server's default), the ranker orders them, ``k`` come back; the answer's
        ``ranked_by_*`` say which ranker version did."""
        request = pb.RecommendRequest(
            model=pb.ModelSpec(name=model, version=version),
            user_id=user_id,
            user_features=dict(user_features or {}),
            recent_item_ids=list(recent_item_ids),
            k=k,
            include_seen=include_seen,
            rank_with=pb.ModelSpec(name=rank_with, version=rank_with_version),
            retrieve_n=retrieve_n,
        )
        return _answer(self._call(self._stub.Recommend, request))

    def reload_models(self) -> tuple[list[VersionEvent], list[tuple[str, int]]]:
        """Asks the server to rescan its repository now; returns what changed and every
        (model, version) served afterwards."""
        response = self._call(self._stub.ReloadModels, pb.ReloadModelsRequest())
        actions = {pb.VersionEvent.LOADED: "loaded", pb.VersionEvent.REFUSED: "refused"}
        actions[pb.VersionEvent.UNLOADED] = "unloaded"
        events = [
            VersionEvent(e.model.name, e.model.version, actions.get(e.action, "?"), e.reason)
            for e in response.events
        ]
        return events, [(m.name, m.version) for m in response.serving]

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
