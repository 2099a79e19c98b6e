"""STOMP and durability against a Leveret child process that is restarted: a durable topic subscription keeps
its queue (and what arrived while the subscriber was away) across a restart, and a persistent SEND's receipt
means the message is on disk (it survives SIGKILL right after the receipt). Also STOMP over TLS."""

from __future__ import annotations

import datetime
import signal
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import stomp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from stomp.utils import Frame as ClientFrame

from leveret.config import Config
from leveret.node import ThreadedServer

from serverproc import LeveretProcess
from waiting import wait_for


class Recorder(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.messages: list[ClientFrame] = []
        self.receipts: list[str] = []
        self.lock = threading.Lock()

    def on_message(self, frame: ClientFrame) -> None:
        self.messages.append(frame)

    def on_receipt(self, frame: ClientFrame) -> None:
        self.receipts.append(frame.headers["receipt-id"])


def open_client(port: int, **kwargs: Any) -> tuple[stomp.Connection12, Recorder]:
    conn = stomp.Connection12([("127.0.0.1", port)], vhost="/", **kwargs)
    recorder = Recorder()
    conn.set_listener("recorder", recorder)
    conn.connect("guest", "guest", wait=True)
    return conn, recorder


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    proc = LeveretProcess(tmp_path / "data", env={"LEVERET_STOMP_PORT": "0"})
    yield proc
    proc.kill()


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_durable_topic_subscription_survives_a_restart(broker: LeveretProcess, stop: str) -> None:
    broker.start()
    conn, rec = open_client(broker.stomp_port)
    sub = {"durable": "true", "auto-delete": "false"}
    conn.subscribe("/topic/alerts.#", id="keeper", ack="client-individual", headers=sub)
    conn.send("/topic/alerts.disk", "first", headers={"persistent": "true"})
    first = wait_for(lambda: rec.messages)[0]
    conn.ack(first.headers["ack"])
    conn.unsubscribe("keeper", headers={"receipt": "away"})  # without durable:true the queue stays
    wait_for(lambda: "away" in rec.receipts)
    conn.send("/topic/alerts.cpu", "while away", headers={"persistent": "true", "receipt": "kept"})
    wait_for(lambda: "kept" in rec.receipts)
    conn.disconnect()
    if stop == "SIGKILL":
        broker.signal(signal.SIGKILL)
        broker.wait()
    else:
        assert broker.stop() == 0
    broker.start()
    conn, rec = open_client(broker.stomp_port)
    conn.subscribe("/topic/alerts.#", id="keeper", ack="client-individual", headers=sub)
    msg = wait_for(lambda: rec.messages)[0]
    assert (msg.body, msg.headers["destination"]) == ("while away", "/topic/alerts.cpu")
    conn.ack(msg.headers["ack"])
    conn.unsubscribe("keeper", headers={"durable": "true", "receipt": "deleted"})  # durable:true deletes it
    wait_for(lambda: "deleted" in rec.receipts)
    conn.disconnect()


def test_persistent_send_receipt_means_on_disk(broker: LeveretProcess) -> None:
    broker.start()
    conn, rec = open_client(broker.stomp_port)
    for i in range(20):
        conn.send("/queue/kept", f"m{i}", headers={"persistent": "true", "receipt": f"r{i}"})
    wait_for(lambda: "r19" in rec.receipts)
    broker.signal(signal.SIGKILL)  # no clean shutdown: only what was written survives
    broker.wait()
    broker.start()
    conn, rec = open_client(broker.stomp_port)
    conn.subscribe("/queue/kept", id="k")
    wait_for(lambda: len(rec.messages) == 20, message="the 20 receipted messages after SIGKILL")
    assert [m.body for m in rec.messages] == [f"m{i}" for i in range(20)]
    conn.disconnect()


# --- TLS ---------------------------------------------------------------------------------------------------


def _signed(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool = False) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _certificate(directory: Path) -> tuple[Path, Path, Path, Path, Path]:
    """A CA, a server certificate and key, a client certificate (CN=stomp-client) and key, all in PEM files."""
    def write(name: str, cert: Any = None, key: Any = None) -> Path:
        path = directory / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) if cert is not None else key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return path

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _signed("STOMP Test CA", ca_key, "STOMP Test CA", ca_key, ca=True)
    return (write("ca.pem", ca), write("server.pem", _signed("localhost", server_key, "STOMP Test CA", ca_key)),
            write("server.key", key=server_key),
            write("client.pem", _signed("stomp-client", client_key, "STOMP Test CA", ca_key)),
            write("client.key", key=client_key))


def test_stomp_over_tls_with_the_amqps_certificate(tmp_path: Path, make_config: Any) -> None:
    ca, cert, key, _, _ = _certificate(tmp_path)
    config: Config = make_config(stomp_port=0, stomp_tls_port=0, tls_port=0, tls_cert_file=str(cert),
                                 tls_key_file=str(key))
    server = ThreadedServer(config).start()
    try:
        assert server.stomp_tls_port > 0
        conn = stomp.Connection12([("127.0.0.1", server.stomp_tls_port)], vhost="/")
        conn.set_ssl(for_hosts=[("127.0.0.1", server.stomp_tls_port)], ca_certs=str(ca),
                     ssl_version=ssl.PROTOCOL_TLS_CLIENT, verify=False)  # the certificate names localhost
        recorder = Recorder()
        conn.set_listener("recorder", recorder)
        conn.connect("guest", "guest", wait=True)
        conn.subscribe("/queue/secure", id="s")
        conn.send("/queue/secure", "over tls")
        assert wait_for(lambda: recorder.messages)[0].body == "over tls"
        (session,) = [c.session for c in server.server.stomp.connections]
        assert session.details["ssl"] is True
        conn.disconnect()
    finally:
        server.stop()


def test_login_from_a_client_certificate(tmp_path: Path, make_config: Any) -> None:
    """With tls_external_login (AMQP's EXTERNAL switch), a CONNECT without login over TLS with a verified client
    certificate logs in as the certificate's user, as RabbitMQ's stomp.ssl_cert_login."""
    ca, cert, key, client_cert, client_key = _certificate(tmp_path)
    config: Config = make_config(stomp_port=-1, stomp_tls_port=0, tls_port=0, tls_cert_file=str(cert),
                                 tls_key_file=str(key), tls_ca_file=str(ca), tls_verify="peer",
                                 tls_external_login=True, tls_cert_login_from="common_name")
    server = ThreadedServer(config).start()
    try:
        server.call(server.broker.add_user, "stomp-client", "unused-password", (), {"/"})
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(client_cert), str(client_key))
        with socket.create_connection(("127.0.0.1", server.stomp_tls_port), timeout=10) as plain, \
                context.wrap_socket(plain, server_hostname="localhost") as sock:
            sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
            assert sock.recv(100).startswith(b"CONNECTED")
            (session,) = [c.session for c in server.server.stomp.connections]
            assert (session.user.name, session.details["auth_mechanism"]) == ("stomp-client", "EXTERNAL")
    finally:
        server.stop()
