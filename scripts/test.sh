#!/usr/bin/env bash
# Installs everything the tests need (a virtualenv with the package and its test extras; Debian's chromium for the
# browser tests, redis-server and haproxy for the replica tests), runs ruff and mypy (strict on the product package),
# then the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests start themselves: chromium (browser tests), redis-server and haproxy (the replica tests).
# apt-get runs in the background while pip installs (both mostly wait on the network); waited for before the tests.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/bin/redis-server ] || command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
apt_pid=""
apt_log=""
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's ${missing[*]} for the tests (in the background)" >&2
    apt_log=$(mktemp)
    (export DEBIAN_FRONTEND=noninteractive
     apt-get update -qq && apt-get install -y -qq "${missing[@]}") >"$apt_log" 2>&1 </dev/null &
    apt_pid=$!
  else
    echo "${missing[*]} not installed and cannot be installed here (needs root and apt-get): the tests needing them will be skipped" >&2
  fi
fi

# The virtualenv: created and filled on first use (a fresh clone always installs everything); later runs install
# again only when pyproject.toml (dependencies, entry points) or the interpreter changed. The package is installed
# editable, so changes to src/ need no reinstall.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
fi
stamp=".venv/.installed-$( { cat pyproject.toml; .venv/bin/python -VV; } | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  rm -f .venv/.installed-*
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi

# The gates before the tests (configured in pyproject.toml; versions pinned in the test extra).
echo "ruff check src tests bench" >&2
.venv/bin/ruff check --quiet src tests bench
echo "mypy --strict src/entra_mcp" >&2
.venv/bin/mypy
if [ -n "$apt_pid" ]; then
  if ! wait "$apt_pid"; then
    cat "$apt_log" >&2
    echo "apt-get install ${missing[*]} failed" >&2
    exit 1
  fi
  rm -f "$apt_log"
fi

# The whole suite runs its test modules on ENTRA_MCP_TEST_WORKERS processes (default 2; 0 runs them in this one),
# each module whole on one worker (--dist loadfile) so module-scoped emulators and servers are started once: most
# tests wait on subprocesses and sockets, and serially the suite leaves a CPU idle. The modules are handed out in
# collection order, the slowest first (tests/conftest.py SLOWEST_FIRST; xdist's own reordering, by test count, is
# off), so both workers finish together. With arguments (a module, -k), pytest runs them in this process.
workers=${ENTRA_MCP_TEST_WORKERS:-2}
if [ "$#" -eq 0 ] && [ "$workers" != "0" ]; then
  exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder
fi
exec .venv/bin/python -m pytest "$@"
