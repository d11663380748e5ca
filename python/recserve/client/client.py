"""A typed Python client for the recserve gRPC contract.

Example::

    from recserve import Client

    with Client("127.0.0.1:50051") as client:
        for item in client.recommend(user_id=196, k=10).items:
            print(item.item_id, item.title, round(item.score, 3))

Replicas (docs/deploy.md): ``Client(["10.0.0.5:50051", "10.0.0.6:50051"])`` or
``Client("dns:///recserve.internal:50051")`` balances calls over every replica with grpc's
own ``round_robin`` policy, skips replicas whose health check is not SERVING, and retries a
call that failed with UNAVAILABLE (a replica that died or is draining) on another one
(:data:`REPLICA_SERVICE_CONFIG`).
"""

from __future__ import annotations

import ipaddress
import json
from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..results import Explanation, FieldContribution, ScoredItem
from ..v1 import recserve_pb2 as pb
from ..v1 import recserve_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the server's default; see `recserve serve --help`
SERVICE_NAME = "recserve.v1.Recommender"
# Read-only calls, safe to send again: a retry may reach another replica.
RETRIED_METHODS = ("Rank", "Recommend", "GetModelInfo", "ListModels")

# The service config of a channel over several replicas; language-neutral JSON
# (https://github.com/grpc/grpc/blob/master/doc/service_config.md), the same in grpc-js,
# grpc-go and grpc-java. round_robin spreads calls over every READY replica; client-side
# health checking (grpc.health.v1 Watch on the service's name) takes a replica out as
# soon as it says NOT_SERVING (a graceful stop does that first); the retry policy resends
# a call that failed with UNAVAILABLE (connection lost, replica draining or not loaded
# yet), each attempt picked anew, so on another replica. Attempts share the call's
# deadline; grpc never retries a call once the server has started answering it.
# Throttling stops retries when most calls fail (every replica down), so retries cannot
# multiply the load of an outage.
REPLICA_SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": SERVICE_NAME},
    "methodConfig": [
        {
            "name": [{"service": SERVICE_NAME, "method": m} for m in RETRIED_METHODS],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
    "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1},
}
# Target schemes whose name may stand for several servers.
_MULTI_SCHEMES = ("dns:", "ipv4:", "ipv6:")


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


def _static_address(entry: str) -> tuple[str, str]:
    """("ipv4" or "ipv6", the address as grpc's static resolvers take it) of host:port."""
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target {entry!r}: expected host:port, e.g. 127.0.0.1:50051")
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(
            f"target {entry!r}: a list of targets takes IP addresses (10.0.0.5:50051, "
            "[::1]:50051); for host names use one DNS name that resolves to every replica, "
            "e.g. dns:///recserve.internal:50051"
        ) from None
    if address.version == 4:
        return "ipv4", f"{address}:{port}"
    return "ipv6", f"[{address}]:{port}"


def channel_target(target: str | Sequence[str]) -> tuple[str, bool]:
    """The grpc target of ``target``, and whether it may name several servers.

    ``target`` is ``host:port`` (one server, as always), a grpc target with a scheme
    (``dns:///name:port``, ``ipv4:a:p,b:p``, ``unix:path``...), or several ``ip:port``
    given as a list or one comma-separated string, which becomes grpc's static-list target
    ``ipv4:a:p,b:p`` (or ``ipv6:``). Raises ValueError for an empty or malformed list."""
    if isinstance(target, str):
        if "," not in target or target.startswith(_MULTI_SCHEMES):
            return target, target.startswith(_MULTI_SCHEMES)
        entries = [e.strip() for e in target.split(",")]
    else:
        entries = [str(e).strip() for e in target]
    if not entries or not all(entries):
        raise ValueError(f"targets {target!r}: expected host:port entries separated by commas")
    if len(entries) == 1:
        return entries[0], False
    parsed = [_static_address(e) for e in entries]
    families = {family for family, _ in parsed}
    if len(families) > 1:
        raise ValueError(
            f"targets {target!r}: grpc's static list takes IPv4 or IPv6 addresses, not both; "
            "use a DNS name that resolves to every replica"
        )
    return f"{families.pop()}:{','.join(address for _, address in parsed)}", True


def tls_name(grpc_target: str, server_name: str | None = None) -> str | None:
    """The name a TLS client checks the server certificates against, when grpc would not
    find it in ``grpc_target`` itself: ``server_name``, or for a static list (``ipv4:`` /
    ``ipv6:``) whose entries share one host, that host. None: grpc's own (the host of
    ``host:port``, the name of ``dns:///name:port``). grpc would otherwise check the
    whole list ("10.0.0.5:50051,10.0.0.6:50051") and refuse every replica.
    Raises ValueError for a list of several hosts without ``server_name``."""
    if server_name or not grpc_target.startswith(("ipv4:", "ipv6:")):
        return server_name or None
    entries = grpc_target.split(":", 1)[1].split(",")
    hosts = {e.rpartition(":")[0].removeprefix("[").removesuffix("]") for e in entries}
    if len(hosts) == 1:
        return hosts.pop()
    raise ValueError(
        f"TLS over {len(hosts)} addresses checks one certificate name for all of them: "
        "pass the name every replica's certificate carries (server_name=, --tls-server-name)"
    )


def target_count(target: str | Sequence[str]) -> int:
    """How many servers ``target`` lists: the entries of a list (or of an ``ipv4:`` /
    ``ipv6:`` target), else 1 (one address, or one name that may resolve to several)."""
    grpc_target, several = channel_target(target)
    if several and grpc_target.startswith(("ipv4:", "ipv6:")):
        return grpc_target.count(",") + 1
    return 1


def channel_options(
    max_message_bytes: int = MAX_MESSAGE_BYTES, *, balance: bool = False
) -> list[tuple[str, Any]]:
    """grpc channel arguments of a recserve client; ``balance``: with
    :data:`REPLICA_SERVICE_CONFIG` (round_robin, health checking, retries)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if balance:
        options += [
            ("grpc.service_config", json.dumps(REPLICA_SERVICE_CONFIG)),
            ("grpc.enable_retries", 1),
        ]
    return options


def resolve_channel(
    target: str | Sequence[str],
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    balance: bool | None = None,
) -> tuple[str, list[tuple[str, Any]]]:
    """(grpc target, channel arguments) for ``target``; ``balance`` None: balance when the
    target may name several servers (a list, ``dns:``, ``ipv4:``, ``ipv6:``)."""
    grpc_target, several = channel_target(target)
    balance = several if balance is None else balance
    return grpc_target, channel_options(max_message_bytes, balance=balance)


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
    """Calls a recserve server, or balances over replicas. Use as a context manager or
    call ``close()``.

    Args:
        target: ``host:port`` of the server; or replicas: a list of ``ip:port`` (or one
            comma-separated string), or a grpc target such as
            ``dns:///recserve.internal:50051`` (every address the name resolves to,
            re-resolved when connections fail). See :func:`channel_target`.
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
        server_name: with TLS, the name to check every server's certificate against
            (default: the target's host; needed for a list of several addresses: the name
            all replicas' certificates carry).
        balance: use :data:`REPLICA_SERVICE_CONFIG` (round_robin over the replicas,
            client-side health checking, retries of UNAVAILABLE). Default (None): for
            targets that may name several servers; a plain ``host:port`` keeps grpc's
            defaults (one connection, no retries), as before.

    Raises OSError when a PEM file cannot be read, ValueError for a malformed target list.
    """

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        timeout: float = 10.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        *,
        tls: bool = False,
        root_ca: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        token: str | None = None,
        server_name: str | None = None,
        balance: bool | None = None,
    ) -> None:
        if bool(client_cert) != bool(client_key):
            raise ValueError("client_cert and client_key go together: pass both or neither")
        self.target = target if isinstance(target, str) else ",".join(target)
        self.timeout = timeout
        target, options = resolve_channel(target, max_message_bytes, balance)
        self.channel_target = target
        if tls or root_ca or client_cert:
            name = tls_name(target, server_name)
            if name is not None:
                options.append(("grpc.ssl_target_name_override", name))
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

    def default_recommend(self) -> tuple[str, str]:
        """What a Recommend that names no model runs: (retriever, ranker), the ranker ''
        when the server's default is the retriever alone, not a cascade."""
        response = self._call(self._stub.ListModels, pb.ListModelsRequest())
        return response.default_model, response.default_rank_with

    def is_serving(self) -> bool:
        """True when the server's health check says SERVING (over replicas: the replica
        the call reached; with client-side health checking, a call reaches only replicas
        that say SERVING, so False means none does)."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(), timeout=self.timeout)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
