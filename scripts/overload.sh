#!/usr/bin/env bash
# Overloads `tsukuru serve` far past its queue and checks that it refuses with 429 + Retry-After,
# cancels abandoned streams, keeps its memory bounded (peak RSS read from /proc), still answers
# afterwards, and stops cleanly on SIGTERM. Usage: scripts/overload.sh MODEL_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:?usage: scripts/overload.sh MODEL_DIR}"
source scripts/lib/serve.sh

work=$(mktemp -d)
trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
key="key-$RANDOM$RANDOM"
start_server "$model" "$key" "$work" --max-running 4 --max-queued 8
python3 scripts/overload.py "$base" "$key" "$server_pid"
stop_server "$work"
