"""The cost of fencing in the store (docs/cluster.md): persistent pubsub through one node of a one-node cluster
(``cluster = true`` on PostgreSQL), the code of two checkouts side by side (default: /work/main, without the fence,
against this one), alternating rounds: e2e msg/s, the broker's CPU per message and its PostgreSQL writer's CPU per
message (the backend named ``leveret writer <schema>``, from /proc).

Usage: python bench/fence_bench.py [BEFORE_DIR] [AFTER_DIR] [ROUNDS] [COUNT] [SCENARIO]   (defaults /work/main, this
checkout, 3, 50000, pubsub; ``backlog`` stores every message before it is consumed). Needs the PostgreSQL of
scripts/postgres.sh on this machine (started if not running); each checkout gets a schema of its own, dropped at
the end. Each checkout is run with this interpreter from its own directory, so that
``python -m leveret`` imports that checkout's code.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from compare import build_amqpbench, parse, serve_logged  # noqa: E402 - bench/compare.py

TICK = os.sysconf("SC_CLK_TCK")


def start(checkout: str, url: str, data: str) -> tuple[subprocess.Popen[str], int]:
    return serve_logged(data, {"LEVERET_STORE": url, "LEVERET_CLUSTER": "true", "LEVERET_NODE_NAME": "bench",
                               "PYTHONPATH": checkout}, cwd=checkout)


def backend_cpu(base: str, schema: str) -> float:
    """CPU seconds of this schema's writer backend so far (PostgreSQL runs on this machine)."""
    with psycopg.connect(base, autocommit=True) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                           (f"leveret writer {schema}",)).fetchone()
    fields = Path(f"/proc/{row[0]}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> None:
    before = sys.argv[1] if len(sys.argv) > 1 else "/work/main"
    after = sys.argv[2] if len(sys.argv) > 2 else str(ROOT)
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 50000
    scenario = sys.argv[5] if len(sys.argv) > 5 else "pubsub"
    base = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "start"], capture_output=True, text=True,
                          check=True).stdout.strip().rpartition(" ")[2]
    tool = str(build_amqpbench())
    schemas = {label: f"fb_{uuid.uuid4().hex[:10]}" for label in ("before", "after")}
    results: dict[str, list[tuple[float, float, float]]] = {"before": [], "after": []}
    procs = []
    try:
        with tempfile.TemporaryDirectory(prefix="leveret-fence-bench-") as tmp:
            ports = {}
            for label, checkout in (("before", before), ("after", after)):
                proc, port = start(checkout, f"{base}?schema={schemas[label]}", str(Path(tmp) / label))
                procs.append(proc)
                ports[label] = (proc.pid, port)
            for _ in range(rounds):
                for label in ("before", "after"):
                    pid, port = ports[label]
                    db0 = backend_cpu(base, schemas[label])
                    line = subprocess.run([tool, "-p", str(port), "-B", str(pid), "-s", scenario, "-m",
                                           "persistent", "-n", str(count), "-S", "16"], capture_output=True,
                                          text=True, check=True, timeout=600).stdout
                    db1 = backend_cpu(base, schemas[label])
                    found = parse(line)
                    results[label].append((float(found["e2e_rate"]), float(found["broker_cpu_s"]) / count * 1e6,
                                           (db1 - db0) / count * 1e6))
                    print(label, line.strip(), f"db_writer_cpu_s={db1 - db0:.2f}", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        with psycopg.connect(base, autocommit=True) as conn:
            for schema in schemas.values():
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    for label, rows in results.items():
        rates, broker, writer = zip(*rows, strict=True)
        print(f"{label}: median e2e {statistics.median(rates):,.0f} msg/s (rounds {[round(r) for r in rates]}), "
              f"broker CPU {statistics.median(broker):.1f} us/msg, PostgreSQL writer backend "
              f"{statistics.median(writer):.1f} us/msg")


if __name__ == "__main__":
    main()
