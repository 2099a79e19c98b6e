"""Permission enforcement (configure/write/read regular expressions) against RabbitMQ 3.10's behaviour.

The matrix runs every AMQP operation that needs a permission, with and without it, as three users with
narrow patterns, on Leveret and on the reference RabbitMQ (users made with rabbitmqctl); each case states
the expected reply code and text, which are RabbitMQ's (checked by the RabbitMQ run), so the two brokers
are compared through the same expectations.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from leveret.config import Config
from leveret.core.access import Access, Permission
from leveret.core.broker import User
from leveret.core.errors import AccessRefused, PreconditionFailed
from leveret.node import ThreadedServer

from brokeradmin import Admin, LeveretAdmin, connect_as, rabbit_admin

# user key -> (configure, write, read)
USERS = {
    "u": ("^c", "^w", "^r"),
    "u2": (".*", "^w", "^r"),
    "u3": ("", r"^amq\.default$", ""),
}
EXCHANGES = ("rx", "wx", "cx", "cx2")
QUEUES = ("rq", "wq", "cq", "cq2")
REFUSED = "ACCESS_REFUSED - access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"
DEFAULT = "ACCESS_REFUSED - operation not permitted on the default exchange"


def refused(kind: str, name: str) -> tuple[int, str]:
    return 403, REFUSED.replace("{kind}", kind).replace("{name}", name)


def publish(exchange: str) -> Callable[[BlockingChannel], Any]:
    def run(ch: BlockingChannel) -> None:
        ch.confirm_delivery()
        ch.basic_publish(exchange, "wq", b"x")
    return run


def noop(*_args: Any) -> None:
    pass


OK = None
# (id, user, operation, expected: None for success or (reply code, text with {vhost}, {user}, {gen}))
CASES: list[tuple[str, str, Callable[[BlockingChannel], Any], tuple[int, str] | None]] = [
    # exchange.declare: configure on the exchange; passive needs nothing; the default exchange is refused first
    ("exchange.declare configure", "u", lambda ch: ch.exchange_declare("cx", "fanout"), OK),
    ("exchange.declare no configure", "u", lambda ch: ch.exchange_declare("wx", "fanout"), refused("exchange", "wx")),
    ("exchange.declare new, no configure", "u", lambda ch: ch.exchange_declare("rnew", "fanout"),
     refused("exchange", "rnew")),
    ("exchange.declare passive", "u", lambda ch: ch.exchange_declare("wx", "fanout", passive=True), OK),
    ("exchange.declare passive missing", "u", lambda ch: ch.exchange_declare("zz", "fanout", passive=True),
     (404, "NOT_FOUND - no exchange 'zz' in vhost '{vhost}'")),
    ("exchange.declare default", "u", lambda ch: ch.exchange_declare("", "fanout"), (403, DEFAULT)),
    ("exchange.declare passive default", "u3", lambda ch: ch.exchange_declare("", passive=True), (403, DEFAULT)),
    ("exchange.declare amq.direct", "u", lambda ch: ch.exchange_declare("amq.direct", "direct"),
     refused("exchange", "amq.direct")),
    # exchange.declare of a new exchange with an alternate exchange: read on it, write on the AE
    ("exchange.declare AE, no read on itself", "u2",
     lambda ch: ch.exchange_declare("anew", "fanout", arguments={"alternate-exchange": "wx"}),
     refused("exchange", "anew")),
    ("exchange.declare AE", "u2",
     lambda ch: ch.exchange_declare("rnew2", "fanout", arguments={"alternate-exchange": "wx"}), OK),
    ("exchange.declare AE, no write on the AE", "u2",
     lambda ch: ch.exchange_declare("rnew3", "fanout", arguments={"alternate-exchange": "rx"}),
     refused("exchange", "rx")),
    ("exchange.declare missing AE", "u2",
     lambda ch: ch.exchange_declare("rnew4", "fanout", arguments={"alternate-exchange": "wmiss"}), OK),
    ("exchange.declare AE of a bad type", "u2",
     lambda ch: ch.exchange_declare("rnew5", "fanout", arguments={"alternate-exchange": 5}),
     (406, "PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in exchange 'rnew5' in "
           "vhost '{vhost}'")),
    # exchange.delete: configure (also for a missing exchange)
    ("exchange.delete configure", "u", lambda ch: ch.exchange_delete("cx2"), OK),
    ("exchange.delete no configure", "u", lambda ch: ch.exchange_delete("wx"), refused("exchange", "wx")),
    ("exchange.delete missing, no configure", "u", lambda ch: ch.exchange_delete("zzz"), refused("exchange", "zzz")),
    ("exchange.delete default", "u", lambda ch: ch.exchange_delete(""), (403, DEFAULT)),
    # queue.declare: configure on the queue (server-named: on the generated name); passive needs nothing
    ("queue.declare configure", "u", lambda ch: ch.queue_declare("cq"), OK),
    ("queue.declare no configure", "u", lambda ch: ch.queue_declare("wq"), refused("queue", "wq")),
    ("queue.declare passive", "u", lambda ch: ch.queue_declare("wq", passive=True), OK),
    ("queue.declare passive, no permissions", "u3", lambda ch: ch.queue_declare("wq", passive=True), OK),
    ("queue.declare passive missing", "u", lambda ch: ch.queue_declare("zzq", passive=True),
     (404, "NOT_FOUND - no queue 'zzq' in vhost '{vhost}'")),
    ("queue.declare server-named, no configure", "u", lambda ch: ch.queue_declare(""), refused("queue", "{gen}")),
    ("queue.declare server-named exclusive", "u2", lambda ch: ch.queue_declare("", exclusive=True), OK),
    ("queue.declare server-named, empty pattern", "u3", lambda ch: ch.queue_declare(""), refused("queue", "{gen}")),
    ("queue.declare reserved name", "u", lambda ch: ch.queue_declare("amq.x"),
     (403, "ACCESS_REFUSED - queue name 'amq.x' contains reserved prefix 'amq.*'")),
    # queue.declare of a new queue with a dead-letter exchange: read on the queue, write on the DLX
    ("queue.declare DLX, no read on the queue", "u2",
     lambda ch: ch.queue_declare("anewq", arguments={"x-dead-letter-exchange": "wx"}), refused("queue", "anewq")),
    ("queue.declare DLX", "u2", lambda ch: ch.queue_declare("rnq", arguments={"x-dead-letter-exchange": "wx"}), OK),
    ("queue.declare DLX, no write on it", "u2",
     lambda ch: ch.queue_declare("rnq2", arguments={"x-dead-letter-exchange": "rx"}), refused("exchange", "rx")),
    ("queue.declare DLX default exchange", "u2",
     lambda ch: ch.queue_declare("rnq3", arguments={"x-dead-letter-exchange": ""}),
     refused("exchange", "amq.default")),
    ("queue.declare DLX of a bad type", "u2",
     lambda ch: ch.queue_declare("rnq4", arguments={"x-dead-letter-exchange": 5}),
     (406, "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'rnq4' in "
           "vhost '{vhost}'")),
    ("queue.declare existing, other DLX", "u2",
     lambda ch: ch.queue_declare("rq", arguments={"x-dead-letter-exchange": "rx"}),
     (406, "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'rq' in vhost '{vhost}': "
           "received the value 'rx' of type 'longstr' but current is none")),
    # queue.delete: configure (also for a missing queue)
    ("queue.delete configure", "u", lambda ch: ch.queue_delete("cq2"), OK),
    ("queue.delete no configure", "u", lambda ch: ch.queue_delete("wq"), refused("queue", "wq")),
    ("queue.delete missing, no configure", "u", lambda ch: ch.queue_delete("zzq"), refused("queue", "zzq")),
    # queue.bind/unbind: write on the queue, then the default exchange, then read on the exchange
    ("queue.bind", "u", lambda ch: ch.queue_bind("wq", "rx"), OK),
    ("queue.bind no write on the queue", "u", lambda ch: ch.queue_bind("rq", "rx"), refused("queue", "rq")),
    ("queue.bind no read on the exchange", "u", lambda ch: ch.queue_bind("wq", "wx"), refused("exchange", "wx")),
    ("queue.bind default exchange", "u", lambda ch: ch.queue_bind("wq", ""), (403, DEFAULT)),
    ("queue.bind default exchange, no write", "u", lambda ch: ch.queue_bind("rq", ""), refused("queue", "rq")),
    ("queue.bind missing exchange", "u", lambda ch: ch.queue_bind("wq", "rmissing"),
     (404, "NOT_FOUND - no exchange 'rmissing' in vhost '{vhost}'")),
    ("queue.unbind", "u", lambda ch: ch.queue_unbind("wq", "rx"), OK),
    ("queue.unbind no write on the queue", "u", lambda ch: ch.queue_unbind("rq", "rx"), refused("queue", "rq")),
    ("queue.unbind no read on the exchange", "u", lambda ch: ch.queue_unbind("wq", "cx"), refused("exchange", "cx")),
    # exchange.bind/unbind: write on the destination, read on the source
    ("exchange.bind", "u", lambda ch: ch.exchange_bind("wx", "rx"), OK),
    ("exchange.bind no write on the destination", "u", lambda ch: ch.exchange_bind("rx", "rx"),
     refused("exchange", "rx")),
    ("exchange.bind no read on the source", "u", lambda ch: ch.exchange_bind("wx", "wx"), refused("exchange", "wx")),
    ("exchange.unbind", "u", lambda ch: ch.exchange_unbind("wx", "rx"), OK),
    ("exchange.unbind no write on the destination", "u", lambda ch: ch.exchange_unbind("cx", "rx"),
     refused("exchange", "cx")),
    # read on the queue for purge, get and consume, checked before the queue is looked up
    ("queue.purge", "u", lambda ch: ch.queue_purge("rq"), OK),
    ("queue.purge no read", "u", lambda ch: ch.queue_purge("wq"), refused("queue", "wq")),
    ("queue.purge missing, no read", "u", lambda ch: ch.queue_purge("zzq"), refused("queue", "zzq")),
    ("basic.get", "u", lambda ch: ch.basic_get("rq"), OK),
    ("basic.get no read", "u", lambda ch: ch.basic_get("wq"), refused("queue", "wq")),
    ("basic.get missing", "u", lambda ch: ch.basic_get("rmiss"),
     (404, "NOT_FOUND - no queue 'rmiss' in vhost '{vhost}'")),
    ("basic.consume", "u", lambda ch: ch.basic_consume("rq", noop), OK),
    ("basic.consume no read", "u", lambda ch: ch.basic_consume("wq", noop), refused("queue", "wq")),
    ("basic.consume direct reply-to", "u", lambda ch: ch.basic_consume("amq.rabbitmq.reply-to", noop, auto_ack=True),
     OK),
    # basic.publish: write on the exchange; the default exchange is amq.default
    ("basic.publish", "u", publish("wx"), OK),
    ("basic.publish no write", "u", publish("rx"), refused("exchange", "rx")),
    ("basic.publish default exchange, no write", "u", publish(""), refused("exchange", "amq.default")),
    ("basic.publish default exchange", "u3", publish(""), OK),
    ("basic.publish amq.direct, no write", "u3", publish("amq.direct"), refused("exchange", "amq.direct")),
    ("basic.publish missing exchange", "u", publish("wmiss"),
     (404, "NOT_FOUND - no exchange 'wmiss' in vhost '{vhost}'")),
    ("basic.publish missing, no write", "u", publish("rmiss"), refused("exchange", "rmiss")),
]


@dataclass
class Env:
    admin: Admin
    port: int
    vhost: str
    users: dict[str, str]  # key -> user name
    connections: dict[str, BlockingConnection] = field(default_factory=dict)

    def connection(self, key: str) -> BlockingConnection:
        conn = self.connections.get(key)
        if conn is None or not conn.is_open:
            conn = self.connections[key] = connect_as(self.port, self.vhost, self.users[key])
        return conn

    def admin_connection(self) -> BlockingConnection:
        return connect_as(self.port, self.vhost, "guest", "guest")

    def close(self) -> None:
        for conn in self.connections.values():
            if conn.is_open:
                conn.close()


def _make_env(admin: Admin, port: int) -> Env:
    run = uuid.uuid4().hex[:8]
    env = Env(admin, port, f"sec-{run}", {key: f"sec-{run}-{key}" for key in USERS})
    admin.add_vhost(env.vhost)
    admin.set_permissions("guest", env.vhost, ".*", ".*", ".*")
    for key, patterns in USERS.items():
        admin.add_user(env.users[key])
        admin.set_permissions(env.users[key], env.vhost, *patterns)
    return env


def _drop_env(env: Env) -> None:
    env.close()
    for user in env.users.values():
        env.admin.delete_user(user)
    env.admin.delete_vhost(env.vhost)


@pytest.fixture(scope="module")
def module_leveret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    data = tmp_path_factory.mktemp("access") / "data"
    server = ThreadedServer(Config(port=0, data_dir=str(data), log_level="warning", http_port=-1)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["leveret", "rabbitmq"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    if request.param == "rabbitmq":
        admin: Admin = rabbit_admin()
        port = 5672
    else:
        server = request.getfixturevalue("module_leveret")
        admin = LeveretAdmin(server)
        port = server.port
    environment = _make_env(admin, port)
    try:
        yield environment
    finally:
        _drop_env(environment)


def _outcome(env: Env, key: str, operation: Callable[[BlockingChannel], Any]) -> tuple[int, str] | None:
    ch = env.connection(key).channel()
    try:
        operation(ch)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code, exc.reply_text
    if ch.is_open:
        ch.close()
    return None


def _expected_pattern(expected: tuple[int, str], env: Env, key: str) -> tuple[int, str]:
    code, text = expected
    pattern = re.escape(text.replace("{vhost}", env.vhost).replace("{user}", env.users[key]))
    return code, pattern.replace(re.escape("{gen}"), r"amq\.gen-[A-Za-z0-9_\-]{22}")


@pytest.mark.parametrize(("user", "operation", "expected"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_permission_matrix(env: Env, user: str, operation: Callable[[BlockingChannel], Any],
                           expected: tuple[int, str] | None) -> None:
    admin = env.admin_connection()
    try:
        ch = admin.channel()
        for name in EXCHANGES:
            ch.exchange_declare(name, "fanout")
        for name in QUEUES:
            ch.queue_declare(name)
        got = _outcome(env, user, operation)
        if expected is None:
            assert got is None
        else:
            assert got is not None, "the operation was allowed"
            code, pattern = _expected_pattern(expected, env, user)
            assert got[0] == code and re.fullmatch(pattern, got[1]), got
    finally:
        admin.close()


def test_no_permissions_in_the_vhost_refuses_connection_open(env: Env) -> None:
    name = env.users["u"] + "-none"
    env.admin.add_user(name)
    try:
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
            connect_as(env.port, env.vhost, name)
        assert f"(530) \"NOT_ALLOWED - access to vhost '{env.vhost}' refused for user '{name}'\"" in str(info.value)
    finally:
        env.admin.delete_user(name)


def test_permission_change_applies_to_new_channels_and_keeps_connections(env: Env) -> None:
    name = env.users["u"] + "-change"
    env.admin.add_user(name)
    env.admin.set_permissions(name, env.vhost, ".*", ".*", ".*")
    conn = connect_as(env.port, env.vhost, name)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("amq.fanout", "", b"1")
        env.admin.set_permissions(name, env.vhost, ".*", "^$", ".*")
        fresh = conn.channel()
        fresh.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            fresh.basic_publish("amq.fanout", "", b"2")
        assert (info.value.reply_code, info.value.reply_text) == (
            403, f"ACCESS_REFUSED - access to exchange 'amq.fanout' in vhost '{env.vhost}' refused for user '{name}'")
        env.admin.clear_permissions(name, env.vhost)
        conn.process_data_events(0.2)
        assert conn.is_open  # clearing permissions does not close connections (RabbitMQ neither)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            conn.channel().queue_purge("anything")
        assert info.value.reply_code == 403
    finally:
        if conn.is_open:
            conn.close()
        env.admin.delete_user(name)


def test_deleting_a_user_closes_its_connections(env: Env) -> None:
    name = env.users["u"] + "-deleted"
    env.admin.add_user(name)
    env.admin.set_permissions(name, env.vhost, ".*", ".*", ".*")
    conn = connect_as(env.port, env.vhost, name)
    try:
        env.admin.delete_user(name)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            for _ in range(300):
                conn.process_data_events(0.1)
        assert (info.value.reply_code, info.value.reply_text) == (320, f"CONNECTION_FORCED - user '{name}' is deleted")
    finally:
        if conn.is_open:
            conn.close()


def test_deleting_a_vhost_closes_its_connections(env: Env) -> None:
    vhost = env.vhost + "-gone"
    env.admin.add_vhost(vhost)
    env.admin.set_permissions("guest", vhost, ".*", ".*", ".*")
    conn = connect_as(env.port, vhost, "guest", "guest")
    try:
        env.admin.delete_vhost(vhost)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            for _ in range(300):  # RabbitMQ stops the vhost's processes first: allow a loaded machine 30 s
                conn.process_data_events(0.1)
        # RabbitMQ closes them itself ("is deleted") unless the vhost's processes stopped first ("is down")
        expected = {f"CONNECTION_FORCED - vhost '{vhost}' is deleted"}
        if env.admin.name == "rabbitmq":
            expected.add(f"CONNECTION_FORCED - vhost '{vhost}' is down")
        assert info.value.reply_code == 320 and info.value.reply_text in expected, info.value
    finally:
        if conn.is_open:
            conn.close()


# --- Leveret only -------------------------------------------------------------------------------------------


def test_leveret_applies_a_change_to_open_channels_at_once(tmp_path: Path) -> None:
    """RabbitMQ caches up to 12 decisions per channel, so an open channel may keep a permission it lost;
    Leveret checks every operation against the current patterns (docs/security.md)."""
    server = ThreadedServer(Config(port=0, data_dir=str(tmp_path / "d"), log_level="warning", http_port=-1)).start()
    try:
        admin = LeveretAdmin(server)
        admin.add_user("pub")
        admin.set_permissions("pub", "/", ".*", ".*", ".*")
        conn = connect_as(server.port, "/", "pub")
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("amq.fanout", "", b"1")
        admin.set_permissions("pub", "/", ".*", "^$", ".*")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("amq.fanout", "", b"2")
        assert info.value.reply_code == 403
        conn.close()
    finally:
        server.stop()


def test_patterns_are_searched_unanchored_and_empty_means_nothing() -> None:
    user = User("u", "", permissions={"/": Permission("q", "", "^a.c$")})
    access = Access(user, "/")
    access.configure("queue", "my-q-1")  # unanchored: 'q' anywhere
    with pytest.raises(AccessRefused):
        access.write("exchange", "x")
    access.read("queue", "abc")
    with pytest.raises(AccessRefused) as info:
        access.read("queue", "abcd")
    assert info.value.text == "access to queue 'abcd' in vhost '/' refused for user 'u'"
    with pytest.raises(AccessRefused) as info:
        access.publish("")
    assert info.value.text == "access to exchange 'amq.default' in vhost '/' refused for user 'u'"
    with pytest.raises(AccessRefused):  # no permissions in another vhost
        Access(user, "other").read("queue", "abc")


def test_match_all_pattern_is_not_matched_at_all() -> None:
    permission = Permission(".*", ".*", ".*")
    assert permission.write.everything
    assert permission.write.allows("x" * 10_000)


def test_invalid_pattern_is_refused() -> None:
    with pytest.raises(PreconditionFailed):
        Permission("(", ".*", ".*")
