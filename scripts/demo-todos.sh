#!/usr/bin/env bash
# make demo-todos: the todos demo (examples/todos/README.md) in a temp dir —
# the OpenID provider, a Tally server whose config holds the token-exchange
# policy, an agent (join token), an entry per workload, the services todos,
# reminders and shares, then todos-demo, which plays the story and prints
# it. Everything stops when the demo ends, unless DEMO_STAY=1 (then Ctrl-C
# stops it).
set -euo pipefail
BIN=${TALLY_BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin}
BIN=$(cd "$BIN" && pwd -P) # the agent sees executables by their real path
DIR=$(mktemp -d /tmp/tally-todos.XXXXXX)
chmod 755 "$DIR"
# Ports can be moved with environment variables (tests do).
NODE_ADDR=${TALLY_NODE_ADDR:-127.0.0.1:8281}
HTTPS_ADDR=${TALLY_HTTPS_ADDR:-127.0.0.1:8543}
HEALTH_ADDR=${TALLY_HEALTH_ADDR:-127.0.0.1:8280}
WEB_ADDR=${TALLY_WEB_ADDR:-127.0.0.1:8544}
AGENT_HEALTH_ADDR=${TALLY_AGENT_HEALTH_ADDR:-127.0.0.1:8282}
IDP_ADDR=${TODOS_IDP_ADDR:-127.0.0.1:9998}
TODOS_ADDR=${TODOS_TODOS_ADDR:-127.0.0.1:9441}
TODOS_DEMO_ADDR=${TODOS_TODOS_DEMO_ADDR:-127.0.0.1:9442}
REMINDERS_ADDR=${TODOS_REMINDERS_ADDR:-127.0.0.1:9444}
SHARES_ADDR=${TODOS_SHARES_ADDR:-127.0.0.1:9445}
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
# wait_for waits up to a minute (a loaded CI machine is slow to start a
# process) and gives up at once if a process it started has died, showing
# the end of every log so the cause is in the output, not only in $DIR.
wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 600); do
    "$@" >/dev/null 2>&1 && return 0
    for pid in "${PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "a process exited while waiting for $what" >&2; show_logs; exit 1; }
    done
    sleep 0.1
  done
  echo "timed out waiting for $what" >&2; show_logs; exit 1
}
show_logs() {
  for log in "$DIR"/*.log; do echo "--- $log (last lines)" >&2; tail -n 15 "$log" >&2; done
}

# The users' OpenID provider: alice and bob, client todos-app.
"$BIN/idp" --listen "$IDP_ADDR" >"$DIR/idp.log" 2>&1 &
PIDS+=($!)
wait_for "the OpenID provider" curl -sf "http://$IDP_ADDR/.well-known/openid-configuration"

# The server, with the exchange policy: shares, and only shares, may
# exchange users' tokens from the provider for todos, with at most these
# scopes; the tokens carry the user's email and roles.
cat >"$DIR/server.yaml" <<YAML
trust_domain: example.org
data_dir: $DIR/server
admin_socket: $ADMIN
bind_address: $NODE_ADDR
http_address: $HTTPS_ADDR
health_address: $HEALTH_ADDR
web_address: $WEB_ADDR
log_format: text
exchange:
  issuers:
    - url: http://$IDP_ADDR
      audiences: [todos-app]
  rules:
    - name: shares-to-todos
      actors: [spiffe://example.org/todos/shares]
      audiences: [spiffe://example.org/todos/todos]
      scopes: [todos.read, todos.share]
      claims: [email, roles]
YAML
"$BIN/tally-server" run --config "$DIR/server.yaml" >"$DIR/server.log" 2>&1 &
PIDS+=($!)
wait_for "the server" "$BIN/tallyctl" --socket "$ADMIN" healthcheck
export TALLY_ADMIN_SOCKET=$ADMIN

NODE=spiffe://example.org/todos/node
TOKEN=$("$BIN/tallyctl" token generate --spiffe-id "$NODE" -o json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
(umask 077 && printf '%s\n' "$TOKEN" >"$DIR/join-token") # a file, not an argument: ps shows arguments to every user
"$BIN/tallyctl" bundle show --format pem >"$DIR/bundle.pem"
"$BIN/tally-agent" run --trust-domain example.org --server-address "$NODE_ADDR" --trust-bundle "$DIR/bundle.pem" \
  --join-token-file "$DIR/join-token" --socket-path "$AGENT_SOCK" --data-dir "$DIR/agent-data" --health-address "$AGENT_HEALTH_ADDR" \
  --log-format text >"$DIR/agent.log" 2>&1 &
PIDS+=($!)
wait_for "the agent" curl -sf "http://$AGENT_HEALTH_ADDR/readyz"

# One identity per workload, told apart by the executable.
U=$(id -u)
for w in todos:todos reminders:reminders shares:shares todos-demo:demo; do
  "$BIN/tallyctl" entry create --parent-id "$NODE" --spiffe-id "spiffe://example.org/todos/${w#*:}" \
    --selector "unix:uid:$U" --selector "unix:path:$BIN/${w%%:*}" >/dev/null
done

export SPIFFE_ENDPOINT_SOCKET=unix://$AGENT_SOCK
"$BIN/todos" --listen "$TODOS_ADDR" --demo-listen "$TODOS_DEMO_ADDR" --reminders "$REMINDERS_ADDR" >"$DIR/todos.log" 2>&1 &
PIDS+=($!)
"$BIN/reminders" --listen "$REMINDERS_ADDR" --todos "$TODOS_ADDR" >"$DIR/reminders.log" 2>&1 &
PIDS+=($!)
"$BIN/shares" --listen "$SHARES_ADDR" --todos "$TODOS_ADDR" --reminders "$REMINDERS_ADDR" >"$DIR/shares.log" 2>&1 &
PIDS+=($!)
wait_for "todos" grep -q "listening on $TODOS_DEMO_ADDR" "$DIR/todos.log"
wait_for "todos" grep -q "listening on $TODOS_ADDR" "$DIR/todos.log"
wait_for "reminders" grep -q "listening on" "$DIR/reminders.log"
wait_for "shares" grep -q "listening on" "$DIR/shares.log"

cat <<MSG
The todos demo is running: trust domain example.org, state and logs in $DIR
  idp        http://$IDP_ADDR (alice/alice-password, bob/bob-password)
  server     $NODE_ADDR, https://$HTTPS_ADDR; exchange policy in $DIR/server.yaml
  agent      $AGENT_SOCK
  todos      $TODOS_ADDR (demo-only listener $TODOS_DEMO_ADDR)
  reminders  $REMINDERS_ADDR
  shares     $SHARES_ADDR

MSG
status=0
"$BIN/todos-demo" --issuer "http://$IDP_ADDR" --shares "$SHARES_ADDR" --reminders "$REMINDERS_ADDR" \
  --todos-demo "$TODOS_DEMO_ADDR" || status=$?
if [[ ${DEMO_STAY:-} == 1 ]]; then
  cat <<MSG

Still running (DEMO_STAY=1). Try:
  export SPIFFE_ENDPOINT_SOCKET=unix://$AGENT_SOCK
  $BIN/todos-demo --issuer http://$IDP_ADDR --shares $SHARES_ADDR --reminders $REMINDERS_ADDR --todos-demo $TODOS_DEMO_ADDR
  tail $DIR/todos.log $DIR/server.log
Ctrl-C stops everything.
MSG
  wait
fi
exit $status
