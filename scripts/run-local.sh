#!/usr/bin/env bash
# make run: a local Tally trust domain (example.org) in a temp dir — server,
# agent (join token), entries for the current user, and two demo workloads
# talking mutual TLS with X509-SVIDs from the Workload API. Ctrl-C stops it.
set -euo pipefail
BIN=${TALLY_BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin}
DIR=$(mktemp -d /tmp/tally-run.XXXXXX)
chmod 755 "$DIR"
# Ports can be moved with environment variables (tests do).
NODE_ADDR=${TALLY_NODE_ADDR:-127.0.0.1:8081}
HTTPS_ADDR=${TALLY_HTTPS_ADDR:-127.0.0.1:8443}
HEALTH_ADDR=${TALLY_HEALTH_ADDR:-127.0.0.1:8080}
WEB_ADDR=${TALLY_WEB_ADDR:-127.0.0.1:8444}
AGENT_HEALTH_ADDR=${TALLY_AGENT_HEALTH_ADDR:-127.0.0.1:8082}
GREETER_ADDR=${TALLY_GREETER_ADDR:-127.0.0.1:9443}
ADMIN=$DIR/admin.sock
AGENT_SOCK=$DIR/agent/agent.sock
PIDS=()
cleanup() {
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; state and logs kept in $DIR"
}
trap cleanup EXIT
trap "exit 0" INT TERM
wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $what; see $DIR/*.log" >&2; exit 1
}

"$BIN/tally-server" run --trust-domain example.org --data-dir "$DIR/server" --admin-socket "$ADMIN" \
  --bind-address "$NODE_ADDR" --http-address "$HTTPS_ADDR" --health-address "$HEALTH_ADDR" --web-address "$WEB_ADDR" \
  --log-format text >"$DIR/server.log" 2>&1 &
PIDS+=($!)
wait_for "the server" "$BIN/tallyctl" --socket "$ADMIN" healthcheck
export TALLY_ADMIN_SOCKET=$ADMIN

NODE=spiffe://example.org/demo/node
TOKEN=$("$BIN/tallyctl" token generate --spiffe-id "$NODE" -o json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
(umask 077 && printf '%s\n' "$TOKEN" >"$DIR/join-token") # a file, not an argument: ps shows arguments to every user
"$BIN/tallyctl" bundle show --format pem >"$DIR/bundle.pem"
"$BIN/tally-agent" run --trust-domain example.org --server-address "$NODE_ADDR" --trust-bundle "$DIR/bundle.pem" \
  --join-token-file "$DIR/join-token" --socket-path "$AGENT_SOCK" --data-dir "$DIR/agent-data" --health-address "$AGENT_HEALTH_ADDR" \
  --log-format text >"$DIR/agent.log" 2>&1 &
PIDS+=($!)
wait_for "the agent" curl -sf "http://$AGENT_HEALTH_ADDR/readyz"

# Identities for the current user, told apart by the executable.
cp "$BIN/greeter" "$DIR/greeter-client"
U=$(id -u)
"$BIN/tallyctl" entry create --parent-id "$NODE" --spiffe-id spiffe://example.org/demo/greeter-server \
  --selector "unix:uid:$U" --selector "unix:path:$BIN/greeter" --dns greeter.demo >/dev/null
"$BIN/tallyctl" entry create --parent-id "$NODE" --spiffe-id spiffe://example.org/demo/greeter-client \
  --selector "unix:uid:$U" --selector "unix:path:$DIR/greeter-client" >/dev/null
"$BIN/tallyctl" entry create --parent-id "$NODE" --spiffe-id spiffe://example.org/demo/you \
  --selector "unix:uid:$U" --selector "unix:path:$BIN/tallyctl" >/dev/null

export SPIFFE_ENDPOINT_SOCKET=unix://$AGENT_SOCK
"$BIN/greeter" server --addr "$GREETER_ADDR" --peer-id spiffe://example.org/demo/greeter-client >"$DIR/greeter-server.log" 2>&1 &
PIDS+=($!)
wait_for "the greeter server" grep -q "listening on" "$DIR/greeter-server.log"
"$DIR/greeter-client" client --addr "$GREETER_ADDR" --peer-id spiffe://example.org/demo/greeter-server --every 2s \
  >"$DIR/greeter-client.log" 2>&1 &
PIDS+=($!)
wait_for "the first greeting" grep -q "^ok 1" "$DIR/greeter-client.log"

DASHBOARD=$("$BIN/tallyctl" dashboard token -o json | sed -n 's/.*"login_url": *"\([^"]*\)".*/\1/p')
cat <<MSG

Tally is running: trust domain example.org, state and logs in $DIR
  server  $NODE_ADDR (Node API), https://$HTTPS_ADDR (bundle, OIDC, token exchange), http://$HEALTH_ADDR/metrics
  dashboard $DASHBOARD
          (valid 1 h; the page's certificate is from a local serving CA: trust $DIR/server/web/ca.pem
          in your browser, or \`tallyctl dashboard token\` prints a new token)
  agent   $AGENT_SOCK (Workload API), http://$AGENT_HEALTH_ADDR/metrics
  demo    greeter-server and greeter-client talk mutual TLS every 2 s:
          $(head -1 "$DIR/greeter-client.log")

Try:
  export TALLY_ADMIN_SOCKET=$ADMIN SPIFFE_ENDPOINT_SOCKET=unix://$AGENT_SOCK
  $BIN/tallyctl svid fetch x509                    # tallyctl's identity (spiffe://example.org/demo/you)
  $BIN/tallyctl svid fetch jwt --audience demo
  $BIN/tallyctl svid watch                         # updates as entries change or SVIDs rotate
  $BIN/tallyctl entry create --parent-id $NODE --spiffe-id spiffe://example.org/demo/extra --selector unix:uid:$U --selector unix:path:$BIN/tallyctl
  $BIN/tallyctl entry list
  $BIN/tallyctl agent list
  tail -f $DIR/greeter-client.log

Ctrl-C stops everything.
MSG
wait
