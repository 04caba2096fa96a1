#!/usr/bin/env bash
# Loads `tsukuru serve`'s web chat page in headless Chromium (Debian's package, installed here when
# missing) driven by Playwright (playwright-core from npm, installed into a cache), sends two
# messages through the page and checks that the streamed answers appear.
# Usage: scripts/browser_chat.sh MODEL_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:?usage: scripts/browser_chat.sh MODEL_DIR}"
source scripts/lib/serve.sh

if ! command -v chromium > /dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # Stale package lists on a fresh machine: refresh them once and try again.
  $sudo apt-get install -y -q chromium > /dev/null || { $sudo apt-get update -q > /dev/null && $sudo apt-get install -y -q chromium > /dev/null; }
fi
node_dir="${TSUKURU_NODE_CACHE:-$HOME/.cache/tsukuru/node-browser}"
if [ ! -d "$node_dir/node_modules/playwright-core" ]; then
  mkdir -p "$node_dir"
  (cd "$node_dir" && npm init -y > /dev/null && npm install --silent "playwright-core@1")
fi

work=$(mktemp -d)
trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
key="key-$RANDOM$RANDOM"
start_server "$model" "$key" "$work"
NODE_PATH="$node_dir/node_modules" node scripts/browser_chat.mjs "$base/?key=$key"
# The answers came through the streaming API.
curl -s -H "Authorization: Bearer $key" "$base/metrics" | grep -q 'tsukuru_requests_total{route="/v1/chat/completions",status="200"} 2'
stop_server "$work"
