#!/usr/bin/env bash
# Serves MODEL_DIR with `tsukuru serve` on a free loopback port and checks it with the official
# OpenAI Python client (installed here into a cached virtualenv); then stops it with SIGTERM and
# checks that it drained and exited cleanly. Usage: scripts/openai_client.sh MODEL_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:?usage: scripts/openai_client.sh MODEL_DIR}"
source scripts/lib/serve.sh

venv="${TSUKURU_OPENAI_VENV:-$HOME/.cache/tsukuru/venv-openai}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openai>=1.40,<3"
fi

work=$(mktemp -d)
trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
key="key-$RANDOM$RANDOM"
start_server "$model" "$key" "$work"
"$venv/bin/python" scripts/openai_client.py "$base" "$key"
stop_server "$work"
