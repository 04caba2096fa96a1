# Sourced by scripts that check `tsukuru serve`: builds the binary and starts the server.
# start_server MODEL_DIR KEY WORKDIR [SERVE FLAGS...]: serves on a free loopback port (by default
# with 4 requests running at once); sets $base and $server_pid.
# stop_server WORKDIR: SIGTERM, then checks that requests in flight drained and it exited cleanly.
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet -p tsukuru-cli
bin="$target/debug/tsukuru"

start_server() {
  local model="$1" key="$2" work="$3"
  shift 3
  local flags=("$@")
  [ ${#flags[@]} -gt 0 ] || flags=(--max-running 4)
  "$bin" serve --model "$model" --port 0 --api-key "$key" "${flags[@]}" > "$work/serve.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 200); do
    grep -q "serving" "$work/serve.log" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log"; return 1; }
    sleep 0.1
  done
  base=$(sed -n 's/.* on \(http:[^ ]*\) .*/\1/p' "$work/serve.log" | head -1)
  test -n "$base" || { cat "$work/serve.log"; return 1; }
}

stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid"
  grep -q "stopped after the requests in flight finished" "$1/serve.log"
  echo "serve: stopped cleanly on SIGTERM"
}
