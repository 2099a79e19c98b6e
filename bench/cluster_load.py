"""Several Leveret nodes on one PostgreSQL under load (docs/cluster.md, docs/performance.md):

1. ``rate``: persistent pubsub 16 B with publisher confirms (bench/amqpbench.c: window 1,000, prefetch 1,000, acks
   every 100) through 1, 2 and 3 cluster nodes at once, side by side in one run with a single Leveret on SQLite and
   a single Leveret on PostgreSQL without ``cluster``. With N nodes, N amqpbench processes run at once, each on a
   queue of its own node (``local``), or publishing through the next node so that every message is handed over
   through the database (``handover``); the figure is the sum of their end-to-end rates. Each run also reports the
   CPU of the brokers and of PostgreSQL (every process of the server this script starts for itself) as % of one
   core, the machine's, and PostgreSQL's WAL writes and fsyncs (``pg_stat_wal``).
2. ``failover``: three nodes, a queue owned by node a; publishers with confirms on all three nodes and a consumer
   with manual acks on node a run; node a is killed -9; the consumer moves to the next node that accepts its
   consume (client-side failover: a refusal 405 names the owner) and the publisher of node a to the next node.
   Reported: the time from the kill until the queue delivers again on another node, how many messages came back
   redelivered, how long the publishers on the survivors went without a confirm; for ``node_lease`` 15 s (the
   default) and 5 s.

Usage: python bench/cluster_load.py [rate|failover|all] [--rounds 3] [--count 30000] [--leases 15,5]
Starts a PostgreSQL of its own (scripts/postgres.sh with LEVERET_PG_DIR in a temporary directory, stopped at the
end), so that its CPU and WAL counts are this benchmark's only.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions
import psycopg
from compare import build_amqpbench, parse, serve_logged  # bench/compare.py (this script's directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
PERSISTENT = pika.BasicProperties(delivery_mode=2)


# --- processes and their CPU --------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def machine_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK, sum(fields) / TICK


class Postgres:
    """A PostgreSQL of this benchmark's own (scripts/postgres.sh in a temporary directory)."""

    def __init__(self, root: str) -> None:
        os.chmod(root, 0o755)  # the server runs as the user "postgres" when this runs as root
        self.env = {**os.environ, "LEVERET_PG_DIR": f"{root}/pg"}
        subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "start"], env=self.env, check=True,
                       capture_output=True, timeout=120)
        self.url = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "url"], env=self.env, check=True,
                                  capture_output=True, text=True).stdout.strip()
        self.pid = int(Path(f"{root}/pg/data/postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "stop"], env=self.env, capture_output=True,
                       timeout=60)

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in [self.pid, *children(self.pid)])

    def wal(self) -> tuple[int, int, int]:
        """(WAL records, writes, fsyncs) since the server started."""
        with psycopg.connect(self.url, autocommit=True) as db:
            row = db.execute("SELECT wal_records, wal_write, wal_sync FROM pg_stat_wal").fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])


def start_node(data: str, store: str | None = None, name: str | None = None, lease: int = 15
               ) -> tuple[subprocess.Popen[str], int]:
    env = {"LEVERET_STORE": store} if store else {}
    if name:
        env.update(LEVERET_CLUSTER="true", LEVERET_NODE_NAME=name, LEVERET_NODE_LEASE=str(lease))
    return serve_logged(data, env)


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- 1. the rate ------------------------------------------------------------------------------------------------


def amqpbench(tool: str, pairs: list[tuple[int, int]], count: int) -> list[dict[str, str]]:
    """One amqpbench per (queue node port, publisher node port), all at once; their parsed lines."""
    runs = [subprocess.Popen([tool, "-p", str(port), *(["-N", str(pub)] if pub != port else []), "-s", "pubsub",
                              "-m", "persistent", "-n", str(count), "-S", "16"], stdout=subprocess.PIPE, text=True)
            for port, pub in pairs]
    lines = []
    for run in runs:
        out, _ = run.communicate(timeout=600)
        if run.returncode != 0:
            raise RuntimeError(f"amqpbench failed: {out}")
        lines.append(parse(out))
    return lines


def rate(rounds: int, count: int, out: list[str]) -> None:
    tool = str(build_amqpbench())
    with tempfile.TemporaryDirectory(prefix="cluster-load-") as tmp:
        pg = Postgres(tmp)
        procs: list[subprocess.Popen[str]] = []
        try:
            sqlite, sqlite_port = start_node(f"{tmp}/sqlite")
            single, single_port = start_node(f"{tmp}/single", f"{pg.url}?schema=single")
            procs += [sqlite, single]
            schema = f"{pg.url}?schema=cluster_{uuid.uuid4().hex[:6]}"
            nodes = [start_node(f"{tmp}/{name}", schema, name) for name in ("a", "b", "c")]
            procs += [proc for proc, _ in nodes]
            ports = [port for _, port in nodes]
            configs: list[tuple[str, list[tuple[int, int]], list[subprocess.Popen[str]]]] = [
                ("sqlite, 1 node", [(sqlite_port, sqlite_port)], [sqlite]),
                ("postgresql, 1 node (cluster = false)", [(single_port, single_port)], [single]),
                *((f"cluster, {n} node{'s' if n > 1 else ''}, local", [(p, p) for p in ports[:n]],
                   [proc for proc, _ in nodes[:n]]) for n in (1, 2, 3)),
                *((f"cluster, {n} nodes, handover", [(ports[i], ports[(i + 1) % n]) for i in range(n)],
                   [proc for proc, _ in nodes[:n]]) for n in (2, 3)),
            ]
            results: dict[str, list[tuple[float, float, float, float, tuple[int, int, int]]]] = {}
            for round_ in range(1, rounds + 1):
                for label, pairs, brokers in configs:
                    uses_pg = not label.startswith("sqlite")
                    b0 = sum(cpu_seconds(p.pid) for p in brokers)
                    p0, w0, (m0, t0) = pg.cpu(), pg.wal(), machine_seconds()
                    lines = amqpbench(tool, pairs, count)
                    b1 = sum(cpu_seconds(p.pid) for p in brokers)
                    p1, w1, (m1, t1) = pg.cpu(), pg.wal(), machine_seconds()
                    wall = max(float(line["e2e_s"]) for line in lines)
                    total = sum(float(line["e2e_rate"]) for line in lines)
                    wal = tuple(b - a for a, b in zip(w0, w1, strict=True)) if uses_pg else (0, 0, 0)
                    cpu = (100 * (b1 - b0) / wall, 100 * (p1 - p0) / wall if uses_pg else 0.0,
                           100 * (m1 - m0) / (t1 - t0) * os.cpu_count() if t1 > t0 else 0.0)  # type: ignore[operator]
                    results.setdefault(label, []).append((total, *cpu, wal))  # type: ignore[arg-type]
                    line = (f"round={round_} config='{label}' e2e_rate_sum={total:.0f} "
                            f"rates={[round(float(x['e2e_rate'])) for x in lines]} brokers_cpu={cpu[0]:.0f}% "
                            f"postgres_cpu={cpu[1]:.0f}% machine_cpu={cpu[2]:.0f}% wal_records={wal[0]} "
                            f"wal_writes={wal[1]} wal_fsyncs={wal[2]} msgs={count * len(pairs)}")
                    print(line, flush=True)
                    out.append(line)
            out.append("")
            out.append("| setup (persistent pubsub 16 B, confirms) | msg/s (sum) | vs SQLite | brokers CPU | "
                       "PostgreSQL CPU | machine CPU | WAL fsyncs per 1,000 msgs |")
            out.append("|---|---|---|---|---|---|---|")
            base = statistics.median(r[0] for r in results["sqlite, 1 node"])
            for label, pairs, _ in configs:
                rows = results[label]
                med = statistics.median(r[0] for r in rows)
                fsyncs = statistics.median(1000 * r[4][2] / (count * len(pairs)) for r in rows)
                out.append(f"| {label} | {med:,.0f} | {med / base:.2f}x | "
                           f"{statistics.median(r[1] for r in rows):.0f}% | "
                           f"{statistics.median(r[2] for r in rows):.0f}% | "
                           f"{statistics.median(r[3] for r in rows):.0f}% | "
                           f"{fsyncs:.1f} |")
            for line in out[-len(configs) - 3:]:
                print(line)
        finally:
            stop_all(procs)
            pg.stop()


# --- 2. failover under load ---------------------------------------------------------------------------------------


@dataclass
class Seen:
    lock: threading.Lock = field(default_factory=threading.Lock)
    deliveries: list[tuple[float, str, bool, bytes]] = field(default_factory=list)  # (when, node, redelivered, body)
    confirms: dict[str, list[float]] = field(default_factory=dict)  # publisher -> times of its confirms
    stop: threading.Event = field(default_factory=threading.Event)


def connect(port: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1,
                                                             socket_timeout=5))


def publisher(name: str, ports: list[tuple[str, int]], seen: Seen, limit: int) -> None:
    sent, turn = 0, 0
    times = seen.confirms.setdefault(name, [])
    while sent < limit and not seen.stop.is_set():
        _, port = ports[turn % len(ports)]
        try:
            conn = connect(port)
            ch = conn.channel()
            ch.confirm_delivery()
            while sent < limit and not seen.stop.is_set():
                ch.basic_publish("", "work", b"%s-%d" % (name.encode(), sent), PERSISTENT)
                sent += 1
                times.append(time.monotonic())
            conn.close()
        except pika.exceptions.AMQPConnectionError:
            turn += 1


def consumer(ports: list[tuple[str, int]], seen: Seen) -> None:
    turn = 0
    while not seen.stop.is_set():
        node, port = ports[turn % len(ports)]
        try:
            conn = connect(port)
        except pika.exceptions.AMQPConnectionError:
            turn += 1
            continue
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=50)

            def on_message(ch: object, method: object, props: object, body: bytes, node: str = node) -> None:
                with seen.lock:
                    seen.deliveries.append((time.monotonic(), node, bool(method.redelivered),  # type: ignore[attr-defined]
                                            body))
                ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

            ch.basic_consume("work", on_message)
            while not seen.stop.is_set():
                conn.process_data_events(time_limit=0.1)
            conn.close()
        except pika.exceptions.ChannelClosedByBroker:  # 405: another node serves it (the dead one, until its lease)
            turn += 1
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close()
            seen.stop.wait(0.05)
        except pika.exceptions.AMQPConnectionError:
            turn += 1


def failover_once(pg: Postgres, tmp: str, lease: int, warmup: float = 3.0) -> str:
    schema = f"{pg.url}?schema=fo_{uuid.uuid4().hex[:6]}"
    nodes = [(name, *start_node(f"{tmp}/{name}-{lease}-{uuid.uuid4().hex[:4]}", schema, name, lease))
             for name in ("a", "b", "c")]
    procs = [proc for _, proc, _ in nodes]
    ports = [(name, port) for name, _, port in nodes]
    seen = Seen()
    threads: list[threading.Thread] = []
    try:
        conn = connect(ports[0][1])
        conn.channel().queue_declare("work", durable=True)  # node a's
        conn.close()
        for _, port in ports[1:]:
            conn = connect(port)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    conn.channel().queue_declare("work", passive=True)
                    break
                except pika.exceptions.ChannelClosedByBroker:
                    time.sleep(0.05)
            conn.close()
        threads = [threading.Thread(target=consumer, args=(ports, seen), daemon=True)]
        threads += [threading.Thread(target=publisher, args=(name, ports[i:] + ports[:i], seen, 200_000), daemon=True)
                    for i, (name, _) in enumerate(ports)]
        for thread in threads:
            thread.start()
        time.sleep(warmup)  # load running (a benchmark: the warm-up is time, not a condition)
        b0, m0 = sum(cpu_seconds(p.pid) for p in procs[1:]), machine_seconds()
        killed = time.monotonic()
        procs[0].kill()
        deadline = killed + lease * 3 + 30
        while time.monotonic() < deadline:
            with seen.lock:
                after = [d for d in seen.deliveries if d[0] > killed and d[1] != "a"]
            if after:
                break
            time.sleep(0.01)
        else:
            return f"node_lease {lease} s: the queue did not deliver again within {deadline - killed:.0f} s"
        back = after[0][0] - killed
        time.sleep(max(2.0, lease / 3))  # let the recovered messages flow (measured, not a condition)
        seen.stop.set()
        for thread in threads:
            thread.join(30)
        b1, m1 = sum(cpu_seconds(p.pid) for p in procs[1:]), machine_seconds()
        with seen.lock:
            before = [d for d in seen.deliveries if d[0] <= killed]
            later = [d for d in seen.deliveries if d[0] > killed]
        redelivered = sum(1 for d in later if d[2])
        bodies = [d[3] for d in before + later]
        again = len(bodies) - len(set(bodies))
        gaps = {}
        for name, times in seen.confirms.items():
            during = [t for t in times if t > killed - 1]
            gaps[name] = max((b - a for a, b in itertools.pairwise(during)), default=0.0)
        rate_before = len([d for d in before if d[0] > killed - warmup + 1]) / (warmup - 1)
        return (f"node_lease {lease} s: kill -9 of the owner under load ({rate_before:.0f} deliveries/s before) -> "
                f"the queue delivers again on node {after[0][1]} after {back:.2f} s; {redelivered} of "
                f"{len(later)} deliveries after the kill redelivered, {again} delivered twice; longest wait for a "
                "confirm: "
                + ", ".join(f"{name} {gap:.2f} s" for name, gap in sorted(gaps.items()))
                + f"; brokers CPU {100 * (b1 - b0 + 0.0) / (time.monotonic() - killed):.0f}%, machine "
                f"{100 * (m1[0] - m0[0]) / max(1e-9, m1[1] - m0[1]) * (os.cpu_count() or 1):.0f}% (of one core)")
    finally:
        seen.stop.set()
        stop_all(procs)


def failover(leases: list[int], rounds: int, out: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="cluster-fo-") as tmp:
        pg = Postgres(tmp)
        try:
            for lease in leases:
                for _ in range(rounds):
                    line = failover_once(pg, tmp, lease)
                    print(line, flush=True)
                    out.append(line)
        finally:
            pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=("rate", "failover", "all"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=30000, help="messages per amqpbench process")
    parser.add_argument("--leases", default="15,5")
    parser.add_argument("--failover-rounds", type=int, default=2)
    args = parser.parse_args()
    when = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    out: list[str] = [f"# bench/cluster_load.py {' '.join(sys.argv[1:])}  ({when}, {os.cpu_count()} cores, load "
                      f"{os.getloadavg()[0]:.1f}; the machine is shared with other work)"]
    print(out[0])
    if args.what in ("rate", "all"):
        rate(args.rounds, args.count, out)
    if args.what in ("failover", "all"):
        failover([int(x) for x in args.leases.split(",")], args.failover_rounds, out)


if __name__ == "__main__":
    main()
