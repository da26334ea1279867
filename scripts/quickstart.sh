#!/usr/bin/env bash
# One command to a working HakuRiver cluster on this machine: a host and one runner with the
# default config, data in ./demo, no root needed. Then it runs a first task and shows the nodes.
#   bash scripts/quickstart.sh         set up, start, run a first task
#   bash scripts/quickstart.sh stop    stop the demo host and runner (their tasks' records stay in demo/)
# HAKURIVER_PORT picks another port than 8000.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/demo
PORT=${HAKURIVER_PORT:-8000}

stop() {
  for name in runner host; do
    if [ -f "$DEMO/$name.pid" ]; then
      kill "$(cat "$DEMO/$name.pid")" 2>/dev/null || true
      rm -f "$DEMO/$name.pid"
    fi
  done
}

if [ "${1:-}" = "stop" ]; then
  stop
  echo "demo cluster stopped"
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "${PYTHON:-python3}" -m venv .venv
fi
echo "==> installing hakuriver into .venv (pip install .)"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q .

stop
mkdir -p "$DEMO/shared" "$DEMO/tmp"
# Only the paths (and the port) differ from the packaged defaults.
cat > "$DEMO/config.toml" <<TOML
[network]
host_port = $PORT
[paths]
shared_dir = "$DEMO/shared"
local_temp_dir = "$DEMO/tmp"
[database]
db_file = "$DEMO/hakuriver.db"
TOML
CFG=(--config "$DEMO/config.toml")
BIN=$ROOT/.venv/bin

echo "==> starting the host (log: demo/host.log)"
nohup "$BIN/hakuriver.host" "${CFG[@]}" >"$DEMO/host.log" 2>&1 &
echo $! >"$DEMO/host.pid"
for _ in $(seq 100); do
  "$BIN/hakuriver.client" "${CFG[@]}" --list-nodes >/dev/null 2>&1 && break
  if ! kill -0 "$(cat "$DEMO/host.pid")" 2>/dev/null; then cat "$DEMO/host.log"; exit 1; fi
  sleep 0.1
done

echo "==> starting a runner (log: demo/runner.log)"
nohup "$BIN/hakuriver.runner" "${CFG[@]}" >"$DEMO/runner.log" 2>&1 &
echo $! >"$DEMO/runner.pid"
for _ in $(seq 100); do
  "$BIN/hakuriver.client" "${CFG[@]}" --list-nodes 2>/dev/null | grep -q " online " && break
  if ! kill -0 "$(cat "$DEMO/runner.pid")" 2>/dev/null; then cat "$DEMO/runner.log"; exit 1; fi
  sleep 0.1
done

echo "==> hakuriver.client --cores 1 --wait -- python -V"
OUT=$("$BIN/hakuriver.client" "${CFG[@]}" --cores 1 --wait -- python -V)
echo "$OUT"
echo "==> the task's output:"
cat "$(echo "$OUT" | sed -n 's/^stdout: //p')"
echo "==> hakuriver.client --list-nodes"
"$BIN/hakuriver.client" "${CFG[@]}" --list-nodes
echo
echo "The cluster keeps running. Try:"
echo "  .venv/bin/hakuriver.client --config demo/config.toml --cores 2 --wait -- sh -c 'echo \$HAKURIVER_CORES'"
echo "Stop it with: bash scripts/quickstart.sh stop"
