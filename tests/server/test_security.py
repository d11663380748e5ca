"""TLS, mutual TLS and bearer tokens, against real servers on loopback ports."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recserve import Client, RecserveError
from recserve.client.client import _BearerToken, tls_name
from recserve.server.app import RunningServer, ServeOptions, build_server
from recserve.server.security import TokenAuthInterceptor, load_tokens
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
TOKEN_A = "alpha-7c41d0e2b5a94f38"
TOKEN_B = "bravo-19be6f03aa2d4c77"
WRONG_TOKEN = "wrong-5e0f9a13c2d84b6a"

Metadata = tuple[tuple[str, str], ...]


# --- certificates ---------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    usage: x509.ObjectIdentifier | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """Self-signed CA when ``issuer`` is None, else a leaf certificate it signs."""
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path
    encrypted_server_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with a server (localhost, 127.0.0.1) and a client certificate, and an unrelated
    CA with a client certificate of its own."""
    folder = tmp_path_factory.mktemp("pki")

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def cert_pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
        encryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    ca_key, other_ca_key = _key(), _key()
    ca = _certificate("recserve test CA", ca_key)
    other_ca = _certificate("unrelated CA", other_ca_key)
    server_key, client_key, other_client_key = _key(), _key(), _key()
    server = _certificate(
        "localhost",
        server_key,
        (ca, ca_key),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = _certificate("client", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    other_client = _certificate(
        "other client",
        other_client_key,
        (other_ca, other_ca_key),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return Pki(
        ca=write("ca.pem", cert_pem(ca)),
        server_cert=write("server.pem", cert_pem(server)),
        server_key=write("server.key", key_pem(server_key)),
        client_cert=write("client.pem", cert_pem(client)),
        client_key=write("client.key", key_pem(client_key)),
        other_ca=write("other-ca.pem", cert_pem(other_ca)),
        other_client_cert=write("other-client.pem", cert_pem(other_client)),
        other_client_key=write("other-client.key", key_pem(other_client_key)),
        encrypted_server_key=write("server-encrypted.key", key_pem(server_key, b"secret")),
    )


# --- servers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(f"# one token per client\n\n{TOKEN_A}\n   {TOKEN_B}  \n# {WRONG_TOKEN}\n")
    path.chmod(0o600)
    return path


@contextmanager
def _serving(model_repo: Path, **security: Any) -> Iterator[RunningServer]:
    running = build_server(
        ServeOptions(model_repo=model_repo, port=0, metrics_port=-1, workers=4, **security)
    )
    try:
        running.repository.load_all()
        running.set_serving(True)
        yield running
    finally:
        running.stop(0)


@pytest.fixture(scope="module")
def tls_server(model_repo: Path, pki: Pki) -> Iterator[RunningServer]:
    with _serving(model_repo, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)) as s:
        yield s


@pytest.fixture(scope="module")
def mtls_server(model_repo: Path, pki: Pki) -> Iterator[RunningServer]:
    with _serving(
        model_repo,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    ) as s:
        yield s


@pytest.fixture(scope="module")
def token_server(model_repo: Path, tokens_file: Path) -> Iterator[RunningServer]:
    with _serving(model_repo, auth_tokens_file=str(tokens_file)) as s:
        yield s


@pytest.fixture(scope="module")
def tls_token_server(model_repo: Path, pki: Pki, tokens_file: Path) -> Iterator[RunningServer]:
    with _serving(
        model_repo,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        auth_tokens_file=str(tokens_file),
    ) as s:
        yield s


def _target(running: RunningServer) -> str:
    return f"127.0.0.1:{running.port}"


def _items(running: RunningServer, n: int = 4) -> list[int]:
    return running.repository.get().pipeline.item_ids[:n].tolist()


def _answers(client: Client, running: RunningServer) -> None:
    """Rank and Recommend both answer through ``client``."""
    assert len(client.recommend(1, k=3).items) == 3
    ranked = client.rank(1, _items(running), k=2)
    assert len(ranked.items) == 2 and not ranked.unknown_item_ids


# --- TLS ------------------------------------------------------------------------------


def test_tls_client_trusting_the_ca_gets_answers(tls_server: RunningServer, pki: Pki) -> None:
    with Client(_target(tls_server), timeout=10, root_ca=str(pki.ca)) as client:
        _answers(client, tls_server)


@pytest.mark.parametrize("trust", ["plaintext", "other CA"])
def test_tls_port_refuses_a_client_that_cannot_verify_it(
    tls_server: RunningServer, pki: Pki, trust: str
) -> None:
    root_ca = None if trust == "plaintext" else str(pki.other_ca)
    with (
        Client(_target(tls_server), timeout=5, root_ca=root_ca) as client,
        pytest.raises(RecserveError) as err,
    ):
        client.recommend(1, k=3)
    assert err.value.code == UNAVAILABLE


@pytest.fixture(scope="module")
def second_tls_server(model_repo: Path, pki: Pki) -> Iterator[RunningServer]:
    with _serving(model_repo, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)) as s:
        yield s


def test_tls_over_a_list_of_replicas_checks_their_host(
    tls_server: RunningServer, second_tls_server: RunningServer, pki: Pki
) -> None:
    """grpc would check the certificates against the whole list ("127.0.0.1:p,127.0.0.1:q")
    and refuse every replica; the client checks the entries' common host, or the name it
    is given."""
    servers = (tls_server, second_tls_server)
    replicas = [_target(server) for server in servers]

    def answered_by_each() -> list[float]:  # every RPC: round_robin alternates per call
        return [
            sum(
                sample.value
                for family in server.metrics.registry.collect()
                for sample in family.samples
                if sample.name == "recserve_requests_total"
            )
            for server in servers
        ]

    for name in (None, "localhost"):  # the certificate names both
        before = answered_by_each()
        deadline = time.monotonic() + 10
        with Client(replicas, timeout=10, root_ca=str(pki.ca), server_name=name) as client:
            # round_robin uses a replica once its TLS connection is up: both must answer
            while True:
                _answers(client, tls_server)
                answered = [a - b for a, b in zip(answered_by_each(), before, strict=True)]
                if min(answered) > 0 or time.monotonic() > deadline:
                    break
        assert min(answered) > 0, f"answers per replica: {answered}"
    with (
        Client(replicas, timeout=5, root_ca=str(pki.ca), server_name="other.example") as client,
        pytest.raises(RecserveError) as err,
    ):
        client.recommend(1, k=3)
    assert err.value.code == UNAVAILABLE and "Hostname Verification" in err.value.message


def test_tls_over_several_hosts_needs_the_certificate_name() -> None:
    with pytest.raises(ValueError, match="server_name=, --tls-server-name"):
        tls_name("ipv4:10.0.0.5:50051,10.0.0.6:50051")
    assert tls_name("ipv4:10.0.0.5:50051,10.0.0.6:50051", "recserve.internal") == (
        "recserve.internal"
    )
    assert tls_name("ipv6:[::1]:50051,[::1]:50052") == "::1"
    assert tls_name("127.0.0.1:50051") is None  # grpc takes the host itself
    assert tls_name("dns:///recserve.internal:50051") is None


# --- mutual TLS -----------------------------------------------------------------------


@pytest.mark.parametrize("certificate", ["none", "signed by another CA"])
def test_mtls_refuses_a_client_without_a_certificate_of_its_ca(
    mtls_server: RunningServer, pki: Pki, certificate: str
) -> None:
    pair = (
        {}
        if certificate == "none"
        else {"client_cert": str(pki.other_client_cert), "client_key": str(pki.other_client_key)}
    )
    with (
        Client(_target(mtls_server), timeout=5, root_ca=str(pki.ca), **pair) as client,
        pytest.raises(RecserveError) as err,
    ):
        client.recommend(1, k=3)
    assert err.value.code == UNAVAILABLE


def test_mtls_client_with_a_certificate_of_its_ca_gets_answers(
    mtls_server: RunningServer, pki: Pki
) -> None:
    with Client(
        _target(mtls_server),
        timeout=10,
        root_ca=str(pki.ca),
        client_cert=str(pki.client_cert),
        client_key=str(pki.client_key),
    ) as client:
        _answers(client, mtls_server)


# --- tokens ---------------------------------------------------------------------------


def _rpcs(channel: grpc.Channel, items: list[int]) -> dict[str, Callable[[Metadata], Any]]:
    """One call of each kind the server has, each returning something to check."""
    stub = pb_grpc.RecommenderStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    rank = pb.RankRequest(user_id=1, candidate_item_ids=items, k=2)
    list_services = reflection_pb2.ServerReflectionRequest(list_services="")
    return {
        "Rank": lambda md: len(stub.Rank(rank, metadata=md, timeout=5).items),
        "Recommend": lambda md: len(
            stub.Recommend(pb.RecommendRequest(user_id=1, k=2), metadata=md, timeout=5).items
        ),
        "ListModels": lambda md: len(
            stub.ListModels(pb.ListModelsRequest(), metadata=md, timeout=5).models
        ),
        "RankStream": lambda md: len(
            [r.response for r in stub.RankStream(iter([rank, rank]), metadata=md, timeout=5)]
        ),
        "ServerReflectionInfo": lambda md: len(
            next(
                reflection.ServerReflectionInfo(iter([list_services]), metadata=md, timeout=5)
            ).list_services_response.service
        ),
    }


RPCS = ["Rank", "Recommend", "ListModels", "RankStream", "ServerReflectionInfo"]


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing authorization metadata; send 'authorization: Bearer <token>'"),
        ((("authorization", f"Bearer {WRONG_TOKEN}"),), "invalid token"),
        ((("authorization", f"Bearer {TOKEN_A[:-1]}"),), "invalid token"),
        ((("authorization", f"Bearer {TOKEN_A}x"),), "invalid token"),
        (
            (("authorization", f"Basic {TOKEN_A}"),),
            "authorization metadata must be 'Bearer <token>'",
        ),
        ((("authorization", TOKEN_A),), "authorization metadata must be 'Bearer <token>'"),
    ],
    ids=["none", "wrong", "prefix", "longer", "basic", "no-scheme"],
)
def test_calls_without_a_valid_token_are_unauthenticated(
    token_server: RunningServer, rpc: str, metadata: Metadata, message: str, caplog
) -> None:
    caplog.set_level(logging.INFO)
    with (
        grpc.insecure_channel(_target(token_server)) as channel,
        pytest.raises(grpc.RpcError) as err,
    ):
        _rpcs(channel, _items(token_server))[rpc](metadata)
    assert err.value.code() == UNAUTHENTICATED
    assert err.value.details() == message
    service = (
        "grpc.reflection.v1alpha.ServerReflection"
        if rpc == "ServerReflectionInfo"
        else "recserve.v1.Recommender"
    )
    assert f"refused /{service}/{rpc} from " in caplog.text  # the operator sees it ...
    assert TOKEN_A not in caplog.text and WRONG_TOKEN not in caplog.text  # ... never a token


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("token", [TOKEN_A, TOKEN_B])
def test_each_token_of_the_file_is_accepted(
    token_server: RunningServer, rpc: str, token: str, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    with grpc.insecure_channel(_target(token_server)) as channel:
        answered = _rpcs(channel, _items(token_server))[rpc](
            (("authorization", f"Bearer {token}"),)
        )
    assert answered >= 1
    assert token not in caplog.text


def test_refusal_works_for_every_kind_of_rpc(free_port: int) -> None:
    """Unary and streaming on either side: each is refused without a token, and answered
    with one (the Recommender has no unary-stream or stream-unary RPC to show this)."""

    def echo_one(request: bytes, _context: grpc.ServicerContext) -> bytes:
        return request

    def echo_many(requests: Iterator[bytes], _context: grpc.ServicerContext) -> bytes:
        return b"".join(requests)

    def repeat(request: bytes, _context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (request, request)

    def echo_each(requests: Iterator[bytes], _context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from requests

    handlers = {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(echo_one),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(echo_many),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(repeat),
        "StreamStream": grpc.stream_stream_rpc_method_handler(echo_each),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[TokenAuthInterceptor([TOKEN_A])]
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", handlers)])
    server.add_insecure_port(f"127.0.0.1:{free_port}")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{free_port}") as channel:
            calls = {
                "UnaryUnary": lambda md: channel.unary_unary("/test.Echo/UnaryUnary")(
                    b"x", metadata=md, timeout=5
                ),
                "StreamUnary": lambda md: channel.stream_unary("/test.Echo/StreamUnary")(
                    iter([b"x", b"y"]), metadata=md, timeout=5
                ),
                "UnaryStream": lambda md: b"".join(
                    channel.unary_stream("/test.Echo/UnaryStream")(b"x", metadata=md, timeout=5)
                ),
                "StreamStream": lambda md: b"".join(
                    channel.stream_stream("/test.Echo/StreamStream")(
                        iter([b"x", b"y"]), metadata=md, timeout=5
                    )
                ),
                "unknown method": lambda md: channel.unary_unary("/test.Echo/Nope")(
                    b"x", metadata=md, timeout=5
                ),
            }
            answers = {"UnaryUnary": b"x", "StreamUnary": b"xy", "UnaryStream": b"xx"}
            for name, call in calls.items():
                with pytest.raises(grpc.RpcError) as err:
                    call((("authorization", f"Bearer {WRONG_TOKEN}"),))
                assert err.value.code() == UNAUTHENTICATED, name
                if name != "unknown method":
                    expected = answers.get(name, b"xy")
                    assert call((("authorization", f"Bearer {TOKEN_A}"),)) == expected, name
    finally:
        server.stop(0)


def test_health_needs_no_token(token_server: RunningServer) -> None:
    with grpc.insecure_channel(_target(token_server)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_kserve_liveness_and_readiness_need_no_token_but_inference_does(
    token_server: RunningServer,
) -> None:
    from recserve.kserve import grpc_predict_v2_pb2 as kpb
    from recserve.kserve import grpc_predict_v2_pb2_grpc as kpb_grpc

    with grpc.insecure_channel(_target(token_server)) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(kpb.ServerLiveRequest(), timeout=5).live
        assert stub.ServerReady(kpb.ServerReadyRequest(), timeout=5).ready
        for call, request in (
            (stub.ModelReady, kpb.ModelReadyRequest(name="deepfm")),
            (stub.ModelMetadata, kpb.ModelMetadataRequest(name="deepfm")),
            (stub.ModelInfer, kpb.ModelInferRequest(model_name="deepfm")),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=5)
            assert err.value.code() == UNAUTHENTICATED


def test_client_sends_its_token(token_server: RunningServer) -> None:
    with Client(_target(token_server), timeout=10, token=TOKEN_B) as client:
        _answers(client, token_server)
        assert client.is_serving()
    with (
        Client(_target(token_server), timeout=10, token=WRONG_TOKEN) as client,
        pytest.raises(RecserveError, match="invalid token") as err,
    ):
        client.recommend(1, k=3)
    assert err.value.code == UNAUTHENTICATED


def test_client_token_rides_on_streams_too(token_server: RunningServer) -> None:
    with grpc.intercept_channel(
        grpc.insecure_channel(_target(token_server)), _BearerToken(TOKEN_A)
    ) as channel:
        assert _rpcs(channel, _items(token_server))["RankStream"](()) == 2


def test_tokens_over_tls(tls_token_server: RunningServer, pki: Pki) -> None:
    target = _target(tls_token_server)
    with Client(target, timeout=10, root_ca=str(pki.ca), token=TOKEN_A) as client:
        _answers(client, tls_token_server)
    with Client(target, timeout=10, root_ca=str(pki.ca)) as client:
        assert client.is_serving()  # health stays open
        with pytest.raises(RecserveError, match="missing authorization") as err:
            client.rank(1, _items(tls_token_server))
    assert err.value.code == UNAUTHENTICATED


def test_cli_client_with_tls_and_a_token(
    tls_token_server: RunningServer,
    pki: Pki,
    run_recserve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_B + "\n")
    items = ",".join(str(i) for i in _items(tls_token_server))
    common = ["rank", "--target", _target(tls_token_server), "--user", "1", "--items", items]
    done = run_recserve(
        *common, "-k", "2", "--json", "--tls-ca", str(pki.ca), "--token-file", str(token_file)
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["items"]) == 2
    monkeypatch.setenv("RECSERVE_TOKEN", WRONG_TOKEN)  # read when --token-file is not given
    refused = run_recserve(*common, "--tls-ca", str(pki.ca))
    assert refused.returncode == 1
    assert "UNAUTHENTICATED: invalid token" in refused.stderr
    assert "--token-file" in refused.stderr


def test_cli_client_names_the_certificate_of_tls_replicas(
    tls_server: RunningServer, second_tls_server: RunningServer, pki: Pki, run_recserve
) -> None:
    replicas = f"{_target(tls_server)},{_target(second_tls_server)}"
    common = ["recommend", "--target", replicas, "--user", "1", "-k", "2", "--json"]
    common += ["--tls-ca", str(pki.ca), "--tls-server-name"]
    done = run_recserve(*common, "localhost")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["items"]) == 2
    refused = run_recserve(*common, "other.example")
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr


# --- configuration --------------------------------------------------------------------


def test_load_tokens_skips_comments_and_blank_lines(tokens_file: Path, caplog) -> None:
    assert load_tokens(tokens_file) == [TOKEN_A, TOKEN_B]
    assert "chmod 600" not in caplog.text


def test_load_tokens_warns_when_others_may_read_the_file(tmp_path: Path, caplog) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKEN_A + "\n")
    path.chmod(0o644)
    assert load_tokens(path) == [TOKEN_A]
    assert f"chmod 600 {path}" in caplog.text and TOKEN_A not in caplog.text


def test_load_tokens_refuses_a_line_that_is_not_one_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN_A}\n{TOKEN_B} {WRONG_TOKEN}\n")
    with pytest.raises(ValueError, match="line 2") as err:
        load_tokens(path)
    assert TOKEN_B not in str(err.value)


def _paths(pki: Pki, tmp: Path) -> dict[str, str]:
    (tmp / "empty-tokens").write_text("# nothing yet\n\n")
    (tmp / "not-pem").write_text("hello\n")
    return {
        "cert": str(pki.server_cert),
        "key": str(pki.server_key),
        "ca": str(pki.ca),
        "other_key": str(pki.client_key),
        "encrypted_key": str(pki.encrypted_server_key),
        "not_pem": str(tmp / "not-pem"),
        "empty_tokens": str(tmp / "empty-tokens"),
        "missing": str(tmp / "missing.pem"),
    }


# (options, with {name} standing for a path of _paths; the error; a regex of its message)
BAD_CONFIGURATIONS = {
    "missing cert": (
        {"tls_cert": "{missing}", "tls_key": "{key}"},
        OSError,
        "--tls-cert {missing}",
    ),
    "missing key": ({"tls_cert": "{cert}", "tls_key": "{missing}"}, OSError, "--tls-key {missing}"),
    "key without cert": ({"tls_key": "{key}"}, ValueError, "--tls-key needs --tls-cert"),
    "cert without key": ({"tls_cert": "{cert}"}, ValueError, "--tls-cert needs --tls-key"),
    "CA without cert": ({"tls_client_ca": "{ca}"}, ValueError, "--tls-client-ca needs --tls-cert"),
    "key of another cert": (
        {"tls_cert": "{cert}", "tls_key": "{other_key}"},
        ValueError,
        "--tls-key {other_key} is not the private key of the certificate",
    ),
    "encrypted key": (
        {"tls_cert": "{cert}", "tls_key": "{encrypted_key}"},
        ValueError,
        "--tls-key {encrypted_key}: the key is encrypted",
    ),
    "cert not PEM": (
        {"tls_cert": "{not_pem}", "tls_key": "{key}"},
        ValueError,
        "--tls-cert {not_pem} / --tls-key {key}: not a PEM",
    ),
    "client CA not PEM": (
        {"tls_cert": "{cert}", "tls_key": "{key}", "tls_client_ca": "{not_pem}"},
        ValueError,
        "--tls-client-ca {not_pem}: not a PEM bundle",
    ),
    "missing CA": (
        {"tls_cert": "{cert}", "tls_key": "{key}", "tls_client_ca": "{missing}"},
        OSError,
        "--tls-client-ca {missing}",
    ),
    "empty tokens file": (
        {"auth_tokens_file": "{empty_tokens}"},
        ValueError,
        "--auth-tokens-file: no tokens in {empty_tokens}",
    ),
    "missing tokens file": (
        {"auth_tokens_file": "{missing}"},
        OSError,
        "--auth-tokens-file {missing}",
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGURATIONS)
def test_bad_security_configuration_fails_the_start_and_listens_nowhere(
    model_repo: Path, pki: Pki, tmp_path: Path, free_port: int, case: str
) -> None:
    paths = _paths(pki, tmp_path)
    options, error, message = BAD_CONFIGURATIONS[case]
    security = {name: value.format(**paths) for name, value in options.items()}
    with pytest.raises(error, match=re.escape(message.format(**paths))):
        build_server(
            ServeOptions(model_repo=model_repo, port=free_port, metrics_port=-1, **security)
        )
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", free_port))
