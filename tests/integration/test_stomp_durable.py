"""STOMP and durability against a Leveret child process that is restarted: a durable topic subscription keeps
its queue (and what arrived while the subscriber was away) across a restart, and a persistent SEND's receipt
means the message is on disk (it survives SIGKILL right after the receipt). Also STOMP over TLS."""

from __future__ import annotations

import datetime
import signal
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


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_stomp_over_tls_with_the_amqps_certificate(tmp_path: Path, make_config: Any) -> None:
    cert, key = _certificate(tmp_path)
    config: Config = make_config(stomp_port=0, stomp_tls_port=0, tls_port=0, tls_cert_file=str(cert),
                                 tls_key_file=str(key))
    server = ThreadedServer(config).start()
    try:
        assert server.stomp_tls_port > 0
        conn = stomp.Connection12([("127.0.0.1", server.stomp_tls_port)], vhost="/")
        conn.set_ssl(for_hosts=[("127.0.0.1", server.stomp_tls_port)], ca_certs=str(cert),
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
