"""TLS credentials and bearer-token authentication of `recserve serve`.

Both are configured by flags (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``,
``--auth-tokens-file``); every problem with them is found here, before anything listens,
and reported with the flag and the file to fix.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import grpc

from .options import ServeOptions

log = logging.getLogger("recserve.server")

# Load balancers and orchestrators probe health without credentials (grpc.health.v1, and
# the KServe v2 protocol's liveness and readiness); everything else, reflection included
# (it lists the whole API), needs a token.
EXEMPT_PREFIX = "/grpc.health.v1.Health/"
EXEMPT_METHODS = frozenset(
    ("/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady")
)

MISSING_TOKEN = "missing authorization metadata; send 'authorization: Bearer <token>'"
MALFORMED_TOKEN = "authorization metadata must be 'Bearer <token>'"
INVALID_TOKEN = "invalid token"

__all__ = ["TokenAuthInterceptor", "load_tokens", "server_credentials"]


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise type(exc)(f"{flag} {path}: cannot read the file ({exc.strerror or exc})") from None


class _EncryptedKey(Exception):
    pass


def _refuse_password() -> NoReturn:
    raise _EncryptedKey


def _check_cert_and_key(cert: str, key: str) -> None:
    """Parses both PEM files and checks that the key belongs to the certificate, so a
    mistake fails the start instead of every handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_refuse_password)
    except _EncryptedKey:
        raise ValueError(
            f"--tls-key {key}: the key is encrypted; the server cannot ask for a passphrase. "
            f"Decrypt it (`openssl pkey -in {key} -out plain.key`) and keep it chmod 600"
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ValueError(
                f"--tls-key {key} is not the private key of the certificate in --tls-cert {cert}"
            ) from None
        raise ValueError(
            f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate chain and a PEM "
            f"private key ({exc.reason or exc}); they start with '-----BEGIN CERTIFICATE-----' "
            "and '-----BEGIN PRIVATE KEY-----'"
        ) from None


def _check_ca(pem: bytes, path: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cadata=pem.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(
            f"--tls-client-ca {path}: not a PEM bundle of CA certificates ({exc}); it holds "
            "one or more '-----BEGIN CERTIFICATE-----' blocks"
        ) from None


def server_credentials(options: ServeOptions) -> grpc.ServerCredentials | None:
    """TLS credentials from the options, or None when TLS is off (no cert and no key).

    With ``--tls-client-ca``, clients must present a certificate that CA signed.
    Raises OSError (a file cannot be read) or ValueError (a wrong combination or
    content), each naming the flag and the file."""
    cert, key, client_ca = options.tls_cert, options.tls_key, options.tls_client_ca
    if not cert and not key:
        if client_ca:
            raise ValueError(
                "--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS in which "
                "the client also shows a certificate"
            )
        return None
    if not cert:
        raise ValueError("--tls-key needs --tls-cert, the certificate chain of that key")
    if not key:
        raise ValueError("--tls-cert needs --tls-key, the private key of that certificate")
    cert_pem = _read(cert, "--tls-cert")
    key_pem = _read(key, "--tls-key")
    _check_cert_and_key(cert, key)
    ca_pem = None
    if client_ca:
        ca_pem = _read(client_ca, "--tls-client-ca")
        _check_ca(ca_pem, client_ca)
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=ca_pem is not None
    )


def load_tokens(path: str | Path) -> list[str]:
    """The tokens of a file: one per line; blank lines and lines starting with # skipped.

    Raises OSError when the file cannot be read and ValueError when it holds no token or a
    line that cannot be one (tokens are printable ASCII without spaces)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
        mode = path.stat().st_mode
    except OSError as exc:
        raise type(exc)(
            f"--auth-tokens-file {path}: cannot read the file ({exc.strerror or exc})"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(
            f"--auth-tokens-file {path}: tokens must be ASCII (e.g. `openssl rand -hex 32`)"
        ) from None
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not token.isprintable() or any(c.isspace() for c in token):
            # Never echo the line: it may be a real token with a typo.
            raise ValueError(
                f"--auth-tokens-file {path}, line {number}: a token is one word of printable "
                "ASCII; put each token on its own line"
            )
        tokens.append(token)
    if not tokens:
        raise ValueError(
            f"--auth-tokens-file: no tokens in {path}; write one token per line "
            "(e.g. from `openssl rand -hex 32`)"
        )
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "%s holds secrets but others may read it (mode %o); run `chmod 600 %s`",
            path,
            stat.S_IMODE(mode),
            path,
        )
    return tokens


def _digest(token: str) -> bytes:
    # Comparing fixed-size digests keeps the time independent of the token's length too.
    return hashlib.sha256(token.encode()).digest()


def _refusal(handler: grpc.RpcMethodHandler | None, method: str, message: str) -> Any:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED."""

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        log.warning("refused %s from %s: %s", method, context.peer(), message)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # No request deserializer: the bytes of an unauthenticated caller are never parsed.
    # An unknown method is refused as well, so the API cannot be probed without a token.
    if handler is None or handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(refuse)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, response_serializer=serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, response_serializer=serializer)
    return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=serializer)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Lets a call through only with ``authorization: Bearer <token>`` metadata naming one
    of ``tokens``; health checks need none. Other calls get UNAUTHENTICATED."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(_digest(t) for t in tokens)
        if not self._digests:
            raise ValueError("TokenAuthInterceptor needs at least one token")

    def _problem(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """Why the call's credentials are refused, or None when they are accepted."""
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            return MISSING_TOKEN
        scheme, _, token = str(values[0]).partition(" ")
        if len(values) > 1 or scheme.lower() != "bearer" or not token.strip():
            return MALFORMED_TOKEN
        presented = _digest(token.strip())
        # Compare with every token, without stopping at a match: the time taken does not
        # tell which token (or how much of one) was right.
        accepted = False
        for digest in self._digests:
            accepted |= hmac.compare_digest(presented, digest)
        return None if accepted else INVALID_TOKEN

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        if details.method.startswith(EXEMPT_PREFIX) or details.method in EXEMPT_METHODS:
            return continuation(details)
        problem = self._problem(details.invocation_metadata)
        if problem is None:
            return continuation(details)
        return _refusal(continuation(details), details.method, problem)
