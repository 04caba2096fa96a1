#!/usr/bin/env bash
# Serves MODEL_DIR with `tsukuru serve` on a free loopback port and checks it with the official
# OpenAI Python client (installed here into a cached virtualenv); then stops it with SIGTERM and
# checks that it drained and exited cleanly. Usage: scripts/openai_client.sh MODEL_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:?usage: scripts/openai_client.sh MODEL_DIR}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet -p tsukuru-cli
bin="$target/debug/tsukuru"

venv="${TSUKURU_OPENAI_VENV:-$HOME/.cache/tsukuru/venv-openai}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openai>=1.40,<3"
fi

work=$(mktemp -d)
key="key-$RANDOM$RANDOM"
"$bin" serve --model "$model" --port 0 --api-key "$key" --max-running 4 > "$work/serve.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 200); do
  grep -q "serving" "$work/serve.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.1
done
base=$(sed -n 's/.* on \(http:[^ ]*\) .*/\1/p' "$work/serve.log" | head -1)
test -n "$base" || { cat "$work/serve.log"; exit 1; }
"$venv/bin/python" scripts/openai_client.py "$base" "$key"
kill -TERM "$pid"
wait "$pid"
grep -q "stopped after the requests in flight finished" "$work/serve.log"
echo "serve: stopped cleanly on SIGTERM"
