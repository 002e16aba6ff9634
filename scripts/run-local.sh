#!/usr/bin/env bash
# Starts a local Tally trust domain (example.org) in a temp dir and keeps it
# running until Ctrl-C. Used by `make run`.
set -euo pipefail
BIN=${TALLY_BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin}
DIR=$(mktemp -d /tmp/tally-run.XXXXXX)
SOCK=$DIR/admin.sock
cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  echo "state kept in $DIR (logs: $DIR/server.log)"
}
trap cleanup EXIT
trap "exit 0" INT TERM

"$BIN/tally-server" run --trust-domain example.org --data-dir "$DIR/data" --admin-socket "$SOCK" \
  --bind-address 127.0.0.1:8081 --http-address 127.0.0.1:8443 --health-address 127.0.0.1:8080 \
  --log-format text >"$DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  "$BIN/tallyctl" --socket "$SOCK" healthcheck >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$DIR/server.log"; exit 1; }
  sleep 0.1
done
export TALLY_ADMIN_SOCKET=$SOCK
"$BIN/tallyctl" entry create --parent-id spiffe://example.org/demo/node --spiffe-id spiffe://example.org/demo/web \
  --selector "unix:uid:$(id -u)" --dns web.example.org >/dev/null
cat <<MSG

Tally server running for trust domain example.org (pid $SERVER_PID), state in $DIR.

  export TALLY_ADMIN_SOCKET=$SOCK
  $BIN/tallyctl entry list
  $BIN/tallyctl token generate --spiffe-id spiffe://example.org/demo/node
  $BIN/tallyctl x509 mint --spiffe-id spiffe://example.org/demo/web --out-dir $DIR/mint
  $BIN/tallyctl jwt mint --spiffe-id spiffe://example.org/demo/web --audience demo
  $BIN/tallyctl bundle show --format spiffe
  curl -sk https://127.0.0.1:8443/            # SPIFFE bundle endpoint (https_spiffe)
  curl -sk https://127.0.0.1:8443/keys        # OIDC JWKS
  curl -s  http://127.0.0.1:8080/metrics      # Prometheus

Ctrl-C stops it.
MSG
wait "$SERVER_PID"
