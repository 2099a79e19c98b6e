#!/usr/bin/env bash
# Installs the non-Python AMQP clients that tests/differential/test_other_clients.py drives against Leveret:
#   node   amqplib (npm, pinned in tests/clients/node/package-lock.json) on the machine's Node.js
#   php    php-amqplib            (Debian: php-cli php-amqplib)
#   php    the stomp extension    (Debian: php-stomp) for tests/differential/test_stomp_clients.py
#   go     rabbitmq/amqp091-go    (Debian: golang-go golang-github-rabbitmq-amqp091-go-dev, built offline)
#   c      rabbitmq-c             (Debian: librabbitmq-dev amqp-tools, and gcc)
#   web    headless Chromium for tests/integration/test_web_ui.py (Debian: chromium chromium-driver; driven by Playwright
#          for Python from the test extra, which launches /usr/bin/chromium and downloads no browser)
# Idempotent, non-interactive and quiet: installs only what is missing. A toolchain that cannot be installed
# is reported on one line and its tests are skipped; this script itself never fails the run.
# usage: bash scripts/install-test-deps.sh
set -uo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
node_dir=tests/clients/node

say() { echo "install-test-deps: $*"; }

apt_missing() {  # prints the packages among "$@" that are not installed
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || echo "$pkg"
  done
}

apt_updated=0
apt_install() {  # apt_install LABEL PKG... ; returns non-zero when the packages could not be installed
  local label=$1; shift
  local missing
  missing=$(apt_missing "$@")
  [ -z "$missing" ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    say "$label: apt-get not found, cannot install $(echo $missing) — its tests will be skipped"
    return 1
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo -n); else
      say "$label: not root and no sudo, cannot install $(echo $missing) — its tests will be skipped"
      return 1
    fi
  fi
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -qq)
  if [ $apt_updated -eq 0 ]; then
    "${apt[@]}" update </dev/null >/dev/null 2>&1 || say "apt-get update failed (trying the install anyway)"
    apt_updated=1
  fi
  # shellcheck disable=SC2086
  if ! "${apt[@]}" install -y --no-install-recommends $missing </dev/null >/tmp/install-test-deps-apt.log 2>&1; then
    say "$label: apt-get install $(echo $missing) FAILED — its tests will be skipped (see /tmp/install-test-deps-apt.log)"
    tail -n 5 /tmp/install-test-deps-apt.log | sed 's/^/    /'
    return 1
  fi
  say "$label: installed $(echo $missing)"
}

summary=()

# C: rabbitmq-c's library and headers for tests/clients/c/roundtrip.c, and its command-line tools
# (amqp-declare-queue, amqp-publish, amqp-get, amqp-consume, amqp-delete-queue) for amqp_tools.sh.
if apt_install "rabbitmq-c" librabbitmq-dev gcc libc6-dev; then summary+=("c:ok"); else summary+=("c:missing"); fi
if apt_install "amqp-tools" amqp-tools; then summary+=("amqp-tools:ok"); else summary+=("amqp-tools:missing"); fi

# The compiled build (setup.py, mypyc; .ci/run's second pass): a C compiler, and the headers of the Python that
# made .venv (pyenv's and python.org's builds have them; Debian's python3 needs python3-dev).
if apt_install "mypyc-build" gcc libc6-dev; then
  if python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    summary+=("compiled:ok")
  elif apt_install "python-headers" python3-dev; then summary+=("compiled:ok"); else summary+=("compiled:missing"); fi
else
  summary+=("compiled:missing")
fi

# PHP: php-amqplib from Debian (autoloader at /usr/share/php/PhpAmqpLib/autoload.php).
if apt_install "php" php-cli php-amqplib; then summary+=("php:ok"); else summary+=("php:missing"); fi
# PHP's STOMP client: the pecl stomp extension as Debian packages it (enabled for the CLI on install).
if apt_install "php-stomp" php-cli php-stomp; then summary+=("php-stomp:ok"); else summary+=("php-stomp:missing"); fi

# Go: the Debian-packaged amqp091-go source under /usr/share/gocode, built in GOPATH mode (no module proxy).
if apt_install "go" golang-go golang-github-rabbitmq-amqp091-go-dev; then summary+=("go:ok"); else summary+=("go:missing"); fi

# Web page: Debian's Chromium (/usr/bin/chromium) and its driver for the browser test of the management page.
if apt_install "chromium" chromium chromium-driver; then summary+=("chromium:ok"); else summary+=("chromium:missing"); fi

# Node: the machine's Node.js and npm (Debian's if none), then amqplib exactly as package-lock.json pins it.
node_ok=1
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install "node" nodejs npm || node_ok=0
fi
if [ $node_ok -eq 1 ]; then
  stamp=$node_dir/node_modules/.package-lock.json
  if [ -f "$node_dir/node_modules/amqplib/package.json" ] && [ -f "$stamp" ] && \
     [ ! "$node_dir/package-lock.json" -nt "$stamp" ]; then
    :  # already installed from the current lock file
  elif (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error </dev/null >/tmp/install-test-deps-npm.log 2>&1); then
    say "node: installed amqplib into $node_dir/node_modules"
  else
    say "node: npm ci FAILED — the amqplib tests will be skipped (see /tmp/install-test-deps-npm.log)"
    tail -n 5 /tmp/install-test-deps-npm.log | sed 's/^/    /'
    node_ok=0
  fi
fi
if [ $node_ok -eq 1 ]; then summary+=("node:ok"); else summary+=("node:missing"); fi

say "${summary[*]}"
exit 0
