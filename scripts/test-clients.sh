#!/usr/bin/env bash
# The client suites against real server processes (target/release/server on models/default,
# built by `cargo test --release --workspace`): the Python SDK with pytest (the `openai`
# package included), the TypeScript SDK and the page in headless Chromium with Node's test
# runner. Every suite runs; the script fails if any did, naming it.
set -uo pipefail
cd "$(dirname "$0")/.."

# A no-op after `cargo test --release --workspace`, and a rebuild of a stale binary
# otherwise. Not `cargo build -p simsiam-server`: its features differ from the workspace's
# test build (dev-dependencies unified), which recompiled about 60 crates in `make test`.
cargo test --release --workspace --no-run
failed=()
echo "[test-clients] Python SDK (clients/python, pytest)"
.venv/bin/python -m pytest -q clients/python/tests || failed+=("Python SDK")
echo "[test-clients] TypeScript SDK and the page in Chromium (clients/js, node --test)"
(cd clients/js && npm test --silent) || failed+=("TypeScript SDK / browser")
if ((${#failed[@]})); then
  echo "[test-clients] FAILED: ${failed[*]}"
  exit 1
fi
echo "[test-clients] all client suites passed"
