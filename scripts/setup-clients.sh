#!/usr/bin/env bash
# Installs what the client suites of `make test` need, idempotently:
#   .venv/                 the Python SDK (editable, ./clients/python[test]: httpx, pytest,
#                          pillow, openai)
#   clients/js/node_modules  the TypeScript compiler, Node's types and playwright-core (npm ci)
#   /usr/bin/chromium      Debian's chromium for the browser test (apt-get, as root only)
# A piece that cannot be installed is named here, and its suite fails saying so.
set -uo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup-clients] %s\n' "$*"; }
status=0

if [[ ! -x .venv/bin/python ]]; then
  say "no .venv: run scripts/setup.sh first"
  exit 1
fi
PY_STAMP=.venv/.simsiam-client
PY_WANT=$(sha256sum clients/python/pyproject.toml | cut -c1-16)
if [[ -f "$PY_STAMP" && "$(cat "$PY_STAMP")" == "$PY_WANT" ]]; then
  say "Python SDK installed in .venv"
elif .venv/bin/python -m pip install --disable-pip-version-check --no-input -q -e './clients/python[test]'; then
  echo "$PY_WANT" > "$PY_STAMP"
  say "Python SDK installed in .venv (editable, with pytest, pillow, openai)"
else
  say "FAILED: pip could not install ./clients/python[test] (httpx, pytest, pillow, openai)"
  status=1
fi

if ! command -v npm >/dev/null 2>&1 && [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
  say "installing nodejs and npm from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null || true
fi
if ! command -v npm >/dev/null 2>&1; then
  say "FAILED: node/npm are not installed: the TypeScript suite and the browser test cannot run"
  status=1
elif [[ -d clients/js/node_modules && clients/js/node_modules/.package-lock.json -nt clients/js/package-lock.json ]]; then
  say "npm packages present in clients/js"
elif (cd clients/js && npm ci --no-audit --no-fund --loglevel=error); then
  say "npm packages installed in clients/js (typescript, @types/node, playwright-core)"
else
  say "FAILED: npm ci in clients/js (typescript, @types/node, playwright-core)"
  status=1
fi

CHROMIUM=${SIMSIAM_CHROMIUM:-/usr/bin/chromium}
if [[ -x "$CHROMIUM" ]]; then
  say "chromium present ($CHROMIUM)"
elif [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
  say "installing Debian's chromium (browser test)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; then
    apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null
  fi
  [[ -x "$CHROMIUM" ]] || { say "FAILED: apt-get could not install chromium: the browser test cannot run"; status=1; }
else
  say "FAILED: chromium is not installed and this is not root: the browser test cannot run (apt-get install chromium, or set SIMSIAM_CHROMIUM)"
  status=1
fi
exit $status
