"""TLS: the AMQPS listener, HTTPS for the management API, client certificates and the EXTERNAL mechanism.

Certificates are made here with the ``cryptography`` package: one CA that signs the server's and the clients'
certificates, and a second, unrelated CA (a client that trusts only that one must refuse the server). Clients are
pika and aio-pika with their own TLS settings, and urllib for HTTPS.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pika.exceptions
import pytest

from leveret.amqp import spec
from leveret.cli import main
from leveret.config import Config, ConfigError, load_config
from leveret.node import ThreadedServer
from leveret.server.tls import cert_login, cipher_parts, format_dn, server_context

from rawamqp import RawClient
from waiting import async_wait_for, poll

x509 = pytest.importorskip("cryptography.x509", reason="the cryptography package makes the test certificates")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

CLIENT_DN = "CN=tls-client,OU=workers,O=Leveret Tests"
CLIENT_CN = "tls-client"


# --- certificates --------------------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # an unrelated CA
    other_client_cert: Path  # signed by the unrelated CA
    other_client_key: Path


def _name(cn: str, ou: str | None = None) -> Any:
    parts = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Leveret Tests")]
    if ou:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    parts.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(parts)


def _cert(subject: Any, key: Any, issuer: Any, issuer_key: Any, *, ca: bool, server: bool = False) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                      content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: Any = None, key: Any = None, password: bytes | None = None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        encryption = (serialization.BestAvailableEncryption(password) if password
                      else serialization.NoEncryption())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           encryption))
    return path


def make_certs(directory: Path) -> Certs:
    def key() -> Any:
        return ec.generate_private_key(ec.SECP256R1())

    ca_key, other_key = key(), key()
    ca_name, other_name = _name("Leveret Test CA"), _name("Unrelated CA")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    other = _cert(other_name, other_key, other_name, other_key, ca=True)
    server_key, client_key, other_client_key = key(), key(), key()
    server = _cert(_name("localhost"), server_key, ca_name, ca_key, ca=False, server=True)
    client = _cert(_name(CLIENT_CN, "workers"), client_key, ca_name, ca_key, ca=False)
    other_client = _cert(_name(CLIENT_CN, "workers"), other_client_key, other_name, other_key, ca=False)
    return Certs(ca=_write(directory / "ca.pem", ca), server_cert=_write(directory / "server.pem", server),
                 server_key=_write(directory / "server.key", key=server_key),
                 client_cert=_write(directory / "client.pem", client),
                 client_key=_write(directory / "client.key", key=client_key),
                 other_ca=_write(directory / "other-ca.pem", other),
                 other_client_cert=_write(directory / "other-client.pem", other_client),
                 other_client_key=_write(directory / "other-client.key", key=other_client_key))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def client_context(certs: Certs, *, cert: bool = False, ca: Path | None = None) -> ssl.SSLContext:
    """What a client uses: trust ``ca`` (default: the test CA), present the client certificate if ``cert``."""
    context = ssl.create_default_context(cafile=str(ca or certs.ca))
    if cert:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def tls_config(make_config: Callable[..., Config], certs: Certs, **overrides: Any) -> Config:
    values: dict[str, Any] = {"tls_port": 0, "tls_cert_file": str(certs.server_cert),
                              "tls_key_file": str(certs.server_key), "tls_ca_file": str(certs.ca),
                              "tls_external_login": True}  # off by default; these tests are about it
    values.update(overrides)
    return make_config(**values)


@pytest.fixture
def start(make_config: Callable[..., Config], certs: Certs) -> Iterator[Callable[..., ThreadedServer]]:
    """start(**config) -> a Leveret with TLS on ephemeral ports, stopped after the test."""
    servers: list[ThreadedServer] = []

    def run(**overrides: Any) -> ThreadedServer:
        server = ThreadedServer(tls_config(make_config, certs, **overrides)).start()
        servers.append(server)
        return server

    yield run
    for server in servers:
        server.stop()


def pika_params(port: int, context: ssl.SSLContext | None, credentials: Any = None) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        "127.0.0.1", port, credentials=credentials or pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(context, "localhost") if context is not None else None,
        connection_attempts=1, socket_timeout=10, blocked_connection_timeout=10)


def round_trip(connection: pika.BlockingConnection, body: bytes) -> bytes | None:
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.confirm_delivery()
    channel.basic_publish("", queue, body)
    for _method, _props, got in channel.consume(queue, auto_ack=True, inactivity_timeout=10):
        return got
    return None


# --- AMQPS with pika and aio-pika ----------------------------------------------------------------------------


def test_pika_publishes_and_consumes_over_tls(start: Callable[..., ThreadedServer], certs: Certs) -> None:
    server = start()  # tls_verify none: no client certificate asked for
    assert server.tls_port > 0 and server.port > 0  # the plain listener stays beside the TLS one
    connection = pika.BlockingConnection(pika_params(server.tls_port, client_context(certs)))
    try:
        assert round_trip(connection, b"over tls" * 1000) == b"over tls" * 1000
    finally:
        connection.close()
    plain = pika.BlockingConnection(pika_params(server.port, None))
    plain.close()


async def test_aio_pika_amqps_url_with_ssl_context(start: Callable[..., ThreadedServer], certs: Certs) -> None:
    server = start()
    connection = await aio_pika.connect(f"amqps://guest:guest@localhost:{server.tls_port}/",
                                        ssl_context=client_context(certs), timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"hello aio"), routing_key=queue.name)
        message = await async_wait_for(lambda: queue.get(timeout=10, fail=False), 5, interval=0.1)
        assert message is not None and message.body == b"hello aio"
        await message.ack()


def test_client_trusting_another_ca_refuses_the_server(start: Callable[..., ThreadedServer], certs: Certs,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    server = start()
    with caplog.at_level(logging.WARNING, logger="leveret.tls"), \
            pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
        pika.BlockingConnection(pika_params(server.tls_port, client_context(certs, ca=certs.other_ca)))
    assert _logged(caplog, "the client does not trust the server's certificate (unknown CA)")


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    """True once a record containing ``text`` was logged by the server's thread (waits up to 5 s)."""
    return poll(lambda: any(text in record.getMessage() for record in caplog.records), timeout=5, interval=0.02)


def test_plain_amqp_on_the_tls_port_is_refused(start: Callable[..., ThreadedServer],
                                               caplog: pytest.LogCaptureFixture) -> None:
    server = start()
    with caplog.at_level(logging.WARNING, logger="leveret.tls"), pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika_params(server.tls_port, None))
    assert _logged(caplog, "TLS handshake failed: the client does not speak TLS")


def test_fail_if_no_peer_cert_requires_a_client_certificate(start: Callable[..., ThreadedServer], certs: Certs,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    server = start(tls_verify="peer", tls_fail_if_no_peer_cert=True)
    with caplog.at_level(logging.WARNING, logger="leveret.tls"), pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika_params(server.tls_port, client_context(certs)))
    assert _logged(caplog, "the client sent no certificate (tls_fail_if_no_peer_cert is true)")
    # a certificate from another CA is refused too
    other = client_context(certs)
    other.load_cert_chain(str(certs.other_client_cert), str(certs.other_client_key))
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika_params(server.tls_port, other))
    connection = pika.BlockingConnection(pika_params(server.tls_port, client_context(certs, cert=True)))
    try:
        assert round_trip(connection, b"with a certificate") == b"with a certificate"
    finally:
        connection.close()


def test_verify_peer_without_fail_accepts_clients_without_certificates(start: Callable[..., ThreadedServer],
                                                                       certs: Certs) -> None:
    server = start(tls_verify="peer")
    connection = pika.BlockingConnection(pika_params(server.tls_port, client_context(certs)))
    connection.close()


def test_plain_listener_can_be_turned_off(start: Callable[..., ThreadedServer], certs: Certs) -> None:
    server = start(plain_listener=False)
    assert server.port == -1
    connection = pika.BlockingConnection(pika_params(server.tls_port, client_context(certs)))
    connection.close()


# --- EXTERNAL ------------------------------------------------------------------------------------------------


def _mechanisms(port: int, context: ssl.SSLContext) -> list[str]:
    client = RawClient(port)
    try:
        client.sock = context.wrap_socket(client.sock, server_hostname="localhost")
        client.send(spec.PROTOCOL_HEADER)
        start = client.recv_method()
        assert start is not None and start[1] == "connection.start"
        mechanisms = start[2][3]
        return (mechanisms.decode() if isinstance(mechanisms, bytes) else mechanisms).split()
    finally:
        client.close()


def test_external_login_with_the_certificate_subject(start: Callable[..., ThreadedServer], certs: Certs) -> None:
    server = start(tls_verify="peer")
    server.call(server.broker.add_user, CLIENT_DN, "unused-password", (), {"/"})
    assert "EXTERNAL" in _mechanisms(server.tls_port, client_context(certs, cert=True))
    params = pika_params(server.tls_port, client_context(certs, cert=True), pika.credentials.ExternalCredentials())
    connection = pika.BlockingConnection(params)
    try:
        assert round_trip(connection, b"external") == b"external"
        users = server.call(lambda: [c.session.user.name for c in server.server.connections if c.session.user])
        assert users == [CLIENT_DN]
    finally:
        connection.close()


def test_external_login_is_off_unless_switched_on(start: Callable[..., ThreadedServer], certs: Certs) -> None:
    """As RabbitMQ, where EXTERNAL needs its plugin and an auth_mechanisms entry: mutual TLS for transport alone
    gives no password-less login."""
    server = start(tls_verify="peer", tls_external_login=False)
    server.call(server.broker.add_user, CLIENT_DN, "pw", (), {"/"})
    assert _mechanisms(server.tls_port, client_context(certs, cert=True)) == ["AMQPLAIN", "PLAIN"]
    params = pika_params(server.tls_port, client_context(certs, cert=True), pika.PlainCredentials(CLIENT_DN, "pw"))
    connection = pika.BlockingConnection(params)  # the certificate still verified; PLAIN still works
    try:
        assert round_trip(connection, b"plain over mutual tls") == b"plain over mutual tls"
    finally:
        connection.close()


def test_external_login_from_common_name(start: Callable[..., ThreadedServer], certs: Certs) -> None:
    server = start(tls_verify="peer", tls_fail_if_no_peer_cert=True, tls_cert_login_from="common_name")
    server.call(server.broker.add_user, CLIENT_CN, "pw", (), {"/"})
    params = pika_params(server.tls_port, client_context(certs, cert=True), pika.credentials.ExternalCredentials())
    connection = pika.BlockingConnection(params)
    connection.close()


async def test_aio_pika_external_login(start: Callable[..., ThreadedServer], certs: Certs) -> None:
    server = start(tls_verify="peer", tls_cert_login_from="common_name")
    server.call(server.broker.add_user, CLIENT_CN, "pw", (), {"/"})
    connection = await aio_pika.connect(f"amqps://localhost:{server.tls_port}/?auth=external",
                                        ssl_context=client_context(certs, cert=True), timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        assert queue.name


def test_external_not_offered_without_a_client_certificate(start: Callable[..., ThreadedServer],
                                                           certs: Certs) -> None:
    server = start(tls_verify="peer")
    server.call(server.broker.add_user, CLIENT_DN, "pw", (), {"/"})
    assert "EXTERNAL" not in _mechanisms(server.tls_port, client_context(certs))
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika_params(server.tls_port, client_context(certs),
                                            pika.credentials.ExternalCredentials()))
    # a client that sends EXTERNAL anyway is disconnected without being logged in
    client = RawClient(server.tls_port)
    try:
        client.sock = client_context(certs).wrap_socket(client.sock, server_hostname="localhost")
        client.send(spec.PROTOCOL_HEADER)
        assert client.recv_method() is not None
        client.send_method(0, "connection.start-ok", {}, "EXTERNAL", b"", "en_US")
        assert client.wait_closed()
    finally:
        client.close()


def test_external_not_offered_on_plain_connections(start: Callable[..., ThreadedServer]) -> None:
    server = start(tls_verify="peer")
    client = RawClient(server.port)
    try:
        client.send(spec.PROTOCOL_HEADER)
        start_method = client.recv_method()
        assert start_method is not None
        assert b"EXTERNAL" not in start_method[2][3]
    finally:
        client.close()


def test_external_refused_for_an_unknown_user_or_without_vhost_access(start: Callable[..., ThreadedServer],
                                                                      certs: Certs) -> None:
    server = start(tls_verify="peer")
    params = pika_params(server.tls_port, client_context(certs, cert=True), pika.credentials.ExternalCredentials())
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        pika.BlockingConnection(params)
    assert "ACCESS_REFUSED" in str(info.value) and "EXTERNAL" in str(info.value)
    server.call(server.broker.add_user, CLIENT_DN, "pw", (), set())  # exists, but no permissions on "/"
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError, match="NOT_ALLOWED - access to vhost '/' refused"):
        pika.BlockingConnection(params)


def test_plain_still_works_over_tls_with_a_client_certificate(start: Callable[..., ThreadedServer],
                                                             certs: Certs) -> None:
    server = start(tls_verify="peer", tls_fail_if_no_peer_cert=True)
    connection = pika.BlockingConnection(pika_params(server.tls_port, client_context(certs, cert=True)))
    try:
        users = server.call(lambda: [c.session.user.name for c in server.server.connections if c.session.user])
        assert users == ["guest"]
    finally:
        connection.close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika_params(server.tls_port, client_context(certs, cert=True),
                                            pika.PlainCredentials("guest", "wrong")))


# --- HTTPS and connection details ----------------------------------------------------------------------------


def _get(url: str, context: ssl.SSLContext | None = None, user: str = "guest", password: str = "guest") -> Any:
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return json.load(response)


def test_https_management_api_and_connection_details(start: Callable[..., ThreadedServer], certs: Certs) -> None:
    server = start(tls_verify="peer", http_port=0, http_tls_port=0)
    assert server.https_port > 0
    base = f"https://localhost:{server.https_port}/api"
    overview = _get(base + "/overview", client_context(certs))
    protocols = {listener["protocol"]: listener["port"] for listener in overview["listeners"]}
    assert protocols == {"amqp": server.port, "amqp/ssl": server.tls_port, "http": server.http_port,
                         "https": server.https_port}
    server.call(server.broker.add_user, CLIENT_DN, "pw", (), {"/"})
    tls_conn = pika.BlockingConnection(pika_params(server.tls_port, client_context(certs, cert=True),
                                                   pika.credentials.ExternalCredentials()))
    plain_conn = pika.BlockingConnection(pika_params(server.port, None))
    try:
        connections = {c["user"]: c for c in _get(base + "/connections", client_context(certs))}
        secure = connections[CLIENT_DN]
        assert secure["ssl"] is True
        assert secure["ssl_protocol"] in ("tlsv1.2", "tlsv1.3")
        assert secure["ssl_cipher"] and secure["ssl_hash"] and secure["ssl_key_exchange"]
        assert secure["peer_cert_subject"] == CLIENT_DN
        assert secure["peer_cert_issuer"] == "CN=Leveret Test CA,O=Leveret Tests"
        assert " - " in secure["peer_cert_validity"]
        assert secure["auth_mechanism"] == "EXTERNAL"
        assert secure["port"] == server.tls_port and secure["name"].endswith(f":{server.tls_port}")
        plain = connections["guest"]
        assert plain["ssl"] is False and plain["peer_cert_subject"] is None and plain["ssl_protocol"] is None
        assert plain["auth_mechanism"] == "PLAIN" and plain["port"] == server.port
        # the same through the plain HTTP listener, which stays on beside HTTPS
        assert len(_get(f"http://127.0.0.1:{server.http_port}/api/connections")) == 2
    finally:
        tls_conn.close()
        plain_conn.close()


def test_https_refuses_plain_http_and_wrong_ca(start: Callable[..., ThreadedServer], certs: Certs) -> None:
    server = start(http_tls_port=0)
    with pytest.raises((http.client.HTTPException, ConnectionError, urllib.error.URLError)):
        _get(f"http://127.0.0.1:{server.https_port}/api/overview")
    with pytest.raises(urllib.error.URLError) as info:
        _get(f"https://localhost:{server.https_port}/api/overview", client_context(certs, ca=certs.other_ca))
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    with pytest.raises(urllib.error.HTTPError) as denied:  # TLS does not replace the API's own login
        _get(f"https://localhost:{server.https_port}/api/overview", client_context(certs), password="wrong")
    assert denied.value.code == 401


def test_https_with_required_client_certificate(start: Callable[..., ThreadedServer], certs: Certs) -> None:
    server = start(http_tls_port=0, tls_verify="peer", tls_fail_if_no_peer_cert=True)
    url = f"https://localhost:{server.https_port}/api/whoami"
    assert _get(url, client_context(certs, cert=True))["name"] == "guest"
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        _get(url, client_context(certs))


def test_https_connection_whose_handshake_ends_after_the_api_was_loaded(start: Callable[..., ThreadedServer],
                                                                       certs: Certs) -> None:
    """The management API is loaded at the first connection made (after its TLS handshake); a connection
    accepted before that but whose handshake ends after the loading is served too (leveret/http/server.py)."""
    server = start(http_tls_port=0)
    early = socket.create_connection(("127.0.0.1", server.https_port), timeout=10)  # accepted, no handshake yet
    try:
        assert _get(f"https://localhost:{server.https_port}/api/whoami", client_context(certs))["name"] == "guest"
        with client_context(certs).wrap_socket(early, server_hostname="localhost") as tls:
            auth = base64.b64encode(b"guest:guest").decode()
            tls.sendall(f"GET /api/whoami HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n"
                        "Connection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and b'"guest"' in answer
    finally:
        early.close()


def test_https_turned_off(start: Callable[..., ThreadedServer]) -> None:
    server = start(http_tls_port=-1, http_port=0)
    assert server.https_port == -1 and server.http_port > 0


# --- configuration -------------------------------------------------------------------------------------------


def test_config_fields_from_environment(certs: Certs) -> None:
    env = {"LEVERET_TLS_CERT_FILE": str(certs.server_cert), "LEVERET_TLS_KEY_FILE": str(certs.server_key),
           "LEVERET_TLS_CA_FILE": str(certs.ca), "LEVERET_TLS_VERIFY": "verify_peer",
           "LEVERET_TLS_FAIL_IF_NO_PEER_CERT": "true", "LEVERET_TLS_PORT": "5999",
           "LEVERET_TLS_CERT_LOGIN_FROM": "common_name", "LEVERET_TLS_MIN_VERSION": "tlsv1.3"}
    config = load_config({}, env, None)
    assert config.tls and config.tls_verify == "peer" and config.tls_fail_if_no_peer_cert
    assert (config.tls_port, config.tls_cert_login_from, config.tls_min_version) == (5999, "common_name", "1.3")
    context = server_context(config)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert server_context(Config()) is None  # no certificate: TLS off
    assert server_context(Config(tls_cert_file=str(certs.server_cert), tls_key_file=str(certs.server_key))
                          ).verify_mode == ssl.CERT_NONE  # type: ignore[union-attr]


@pytest.mark.parametrize(("settings", "message"), [
    ({"tls_verify": "maybe"}, r"invalid tls_verify 'maybe' in Config\(\): must be one of none, peer"),
    ({"tls_fail_if_no_peer_cert": "sometimes"}, "must be true or false"),
    ({"tls_cert_login_from": "email"}, "must be one of distinguished_name, common_name"),
    ({"tls_min_version": "1.1"}, "must be one of 1.2, 1.3"),
    ({"tls_key_file": ""}, "tls_key_file is not set"),
    ({"tls_verify": "peer", "tls_ca_file": ""}, "tls_ca_file is not set: tls_verify 'peer' needs the CA"),
    ({"tls_fail_if_no_peer_cert": True}, "tls_fail_if_no_peer_cert is true but tls_verify is 'none'"),
])
def test_config_combinations_refused(certs: Certs, settings: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"tls_cert_file": str(certs.server_cert), "tls_key_file": str(certs.server_key)}
    values.update(settings)
    with pytest.raises(ConfigError, match=message):
        Config(**values)
    with pytest.raises(ConfigError, match="plain_listener is false but TLS is off"):
        Config(plain_listener=False)


def test_bad_files_are_one_line_each(certs: Certs, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ({"tls_cert_file": str(tmp_path / "missing.pem")}, f"cannot read tls_cert_file {tmp_path}/missing.pem: "
                                                           "No such file or directory"),
        ({"tls_cert_file": str(garbage)}, "no PEM certificate in the file"),
        ({"tls_key_file": str(certs.server_cert)}, "no PEM private key in the file"),
        ({"tls_key_file": str(certs.client_key)}, f"tls_key_file {certs.client_key} does not match the certificate "
                                                  f"in tls_cert_file {certs.server_cert}"),
        ({"tls_ca_file": str(garbage)}, f"tls_ca_file {garbage}: cannot load CA certificates"),
        ({"tls_ca_file": str(tmp_path / "nope.pem")}, "cannot read tls_ca_file"),
    ]
    for settings, message in cases:
        values: dict[str, Any] = {"tls_cert_file": str(certs.server_cert), "tls_key_file": str(certs.server_key)}
        values.update(settings)
        with pytest.raises(ConfigError) as info:
            server_context(Config(**values))
        assert message in str(info.value) and "\n" not in str(info.value)


def test_encrypted_key_needs_its_password(certs: Certs, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), None)
    encrypted = _write(tmp_path / "encrypted.key", key=key, password=b"s3cret")
    values: dict[str, Any] = {"tls_cert_file": str(certs.server_cert), "tls_key_file": str(encrypted)}
    with pytest.raises(ConfigError, match="cannot decrypt the key"):
        server_context(Config(**values))
    with pytest.raises(ConfigError, match="cannot decrypt the key"):
        server_context(Config(**values, tls_key_password="wrong"))
    assert server_context(Config(**values, tls_key_password="s3cret")) is not None


def test_cli_bad_tls_file_exits_2_with_one_line(certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("LEVERET_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LEVERET_TLS_KEY_FILE", str(certs.client_key))
    code = main(["serve", "--port", "0", "--data-dir", str(tmp_path / "data"), "--tls-cert-file",
                 str(certs.server_cert), "--tls-port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"leveret: error: tls_key_file {certs.client_key} does not match the certificate in "
                   f"tls_cert_file {certs.server_cert}"]
    assert not (tmp_path / "data").exists()  # refused before anything was opened


# --- names from certificates ---------------------------------------------------------------------------------


def test_distinguished_names_as_rabbitmq_writes_them() -> None:
    subject = ((("countryName", "DE"),), (("organizationName", "Acme, Inc."),),
               (("organizationalUnitName", "ops"), ("commonName", "multi")), (("commonName", " #café~ "),))
    assert format_dn(subject) == "CN=\\ #caf\\C3\\A9\\7E\\ ,OU=ops+CN=multi,O=Acme\\, Inc.,C=DE"
    assert format_dn(((("commonName", "#1"),),)) == "CN=\\#1"
    assert format_dn(((("domainComponent", "example"),), (("userId", "u1"),))) == "UID=u1,DC=example"
    cert = {"subject": ((("organizationName", "O"),), (("commonName", "a"),), (("commonName", "b"),))}
    assert cert_login(cert, "common_name") == "a,b"
    assert cert_login(cert, "distinguished_name") == "CN=b,CN=a,O=O"
    assert cert_login({"subject": ((("organizationName", "O"),),)}, "common_name") is None


def test_cipher_names_as_rabbitmq_reports_them() -> None:
    assert cipher_parts("TLS_AES_256_GCM_SHA384") == ("any", "aes_256_gcm", "aead")
    assert cipher_parts("TLS_CHACHA20_POLY1305_SHA256") == ("any", "chacha20_poly1305", "aead")
    assert cipher_parts("ECDHE-RSA-AES128-GCM-SHA256") == ("ecdhe_rsa", "aes_128_gcm", "aead")
    assert cipher_parts("ECDHE-ECDSA-AES256-SHA384") == ("ecdhe_ecdsa", "aes_256_cbc", "sha384")
    assert cipher_parts("ECDHE-RSA-CHACHA20-POLY1305") == ("ecdhe_rsa", "chacha20_poly1305", "aead")
    assert cipher_parts("AES256-SHA") == ("rsa", "aes_256_cbc", "sha")
