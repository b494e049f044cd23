"""Mutual TLS and the job's token on every RPC of the control plane.

Each job has its own certificate authority, made by the operator (or by local mode)
when the job's pods are first created and kept in the job's Secret beside the token:

  ca.crt                 the job's CA (self-signed, EC P-256): the only one either side trusts
  coordinator.crt/.key   the coordinator's server certificate, for SERVER_NAME
  worker.crt/.key        the workers' client certificate (one for the job's workers)

The coordinator serves TLS and requires a client certificate signed by the job's CA;
a worker checks the coordinator's certificate against the same CA under SERVER_NAME
(the trust is the per-job CA, not a DNS name: pod addresses differ between a cluster,
the test executor and local mode). Over that channel every RPC also carries the
token as `authorization: Bearer <token>`, checked by the server before any handler
runs (`TokenCheck`), so a session id alone never suffices. Each pod mounts only its
own key. The worker side needs grpc only; making certificates needs `cryptography`
(the operator and local mode), imported where it is used.
"""

from __future__ import annotations

import datetime
import hmac
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from .v1 import control_pb2 as pb

log = logging.getLogger(__name__)

SERVER_NAME = "rlhf-coordinator"
CA_FILE = "ca.crt"
COORDINATOR_CERT = "coordinator.crt"
COORDINATOR_KEY = "coordinator.key"
WORKER_CERT = "worker.crt"
WORKER_KEY = "worker.key"
COORDINATOR_FILES = (CA_FILE, COORDINATOR_CERT, COORDINATOR_KEY)
WORKER_FILES = (CA_FILE, WORKER_CERT, WORKER_KEY)
AUTHORIZATION = "authorization"
VALID_DAYS = 365


class TLSError(ValueError):
    """Certificates that cannot be used (the message names the file)."""


@dataclass(frozen=True)
class JobCertificates:
    """One job's CA and the two certificates it signs, PEM-encoded."""

    ca: bytes
    coordinator_cert: bytes
    coordinator_key: bytes
    worker_cert: bytes
    worker_key: bytes

    def files(self) -> dict[str, bytes]:
        return {
            CA_FILE: self.ca,
            COORDINATOR_CERT: self.coordinator_cert,
            COORDINATOR_KEY: self.coordinator_key,
            WORKER_CERT: self.worker_cert,
            WORKER_KEY: self.worker_key,
        }

    def write(self, directory: Path) -> Path:
        """Into `directory` (created, owner-only), keys readable by the owner only."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)  # one made before, too
        for name, data in self.files().items():
            path = directory / name
            path.unlink(missing_ok=True)
            # Created with its mode: a key is never readable by others, not even briefly.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        return directory


def make_job_certificates(job_id: str, now: datetime.datetime | None = None) -> JobCertificates:
    """A fresh CA for the job and its coordinator's and workers' certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rlhf-operator"),
                x509.NameAttribute(NameOID.COMMON_NAME, common[:64]),
            ]
        )

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"{job_id} control-plane CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, usage: Any, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)

    coordinator = leaf(f"{job_id} coordinator", ExtendedKeyUsageOID.SERVER_AUTH, server=True)
    worker = leaf(f"{job_id} worker", ExtendedKeyUsageOID.CLIENT_AUTH, server=False)
    return JobCertificates(
        ca=ca.public_bytes(serialization.Encoding.PEM),
        coordinator_cert=coordinator[0],
        coordinator_key=coordinator[1],
        worker_cert=worker[0],
        worker_key=worker[1],
    )


def _read(directory: str | os.PathLike[str], names: tuple[str, ...]) -> list[bytes]:
    out = []
    for name in names:
        path = Path(directory) / name
        try:
            data = path.read_bytes()
        except OSError as err:
            raise TLSError(f"{path}: cannot read it: {err.strerror or err}") from None
        if b"-----BEGIN" not in data:
            raise TLSError(f"{path}: not a PEM file")
        out.append(data)
    return out


def server_credentials(directory: str | os.PathLike[str]) -> grpc.ServerCredentials:
    """The coordinator's: its certificate, and client certificates required from the job's CA."""
    ca, cert, key = _read(directory, COORDINATOR_FILES)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(directory: str | os.PathLike[str]) -> grpc.ChannelCredentials:
    """A worker's: the job's CA to check the coordinator, its own certificate to show."""
    ca, cert, key = _read(directory, WORKER_FILES)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


CHANNEL_OPTIONS = (("grpc.ssl_target_name_override", SERVER_NAME),)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION, f"Bearer {token}"),)


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the token to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._metadata = bearer(token)

    def _details(self, details: Any) -> Any:
        metadata = tuple(details.metadata or ()) + self._metadata
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def with_token(channel: grpc.Channel, token: str) -> grpc.Channel:
    """`channel` with the token on every call."""
    return grpc.intercept_channel(channel, _Bearer(token))


class TokenCheck(grpc.ServerInterceptor):
    """Refuses, before any handler runs, every RPC without the job's token."""

    def __init__(self, token: str, streaming: Callable[[str], bool]) -> None:
        if not token.strip():
            raise ValueError("the control plane needs the job's token: it is empty")
        self._expected = f"Bearer {token}".encode()
        self._streaming = streaming

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        metadata: Mapping[str, Any] = dict(details.invocation_metadata or ())
        given = str(metadata.get(AUTHORIZATION, "")).encode()
        if hmac.compare_digest(given, self._expected):
            return continuation(details)
        method = details.method
        why = "no token" if not given else "a wrong token"

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            log.warning("refused %s from %s: %s", method, context.peer(), why)
            # A Registration says who it is; the other calls carry a rank at most.
            who = ""
            if hasattr(request, "job_id") and hasattr(request, "rank"):
                who = f"rank {request.rank} of job {request.job_id!r}: "
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{who}token rejected by the coordinator "
                "(RLHF_TOKEN / RLHF_TOKEN_FILE must hold this job's token)",
            )

        if self._streaming(method):
            return grpc.stream_stream_rpc_method_handler(refuse)
        # Read a Registration to name the worker in the refusal (other requests: bytes).
        parse = pb.RegisterRequest.FromString if method.endswith("/Register") else None
        return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=parse)
