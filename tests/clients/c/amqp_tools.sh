#!/usr/bin/env bash
# Round trip with rabbitmq-c's command-line tools (Debian's amqp-tools) against an AMQP 0-9-1 broker.
# usage: bash amqp_tools.sh HOST PORT NAME_PREFIX
# amqp-declare-queue declares a queue, amqp-publish sends messages with properties through the default
# exchange, amqp-get fetches one, amqp-consume consumes the rest with acks (so the queue is then empty even
# after its connection closes), amqp-delete-queue removes the queue. The tools cannot show properties, which
# roundtrip.c checks. Prints "c amqp-tools: OK" and exits 0, or prints the failure and exits 1.
set -uo pipefail

if [ $# -ne 3 ]; then
  echo "usage: bash amqp_tools.sh HOST PORT NAME_PREFIX" >&2
  exit 2
fi
conn=(--server="$1" --port="$2" --username=guest --password=guest --vhost=/ --heartbeat=0)
queue="$3.cli.q"

fail() { echo "c amqp-tools: FAILED: $*" >&2; exit 1; }
expect() {  # expect WHAT EXPECTED ACTUAL
  [ "$3" = "$2" ] || fail "$1: expected '$2', got '$3'"
}

out=$(timeout 10 amqp-declare-queue "${conn[@]}" -q "$queue") || fail "amqp-declare-queue exited $?"
expect "amqp-declare-queue output" "$queue" "$out"

timeout 10 amqp-get "${conn[@]}" -q "$queue" >/dev/null
expect "amqp-get exit code on an empty queue" 2 "$?"

for i in 0 1 2; do
  timeout 10 amqp-publish "${conn[@]}" -r "$queue" -C text/plain -E utf-8 -t "$3.replies" \
    -H "x-index: $i" -H "x-client: amqp-tools" -b "cli message $i" || fail "amqp-publish $i exited $?"
done

out=$(timeout 10 amqp-get "${conn[@]}" -q "$queue") || fail "amqp-get exited $?"
expect "amqp-get body" "cli message 0" "$out"

out=$(timeout 10 amqp-consume "${conn[@]}" -q "$queue" -c 2 -p 1 -- sh -c 'cat; echo') \
  || fail "amqp-consume exited $?"
expect "amqp-consume bodies" "cli message 1
cli message 2" "$out"

# Both deliveries were acked: nothing comes back after amqp-consume's connection closed.
timeout 10 amqp-get "${conn[@]}" -q "$queue" >/dev/null
expect "amqp-get exit code after amqp-consume acked everything" 2 "$?"

# Line mode: one message per line of standard input.
printf 'line a\nline b\n' | timeout 10 amqp-publish "${conn[@]}" -r "$queue" -l || fail "amqp-publish -l exited $?"
out=$(timeout 10 amqp-consume "${conn[@]}" -q "$queue" -c 2 cat) || fail "amqp-consume exited $?"
expect "amqp-consume line-mode bodies" "line a
line b" "$out"

out=$(timeout 10 amqp-delete-queue "${conn[@]}" -q "$queue") || fail "amqp-delete-queue exited $?"
expect "amqp-delete-queue message count" "0" "$out"

echo "c amqp-tools: OK (declare, publish with properties, get, consume with acks, line mode, delete)"
