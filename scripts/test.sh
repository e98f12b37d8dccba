#!/usr/bin/env bash
# Installs everything the tests need (a virtualenv with the package and its test extras; Debian's chromium for the
# browser tests, redis-server and haproxy for the replica tests), runs ruff and mypy (strict on the product package),
# then the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests start themselves: chromium (browser tests), redis-server and haproxy (the replica tests)
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/bin/redis-server ] || command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's ${missing[*]} for the tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "${missing[*]} not installed and cannot be installed here (needs root and apt-get): the tests needing them will be skipped" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# The gates before the tests (configured in pyproject.toml; versions pinned in the test extra).
echo "ruff check src tests bench" >&2
.venv/bin/ruff check --quiet src tests bench
echo "mypy --strict src/entra_mcp" >&2
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
