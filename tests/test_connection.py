"""oppflow reaches any Temporal through Temporal's own settings: TEMPORAL_ADDRESS and friends,
TOML profiles, and TLS with a private CA and client certificates (as Temporal Cloud's mTLS).

The dev server cannot serve TLS itself (`temporal server start-dev` has no TLS flags), so
the TLS tests put a TLS-terminating proxy in front of it, as a load balancer would be."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from starter.connect import connect_config, connect_temporal
from starter.settings import Settings
from starter.temporal_setup import SEARCH_ATTRIBUTES
from tests.worker_process import clean_env, run_oppflow, temporal_address


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        assert issuer is not None
        issuer_public_key = issuer.public_key()
        assert isinstance(issuer_public_key, ec.EllipticCurvePublicKey)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key),
            critical=False,
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    """A private CA, a server certificate for localhost and a client certificate."""
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _issue("oppflow test CA", ca_key, None, ca_key, ca=True)
    server = _issue("localhost", server_key, ca, ca_key, server=True)
    client = _issue("oppflow-worker", client_key, ca, ca_key)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "client.pem").write_bytes(client.public_bytes(pem))
    return Pki(
        folder / "ca.pem",
        folder / "server.pem",
        _write_key(folder / "server.key", server_key),
        folder / "client.pem",
        _write_key(folder / "client.key", client_key),
    )


@contextlib.asynccontextmanager
async def tls_proxy(upstream: str, pki: Pki) -> AsyncIterator[str]:
    """A TLS endpoint that requires a client certificate from the CA and forwards to `upstream`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    host, port = upstream.rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    connections: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.add(asyncio.current_task())  # type: ignore[arg-type]
        writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        writers.add(up_writer)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield f"localhost:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:  # ends every pipe with EOF rather than a cancellation
            writer.close()
        await asyncio.gather(*connections, return_exceptions=True)


async def custom_attributes(env: WorkflowEnvironment, namespace: str) -> dict[str, int]:
    listing = await env.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return dict(listing.custom_attributes)


def contract_attributes() -> dict[str, int]:
    return {name: sa_type.value for name, sa_type in SEARCH_ATTRIBUTES.items()}


async def test_setup_temporal_prepares_an_external_cluster_named_by_env(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    namespace = f"sales-{uuid.uuid4().hex[:8]}"
    env = clean_env(TEMPORAL_ADDRESS=temporal_address(temporal_env.client), TEMPORAL_NAMESPACE=namespace)

    code, output = await run_oppflow(["setup-temporal"], env, tmp_path)
    assert code == 0, output
    assert f"namespace {namespace}: search attributes added " in output and "OpportunityStage" in output
    assert await custom_attributes(temporal_env, namespace) == contract_attributes()

    code, output = await run_oppflow(["setup-temporal"], env, tmp_path)  # again: nothing to add
    assert code == 0 and "search attributes all already registered" in output, output


async def test_a_toml_profile_names_the_cluster(temporal_env: WorkflowEnvironment, tmp_path: Path) -> None:
    namespace = f"sales-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "temporal.toml"
    config.write_text(
        f'[profile.ops]\naddress = "{temporal_address(temporal_env.client)}"\nnamespace = "{namespace}"\n'
    )
    env = clean_env(TEMPORAL_CONFIG_FILE=str(config), TEMPORAL_PROFILE="ops")

    code, output = await run_oppflow(["setup-temporal"], env, tmp_path)
    assert code == 0, output
    assert await custom_attributes(temporal_env, namespace) == contract_attributes()


async def test_mutual_tls_with_a_private_ca(
    temporal_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path)
    namespace = f"sales-{uuid.uuid4().hex[:8]}"
    async with tls_proxy(temporal_address(temporal_env.client), pki) as address:
        tls = {
            "TEMPORAL_ADDRESS": address,
            "TEMPORAL_NAMESPACE": namespace,
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca),
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client_cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client_key),
        }
        code, output = await run_oppflow(["setup-temporal"], clean_env(**tls), tmp_path)
        assert code == 0, output
        assert await custom_attributes(temporal_env, namespace) == contract_attributes()

        # The same settings in-process: the worker's and the API's client.
        monkeypatch.chdir(tmp_path)
        for name, value in tls.items():
            monkeypatch.setenv(name, value)
        client = await connect_temporal(Settings())
        assert (client.service_client.config.target_host, client.namespace) == (address, namespace)
        assert await client.service_client.check_health()

        no_client_cert = {k: v for k, v in tls.items() if "CLIENT" not in k}
        code, output = await run_oppflow(["setup-temporal"], clean_env(**no_client_cert), tmp_path)
        assert code != 0 and output.startswith("error: ConnectionError: cannot connect to Temporal"), output

        unknown_ca = {**tls, "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(make_pki(_fresh(tmp_path)).ca)}
        code, output = await run_oppflow(["setup-temporal"], clean_env(**unknown_ca), tmp_path)
        assert code != 0 and output.startswith("error: ConnectionError: cannot connect to Temporal"), output
        assert "InvalidCertificate" in output.splitlines()[0]


def _fresh(tmp_path: Path) -> Path:
    folder = tmp_path / "other-ca"
    folder.mkdir()
    return folder


def test_without_settings_the_local_dev_server_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_PROFILE", "TEMPORAL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "none.toml"))
    config = connect_config(Settings(temporal_port=7299))
    assert (config["target_host"], config["namespace"]) == ("localhost:7299", "default")


async def test_an_api_key_turns_tls_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Temporal Cloud with an API key: TEMPORAL_API_KEY alone is enough, TLS follows."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("TEMPORAL_ADDRESS", "sales.a1b2c.tmprl.cloud:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "sales.a1b2c")
    monkeypatch.setenv("TEMPORAL_API_KEY", "key-for-the-test")
    config = connect_config(Settings())
    assert config["api_key"] == "key-for-the-test"
    assert config.get("tls") not in (None, False)
